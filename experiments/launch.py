"""What every experiment's command line shares: --config, --workdir, multi-process flags.

    python -m experiments.NAME --config=experiments/configs/FILE.py:PRESET --workdir=DIR \
        [--config.a.b=value ...] [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

Configs are locked: an unknown key or a value of the wrong type stops the run before anything
is built.
"""

import pathlib
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from train import distributed

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, config.json.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 in a multi-process run, "
                    "or 'auto' to let JAX detect it (SLURM, Open MPI, TPU slices).")
flags.DEFINE_integer("num_processes", 0, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-process run.")
FLAGS = flags.FLAGS


def run(main: Callable, default_config: str, workdir_required: bool = True):
    """Parse flags, join the multi-process run if asked, then call main(config, workdir)."""
    config_flags.DEFINE_config_file("config", str(CONFIGS / default_config), lock_config=True)
    if workdir_required:
        flags.mark_flag_as_required("workdir")

    def _main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        main(FLAGS.config, FLAGS.workdir)

    app.run(_main)
