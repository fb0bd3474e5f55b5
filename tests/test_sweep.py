"""experiments/sweep.py: the grid, resuming, failures, parallel runs, named sweeps with a
preliminary run, and results.csv / summary.md / summary.png.

Most tests run a stand-in experiment (a script with the experiments' command line that writes
config.json and metrics.jsonl without training); one runs pretrain_lm for real.
"""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAKE_EXPERIMENT = '''
"""Stand-in experiment: the command line of experiments/launch.py, metrics without training."""
import json, pathlib, sys, time
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, lock_config=True)
flags.DEFINE_string("workdir", None, "")
FLAGS = flags.FLAGS


def main(argv):
    c, w = FLAGS.config, pathlib.Path(FLAGS.workdir)
    w.mkdir(parents=True, exist_ok=True)
    start = time.time()
    time.sleep(c.sleep)
    with (w / "launches.txt").open("a") as f:
        f.write(f"{start} {time.time()}\\n")
    (w / "config.json").write_text(c.to_json_best_effort())
    print("training", c.lr, c.seed)
    if c.fail:
        sys.exit(3)
    rows = [{"step": 1, "split": "train", "time": 0, "loss": 9.0},
            {"step": 2, "split": "train", "time": 0, "loss": c.lr * 10, "note": "text"},
            {"step": 2, "split": "val", "time": 0, "loss": c.lr * 20 + c.seed},
            {"step": 2, "split": "test", "time": 0, "accuracy": c.lr + c.seed / 100,
             "task": "t", "ok": True}]
    (w / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))


app.run(main)
'''

