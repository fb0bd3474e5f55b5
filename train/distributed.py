"""Multi-process start-up: jax.distributed from flags, the environment, or not at all."""

import os

import jax


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1):
    """Join a multi-process run.

    Explicit flags win; otherwise JAX's own detection (SLURM, Open MPI, TPU pods, or the
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) is used when the
    environment names more than one process. A single process needs nothing."""
    explicit = bool(coordinator_address)
    detected = (int(os.environ.get("SLURM_NTASKS", "1")) > 1
                or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
                or "JAX_COORDINATOR_ADDRESS" in os.environ
                or "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"])
    if not (explicit or detected):
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or jax.config.jax_platforms == "cpu":
        # CPU devices of different processes talk through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if num_processes <= 0 or process_id < 0:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
