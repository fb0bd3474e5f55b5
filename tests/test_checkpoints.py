"""What survives: damaged checkpoints, two runs in one workdir, deaths before the first
checkpoint, diverged runs, and resumptions with another config."""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from test_platform import Fixed, Net, config_of, task
from test_trainer import ROOT
from train.checkpoint import WorkdirLock
from train.logging import read_metrics
from train.trainer import NonFiniteError, fit


def rows(workdir, split="train"):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == split]


def run(workdir, **train):
    return fit(config_of(**{**dict(ckpt_every=2), **train}), workdir=workdir, **task(Net()))


def largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def overwrite(step_dir):
    path = largest_file(step_dir)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = os.urandom(len(data[middle:middle + 4096]))
    path.write_bytes(bytes(data))


def truncate(step_dir):
    path = largest_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("damage", [overwrite, truncate, delete_metadata])
def test_a_damaged_newest_checkpoint_is_named_and_the_run_falls_back(tmp_path, damage, capfd):
    run(tmp_path / "clean", steps=6)
    run(tmp_path / "run", steps=4)
    damage(tmp_path / "run" / "checkpoints" / "4")
    run(tmp_path / "run", steps=6)
    err = capfd.readouterr().err
    assert "checkpoints/4 is damaged" in err and "resumed from" in err
    assert rows(tmp_path / "run") == rows(tmp_path / "clean")   # as if never interrupted
    assert [p.name.split("-")[0] for p in (tmp_path / "run" / "checkpoints_damaged").iterdir()
            ] == ["4"]                                          # moved aside, not deleted
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                  if p.name.isdigit()) == [4, 6]


def test_keep_ckpts_below_one_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="keep_ckpts must be positive"):
        run(tmp_path, keep_ckpts=0)
    assert not tmp_path.joinpath("config.json").exists()


class DiesAt(Fixed):
    """Raises at batch `n`: a run that dies before its first checkpoint."""

    def __init__(self, n):
        self.i, self.n = 0, n

    def __next__(self):
        self.i += 1
        if self.i == self.n:
            raise KeyboardInterrupt
        return super().__next__()


def test_no_duplicate_rows_after_a_death_before_the_first_checkpoint(tmp_path):
    config = config_of(steps=6, ckpt_every=1000)
    with pytest.raises(KeyboardInterrupt):
        fit(config, workdir=tmp_path / "run", **{**task(Net()), "train_data": DiesAt(4)})
    assert len(rows(tmp_path / "run")) == 3
    fit(config, workdir=tmp_path / "run", **task(Net()))
    fit(config, workdir=tmp_path / "clean", **task(Net()))
    assert rows(tmp_path / "run") == rows(tmp_path / "clean")
    assert rows(tmp_path / "run", "val") == rows(tmp_path / "clean", "val")


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with WorkdirLock(tmp_path):
        with pytest.raises(RuntimeError, match="in use by another run"):
            run(tmp_path, steps=2)
    assert not (tmp_path / "checkpoints").exists()
    # A holder that died (SIGKILL) leaves no lock behind.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from train.checkpoint import WorkdirLock; "
         f"l = WorkdirLock({str(tmp_path)!r}).__enter__(); print('locked', flush=True); "
         "time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=f"pid {holder.pid}"):
        run(tmp_path, steps=2)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    run(tmp_path, steps=2)
    assert (tmp_path / "checkpoints" / "2").is_dir()


class PoisonedFrom(Fixed):
    def __init__(self, start):
        self.i, self.start = 0, start

    def __next__(self):
        self.i += 1
        batch = super().__next__()
        return {**batch, "x": batch["x"] * np.inf} if self.i >= self.start else batch

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def test_a_diverged_run_keeps_only_checkpoints_from_before_the_divergence(tmp_path):
    config = config_of(steps=20, ckpt_every=2, max_nonfinite=3, keep_ckpts=5)
    with pytest.raises(NonFiniteError, match="newest checkpoint is now step 4"):
        fit(config, workdir=tmp_path, **{**task(Net()), "train_data": PoisonedFrom(5)})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]
    # The error's advice works: the same command (here with good data) resumes from step 4.
    state = fit(config, workdir=tmp_path, **task(Net()))
    assert int(state.step) == 20 and int(state.nonfinite_total) == 0


def test_resuming_with_another_setting_than_train_is_refused(tmp_path, capfd):
    run(tmp_path, steps=2)
    saved = (tmp_path / "config.json").read_text()
    config = config_of(steps=2, ckpt_every=2)
    config.model.width = 8
    with pytest.raises(ValueError, match="model.width"):
        fit(config, workdir=tmp_path, **task(Net()))
    assert (tmp_path / "config.json").read_text() == saved
    run(tmp_path, steps=2, lr=0.05)      # a finished run, a training setting changed: warned
    err = capfd.readouterr().err
    assert "train.lr 0.1 -> 0.05" in err and "is finished" in err
