"""Reading what a run wrote: metrics.jsonl rows and the finished record. No jax here, so the
sweep and the report scripts read runs without paying for it.

metrics.jsonl: one JSON object per line (train/logging.py's MetricWriter appends them). A run
killed mid-write leaves its last line cut short: that line is dropped with a warning naming the
file. A bad line anywhere else means the file was damaged: an error names the file and line.

finished.json: written by the trainer when fit() returns successfully (after the final
evaluations and the final checkpoint) and removed when a fit starts training, so a run that
holds it reached its last step: {"step": final step, "time": unix seconds, "params": count}.
"""

import json
import pathlib
import sys

METRICS = "metrics.jsonl"
FINISHED = "finished.json"


class MetricsError(ValueError):
    """A metrics.jsonl line that is not a row and not a cut-short last line."""


def parse_rows(text: str, path) -> list[dict]:
    """metrics.jsonl's text -> rows; the last line may be torn (dropped, with a warning)."""
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif i == len(lines):
            print(f"warning: {path}: dropped its cut-short last line (the run stopped while "
                  f"writing it): {line[:60]!r}", file=sys.stderr)
        else:
            raise MetricsError(f"{path}:{i}: not a JSON row: {line[:80]!r}")
    return rows


def read_metrics(workdir) -> list[dict]:
    """The rows of DIR/metrics.jsonl, in the order written; [] when there is none yet."""
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return []
    return parse_rows(path.read_text(), path)


def read_finished(workdir) -> dict | None:
    """The run's finished record, or None while it has not finished (or the record is damaged)."""
    try:
        record = json.loads((pathlib.Path(workdir) / FINISHED).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "step" in record else None