FAKE_CONFIG = '''
import ml_collections

EXPERIMENT = "pretrain_lm"   # any real module name: the tests swap the program that runs

SWEEPS = {
    "ablation": {
        "before": {"experiment": "pretrain_lm", "config": "fake_config.py:base",
                   "overrides": {"lr": 0.5}, "workdir": "pretrain"},
        "setting": [
            {"label": "scratch", "init_from": "", "lr": 0.1},
            {"label": "pretrained", "init_from": "{sweep_dir}/pretrain", "lr": 0.1},
            {"label": "pretrained_low_lr", "init_from": "{sweep_dir}/pretrain", "lr": 0.01},
        ],
        "label": ["a", "b"],
        "overrides": {"sleep": 0.0},
        "metric": "val/loss",
    },
    "bad_before": {
        "before": {"experiment": "pretrain_lm", "config": "fake_config.py:base",
                   "overrides": {"fail": True}, "workdir": "pretrain"},
        "lr": [0.1],
    },
}


def get_config(arg="base"):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.lr = 0.1
    c.fail = False
    c.sleep = 0.0
    c.init_from = ""
    c.label = "x"
    return c
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A config file for the stand-in experiment, and the sweep set to run it."""
    script = tmp_path / "fake_experiment.py"
    script.write_text(FAKE_EXPERIMENT)
    config = tmp_path / "fake_config.py"
    config.write_text(FAKE_CONFIG)
    monkeypatch.setattr(sweep, "program", lambda experiment: [sys.executable, str(script)])
    return f"{config}:base"


def run_sweep(config, workdir, *flags) -> int:
    return sweep.main(["sweep", f"--config={config}", f"--workdir={workdir}", *flags])


def launches(run_dir) -> list[tuple[float, float]]:
    path = pathlib.Path(run_dir) / "launches.txt"
    if not path.exists():
        return []
    return [tuple(map(float, line.split())) for line in path.read_text().splitlines()]


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def no_launch(*args, **kwargs):
    raise AssertionError("a finished sweep launched a run")


# ----------------------------------------------------------------------------- the grid


def test_values_split_on_top_level_commas_only():
    assert sweep.split_values("1e-3, 3e-3") == ["1e-3", "3e-3"]
    assert sweep.split_values("(1, 2),[3,4],'a,b'") == ["(1, 2)", "[3,4]", "'a,b'"]
    with pytest.raises(sweep.SweepError, match="KEY=V1,V2"):
        sweep.axis_from_flag("train.lr")
    with pytest.raises(sweep.SweepError, match="empty"):
        sweep.axis_from_flag("train.lr=0.1,")


def test_grid_is_the_product_times_seeds(tmp_path):
    axes = [sweep.axis_from_flag("train.lr=1e-3,3e-3"),
            sweep.Axis("setting", [("scratch", {"init_from": "", "lam": 0.0}),
                                   ("pre", {"init_from": "{sweep_dir}/pre", "lam": 0.5})])]
    runs = sweep.make_grid(axes, [5, 6], {"train.steps": "4"}, "finetune_gpt", "c.py:p",
                           tmp_path)
    assert [r.name for r in runs] == [
        "train.lr=1e-3,setting=scratch,seed=5", "train.lr=1e-3,setting=scratch,seed=6",
        "train.lr=1e-3,setting=pre,seed=5", "train.lr=1e-3,setting=pre,seed=6",
        "train.lr=3e-3,setting=scratch,seed=5", "train.lr=3e-3,setting=scratch,seed=6",
        "train.lr=3e-3,setting=pre,seed=5", "train.lr=3e-3,setting=pre,seed=6"]
    assert runs[3].values == {"train.lr": "1e-3", "setting": "pre", "seed": "6"}
    assert runs[3].overrides == {"train.steps": "4", "train.lr": "1e-3",
                                 "init_from": f"{tmp_path}/pre", "lam": "0.5", "seed": "6"}


def test_run_names_are_safe_file_names():
    assert sweep.run_name({"data.path": "a/b c", "seed": "0"}) == "data.path=a_b_c,seed=0"
    long = sweep.run_name({"k": "x" * 400})
    assert len(long) <= 200 and long != sweep.run_name({"k": "x" * 399})


def test_named_sweep_axes():
    axes = sweep.axes_from_spec({"model.learn_temperature": [True, False], "seeds": 3,
                                 "setting": [{"label": "l2", "lam": 0}, {"lam": 0.5}]}, "w")
    assert [(a.name, a.points) for a in axes] == [
        ("model.learn_temperature", [("True", {"model.learn_temperature": True}),
                                     ("False", {"model.learn_temperature": False})]),
        ("setting", [("l2", {"lam": 0}), ("lam=0.5", {"lam": 0.5})])]
    with pytest.raises(sweep.SweepError, match="mixes"):
        sweep.axes_from_spec({"s": [{"lam": 0}, 1]}, "w")


# ----------------------------------------------------------------------------- results


def fake_run(run_dir, rows):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_results_csv_summary_and_plot_from_run_dirs(tmp_path):
    runs = sweep.make_grid([sweep.axis_from_flag("train.lr=0.1,0.01")], [0, 1], {},
                           "pretrain_lm", "c.py:p", tmp_path)
    for i, run in enumerate(runs):
        fake_run(tmp_path / run.name, [
            {"step": 0, "split": "val", "time": 1.0, "loss": 9.0},
            {"step": 5, "split": "train", "time": 2.0, "loss": 5.0 + i, "lr": 0.1, "ok": True},
            {"step": 10, "split": "train", "time": 3.0, "loss": None if i == 3 else 4.0 + i},
            {"step": 10, "split": "val", "time": 4.0, "loss": 3.0 + i, "bleu": 20.0 + 10 * i},
            {"step": 10, "split": "test", "time": 5.0, "accuracy": 0.5 + 0.2 * i,
             "task": "sst2"}])
    metrics = {r.name: sweep.last_metrics(tmp_path / r.name) for r in runs[:3]}
    sweep.write_results(tmp_path / "results.csv", runs, metrics)   # run 4 did not finish
    header, rows = read_csv(tmp_path / "results.csv")
    assert header == ["train.lr", "seed", "train/loss", "train/lr", "val/loss", "val/bleu",
                      "test/accuracy"]
    assert rows == [["0.1", "0", "4.0", "0.1", "3.0", "20.0", "0.5"],
                    ["0.1", "1", "5.0", "0.1", "4.0", "30.0", "0.7"],
                    ["0.01", "0", "6.0", "0.1", "5.0", "40.0", "0.9"]]
    status = {r.name: "done" for r in runs[:3]} | {runs[3].name: "failed: exit 1"}
    assert sweep.write_summary(tmp_path, "# t", status) == "test/accuracy"
    md = (tmp_path / "summary.md").read_text()
    assert "| train.lr | n | test/accuracy | val/loss | val/bleu |" in md
    assert "| 0.1 | 2 | 0.6 ± 0.14 | 3.5 ± 0.71 | 25 ± 7.1 |" in md      # std of a sample
    assert "| 0.01 | 1 | 0.9 | 5 | 40 |" in md
    assert "train.lr=0.01,seed=1`: failed: exit 1" in md
    assert (tmp_path / "summary.png").stat().st_size > 5000
    header, _ = read_csv(tmp_path / "results.csv")
    assert sweep.main_metric(header, "bleu") == "val/bleu"
    assert sweep.main_metric(header, "train/loss") == "train/loss"
    with pytest.raises(sweep.SweepError, match="no such metric"):
        sweep.main_metric(header, "f1")


def test_a_non_finite_last_value_is_left_empty(tmp_path):
    fake_run(tmp_path / "r", [{"step": 1, "split": "train", "loss": 2.0},
                              {"step": 2, "split": "train", "loss": None}])
    assert sweep.last_metrics(tmp_path / "r") == {"train/loss": None}


# ----------------------------------------------------------------------------- running


def test_sweep_runs_the_grid_then_a_rerun_does_nothing(fake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    flags = ["--sweep=lr=0.1,0.2", "--seeds=2", "--config.seed=10"]
    assert run_sweep(fake, out, *flags) == 0
    names = ["lr=0.1,seed=10", "lr=0.1,seed=11", "lr=0.2,seed=10", "lr=0.2,seed=11"]
    assert all(len(launches(out / n)) == 1 for n in names)
    assert "training 0.1 10" in capsys.readouterr().out   # one at a time: output shown live
    saved = json.loads((out / "lr=0.2,seed=11" / "config.json").read_text())
    assert (saved["lr"], saved["seed"]) == (0.2, 11)      # typed by the config's own flags
    header, rows = read_csv(out / "results.csv")
    assert header == ["lr", "seed", "train/loss", "val/loss", "test/accuracy"]
    assert [r[:2] for r in rows] == [["0.1", "10"], ["0.1", "11"], ["0.2", "10"], ["0.2", "11"]]
    assert [float(r[4]) for r in rows] == pytest.approx([0.2, 0.21, 0.3, 0.31])
    assert "| 0.2 | 2 | 0.305 ± 0.0071 |" in (out / "summary.md").read_text()
    assert (out / "summary.png").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out}

    monkeypatch.setattr(sweep.subprocess, "Popen", no_launch)
    assert run_sweep(fake, out, *flags) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out} == mtimes
    assert read_csv(out / "results.csv") == (header, rows)


def test_parallel_runs_overlap(fake, tmp_path):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1,0.2", "--parallel=2",
                     "--config.sleep=1.5") == 0
    (a0, a1), = launches(out / "lr=0.1,seed=0")
    (b0, b1), = launches(out / "lr=0.2,seed=0")
    assert a0 < b1 and b0 < a1          # both processes were running at once
    assert len(read_csv(out / "results.csv")[1]) == 2
    assert "training" in (out / "lr=0.1,seed=0" / "output.log").read_text()


def test_a_failing_run_fails_the_sweep_and_the_others_finish(fake, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=fail=True,False", "--sweep=lr=0.1,0.2") == 1
    err = capsys.readouterr().err
    assert "2 failed" in err and "fail=True,lr=0.1,seed=0: failed: exit 3" in err
    _, rows = read_csv(out / "results.csv")
    assert [r[:3] for r in rows] == [["False", "0.1", "0"], ["False", "0.2", "0"]]
    assert "Not finished" in (out / "summary.md").read_text()
    assert not (out / "fail=True,lr=0.1,seed=0" / sweep.MARKER).exists()
    # Again: the finished runs are skipped, the failed ones run (and fail) again.
    assert run_sweep(fake, out, "--sweep=fail=True,False", "--sweep=lr=0.1,0.2") == 1
    assert len(launches(out / "fail=False,lr=0.1,seed=0")) == 1
    assert len(launches(out / "fail=True,lr=0.1,seed=0")) == 2


def test_a_changed_sweep_does_not_reuse_old_runs(fake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1") == 0
    monkeypatch.setattr(sweep.subprocess, "Popen", no_launch)
    assert run_sweep(fake, out, "--sweep=lr=0.1", "--config.init_from=elsewhere") == 1
    err = capsys.readouterr()
    assert "holds another run: init_from=''" in err.out + err.err


def test_named_sweep_runs_its_preliminary_run_once(fake, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--name=ablation") == 0
    assert len(launches(out / "pretrain")) == 1
    assert json.loads((out / "pretrain" / "config.json").read_text())["lr"] == 0.5
    saved = json.loads((out / "setting=pretrained,label=b,seed=0" / "config.json").read_text())
    assert saved["init_from"] == str(out / "pretrain") and saved["label"] == "b"
    header, rows = read_csv(out / "results.csv")
    assert header[:3] == ["setting", "label", "seed"] and len(rows) == 6
    assert "Main metric: val/loss" in (out / "summary.md").read_text()
    monkeypatch.setattr(sweep.subprocess, "Popen", no_launch)
    assert run_sweep(fake, out, "--name=ablation") == 0


def test_a_failed_preliminary_run_stops_the_sweep(fake, tmp_path, capsys):
    assert run_sweep(fake, tmp_path / "s", "--name=bad_before") == 1
    assert "preliminary run" in capsys.readouterr().err
    assert not (tmp_path / "s" / "lr=0.1,seed=0").exists()


@pytest.mark.parametrize("flags,message", [
    (["--sweep=lr=0.1", "--sweep=lr=0.2"], "given twice"),
    (["--sweep=seed=1,2"], "--seeds"),
    (["--sweep=lr=0.1", "--config.lr=0.3"], "both swept"),
    (["--sweep=lrr=0.1"], "lrr"),
    (["--sweep=lr=abc"], "abc"),
    (["--name=nope"], "no sweep named 'nope'"),
])
def test_bad_sweeps_stop_before_anything_runs(fake, tmp_path, capsys, flags, message):
    assert run_sweep(fake, tmp_path / "s", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_config_file_must_name_its_experiment(tmp_path, capsys):
    (tmp_path / "c.py").write_text(textwrap.dedent(FAKE_CONFIG).replace("EXPERIMENT", "X"))
    assert run_sweep(f"{tmp_path}/c.py:base", tmp_path / "s", "--sweep=lr=1") == 2
    assert "defines no EXPERIMENT" in capsys.readouterr().err


def test_the_config_files_name_their_experiments():
    from experiments.configs import clip, gpt, gpt1
    assert (gpt.EXPERIMENT, clip.EXPERIMENT, gpt1.EXPERIMENT) == (
        "pretrain_lm", "clip", "finetune_gpt")


# ----------------------------------------------------------------------------- for real


TINY = ["--config.train.steps=4", "--config.train.batch_size=4", "--config.train.eval_every=2",
        "--config.train.eval_steps=1", "--config.train.ckpt_every=4", "--config.train.log_every=2",
        "--config.data.max_docs=40", "--config.sample.num_tokens=0", "--config.model.n_layer=1",
        "--config.model.d_model=32", "--config.model.n_head=2", "--config.data.vocab_size=300",
        "--config.model.vocab_size=300", "--config.data.seq_len=32", "--config.model.n_ctx=32"]


def test_pretrain_lm_sweep(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "experiments.sweep",
           "--config=experiments/configs/gpt.py:tiny", f"--workdir={out}",
           "--sweep=train.lr=0.001,0.01", "--parallel=2", *TINY,
           f"--config.data.cache_dir={tmp_path / 'cache'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    header, rows = read_csv(out / "results.csv")
    assert header[:2] == ["train.lr", "seed"] and [r[:2] for r in rows] == [
        ["0.001", "0"], ["0.01", "0"]]
    assert {"train/loss", "train/tokens_per_sec", "val/loss"} <= set(header)
    assert all(c.split("/")[0] in ("train", "val", "test") for c in header[2:])
    assert "| train.lr | n | test/loss |" in (out / "summary.md").read_text()
    assert (out / "summary.png").exists()
    run = out / "train.lr=0.01,seed=0"
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01
    assert list(run.glob("events.out.tfevents.*"))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sweep.subprocess, "Popen", no_launch)
    assert sweep.main(cmd[2:]) == 0   # all finished: nothing runs


def test_sigterm_stops_the_running_runs_and_marks_nothing_done(fake, tmp_path):
    out = tmp_path / "sweep"
    script = sweep.program("")[1]
    driver = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from experiments import sweep; "
              f"sweep.program = lambda e: [sys.executable, {script!r}]; "
              f"sys.exit(sweep.main(sys.argv))")
    proc = subprocess.Popen([sys.executable, "-c", driver, f"--config={fake}",
                             f"--workdir={out}", "--sweep=lr=0.1,0.2", "--config.sleep=60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "lr=0.1,seed=0" / "output.log"
    deadline = time.time() + 60
    while not (log.exists() and "$ " in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)   # the run's process is up
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert not (out / "lr=0.1,seed=0" / sweep.MARKER).exists()
    assert not launches(out / "lr=0.1,seed=0")        # it never got to the end of its sleep
    assert not (out / "lr=0.2,seed=0").exists()       # and no new run started
