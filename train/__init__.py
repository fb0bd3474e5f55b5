"""The trainer and what it needs: optimiser, objectives, sharding, checkpoints, metrics."""

from train.hostmem import keep_host_memory

keep_host_memory()
