"""metrics.jsonl with wall-clock time, TensorBoard events (with resume purging), the progress
line, quiet library logging, and a run's provenance."""

import json
import logging
import pathlib
import re
import struct
import subprocess
import time

import jax
import numpy as np
import pytest

from train import provenance as prov
from train.logging import (MetricWriter, format_duration, progress_line, quiet_library_logging,
                           read_metrics)


def read_events(workdir) -> list:
    """Every Event of every events file in `workdir`, files in creation order (TFRecord frames:
    length, crc, payload, crc)."""
    from tensorboardX.proto.event_pb2 import Event
    events = []
    for path in sorted(pathlib.Path(workdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + n]))
            pos += 12 + n + 4
    return events


def tensorboard_view(events) -> dict[str, dict[int, float]]:
    """What TensorBoard draws: a session START marker at step s hides earlier points at
    steps >= s (its purge of a restarted run)."""
    from tensorboardX.proto.event_pb2 import SessionLog
    series = {}
    for e in events:
        if e.HasField("session_log") and e.session_log.status == SessionLog.START:
            for points in series.values():
                for step in [s for s in points if s >= e.step]:
                    del points[step]
        for v in e.summary.value:
            series.setdefault(v.tag, {})[e.step] = v.simple_value
    return series


def test_rows_carry_wall_time_and_tensorboard_gets_the_same_scalars(tmp_path):
    before = time.time()
    with MetricWriter(tmp_path) as w:
        w.write(1, "train", loss=np.float32(2.5), lr=1e-3, note="text", flag=True)
        w.write(1, "val", loss=float("inf"), accuracy=jax.numpy.asarray(0.25))
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["split"]) for r in rows] == [(1, "train"), (1, "val")]
    assert all(before <= r["time"] <= time.time() for r in rows)
    assert rows[0]["loss"] == 2.5 and rows[0]["note"] == "text" and rows[1]["loss"] is None
    view = tensorboard_view(read_events(tmp_path))
    # Numbers only: no strings, no booleans, nothing non-finite.
    assert view == {"train/loss": {1: 2.5}, "train/lr": {1: pytest.approx(1e-3)},
                    "val/accuracy": {1: 0.25}}
    times = {r["split"]: r["time"] for r in rows}
    for e in read_events(tmp_path):
        for v in e.summary.value:   # each scalar at its row's wall-clock time
            assert e.wall_time == pytest.approx(times[v.tag.split("/")[0]], abs=1e-3)


def test_time_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="time"):
        MetricWriter(tmp_path).write(0, "train", time=3.0)


def test_resume_truncates_jsonl_and_tensorboard_hides_the_replayed_steps(tmp_path):
    w = MetricWriter(tmp_path)
    for step in range(1, 7):
        w.write(step, "train", loss=10.0 - step)
    w.close()
    # A crash after step 6, a checkpoint at step 4: the resumed run logs 5 and 6 again.
    w = MetricWriter(tmp_path)
    w.truncate_after(4)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    for step in (5, 6, 7):
        w.write(step, "train", loss=100.0 + step)
    w.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2   # a new file on resume
    expected = {r["step"]: r["loss"] for r in read_metrics(tmp_path)}
    assert expected == {1: 9.0, 2: 8.0, 3: 7.0, 4: 6.0, 5: 105.0, 6: 106.0, 7: 107.0}
    assert tensorboard_view(read_events(tmp_path)) == {"train/loss": expected}


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    w = MetricWriter(tmp_path)
    w.write(1, "train", loss=1.0)
    w.truncate_after(0)
    w.close()
    assert list(tmp_path.iterdir()) == []


def test_progress_line():
    row = {"loss": 3.41249, "tokens_per_sec": 12345.4, "examples_per_sec": 96.4}
    # 120 steps in 36 s: 0.3 s a step, 880 to go.
    assert progress_line(120, 1000, row, {"loss": 3.5006}, 36.0) == (
        "step 120/1000  loss 3.412  val 3.501  tokens/s 12,345  ETA 4m24s")
    # Resumed at step 100: the pace is of the 20 steps this process ran.
    assert progress_line(120, 1000, {"loss": 1.0, "examples_per_sec": 96.44, "mfu": 0.4123},
                         None, 10.0, start=100) == (
        "step 120/1000  loss 1.000  examples/s 96.4  mfu 41.2%  ETA 7m20s")
    assert progress_line(1000, 1000, {}, {}, 3725.0) == "step 1000/1000  took 1h02m"


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (59.4, "59s"), (61, "1m01s"),
                                          (3600, "1h00m"), (90061, "1d01h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_quiet_library_logging():
    from absl import logging as absl_logging
    names = ("absl", "orbax")
    saved = absl_logging.get_verbosity(), [logging.getLogger(n).level for n in names]
    try:
        absl_logging.set_verbosity(absl_logging.INFO)
        quiet_library_logging()
        for name in names:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO)
            assert logging.getLogger(name).isEnabledFor(logging.WARNING)
        assert logging.getLogger("orbax.checkpoint.checkpoint_manager").getEffectiveLevel() \
            == logging.WARNING
    finally:
        absl_logging.set_verbosity(saved[0])
        for name, level in zip(names, saved[1]):
            logging.getLogger(name).setLevel(level)


# ----------------------------------------------------------------------------- provenance


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_provenance_of_this_process():
    p = prov.provenance()
    json.dumps(p)   # goes into config.json as is
    head = _git(pathlib.Path(prov.__file__).parent, "rev-parse", "HEAD").strip()
    assert p["git"]["commit"] == head and isinstance(p["git"]["dirty"], bool)
    assert p["versions"]["jax"] == jax.__version__
    import flax
    import optax
    assert p["versions"]["flax"] == flax.__version__ and p["versions"]["optax"] == optax.__version__
    assert p["versions"]["jaxlib"] and p["versions"]["orbax"]
    assert p["device_count"] == jax.device_count() and p["process_count"] == jax.process_count()
    assert p["device_kind"] == jax.devices()[0].device_kind
    assert re.fullmatch(r"3\.\d+\.\d+", p["python"]) and p["hostname"]


def test_git_state_clean_dirty_and_outside_git(tmp_path):
    assert prov.git_state(tmp_path) == {"commit": None, "dirty": None}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "a")
    head = _git(tmp_path, "rev-parse", "HEAD").strip()
    assert prov.git_state(tmp_path / "a.py") == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert prov.git_state(tmp_path) == {"commit": head, "dirty": True}
