"""Where a result came from: code version, library versions and hardware, for config.json."""

import importlib.metadata
import pathlib
import platform
import socket
import subprocess
import sys

import jax

# Distribution names on PyPI, under the names a reader knows them by.
PACKAGES = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
            "orbax": "orbax-checkpoint"}


def git_state(path=None) -> dict:
    """{"commit": sha, "dirty": bool} of the repository holding `path` (default: this code);
    both None outside a git checkout or without git."""
    cwd = pathlib.Path(path or __file__).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def versions() -> dict:
    out = {}
    for name, dist in PACKAGES.items():
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    """Code, libraries, interpreter and machine of this process (JSON-serialisable)."""
    devices = jax.devices()
    return {
        "git": git_state(),
        "versions": versions(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "hostname": socket.gethostname(),
        "argv": list(sys.argv),
    }
