"""What a run reports: metrics.jsonl, TensorBoard events, and a plain progress line.

metrics.jsonl holds one JSON object per line, each with "step", "split" and "time" (unix
wall-clock seconds) and the metrics. The same numbers go to TensorBoard event files in the
workdir as `split/name` scalars, so `tensorboard --logdir DIR` shows a run, and pointed at a
sweep directory shows every run of the sweep side by side.

Resuming: `truncate_after(step)` drops the rows after the checkpoint from metrics.jsonl, and the
next events file starts with a purge marker at step + 1 (tensorboardX's `purge_step`), so
TensorBoard hides the earlier file's points from that step on and draws the resumed run's
instead. The old events files stay on disk; TensorBoard reads them all as one run.

Reading rows back (`read_metrics`) and the finished record live in train/metrics.py, which does
not import jax; `clear_finished` and `write_finished` are the trainer's side of that record.
"""

import json
import logging
import math
import os
import pathlib
import time

import jax

from train.metrics import FINISHED, parse_rows, read_metrics  # noqa: F401  (re-exported)

RESERVED = ("step", "split", "time")


class MetricWriter:
    """Appends rows to DIR/metrics.jsonl and DIR/events.out.tfevents.*; only process 0 writes."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self._tb = None            # opened on the first write: a writer that logs nothing
        self._purge_step = None    # leaves no empty events file behind

    def write(self, step: int, split: str, **metrics):
        if not self.enabled:
            return
        if "time" in metrics:
            raise ValueError("'time' is the row's wall-clock time; name the metric otherwise")
        row = {"step": int(step), "split": split, "time": time.time()}
        for k, v in metrics.items():
            v = v.item() if hasattr(v, "item") else v   # numpy / jax scalars
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_events(row)

    def _write_events(self, row: dict):
        scalars = {k: v for k, v in row.items() if k not in RESERVED and _is_number(v)}
        if not scalars:
            return
        if self._tb is None:
            from tensorboardX import SummaryWriter   # no TensorFlow needed
            self.workdir.mkdir(parents=True, exist_ok=True)
            # tensorboardX names files by the second and truncates an existing one: two writers
            # in one second (a test row after training, a quick resume) need their own names,
            # ordered as written (TensorBoard reads a run's files in name order).
            suffix = f".{time.time_ns()}.{os.getpid()}"
            self._tb = SummaryWriter(str(self.workdir), purge_step=self._purge_step,
                                     filename_suffix=suffix)
        for name, value in scalars.items():
            self._tb.add_scalar(f"{row['split']}/{name}", value, row["step"],
                                walltime=row["time"])
        self._tb.flush()   # rows are rare (every log_every steps); a killed run loses none

    def truncate_after(self, step: int):
        """On resume: drop rows of steps after the checkpoint; they will be logged again."""
        if not self.enabled:
            return
        self._purge_step = int(step) + 1
        if self._tb is not None:     # a writer already open starts a new file with the marker
            self._tb.close()
            self._tb = None
        if not self.path.exists():
            return
        # Rewritten even when nothing goes: a cut-short last line must not prefix the next row.
        rows = parse_rows(self.path.read_text(), self.path)
        keep = [r for r in rows if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def flush(self):
        if self._tb is not None:
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- finished record


def clear_finished(workdir) -> None:
    """A run that trains again is not finished until it reaches its end again."""
    if jax.process_index() == 0:
        (pathlib.Path(workdir) / FINISHED).unlink(missing_ok=True)


def write_finished(workdir, state, steps: int) -> None:
    """DIR/finished.json at the successful end of fit: the final step, the time, the parameter
    count. Nothing for a state short of `steps` (a run stopped early is not finished); a record
    of the same step is kept (its time is when the run really finished)."""
    step = int(jax.device_get(state.step))
    if jax.process_index() != 0 or step < steps:
        return
    path = pathlib.Path(workdir) / FINISHED
    try:
        if json.loads(path.read_text()).get("step") == step:
            return
    except (OSError, ValueError, AttributeError):
        pass
    params = sum(int(x.size) for x in jax.tree.leaves(state.params))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time(), "params": params}) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
    """4m12s, 1h02m, 2d03h: two units at most, like a scheduler's clock."""
    s = max(int(round(seconds)), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def progress_line(step: int, total: int, row: dict, val_row: dict | None, elapsed_s: float,
                  start: int = 0) -> str:
    """One line for logs that are not a terminal (SLURM, nohup), where a progress bar is noise:

        step 120/1000  loss 3.412  val 3.501  tokens/s 12,345  ETA 4m12s

    row: the latest train row; val_row: the latest val row (or None); elapsed_s: seconds since
    step `start` (the step this process began at, so a resumed run's ETA counts its own pace).
    """
    parts = [f"step {step}/{total}"]
    if (loss := row.get("loss")) is not None:
        parts.append(f"loss {loss:.3f}")
    if val_row and (val := val_row.get("loss")) is not None:
        parts.append(f"val {val:.3f}")
    if (tps := row.get("tokens_per_sec")) is not None:
        parts.append(f"tokens/s {tps:,.0f}")
    elif (eps := row.get("examples_per_sec")) is not None:
        parts.append(f"examples/s {eps:,.1f}")
    if row.get("mfu_over_peak"):
        parts.append("mfu >100% of measured peak")
    elif (mfu := row.get("mfu")) is not None:
        parts.append(f"mfu {100 * mfu:.1f}%")
    done = step - start
    if done > 0 and elapsed_s > 0 and step < total:
        parts.append("ETA " + format_duration(elapsed_s / done * (total - step)))
    elif step >= total:
        parts.append("took " + format_duration(elapsed_s))
    return "  ".join(parts)


def quiet_library_logging(level: int = logging.WARNING) -> None:
    """absl and orbax log every checkpoint step at INFO; keep their warnings and errors only.
    Call after absl's app.run has started (it sets the absl verbosity from its flags)."""
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.converter.standard_to_absl(level))
    for name in ("absl", "orbax", "orbax.checkpoint"):
        logging.getLogger(name).setLevel(level)
