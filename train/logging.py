"""metrics.jsonl: one JSON object per line, each with "step" and "split"."""

import json
import math
import pathlib

import jax


class MetricWriter:
    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.enabled = jax.process_index() == 0

    def write(self, step: int, split: str, **metrics):
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        for k, v in metrics.items():
            v = v.item() if hasattr(v, "item") else v   # numpy / jax scalars
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int):
        """On resume: drop rows of steps after the checkpoint; they will be logged again."""
        if not self.enabled or not self.path.exists():
            return
        rows = self.path.read_text().splitlines()
        keep = [r for r in rows if r.strip() and json.loads(r)["step"] <= step]
        self.path.write_text("".join(r + "\n" for r in keep))


def read_metrics(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
