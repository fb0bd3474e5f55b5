"""In-context learning in miniature: the task family, its pretraining mixture, the few-shot
prompt layout and the few-shot evaluator."""

import json
import types

import jax
import ml_collections
import numpy as np
import pytest

pytest.importorskip("num2words")

from data import icl_tasks, text  # noqa: E402
from data.tokenizer import train_bpe  # noqa: E402
from train import evaluators  # noqa: E402
from train.evaluators.fewshot import fewshot_metrics  # noqa: E402

SMALL = dict(train_chars=120_000, val_chars=20_000)


def small(**kw):
    return ml_collections.ConfigDict({**icl_tasks._DEFAULTS, **SMALL, **kw})


@pytest.fixture(scope="module")
def corpus():
    return list(icl_tasks.mixture(small(), "train"))


def lines_of(task, items):
    return {f"{s}{icl_tasks.ARROW} {t}\n" for s, t in map(task.pair, items)}


def test_tasks_in_gpt3_format():
    task = icl_tasks.TASKS["en_fr"]
    assert task.pair(42) == ("forty-two", "quarante-deux")
    assert icl_tasks.TASKS["reverse"].pair("cheese") == ("cheese", "eseehc")
    assert icl_tasks.TASKS["upper"].pair("cheese") == ("cheese", "CHEESE")
    assert icl_tasks.TASKS["en_digits"].pair(42) == ("forty-two", "42")
    assert icl_tasks.task_list(task, [task.pair(3), task.pair(42)]) == (
        "Translate English to French:\nthree => trois\nforty-two => quarante-deux\n")


def test_items_split_and_episodes_are_deterministic_and_disjoint():
    cfg = small()
    for kind in ("number", "word"):
        train, held = icl_tasks.split_items(kind, cfg)
        assert not set(train) & set(held) and len(held) == round(0.1 * len(train + held))
        assert (train, held) == icl_tasks.split_items(kind, small())
        assert held != icl_tasks.split_items(kind, small(seed=1))[1]
    a, b = icl_tasks.episodes(cfg, 4, True, 3), icl_tasks.episodes(cfg, 4, True, 3)
    assert a == b and {e.group for e in a} == {"items", "tasks"}
    held_numbers = set(icl_tasks.split_items("number", cfg)[1])
    en_fr = icl_tasks.TASKS["en_fr"]
    for e in a:
        if e.task == "en_fr":     # queries on held-out items, examples never the query
            query = e.prompt.rsplit("\n", 1)[1]
            assert any(query == f"{en_fr.source(n)} =>" and e.answer == en_fr.target(n)
                       for n in held_numbers)
            assert f"\n{query} " not in e.prompt
    # The k examples are the first k of the 16-shot draw: the curves compare like with like.
    k16 = icl_tasks.episodes(cfg, 16, False, 3)
    k2 = icl_tasks.episodes(cfg, 2, False, 3)
    for e2, e16 in zip(k2, k16):
        shots = e2.prompt.split("\n")[:2]
        assert e16.prompt.split("\n")[:2] == shots and e2.answer == e16.answer


def test_heldout_items_and_tasks_never_in_pretraining(corpus):
    cfg = small()
    texts = "".join(d["text"] for d in corpus)
    seen, held_tasks = icl_tasks.seen_task_names(cfg), icl_tasks.heldout_task_names(cfg)
    assert held_tasks == ["digits_en", "fr_en", "copy"] and len(seen) == 6
    pretraining_lines = set()
    for name in seen:      # the tasks are there, on their pretraining items only
        task = icl_tasks.TASKS[name]
        train, held = icl_tasks.split_items(task.kind, cfg)
        pretraining_lines |= lines_of(task, train)
        assert task.description in texts
        assert any(line in texts for line in lines_of(task, train))
        assert not [line for line in lines_of(task, held) if line in texts]
    for name in held_tasks:
        task = icl_tasks.TASKS[name]
        assert task.description not in texts
        # (a line may coincide with a pretraining task's: French "six" is English "six")
        lines = lines_of(task, icl_tasks.items_of(task.kind, cfg)) - pretraining_lines
        assert len(lines) > 90 and not [line for line in lines if line in texts]
    # The same holds in the other splits, and through data.source="icl".
    data = ml_collections.ConfigDict(dict(source="icl", icl=small()))
    val = "".join(text.load_texts(data, "val"))
    assert "Translate English to French:" in val and "Repeat the word:" not in val


