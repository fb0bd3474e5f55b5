"""The sweep tool (experiments/sweep.py) by role: grid.py (the runs and the configs they ask
for), runner.py (processes, signals, locks, accelerators, finished runs), results.py
(results.csv, summary.md, summary.png). None of it imports jax: a sweep runs for hours beside
its runs and needs none of it."""
