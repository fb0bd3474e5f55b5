"""Run a command that dies with the sweep that started it:

    python experiments/sweeps/guard.py SWEEP_PID COMMAND...

On Linux the kernel sends the command SIGTERM when the sweep dies, however it dies (SIGKILL
included): prctl(PR_SET_PDEATHSIG) survives the exec below. The trainer takes SIGTERM as "save a
checkpoint and stop", so an orphan neither keeps its workdir's lock for long nor loses its
work. Elsewhere the command just runs; the sweep's rerun then waits for the orphan's lock.
Run as a file, not a module: nothing of ours is imported before the exec.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):   # no libc prctl: not Linux
        return False


if __name__ == "__main__":
    parent, command = int(sys.argv[1]), sys.argv[2:]
    if die_with_parent() and os.getppid() != parent:   # the sweep died before prctl
        sys.exit(128 + signal.SIGTERM)
    os.execvp(command[0], command)