def test_mixture_weights_are_respected():
    docs = list(icl_tasks.mixture(small(task_weight=1.0, text_weight=3.0), "val"))
    chars = {s: sum(len(d["text"]) for d in docs if d["source"] == s) for s in ("tasks", "text")}
    total = sum(chars.values())
    assert total >= 20_000 and total - max(len(d["text"]) for d in docs) < 20_000
    assert chars["tasks"] / total == pytest.approx(0.25, abs=0.03)
    only_text = list(icl_tasks.mixture(small(task_weight=0.0), "val"))
    assert {d["source"] for d in only_text} == {"text"}


def test_prompt_layout_is_lm_evals(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("HF_DATASETS_CACHE", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    from lm_eval.tasks import TaskManager
    task = icl_tasks.TASKS["en_de"]
    rows = [dict(zip(("source", "target"), task.pair(n))) for n in (3, 17, 42, 99)]
    for split, part in (("train", rows[:3]), ("test", rows[3:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    config = {
        "task": "icl_layout", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(tmp_path / f"{s}.jsonl")
                                          for s in ("train", "test")}},
        "training_split": "train", "test_split": "test", "fewshot_split": "train",
        "output_type": "generate_until", "description": task.description + "\n",
        "doc_to_text": "{{source}} =>", "doc_to_target": "{{target}}",
        "target_delimiter": " ", "fewshot_delimiter": "\n",
        "fewshot_config": {"sampler": "first_n"},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True}]}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "icl.yaml").write_text(json.dumps(config))
    lm_task = TaskManager(include_path=str(tmp_path / "tasks"),
                          include_defaults=False).load(["icl_layout"])["tasks"]["icl_layout"]
    doc = next(iter(lm_task.test_docs()))
    examples = [task.pair(n) for n in (3, 17, 42)]
    for k in (0, 3):
        assert icl_tasks.prompt(task, examples[:k], "ninety-nine") == \
            lm_task.fewshot_context(doc, k)


def oracle(cfg, shots):
    """Knows every answer: the episodes' own, in the order the evaluator asks (the same
    zero-shot prompt "forty-two =>" has a different answer in each number task)."""
    eps = [e for k in shots for d in (True, False) for e in icl_tasks.episodes(cfg, k, d, 2)]

    def complete(prompts):
        assert prompts == [e.prompt for e in eps]
        return [e.answer for e in eps]
    return complete


def test_oracle_scores_one_and_a_wrong_scorer_zero():
    cfg = small()
    make = lambda k, d: icl_tasks.episodes(cfg, k, d, 2)  # noqa: E731
    m = fewshot_metrics(oracle(cfg, (0, 1, 2)), make, (0, 1, 2), per_task=True,
                        answer_logp=lambda ps, ans: [0.0] * len(ps))
    assert {v for k, v in m.items() if k.endswith("/acc")} == {1.0}
    assert {v for k, v in m.items() if k.endswith("/logp")} == {0.0}
    assert {v for k, v in m.items() if k.endswith("/in_task")} == {1.0}
    for k in (0, 1, 2):
        for head in (f"fewshot/k{k}", f"fewshot/k{k}/nodesc"):
            for key in ("acc", "items/acc", "tasks/acc", "task/copy/acc", "task/en_fr/acc"):
                assert f"{head}/{key}" in m
    wrong = fewshot_metrics(lambda ps: ["?" for _ in ps], make, (0, 4))
    assert set(wrong.values()) == {0.0}
    # Repeating the query is right on the copy task (and wherever an answer is its query).
    eps = make(0, True)
    copy = lambda ps: [p.split("\n")[-1][:-3] for p in ps]  # noqa: E731
    got = fewshot_metrics(copy, make, (0,), per_task=True)
    assert got["fewshot/k0/task/copy/acc"] == 1.0 and got["fewshot/k0/task/en_fr/acc"] == 0.0
    # An answer of the wrong item but the right task counts as in_task, not as correct.
    shifted = lambda ps: [e.answer if e.task != "en_de" else "achtundvierzig"  # noqa: E731
                          for e in eps] * 2   # with and without the description
    kind = fewshot_metrics(shifted, lambda k, d: eps, (0,), per_task=True)
    assert kind["fewshot/k0/task/en_de/acc"] == 0.0
    assert kind["fewshot/k0/task/en_de/in_task"] == 1.0
    assert got["fewshot/k0/acc"] == pytest.approx(
        np.mean([a == e.answer for a, e in zip(copy([e.prompt for e in eps]), eps)]))
    with pytest.raises(ValueError, match="shots"):
        fewshot_metrics(copy, make, ())


