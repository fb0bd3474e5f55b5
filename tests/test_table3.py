"""experiments/table3.py: Table 3's layout, beam against greedy and the baseline comparison from
a sweep's files (runs written here by hand: nothing is trained)."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from experiments import table3
from experiments.configs import transformer as configs
from test_trainer import ROOT

COLUMNS = ["model.n_head", "seed", "run", "params", "wall_s", "val/perplexity", "val/bleu_beam",
           "test/bleu", "test/bleu_greedy"]


def make_run(sweep: pathlib.Path, name: str, arch: str = "transformer", n_head: int = 4,
             val_bleu=((500, 20.0), (1000, 50.0), (1500, 70.0)), speed=(100.0, 300.0, 200.0)):
    run = sweep / name
    run.mkdir(parents=True)
    config = configs.get_config("sentences")
    config.model.n_head, config.model.arch = n_head, arch
    (run / "config.json").write_text(json.dumps(
        {**json.loads(config.to_json()), "provenance": {"experiment": "experiments.translate"}}))
    rows = [{"step": 50 * (i + 1), "split": "train", "tokens_per_sec": s}
            for i, s in enumerate(speed)]
    rows += [{"step": step, "split": "val", "bleu": b} for step, b in val_bleu]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_results(sweep: pathlib.Path, rows: list[list]) -> None:
    with (sweep / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)


def test_table_has_the_papers_columns_and_mean_and_std_over_seeds(tmp_path):
    sweep = tmp_path / "table3-A"
    for h in (1, 16):
        for seed in (0, 1):
            make_run(sweep, f"model.n_head={h},seed={seed}", n_head=h)
    write_results(sweep, [
        [1, 0, "model.n_head=1,seed=0", 299008, 200, 1.5, 60.0, 61.0, 59.0],
        [1, 1, "model.n_head=1,seed=1", 299008, 200, 1.7, 64.0, 63.0, 61.0],
        [16, 0, "model.n_head=16,seed=0", 299008, 200, 1.4, 70.0, 71.0, 69.0],
        [16, 1, "model.n_head=16,seed=1", 299008, 200, 1.4, 70.0, 73.0, 70.0]])
    out = tmp_path / "fig.png"
    text = table3.table([sweep], out)
    lines = text.splitlines()
    assert lines[0].startswith("| row | N | d_model | d_ff | h | d_k | d_v | P_drop | eps_ls |")
    # h 1: d_k = d_v = 64 / 1; dev PPL 1.6 ± 0.141, dev BLEU 62.0 ± 2.8; beam and greedy apart
    assert lines[2] == ("| A | 2 | 64 | 256 | 1 | 64 | 64 | 0.1 | 0.1 | sinusoidal | 1.600 ± "
                        "0.141 | 62.0 ± 2.8 | 299,008 | 62.0 ± 1.4 | 60.0 ± 1.4 | 2 |")
    assert lines[3].startswith("| A | 2 | 64 | 256 | 16 | 4 | 4 |")
    assert out.stat().st_size > 0
    # the command line writes the same table beside the sweep
    done = subprocess.run([sys.executable, "-m", "experiments.table3", "table",
                           f"--sweep_dirs={sweep}", f"--out={tmp_path / 'cli.png'}"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (sweep / "table3-table.md").read_text() == text + "\n"


def test_steps_to_reach_interpolates_between_evaluations():
    curve = {500: 20.0, 1000: 50.0, 1500: 70.0}
    assert table3.steps_to_reach(curve, 60.0) == pytest.approx(1250.0)
    assert table3.steps_to_reach(curve, 10.0) == 500.0
    assert table3.steps_to_reach(curve, 80.0) is None


def test_baseline_compares_the_models_on_all_the_pairs(tmp_path):
    transformer, rnn = tmp_path / "table3-base_row", tmp_path / "table3-baseline"
    for seed in (0, 1):
        make_run(transformer, f"seed={seed}")
        make_run(rnn, f"model.arch=rnn,seed={seed}", arch="rnn",
                 val_bleu=((500, 10.0), (1000, 30.0), (1500, 55.0)), speed=(50.0, 60.0, 70.0))
    columns = [c for c in COLUMNS if c != "model.n_head"]
    with (transformer / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows([columns, [0, "seed=0", 299008, 1, 1.4, 72, 72, 70],
                                 [1, "seed=1", 299008, 1, 1.4, 70, 70, 68]])
    with (rnn / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["model.arch", *columns],
                                 ["rnn", 0, "model.arch=rnn,seed=0", 310000, 1, 1.6, 65, 65, 64],
                                 ["rnn", 1, "model.arch=rnn,seed=1", 310000, 1, 1.6, 63, 63, 62]])
    text = table3.baseline([transformer, rnn], reach=60.0)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()[2:]}
    # the Transformer reaches 60 at step 1250 in both runs; the recurrent model never does
    assert rows["transformer"] == ("| transformer | 299,008 | 71.0 ± 1.4 | 71.0 ± 1.4 | 200 ± 0 | "
                                   "1250 ± 0 | 2 of 2 | 2 |")
    assert "| 60 ± 0 |  | 0 of 2 | 2 |" in rows["rnn"]


def test_a_sweep_without_results_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the sweep first"):
        table3.runs(tmp_path)
