"""What every experiment's command line shares: --config, --workdir, multi-process flags.

    python -m experiments.NAME --config=experiments/configs/FILE.py:PRESET --workdir=DIR \
        [--config.a.b=value ...] [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

--help lists every key of the chosen config (the experiment's default without --config) with
its value and description. Configs are locked: an unknown key, a preset the file does not have,
a config file of another experiment or a value of the wrong type stops the run with one line,
before anything is built or the workdir created. --workdir expands ~. Library logging below
WARNING is off unless --verbosity is given. A run that fails ends its output with one line
naming the cause ("error: ..."), after the traceback.
"""

import difflib
import errno
import json
import logging as py_logging
import os
import pathlib
import sys
import traceback
from typing import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import tool_flags
from experiments.configs import CONFIGS, common, config_module


flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, config.json.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 in a multi-process run, "
                    "or 'auto' to let JAX detect it (SLURM, Open MPI, TPU slices).")
flags.DEFINE_integer("num_processes", 0, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
flags.DEFINE_integer("coordinator_timeout", 60, "Seconds to wait for the coordinator and the "
                     "other processes of a multi-process run.", lower_bound=1)
FLAGS = flags.FLAGS

NO_SPACE = "No space left on device"
HELP = ("-h", "--help", "--helpshort", "--helpfull")


class ConfigError(ValueError):
    """Config input that cannot run: the message is the one line the user sees."""


def load_run(workdir: pathlib.Path, named: bool = True) -> tuple[ml_collections.ConfigDict, str]:
    """(the config a run saved, the module that wrote it); `named`: that module must be an
    experiment (a run started from Python records its caller)."""
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} holds no config.json: not a workdir of ours")
    saved = json.loads(path.read_text())
    experiment = saved.pop("provenance", {}).get("experiment", "")
    if named and not experiment.startswith("experiments."):
        raise ValueError(f"{path} does not record which experiment wrote it")
    return ml_collections.ConfigDict(saved), experiment


def config_argument(argv: list[str]) -> str | None:
    """The last --config=FILE[:ARG] (or --config FILE[:ARG]) in `argv`, the one absl uses;
    None without one."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            value = arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def config_file_argument(argv: list[str]) -> str | None:
    """The file part of config_argument."""
    value = config_argument(argv)
    return None if value is None else value.split(":", 1)[0]


def load_config(spec: str):
    """(module, config) of FILE[:PRESET]; ConfigError for a missing file or an unknown preset."""
    file, _, preset = spec.partition(":")
    if not pathlib.Path(file).is_file():
        raise ConfigError(f"--config file {file} does not exist")
    module = config_module(pathlib.Path(file))
    try:
        return module, module.get_config(*([preset] if preset else []))
    except Exception as e:   # ValueError: the config file's own message (unknown preset, ...)
        raise ConfigError(f"--config={spec}: {e if isinstance(e, ValueError) else cause(e)}") \
            from e


def experiments_of_configs() -> set[str]:
    """The experiments some config file of ours names in EXPERIMENT."""
    return {getattr(config_module(p), "EXPERIMENT", None) for p in CONFIGS.glob("*.py")
            if not p.name.startswith("_")} - {None}


def running_experiment() -> str | None:
    """NAME of the `python -m experiments.NAME` being run."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    return main.name.rpartition(".")[2] if main else None


def check_experiment(module, spec: str, this: str | None) -> None:
    """A config file of another experiment names the command that runs it."""
    owner = getattr(module, "EXPERIMENT", None)
    if owner and this and owner != this and this in experiments_of_configs():
        raise ConfigError(f"--config={spec} is a config of experiments.{owner}, not of "
                          f"experiments.{this}: run python -m experiments.{owner} "
                          f"--config={spec}")


def override_keys(argv: list[str]) -> list[str]:
    """The keys of the --config.KEY=VALUE (or --config.KEY VALUE) overrides in `argv`."""
    return [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]


