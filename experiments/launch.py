"""What every experiment's command line shares: --config, --workdir, multi-process flags.

    python -m experiments.NAME --config=experiments/configs/FILE.py:PRESET --workdir=DIR \
        [--config.a.b=value ...] [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Configs are locked: an unknown key or a value of the wrong type stops the run before anything
is built. Library logging below WARNING is off unless --verbosity is given. A run that fails
ends its output with one line naming the cause ("error: ..."), after the traceback.
"""

import errno
import logging as py_logging
import pathlib
import sys
import traceback
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from train import distributed

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, config.json.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 in a multi-process run, "
                    "or 'auto' to let JAX detect it (SLURM, Open MPI, TPU slices).")
flags.DEFINE_integer("num_processes", 0, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
flags.DEFINE_integer("coordinator_timeout", 60, "Seconds to wait for the coordinator and the "
                     "other processes of a multi-process run.", lower_bound=1)
FLAGS = flags.FLAGS

NO_SPACE = "No space left on device"


def config_file_argument(argv: list[str]) -> str | None:
    """The file part of the last --config=FILE[:ARG] (or --config FILE[:ARG]) in `argv`, the
    one absl uses; None without one."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            value = arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return None if value is None else value.split(":", 1)[0]


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
    """Parse flags, join the multi-process run if asked, then call main(config, workdir)."""
    config_file = config_file_argument(sys.argv)
    if config_file is not None and not pathlib.Path(config_file).is_file():
        print(f"error: --config file {config_file} does not exist", file=sys.stderr)
        sys.exit(2)
    config_flags.DEFINE_config_file("config", str(CONFIGS / default_config), lock_config=True)
    if workdir_required:
        flags.mark_flag_as_required("workdir")

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if not FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO
            logging.set_verbosity(logging.WARNING)
        try:
            distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id, timeout=FLAGS.coordinator_timeout)
            main(FLAGS.config, FLAGS.workdir)
        except Exception as e:
            _quiet_shutdown()
            traceback.print_exc()
            print(f"\nerror: {cause(e)}", file=sys.stderr, flush=True)
            sys.exit(1)

    app.run(_main)
