"""What a run leaves for its readers: metrics.jsonl read by one jax-free reader (a cut-short last
line dropped with a warning, a bad line elsewhere an error), and finished.json, written by fit
at its successful end and removed when it trains again."""

import json
import subprocess
import sys

import pytest

from test_trainer import ROOT, Batches, linear_config, linear_task
from train.logging import MetricWriter
from train.metrics import FINISHED, MetricsError, read_finished, read_metrics
from train.trainer import fit

ROWS = [{"step": 1, "split": "train", "time": 0.0, "loss": 2.0},
        {"step": 2, "split": "train", "time": 1.0, "loss": 1.5},
        {"step": 3, "split": "train", "time": 2.0, "loss": 1.0}]


def write_lines(tmp_path, text: str):
    (tmp_path / "metrics.jsonl").write_text(text)


def lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_cut_short_last_line_is_dropped_with_one_warning(tmp_path, capsys):
    write_lines(tmp_path, lines(ROWS) + '{"step": 4, "split": "tra')
    assert read_metrics(tmp_path) == ROWS
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "metrics.jsonl") in err[0]
    assert "cut-short last line" in err[0]


def test_a_bad_line_in_the_middle_names_the_file_and_line(tmp_path):
    write_lines(tmp_path, lines(ROWS[:1]) + "{garbage\n" + lines(ROWS[1:]))
    with pytest.raises(MetricsError, match=rf"{tmp_path / 'metrics.jsonl'}:2: not a JSON row"):
        read_metrics(tmp_path)


def test_no_metrics_yet_is_no_rows(tmp_path):
    assert read_metrics(tmp_path) == []


def test_resume_after_a_torn_write_drops_the_fragment(tmp_path, capsys):
    """The resume's truncation reads through the same reader and rewrites the file, so the next
    row does not land on the fragment's line."""
    write_lines(tmp_path, lines(ROWS) + '{"step": 4, "split": "tra')
    with MetricWriter(tmp_path) as w:
        w.truncate_after(2)
        w.write(3, "train", loss=0.5)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 2.0), (2, 1.5),
                                                                        (3, 0.5)]
    assert "metrics.jsonl: dropped its cut-short last line" in capsys.readouterr().err


def test_the_reader_does_not_import_jax():
    code = ("import sys; from experiments import sweep; from train.metrics import read_metrics; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_fit_writes_the_finished_record_at_its_end_and_removes_it_to_train(tmp_path):
    init, loss_fn = linear_task()
    state = fit(linear_config(steps=4), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
                train_data=Batches())
    record = read_finished(tmp_path)
    assert record["step"] == 4 and record["params"] == 5          # Dense(1) on 4 inputs
    assert record["time"] >= read_metrics(tmp_path)[-1]["time"]   # after the final rows
    # Finished already: a rerun keeps the record (and its time).
    fit(linear_config(steps=4), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
        train_data=Batches())
    assert read_finished(tmp_path) == record
    # More steps: training again, the record goes until the new end.
    (tmp_path / FINISHED).write_text(json.dumps(dict(record, time=0.0)))
    seen = []

    class Watch(Batches):
        def __next__(self):
            seen.append((tmp_path / FINISHED).exists())
            return super().__next__()

    fit(linear_config(steps=6), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
        train_data=Watch())
    assert seen and not any(seen)
    assert read_finished(tmp_path)["step"] == 6 and int(state.step) == 4
