"""The sweep tool (experiments/sweep.py) by role: grid.py (the runs and the configs they ask
for), runner.py (processes, signals, locks, accelerators, finished runs), results.py
(results.csv, summary.md, summary.png)."""

import importlib.util
import pathlib
import sys


def _load_metrics_reader() -> None:
    """train/metrics.py (jax-free) without train/__init__.py, which imports jax: a sweep runs
    for hours beside its runs and needs none of it. Registered under its own name, so a later
    `from train.metrics import ...` in this process finds the same module (the package's
    attribute `train.metrics` stays unset: import the names, as everywhere here)."""
    if "train.metrics" in sys.modules or "train" in sys.modules:
        return
    path = pathlib.Path(__file__).resolve().parents[2] / "train" / "metrics.py"
    spec = importlib.util.spec_from_file_location("train.metrics", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train.metrics"] = module
    spec.loader.exec_module(module)


_load_metrics_reader()
