"""GPT-1 fine-tuning: L3's value, the task heads' symmetries, a micro end-to-end transfer run."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from data import code_tasks, gpt1_inputs
from experiments.configs import gpt1
from models import gpt, gpt_tasks
from train import objectives

ROOT = pathlib.Path(__file__).resolve().parents[1]
SP = gpt1_inputs.Specials(start=61, delim=62, extract=63)
CFG = gpt.GPTConfig(vocab_size=64, n_ctx=32, n_layer=2, n_head=2, d_model=16, dropout=0.0,
                    attn_dropout=0.0)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_l3_is_l2_plus_lambda_l1_on_the_task_inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3)).astype(np.float32)
    labels = np.array([2, 0])
    tokens = rng.integers(0, 10, size=(2, 1, 5))
    lengths = np.array([[5], [3]])
    lm_logits = rng.normal(size=(2, 1, 5, 10)).astype(np.float32)
    l2 = -np.mean(log_softmax(logits)[np.arange(2), labels])
    nll = [-log_softmax(lm_logits[i, 0, t])[tokens[i, 0, t + 1]]
           for i in range(2) for t in range(lengths[i, 0] - 1)]    # 4 + 2 predicted tokens
    l1 = np.mean(nll)
    l3, got_l2, got_l1 = objectives.auxiliary_loss(logits, labels, lm_logits, tokens, lengths,
                                                   0.5)
    np.testing.assert_allclose([got_l2, got_l1, l3], [l2, l1, l2 + 0.5 * l1], rtol=1e-5)
    assert np.isclose(objectives.supervised_loss(logits, labels), l2, rtol=1e-5)


def encode(kind, records):
    chars = lambda texts: [[ord(c) % 60 for c in t] for t in texts]  # noqa: E731
    out = gpt1_inputs.encode_split(kind, records, chars, CFG.n_ctx, SP)
    return jnp.asarray(out["tokens"]), jnp.asarray(out["lengths"])


def init(kind, num_classes, tokens, lengths):
    model = gpt_tasks.GPTForTasks(CFG, kind=kind, num_classes=num_classes)
    return model, model.init(jax.random.key(0), tokens, lengths)


def test_similarity_logits_do_not_depend_on_the_order_of_the_texts():
    pair = {"text1": "def f(x): return x", "text2": "y = f(2) + 1", "label": 0}
    swapped = {**pair, "text1": pair["text2"], "text2": pair["text1"]}
    tokens, lengths = encode("similarity", [pair, swapped])
    model, variables = init("similarity", 2, tokens, lengths)
    logits, _ = model.apply(variables, tokens, lengths)
    np.testing.assert_array_equal(logits[0], logits[1])
    one_order, _ = model.apply(variables, tokens[:, :1], lengths[:, :1])
    assert not np.allclose(one_order[0], one_order[1])   # each order alone does differ


def test_multiple_choice_gives_one_score_per_answer():
    record = {"context": "for i in range(3):", "answers": ["    pass", "x = 1", "    print(i)"],
              "label": 2}
    permuted = {**record, "answers": [record["answers"][k] for k in (2, 0, 1)]}
    tokens, lengths = encode("multiple_choice", [record, permuted])
    model, variables = init("multiple_choice", 3, tokens, lengths)
    logits, lm_logits = model.apply(variables, tokens, lengths)
    assert logits.shape == (2, 3) and lm_logits.shape == (*tokens.shape, CFG.vocab_size)
    np.testing.assert_allclose(logits[1], logits[0][jnp.array([2, 0, 1])], atol=1e-6)


def test_extract_state_ignores_padding():
    tokens, lengths = encode("classification", [{"text": "import os", "label": 1}])
    model, variables = init("classification", 3, tokens, lengths)
    padded = jnp.pad(tokens, ((0, 0), (0, 0), (0, 7)), constant_values=5)
    a, _ = model.apply(variables, tokens, lengths)
    b, _ = model.apply(variables, padded, lengths)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_init_from_grows_the_embedding_for_the_task_tokens():
    """A pretrained decoder's rows load; the rows of the added start/delimiter/extract tokens
    and the new head keep their fresh initialisation; any other shape change is named."""
    from train import init_from
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)   # noqa: E731
    target = {"wte/embedding": sds(64, 16), "h_0/ln_1/scale": sds(16), "head/W_y/kernel": sds(16, 2)}
    source = {"wte/embedding": sds(60, 16), "h_0/ln_1/scale": sds(16)}
    load, problems = init_from.plan(target, source, "(?!head/).*")
    assert set(load) == {"wte/embedding", "h_0/ln_1/scale"} and not problems
    _, problems = init_from.plan(target, {**source, "h_0/ln_1/scale": sds(8)}, "(?!head/).*")
    assert problems == ["mis-shaped h_0/ln_1/scale: source (8,), model (16,)"]


def test_transfer_table_is_mean_and_std_over_seeds(tmp_path):
    """Cells are mean ± sample std over seeds; L3 - L2 pairs the two settings by seed."""
    from experiments import gpt1_transfer
    fields = ["task", "setting", "seed", "test/accuracy", "test/chance"]
    acc = {("scratch_l2", "0"): 0.5, ("scratch_l2", "1"): 0.7,
           ("pretrained_l2", "0"): 0.6, ("pretrained_l2", "1"): 0.8,
           ("pretrained_l3", "0"): 0.7, ("pretrained_l3", "1"): 0.8}
    with (tmp_path / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for (setting, seed), a in acc.items():
            w.writerow({"task": "claims", "setting": setting, "seed": seed,
                        "test/accuracy": a, "test/chance": 0.5})
    table = gpt1_transfer.write_table(*gpt1_transfer.read_table(tmp_path), tmp_path)
    # scratch 60 ± 14.1, pretrained L2 70 ± 14.1, L3 75 ± 7.1; L3 - L2 per seed +10, 0.
    assert ("| claims | entailment | 50.0 | 60.0 ± 14.1 | 70.0 ± 14.1 | 75.0 ± 7.1 | "
            "5.0 ± 7.1 |") in table
    assert "over 2 fine-tuning seed(s)" in (tmp_path / "transfer.md").read_text()
    assert gpt1.SWEEPS["transfer"]["seeds"] >= 5


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    """python -m experiments.gpt1_transfer with the micro preset (seconds)."""
    workdir = tmp_path_factory.mktemp("transfer")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.gpt1_transfer",
         "--config=experiments/configs/gpt1.py:transfer-micro", f"--workdir={workdir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_transfer_writes_the_table(transfer_run):
    workdir, proc = transfer_run
    with (workdir / "results.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:3] == ["task", "setting", "seed"]
    assert {"test/accuracy", "val/accuracy", "test/chance"} <= set(reader.fieldnames)
    assert [(r["task"], r["setting"]) for r in rows] == [
        ("package", s) for s in ("scratch_l2", "pretrained_l2", "pretrained_l3")]
    assert all(0.0 <= float(r["test/accuracy"]) <= 1.0 for r in rows)
    assert (workdir / "transfer.png").stat().st_size > 0
    assert "pretrained, L3" in (workdir / "transfer.md").read_text()
    assert "| package | classification |" in proc.stdout
    run = json.loads((workdir / "task=package,setting=pretrained_l3,seed=0" / "config.json"
                      ).read_text())
    assert run["init_from"].endswith("pretrain") and run["lam"] == 0.5
    assert run["train"]["steps"] == 3


def test_transfer_resumes_without_retraining(transfer_run):
    workdir, _ = transfer_run
    before = (workdir / "results.csv").read_text()
    logs = {p: p.stat().st_mtime_ns for p in workdir.glob("*/metrics.jsonl")}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.gpt1_transfer",
         "--config=experiments/configs/gpt1.py:transfer-micro", f"--workdir={workdir}"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "results.csv").read_text() == before
    assert len(logs) == 4 and {p: p.stat().st_mtime_ns for p in logs} == logs   # no run ran


def test_finetune_a_hub_task_from_local_files(transfer_run, tmp_path):
    from experiments import finetune_gpt
    workdir, _ = transfer_run
    rows = [{"sentence": s, "label": i % 2, "idx": i}
            for i, s in enumerate(["a fine film", "dull", "great fun", "boring"] * 4)]
    files = {}
    for split in ("train", "validation"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = gpt1.get_config("finetune")
    config.update(task="sst2", init_from=str(workdir / "pretrain"), lam=0.5, max_len=32,
                  hub_data_files=",".join(f"{k}={v}" for k, v in files.items()))
    config.train.update(steps=2, batch_size=4, warmup_steps=1)
    finetune_gpt.main(config, tmp_path / "sst2")
    metrics = [json.loads(line) for line in (tmp_path / "sst2" / "metrics.jsonl").open()]
    assert {"val", "test", "train"} <= {m["split"] for m in metrics}
    test = [m for m in metrics if m["split"] == "test" and "accuracy" in m]
    assert len(test) == 1 and 0.0 <= test[0]["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "sst2" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 512 + 3     # the pretrained BPE + the task tokens