def test_evaluator_on_a_tiny_model():
    from experiments import pretrain_lm
    from models import gpt
    cfg_icl = small()
    docs = [d["text"] for d in icl_tasks.mixture(cfg_icl, "val")]
    tokenizer = train_bpe(docs, 320)
    cfg = gpt.GPTConfig(vocab_size=320, n_ctx=128, n_layer=1, n_head=2, d_model=16,
                        dropout=0.0, attn_dropout=0.0)
    params = gpt.GPT(cfg).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    config = ml_collections.ConfigDict(dict(
        data=dict(icl=cfg_icl), train=dict(eval_every=10, eval_steps=1),
        evals=dict(fewshot=evaluators.spec(type="fewshot", split="test", shots=(0, 2),
                                           queries=1))))
    fns = pretrain_lm.icl_eval_fns(cfg, config, tokenizer)
    suite = evaluators.build(config, evaluators.Context(program=None, data={}, fns=fns))
    m = suite.run(types.SimpleNamespace(params=params), step=0, final=True)["test"]
    assert {"fewshot/k0/acc", "fewshot/k2/nodesc/tasks/acc", "fewshot/k2/logp"} <= set(m)
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k.endswith("/acc"))
    # The answer's log-likelihood: the model's own, token by token, after the prompt.
    ep = icl_tasks.episodes(cfg_icl, 2, True, 1)[0]
    head, tail = tokenizer.encode(ep.prompt), tokenizer.encode(f" {ep.answer}\n")
    logits = gpt.GPT(cfg).apply({"params": params}, np.array([head + tail]))[0]
    want = np.mean([jax.nn.log_softmax(logits[len(head) - 1 + i])[t] for i, t in enumerate(tail)])
    got = fns["answer_logp"](params, [ep.prompt, "x"], [ep.answer, "y"])
    assert got[0] == pytest.approx(float(want), abs=1e-4) and got[0] < 0
    too_long = config.copy_and_resolve_references()
    too_long.evals.fewshot.shots = (16,)
    with pytest.raises(ValueError, match="exceed the context"):
        pretrain_lm.icl_eval_fns(cfg, too_long, tokenizer)


def test_preset_and_sweep():
    from experiments.configs import gpt as gpt_configs
    config = gpt_configs.get_config("icl-s")
    assert config.data.source == "icl" and config.evals.fewshot.type == "fewshot"
    assert tuple(config.evals.fewshot.shots) == (0, 1, 2, 4, 8, 16)
    sizes = gpt_configs.SWEEPS["icl"]["size"]
    assert [s["label"] for s in sizes] == ["s", "m", "l"]
    with pytest.raises(ValueError, match="heldout_tasks"):
        icl_tasks.heldout_task_names(small(heldout_tasks="en_fr,klingon"))


def test_report_table_and_figure(tmp_path):
    from experiments import icl_report
    keys = [f"test/fewshot/k{k}{d}/{g}/{m}" for m in ("acc", "logp") for k in (0, 4)
            for d in ("", "/nodesc") for g in ("items", "tasks")]
    rows = [dict(size=s, seed=seed, **{key: str(0.1 * i + 0.01 * seed) for i, key in
                                       enumerate(keys)}) for s in ("s", "l") for seed in (0, 1)]
    with open(tmp_path / "results.csv", "w") as f:
        f.write(",".join(["size", "seed", *keys]) + "\n")
        f.writelines(",".join(str(r[c]) for c in ["size", "seed", *keys]) + "\n" for r in rows)
    ks, curves = icl_report.read(tmp_path / "results.csv", "size")
    assert ks == [0, 4] and curves[("l", False, "tasks")] == {0: pytest.approx(0.305),
                                                              4: pytest.approx(0.705)}
    text = icl_report.table(ks, curves)
    assert "| s | yes | 0.005 | 0.405 |" in text and "| l | no | 0.305 | 0.705 |" in text
    assert icl_report.read(tmp_path / "results.csv", "size", "logp")[1][("s", True, "items")] \
        == {0: pytest.approx(0.805), 4: pytest.approx(1.205)}
    (tmp_path / "size=l,seed=1").mkdir()
    (tmp_path / "size=l,seed=1" / "evaluate-test-200.json").write_text(json.dumps(
        {"step": 200, "split": "test", "fewshot/k0/nodesc/tasks/acc": 0.9}))
    ks, curves = icl_report.read(tmp_path / "results.csv", "size")
    assert curves[("l", False, "tasks")][0] == pytest.approx((0.3 + 0.9) / 2)
    icl_report.plot(tmp_path / "icl.png", ks, {"acc": curves, "logp": curves})
    assert (tmp_path / "icl.png").stat().st_size > 1000