def check_key(config, key: str) -> None:
    """ConfigError naming an override key the config does not have, and the valid ones."""
    node, done = config, []
    for part in key.split("."):
        where = ".".join(done) or "the config"
        if not hasattr(node, "keys"):
            raise ConfigError(f"--config.{key}: {where} is a value, not a section")
        names = sorted(node.keys())
        if part not in names:
            if not names:
                raise ConfigError(f"--config.{key}: {where} has no keys in this preset; set it "
                                  f"whole, e.g. --config.{where}=\"{{'{part}': VALUE}}\"")
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean {'.'.join(done + close)}? " if close else ""
            raise ConfigError(f"--config.{key}: {where} has no key {part!r}; {hint}"
                              f"{where} has: {', '.join(names)}")
        node = node[part]
        done.append(part)


def checked_config(argv: list[str], default_config: str, experiment: str | None = None):
    """The config the command line asks for, checked before absl parses it: ConfigError for a
    missing file, an unknown preset or key, or a config of another experiment than
    `experiment` (default: the one running)."""
    spec = config_argument(argv) or str(CONFIGS / default_config)
    module, config = load_config(spec)
    check_experiment(module, spec, experiment or running_experiment())
    for key in override_keys(argv):
        check_key(config, key)
    return spec, config


def config_help(argv: list[str], default_config: str | None) -> str:
    """--help's list of the config's keys, their defaults and descriptions."""
    if config_argument(argv) is None and default_config is None:
        return "--config=FILE.py:PRESET: add it to --help to list that config's keys."
    spec = config_argument(argv) or str(CONFIGS / default_config)
    _, config = load_config(spec)
    shown = config_argument(argv) or f"experiments/configs/{default_config}"
    return (f"Config keys of {shown} (override with --config.KEY=VALUE):\n\n"
            + common.describe(config, [spec.partition(":")[0]]) + "\n")


def print_config_help(argv: list[str], default_config: str | None = None) -> None:
    """Print config_help; a bad --config is one line on stderr and exit status 2."""
    try:
        print(config_help(argv, default_config), flush=True)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def cause(e: BaseException) -> str:
    """One line naming why the run failed: a full disk wherever it shows in the chain of
    exceptions (checkpoint writers wrap it in their own errors), else the exception itself."""
    seen, chain = set(), e
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if (isinstance(chain, OSError) and chain.errno == errno.ENOSPC) or NO_SPACE in str(chain):
            where = getattr(chain, "filename", None) or FLAGS.workdir
            return (f"{NO_SPACE}" + (f" (writing {where})" if where else "")
                    + ": free disk space, or choose another --workdir")
        chain = chain.__cause__ or chain.__context__
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _quiet_shutdown() -> None:
    """After a failure, library threads and unretrieved asyncio tasks (an interrupted
    checkpoint write leaves hundreds) log the same error again as the process exits; they
    would bury the cause."""
    for name in ("asyncio", "absl", ""):
        py_logging.getLogger(name).setLevel(py_logging.CRITICAL)


def run(main: Callable, default_config: str, workdir_required: bool = True):
    """Check the config, parse flags, join the multi-process run if asked, then call
    main(config, workdir). With --help, first list the config's keys."""
    if any(a in HELP for a in sys.argv[1:]):
        print_config_help(sys.argv, default_config)
    else:
        try:
            checked_config(sys.argv, default_config)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    config_flags.DEFINE_config_file("config", str(CONFIGS / default_config), lock_config=True)
    if workdir_required:
        flags.mark_flag_as_required("workdir")

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        tool_flags.quiet_libraries()   # orbax logs every checkpoint step at INFO
        if FLAGS.workdir:
            FLAGS.workdir = os.path.expanduser(FLAGS.workdir)
        try:
            from train import distributed   # (imports jax: not needed for --help)
            distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id, timeout=FLAGS.coordinator_timeout)
            main(FLAGS.config, FLAGS.workdir)
        except Exception as e:
            _quiet_shutdown()
            traceback.print_exc()
            print(f"\nerror: {cause(e)}", file=sys.stderr, flush=True)
            sys.exit(1)

    app.run(_main)
