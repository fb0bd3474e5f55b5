"""Multi-process start-up: jax.distributed from flags, the environment, or not at all."""

import os
import socket
import sys
import time

import jax


def _cluster_detected() -> bool:
    """A launcher that JAX's own detection understands says there is more than one process."""
    return (int(os.environ.get("SLURM_NTASKS", "1")) > 1
            or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
            or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Returns once something accepts connections at `address` (host:port); raises a
    ConnectionError naming it after `timeout` seconds. JAX's own client aborts the process
    (a fatal log, no Python exception) after its deadline when nobody answers."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)),
                                          timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"no coordinator is listening at {address} after "
                                      f"{timeout:g} s ({e.strerror or e}): start process 0 "
                                      "there, or check --coordinator_address") from e
            time.sleep(0.25)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               timeout: int = 60):
    """Join a multi-process run, or do nothing for a single process.

    Flags win over the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables.
    With a coordinator, a process count and an id, they are used as given. Otherwise, under
    SLURM (srun), Open MPI (mpirun) or on a multi-host TPU slice, or with
    --coordinator_address=auto, JAX detects what is missing from its environment. `timeout`
    (seconds) bounds the wait for the coordinator and for the other processes."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if num_processes <= 0:
        num_processes = int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("JAX_PROCESS_ID", "-1"))
    auto = coordinator_address == "auto"
    explicit = bool(coordinator_address) and not auto
    if not (explicit or auto or _cluster_detected()):
        if num_processes > 1:
            raise ValueError(f"{num_processes} processes need --coordinator_address=HOST:PORT "
                             "(or auto under SLURM, Open MPI or on a TPU slice)")
        return
    if explicit and (num_processes <= 0 or process_id < 0) and not _cluster_detected():
        raise ValueError("--coordinator_address needs --num_processes and --process_id")
    # CPU devices of different processes exchange collectives through gloo (the default in
    # recent JAX; set here so that older ones and a changed default do the same).
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit and process_id > 0:  # process 0 starts the coordinator itself
        wait_for_coordinator(coordinator_address, timeout)
    if explicit and process_id >= 0:
        # If the others do not join in time, JAX ends the process with a fatal log; say first
        # what it was waiting for.
        print(f"process {process_id} of {num_processes}: joining the run at "
              f"{coordinator_address} (waiting at most {timeout} s)", file=sys.stderr, flush=True)
    jax.distributed.initialize(
        coordinator_address=coordinator_address if explicit else None,
        num_processes=num_processes if num_processes > 0 else None,
        process_id=process_id if process_id >= 0 else None, initialization_timeout=int(timeout))
