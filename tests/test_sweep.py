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
from experiments.sweeps import results, runner
from train.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAKE_EXPERIMENT = '''
"""Stand-in experiment: the command line of experiments/launch.py, the trainer's workdir lock
and finished record, metrics without training."""
import fcntl, json, os, pathlib, sys, time
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, lock_config=True)
flags.DEFINE_string("workdir", None, "")
FLAGS = flags.FLAGS


def main(argv):
    c, w = FLAGS.config, pathlib.Path(FLAGS.workdir)
    w.mkdir(parents=True, exist_ok=True)
    lock = (w / ".lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"{w} is in use by another run")
    (w / "finished.json").unlink(missing_ok=True)
    (w / "pid").write_text(str(os.getpid()))
    (w / "env.json").write_text(json.dumps(os.environ.get("CUDA_VISIBLE_DEVICES")))
    start = time.time()
    time.sleep(float(os.environ.get("FAKE_SLEEP", c.sleep)))   # the same config, slower
    with (w / "launches.txt").open("a") as f:
        f.write(f"{start} {time.time()}\\n")
    (w / "config.json").write_text(c.to_json_best_effort())
    print("training", c.lr, c.seed)
    if c.fail:
        sys.exit(3)
    rows = [{"step": 1, "split": "train", "time": start, "loss": 9.0},
            {"step": 2, "split": "train", "time": start, "loss": c.lr * 10, "note": "text"},
            {"step": 2, "split": "val", "time": start, "loss": c.lr * 20 + c.seed},
            {"step": 2, "split": "test", "time": start, "accuracy": c.lr + c.seed / 100,
             "task": "t", "ok": True}]
    (w / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
    (w / "finished.json").write_text(json.dumps({"step": 2, "time": start + 1.5, "params": 7}))


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
    monkeypatch.setattr(runner, "program", lambda experiment: [sys.executable, str(script)])
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


def marker(run_dir) -> dict:
    return json.loads((pathlib.Path(run_dir) / runner.MARKER).read_text())


def start_sweep(config, workdir, *flags, **env) -> subprocess.Popen:
    """The sweep in a process of its own, running the stand-in experiment."""
    script = runner.program("")[1]
    driver = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from experiments import sweep; "
              f"from experiments.sweeps import runner; "
              f"runner.program = lambda e: [sys.executable, {script!r}]; "
              f"sys.exit(sweep.main(sys.argv))")
    return subprocess.Popen([sys.executable, "-c", driver, f"--config={config}",
                             f"--workdir={workdir}", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def wait_for_pid(run_dir, proc, timeout=60) -> int:
    """The pid of the run's experiment process, once it is up."""
    deadline = time.time() + timeout
    while not (run_dir / "pid").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    time.sleep(0.2)
    return int((run_dir / "pid").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie has died; its parent has not reaped it
        return f.read().split(") ", 1)[1][0] != "Z"


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


def fake_run(run_dir, rows, finished=None):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished is not None:
        (run_dir / "finished.json").write_text(json.dumps(finished))


def grid(tmp_path, lrs, seeds, **fixed):
    """Runs of an lr axis with their parsed configs (a plain dict stands in for config.json)."""
    runs = sweep.make_grid([sweep.axis_from_flag(f"train.lr={lrs}")], seeds, {}, "pretrain_lm",
                           "c.py:p", tmp_path)
    for r in runs:
        r.workdir = tmp_path / r.name
        r.requested = {"train": {"lr": float(r.values["train.lr"]), **fixed},
                       "seed": int(r.values["seed"])}
    return runs


def test_results_csv_summary_and_plot_from_run_dirs(tmp_path):
    runs = grid(tmp_path, "0.1,0.01", [0, 1])
    for i, run in enumerate(runs):
        fake_run(tmp_path / run.name, [
            {"step": 0, "split": "val", "time": 100.0, "loss": 9.0},
            {"step": 5, "split": "train", "time": 102.0, "loss": 5.0 + i, "lr": 0.1, "ok": True},
            {"step": 10, "split": "train", "time": 103.0, "loss": None if i == 3 else 4.0 + i},
            {"step": 10, "split": "val", "time": 104.0, "loss": 3.0 + i, "bleu": 20.0 + 10 * i},
            {"step": 10, "split": "test", "time": 105.0, "accuracy": 0.5 + 0.2 * i,
             "task": "sst2"}], finished={"step": 10, "time": 110.0 + i, "params": 1234})
    res = {r.name: sweep.run_result(r.workdir) for r in runs[:3]}   # run 4 did not finish
    table = sweep.results_table(runs, res)
    sweep.write_results(tmp_path / "results.csv", table)
    header, rows = read_csv(tmp_path / "results.csv")
    assert header == ["train.lr", "seed", "run", "params", "wall_s", "train/loss", "train/lr",
                      "val/loss", "val/loss:best", "val/loss:best_step", "val/bleu",
                      "test/accuracy"]
    assert rows == [
        ["0.1", "0", "train.lr=0.1,seed=0", "1234", "10", "4", "0.1", "3", "3", "10", "20",
         "0.5"],
        ["0.1", "1", "train.lr=0.1,seed=1", "1234", "11", "5", "0.1", "4", "4", "10", "30",
         "0.7"],
        ["0.01", "0", "train.lr=0.01,seed=0", "1234", "12", "6", "0.1", "5", "5", "10", "40",
         "0.9"]]
    status = {r.name: "done" for r in runs[:3]} | {runs[3].name: "failed: exit 1"}
    assert sweep.write_summary(tmp_path, "# t", table, status) == "test/accuracy"
    md = (tmp_path / "summary.md").read_text()
    assert ("| train.lr | n | test/accuracy | val/loss | val/loss:best | val/bleu | train/loss "
            "| train/lr | params | wall_s |") in md
    assert "| 0.1 | 2 | 0.6 ± 0.14 | 3.5 ± 0.71 | 3.5 ± 0.71 | 25 ± 7.1 |" in md   # sample std
    assert "| 0.01 | 1 | 0.9 | 5 | 5 | 40 |" in md
    assert "train.lr=0.01,seed=1`: failed: exit 1" in md
    assert (tmp_path / "summary.png").stat().st_size > 5000
    assert sweep.main_metric(table.metrics, "bleu") == "val/bleu"
    assert sweep.main_metric(table.metrics, "train/loss") == "train/loss"
    with pytest.raises(sweep.SweepError, match="no such metric"):
        sweep.main_metric(table.metrics, "f1")


def test_results_keep_the_best_of_each_evaluated_metric_and_its_step(tmp_path):
    fake_run(tmp_path / "r", [
        {"step": 0, "split": "val", "time": 0.0, "loss": 3.0, "accuracy": 0.1},
        {"step": 100, "split": "val", "time": 1.0, "loss": 1.23456, "accuracy": 0.6},
        {"step": 200, "split": "val", "time": 2.0, "loss": 1.5, "accuracy": 0.6},
        {"step": 300, "split": "val", "time": 3.0, "loss": 2.0, "accuracy": 0.4},
        {"step": 300, "split": "test", "time": 4.0, "error_rate": 0.25}],
        finished={"step": 300, "time": 12345.678, "params": 123456789})
    values = sweep.run_result(tmp_path / "r").values
    assert values["val/loss"] == 2.0 and values["val/loss:best"] == 1.23456   # lower: a loss
    assert values["val/loss:best_step"] == 100
    assert values["val/accuracy:best"] == 0.6 and values["val/accuracy:best_step"] == 100
    assert values["params"] == 123456789 and values["wall_s"] == 12345.678
    assert [results.fmt(x) for x in (1.23456, 12345.678, 123456789, 0.000123456, 2.0, None)] \
        == ["1.235", "12350", "123456789", "0.0001235", "2", ""]
    assert results.lower_is_better("val/nll") and not results.lower_is_better("val/f1")
    assert results.lower_is_better("test/error_rate")


def test_summary_of_two_settings_by_three_seeds(fake, tmp_path):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.2,0.1", "--seeds=3", "--parallel=3",
                     "--config.label=quoted value") == 0
    md = (out / "summary.md").read_text().splitlines()
    assert md[0].startswith("# Sweep of pretrain_lm")
    assert md[2] == (f"    python -m experiments.sweep --config={fake} --workdir={out} "
                     f"--sweep=lr=0.2,0.1 --seeds=3 --parallel=3 '--config.label=quoted value'")
    rows = [line for line in md if line.startswith("| 0.")]
    # In the sweep's order (0.2 first); test/accuracy = lr + seed/100 over seeds 0, 1, 2.
    assert rows[0].startswith("| 0.2 | 3 | 0.21 ± 0.01 | 5 ± 1 | 2 ± 0 |")
    assert rows[1].startswith("| 0.1 | 3 | 0.11 ± 0.01 | 3 ± 1 | 1 ± 0 |")
    assert rows[0].endswith("| 7 ± 0 | 1.5 ± 0 |")   # params and wall time: finished.json
    assert "mean ± standard deviation over the setting's n seeds (sample std)" in "\n".join(md)


def test_the_plot_draws_std_error_bars_on_a_log_axis_for_learning_rates(tmp_path):
    runs = grid(tmp_path, "1e-4,1e-3,1e-2", [0, 1])
    for i, run in enumerate(runs):
        fake_run(run.workdir, [{"step": 1, "split": "test", "time": 0.0, "loss": 1.0 + i}],
                 finished={"step": 1, "time": 1.0})
    table = sweep.results_table(runs, {r.name: sweep.run_result(r.workdir) for r in runs})
    fig = results.summary_figure(table, "test/loss")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    (bars,) = ax.containers   # one line (one setting of the other axes), with error bars
    assert list(bars.lines[0].get_ydata()) == [1.5, 3.5, 5.5]
    segments = bars.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([2 ** 0.5] * 3)  # ±1 sample std
    lin = grid(tmp_path / "lin", "0.1,0.2", [0])
    for run in lin:
        fake_run(run.workdir, [{"step": 1, "split": "test", "loss": 1.0}], finished={"step": 1})
    table = sweep.results_table(lin, {r.name: sweep.run_result(r.workdir) for r in lin})
    assert results.summary_figure(table, "test/loss").axes[0].get_xscale() == "linear"


def test_results_name_the_config_keys_that_vary(fake, tmp_path):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--name=ablation") == 0
    header, rows = read_csv(out / "results.csv")
    assert header[:6] == ["setting", "label", "seed", "lr", "init_from", "run"]
    assert rows[0][:6] == ["scratch", "a", "0", "0.1", "", "setting=scratch,label=a,seed=0"]
    assert rows[-1][3:5] == ["0.01", str(out / "pretrain")]


def test_report_scripts_read_results_csv_and_find_run_directories(fake, tmp_path):
    from experiments import convnet_figures
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1,0.2", "--sweep=label=x,y", "--seeds=2") == 0
    rows = sweep.read_results(out)
    assert sweep.read_results(out / "results.csv") == rows and len(rows) == 8
    assert results.run_dir(out, rows[-1], ["lr", "label"]) == out / "lr=0.2,label=y,seed=1"
    old_style = {k: v for k, v in rows[-1].items() if k != "run"}   # before the `run` column
    assert results.run_dir(out, old_style, ["lr", "label"]) == out / "lr=0.2,label=y,seed=1"
    assert results.mean_of(rows[:2], "test/accuracy") == pytest.approx(0.105)
    for r in rows:
        r.update(start="scratch", **{"data.per_class": r["label"]})
    shots, table = convnet_figures.transfer_table(rows)
    assert shots == ["x", "y"] and table["scratch"]["x"] == pytest.approx(0.155)


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
    assert header == ["lr", "seed", "run", "params", "wall_s", "train/loss", "val/loss",
                      "test/accuracy"]
    assert [r[:2] for r in rows] == [["0.1", "10"], ["0.1", "11"], ["0.2", "10"], ["0.2", "11"]]
    assert [float(r[-1]) for r in rows] == pytest.approx([0.2, 0.21, 0.3, 0.31])
    assert "| 0.2 | 2 | 0.305 ± 0.0071 |" in (out / "summary.md").read_text()
    assert (out / "summary.png").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.parent != out}

    monkeypatch.setattr(runner.subprocess, "Popen", no_launch)
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
    assert "done" not in marker(out / "fail=True,lr=0.1,seed=0")
    # Again: the finished runs are skipped, the failed ones run (and fail) again.
    assert run_sweep(fake, out, "--sweep=fail=True,False", "--sweep=lr=0.1,0.2") == 1
    assert len(launches(out / "fail=False,lr=0.1,seed=0")) == 1
    assert len(launches(out / "fail=True,lr=0.1,seed=0")) == 2


def test_a_changed_sweep_does_not_reuse_old_runs(fake, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1") == 0
    monkeypatch.setattr(runner.subprocess, "Popen", no_launch)
    assert run_sweep(fake, out, "--sweep=lr=0.1", "--config.init_from=elsewhere") == 2
    assert "lr=0.1,seed=0: init_from: '' -> 'elsewhere'" in capsys.readouterr().err


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
    monkeypatch.setattr(runner.subprocess, "Popen", no_launch)
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


# ----------------------------------------------------------------------------- reliability


def test_a_changed_base_config_refuses_the_old_runs_or_reruns_them(fake, tmp_path, monkeypatch,
                                                                    capsys):
    """A rerun without a --config.* flag that made the runs does not report them as done."""
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1,0.2", "--config.label=y") == 0
    (out / "results.csv").write_text("kept\n")
    (out / "summary.md").write_text("kept\n")
    with monkeypatch.context() as m:
        m.setattr(runner.subprocess, "Popen", no_launch)
        assert run_sweep(fake, out, "--sweep=lr=0.1,0.2") == 2
    err = capsys.readouterr().err
    assert "lr=0.1,seed=0: label: 'y' -> 'x'" in err and "--rerun_changed" in err
    assert (out / "results.csv").read_text() == (out / "summary.md").read_text() == "kept\n"
    # A directory the sweep did not launch (no record) is compared through its config.json.
    (out / "lr=0.2,seed=0" / runner.MARKER).unlink()
    run = sweep.plan(["sweep", f"--config={fake}", f"--workdir={out}", "--sweep=lr=0.2"]).runs[0]
    assert runner.conflicts(run) == ["label: 'y' -> 'x'"]
    assert run_sweep(fake, out, "--sweep=lr=0.1,0.2", "--rerun_changed") == 0
    assert len(launches(out / "lr=0.1,seed=0")) == 1      # a fresh directory, run once
    assert json.loads((out / "lr=0.1,seed=0" / "config.json").read_text())["label"] == "x"


def test_an_interrupted_run_with_a_test_row_is_not_finished(fake, tmp_path):
    """Finished means the trainer wrote finished.json, not that metrics.jsonl has a test row."""
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1") == 0
    run = sweep.plan(["sweep", f"--config={fake}", f"--workdir={out}", "--sweep=lr=0.1"]).runs[0]
    assert sweep.is_finished(run)
    (run.workdir / "finished.json").unlink()      # as if killed after its final test row
    m = marker(run.workdir)
    del m["done"]
    (run.workdir / runner.MARKER).write_text(json.dumps(m))
    assert any(r["split"] == "test" for r in read_metrics(run.workdir))
    assert not sweep.is_finished(run)
    assert run_sweep(fake, out, "--sweep=lr=0.1") == 0   # so the rerun runs it again
    assert len(launches(run.workdir)) == 2 and sweep.is_finished(run)


def test_a_run_exiting_0_without_its_finished_record_failed(fake, tmp_path, monkeypatch, capsys):
    script = pathlib.Path(runner.program("")[1])
    script.write_text(script.read_text().replace('(w / "finished.json").write_text', 'print'))
    assert run_sweep(fake, tmp_path / "s", "--sweep=lr=0.1") == 1
    assert "exit 0 without the trainer's finished.json" in capsys.readouterr().err


def test_a_run_dies_with_its_sweep_and_the_rerun_waits_for_its_lock(fake, tmp_path):
    """SIGKILL of the sweep: its run gets SIGTERM from the kernel (it would checkpoint and
    stop) instead of running on as an orphan; a rerun waits for a workdir lock still held."""
    out = tmp_path / "sweep"
    proc = start_sweep(fake, out, "--sweep=lr=0.1", FAKE_SLEEP="60")
    pid = wait_for_pid(out / "lr=0.1,seed=0", proc)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    # An orphan that still holds the run's lock for a while (one saving its checkpoint).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(2)"), str(out / "lr=0.1,seed=0" / ".lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    rerun = start_sweep(fake, out, "--sweep=lr=0.1")
    stdout, stderr = rerun.communicate(timeout=60)
    holder.wait()
    assert rerun.returncode == 0, stdout + stderr
    assert "waiting for the process that holds its workdir" in stdout


def test_a_second_sweep_in_one_directory_is_refused_and_writes_nothing(fake, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1") == 0
    before = {n: (out / n).read_bytes() for n in ("results.csv", "summary.md")}
    with runner.SweepLock(out):   # another sweep holds the directory
        assert run_sweep(fake, out, "--sweep=lr=0.1,0.2") == 2
    err = capsys.readouterr().err
    assert f"in use by another sweep (pid {os.getpid()} since" in err
    assert len(err.strip().splitlines()) == 1
    assert {n: (out / n).read_bytes() for n in before} == before
    assert not (out / "lr=0.2,seed=0").exists()


def test_one_value_twice_on_an_axis_is_refused(fake, tmp_path, capsys):
    assert run_sweep(fake, tmp_path / "s", "--sweep=lr=0.1,1e-1") == 2
    err = capsys.readouterr().err.strip()
    assert err == ("sweep: lr=0.1 and lr=1e-1 are the same setting (one config); list each "
                   "value once")
    assert not (tmp_path / "s").exists()


def test_parallel_runs_get_their_own_gpus(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "accelerators", lambda: ("gpu", ["0", "1", "2", "3"]))
    out = tmp_path / "sweep"
    assert run_sweep(fake, out, "--sweep=lr=0.1,0.2", "--parallel=2", "--config.sleep=1") == 0
    seen = {json.loads((out / f"lr={lr},seed=0" / "env.json").read_text()) for lr in (0.1, 0.2)}
    assert seen == {"0,1", "2,3"}
    assert run_sweep(fake, tmp_path / "s3", "--sweep=lr=0.1", "--parallel=3") == 2
    assert "--parallel=3 does not divide this machine's 4 GPUs" in capsys.readouterr().err
    monkeypatch.setattr(runner, "accelerators", lambda: ("tpu", ["/dev/accel0"]))
    assert run_sweep(fake, tmp_path / "t", "--sweep=lr=0.1", "--parallel=2") == 2
    assert "share this machine's 1 TPU chips" in capsys.readouterr().err
    monkeypatch.setattr(runner, "accelerators", lambda: ("cpu", []))
    assert runner.device_slots(3) == [{}, {}, {}]


def test_accelerators_follow_the_environment(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runner.accelerators() == ("cpu", [])
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert runner.accelerators() == ("gpu", ["2", "3"])


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
    assert header[2:5] == ["run", "params", "wall_s"]
    assert all(c.split("/")[0] in ("train", "val", "test") for c in header[5:])
    assert {"val/loss:best", "val/loss:best_step"} <= set(header)   # val at steps 0, 2, 4
    assert all(int(r[3]) > 1000 and float(r[4]) > 0 for r in rows)    # params, wall time
    assert "| train.lr | n | test/loss |" in (out / "summary.md").read_text()
    assert (out / "summary.png").exists()
    run = out / "train.lr=0.01,seed=0"
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01
    assert list(run.glob("events.out.tfevents.*"))
    assert json.loads((run / "finished.json").read_text())["step"] == 4
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(runner.subprocess, "Popen", no_launch)
    assert sweep.main(cmd[2:]) == 0   # all finished: nothing runs


def test_sigterm_stops_the_running_runs_and_marks_nothing_done(fake, tmp_path):
    out = tmp_path / "sweep"
    proc = start_sweep(fake, out, "--sweep=lr=0.1,0.2", "--config.sleep=60")
    wait_for_pid(out / "lr=0.1,seed=0", proc)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert "done" not in marker(out / "lr=0.1,seed=0")
    assert not launches(out / "lr=0.1,seed=0")        # it never got to the end of its sleep
    assert not (out / "lr=0.2,seed=0").exists()       # and no new run started
