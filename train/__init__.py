"""The trainer and what it needs: optimiser, objectives, sharding, checkpoints, metrics."""

from train import perf

perf.keep_host_memory()
