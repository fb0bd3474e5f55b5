"""What the commands that read finished runs share (evaluate, generate, evaluate_lm, ensemble,
icl_report): --workdir names the run, a flag's former name keeps working for one release and
says once on stderr that it is deprecated, and the checkpoint library's INFO lines stay out of
the result unless --verbosity asks for them."""

import sys

from absl import flags, logging


def deprecated(old: str, new: str) -> None:
    print(f"--{old} is deprecated; use --{new}", file=sys.stderr)


def define_renamed(old: str, new: str, flag_values=flags.FLAGS) -> None:
    """--old sets --new (adds to it, for a multi flag), and says so once."""
    target = flag_values[new]

    class Renamed(flags.Flag):
        def parse(self, argument):
            if not self.present:
                deprecated(old, new)
            target.parse(argument)
            self.present += 1

    flags.DEFINE_flag(Renamed(target.parser, target.serializer, old, None,
                              f"Deprecated name of --{new}."), flag_values)


def quiet_libraries(flag_values=flags.FLAGS) -> None:
    """Library logging below WARNING off (orbax logs every restore at INFO), unless
    --verbosity was given."""
    if not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
