"""In-context learning in miniature: the task families, their pretraining mixture, the few-shot
prompt layouts and the few-shot evaluator (on an imported GPT-2)."""

import collections
import json
import re
import types

import ml_collections
import numpy as np
import pytest

pytest.importorskip("num2words")

from data import icl_tasks, prompts, text  # noqa: E402
from data.tokenizer import byte_tokenizer  # noqa: E402
from train import evaluators  # noqa: E402
from train.evaluators.fewshot import context_score, fewshot_metrics  # noqa: E402

SMALL = dict(train_chars=150_000, val_chars=20_000)
SCRAMBLES = ("cl", "a1", "a2", "ri", "rw")
ARITHMETIC = ("add2", "sub2", "add3", "sub3", "mul2", "comp1")


def small(**kw):
    return ml_collections.ConfigDict({**icl_tasks._DEFAULTS, **SMALL, **kw})


@pytest.fixture(scope="module")
def corpus():
    return list(icl_tasks.mixture(small(), "train"))


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- tasks


def test_scrambles_are_gpt3s():
    r = rng(3)
    for word in ("objects", "inevitably", "opponent", "succession"):
        cycled = icl_tasks.cycle_letters(word, r)
        assert cycled != word and cycled in word + word and len(cycled) == len(word)
        a1 = icl_tasks.anagram_inside(1)(word, r)
        assert (a1[0], a1[-1], sorted(a1[1:-1])) == (word[0], word[-1], sorted(word[1:-1]))
        a2 = icl_tasks.anagram_inside(2)(word, r)
        assert (a2[:2], a2[-2:], sorted(a2[2:-2])) == (word[:2], word[-2:], sorted(word[2:-2]))
        inserted = icl_tasks.random_insertion(word, r)
        assert inserted[::2] == word and len(inserted) == 2 * len(word) - 1
        assert all(c in icl_tasks.INSERTED for c in inserted[1::2])
        assert icl_tasks.reverse_word(word, r) == word[::-1]
    # Every task line writes the word other than it is, and answers with the word.
    items = icl_tasks.Items(small())
    for name in SCRAMBLES:
        task = icl_tasks.TASKS[name]
        for source, target in (task.pair(r, items, True) for _ in range(50)):
            assert source != target and target in items.words(True)
    task = icl_tasks.TASKS["rw"]
    assert icl_tasks.task_list(task, [("stcejbo", "objects"), ("kcab", "back")]) == (
        "Please unscramble the letters into a word, and write that word:\n"
        "stcejbo = objects\nkcab = back\n")


def _value(question: str) -> int:
    """The arithmetic question's value, by Python (the reference)."""
    expr = re.fullmatch(r"What is (.+)\?", question)[1]
    return eval(expr.replace("plus", "+").replace("minus", "-").replace("times", "*"))


def test_arithmetic_in_gpt3_format():
    items, r = icl_tasks.Items(small()), rng(1)
    digits = {"add2": 2, "sub2": 2, "mul2": 2, "add3": 3, "sub3": 3}
    for name in ARITHMETIC:
        task = icl_tasks.TASKS[name]
        pairs = [task.pair(r, items, False) for _ in range(300)]
        for source, target in pairs:
            assert int(target) == _value(source)
        numbers = [int(n) for s, _ in pairs for n in re.findall(r"\d+", s)]
        if name in digits:     # operands uniform in [0, 10^d): the largest near the top
            assert max(numbers) < 10 ** digits[name] and max(numbers) >= 0.9 * 10 ** digits[name]
        else:
            assert re.fullmatch(r"What is \(\d [-+*] \d\) [-+*] \d\?", pairs[0][0])
    assert any(int(t) < 0 for t in (icl_tasks.TASKS["sub2"].pair(r, items, False)[1]
                                    for _ in range(20)))
    task = icl_tasks.TASKS["add2"]
    assert icl_tasks.task_list(task, [("What is 48 plus 76?", "124"),
                                      ("What is 3 plus 9?", "12")], False) == (
        "Q: What is 48 plus 76? A: 124\nQ: What is 3 plus 9? A: 12\n")
    # Held out by the question (commutative ones in one order): about heldout_frac of them.
    held = [(a, b) for a in range(100) for b in range(100)
            if items.question_held(icl_tasks._canonical(a, "plus", b))]
    assert 0.07 < len(held) / 10_000 < 0.13
    assert all((b, a) in held for a, b in held)


def test_labels_follow_each_prompts_examples():
    """The per-prompt mapping: two prompts pair the word classes with different labels, and
    the answer is the label the prompt's own examples give the query's class."""
    cfg = small()
    eps = [e for e in icl_tasks.episodes(cfg, 8, False, 12) if e.task == "labels"]
    numbers = {icl_tasks._en(n) for n in range(100)}
    mappings = set()
    for e in eps:
        *shots, query = e.prompt.split("\n")
        seen = {}
        for line in shots:
            word, label = line.split(" => ")
            seen.setdefault(word in numbers, set()).add(label)
        assert all(len(labels) == 1 for labels in seen.values())    # one label per class
        query_class = query[:-len(" =>")] in numbers
        if query_class in seen:
            assert {e.answer} == seen[query_class]
        assert e.answer in e.outputs and len(e.outputs) == 2
        if len(seen) == 2:
            mappings.add((*seen[True], *seen[False]))
    assert len(mappings) >= 2          # drawn afresh: prompts differ in their mapping
    # No fixed mapping solves them all: the labels of the first prompt fail on the others.
    first = eps[0]
    copy_first = sum(e.answer == first.answer for e in eps[1:])
    assert copy_first < len(eps) - 2


def test_items_split_and_episodes_are_deterministic_and_disjoint():
    cfg = small()
    for kind in ("number", "word"):
        train, held = icl_tasks.split_items(kind, cfg)
        assert not set(train) & set(held) and len(held) == round(0.1 * len(train + held))
        assert (train, held) == icl_tasks.split_items(kind, small())
        assert held != icl_tasks.split_items(kind, small(seed=1))[1]
    a, b = icl_tasks.episodes(cfg, 4, True, 3), icl_tasks.episodes(cfg, 4, True, 3)
    assert a == b and {e.group for e in a} == {"items", "tasks"}
    assert {e.family for e in a} == {"scramble", "arithmetic", "mapping", "knowledge"}
    held_words = set(icl_tasks.split_items("word", cfg)[1])
    for e in a:
        if e.family == "scramble":          # queries on held-out words, examples never them
            assert e.answer in held_words
            shots = [line.rsplit(" = ", 1)[1] for line in e.prompt.split("\n")[1:-1]]
            assert len(shots) == 4 and not set(shots) & held_words
    # The k examples are the first k of the 16-shot draw: the curves compare like with like.
    k16 = icl_tasks.episodes(cfg, 16, False, 3)
    k2 = icl_tasks.episodes(cfg, 2, False, 3)
    for e2, e16 in zip(k2, k16):
        assert e16.prompt.split("\n")[:2] == e2.prompt.split("\n")[:2]
        assert e2.answer == e16.answer


def test_heldout_items_and_tasks_never_in_pretraining(corpus):
    """No pretraining line has a held-out word, number or arithmetic question as its item,
    in any task; held-out tasks are absent altogether; every pretraining task is there, with
    and without its description, with lists of many lengths."""
    cfg = small()
    items = icl_tasks.Items(cfg)
    held_words = set(items.words(True))
    held_numbers = {icl_tasks._en(n) for n in items.numbers(True)}
    tasks = [d for d in corpus if d["source"] == "tasks"]
    assert {d["task"] for d in tasks} == set(icl_tasks.seen_task_names(cfg))
    lines_per_list = collections.Counter()
    for d in tasks:
        task = icl_tasks.TASKS[d["task"]]
        lines = d["text"].splitlines()
        if lines[0] == task.description:
            lines = lines[1:]
        lines_per_list[len(lines)] += 1
        for line in lines:
            if task.family == "scramble":
                assert line.rsplit(" = ", 1)[1] not in held_words
            elif task.family == "arithmetic":
                q = re.fullmatch(r"Q: What is (.+)\? A: -?\d+", line)[1]
                m = re.fullmatch(r"(\d+) (\w+) (\d+)", q)
                key = icl_tasks._canonical(int(m[1]), m[2], int(m[3])) if m else q
                assert not items.question_held(key), line
            else:
                source = line.split(" => ")[0]
                assert source not in held_words and source not in held_numbers, line
    described = sum(d["text"].startswith(icl_tasks.TASKS[d["task"]].description) for d in tasks)
    assert 0.3 < described / len(tasks) < 0.7
    assert min(lines_per_list) <= 3 and max(lines_per_list) >= 35
    texts = "".join(d["text"] for d in corpus)
    for name in icl_tasks.heldout_task_names(cfg):
        assert icl_tasks.TASKS[name].description not in texts
    # The same through data.source="icl".
    data = ml_collections.ConfigDict(dict(source="icl", icl=small()))
    val = "".join(text.load_texts(data, "val"))
    assert "Please unscramble the letters" in val and "Translate French" not in val


def test_mixture_weights_are_respected():
    docs = list(icl_tasks.mixture(small(task_weight=1.0, text_weight=3.0), "val"))
    chars = {s: sum(len(d["text"]) for d in docs if d["source"] == s) for s in ("tasks", "text")}
    total = sum(chars.values())
    assert total >= 20_000 and total - max(len(d["text"]) for d in docs) < 20_000
    assert chars["tasks"] / total == pytest.approx(0.25, abs=0.03)
    only_text = list(icl_tasks.mixture(small(task_weight=0.0), "val"))
    assert {d["source"] for d in only_text} == {"text"}


# ----------------------------------------------------------------------------- prompt variants


def test_prompt_variants_produce_the_intended_text():
    cfg = small()
    by_layout = {layout: {e.task: e for e in icl_tasks.episodes(cfg, 2, False, 1, layout)}
                 for layout in (None, "arrow", "colon", "qa", "quoted", "json")}
    rw = by_layout[None]["rw"]
    word = rw.answer
    assert rw.prompt.endswith(f"\n{word[::-1]} =") and rw.prompt.count(" = ") == 2
    assert by_layout["arrow"]["rw"].prompt.endswith(f"\n{word[::-1]} =>")
    assert by_layout["colon"]["rw"].prompt.endswith(f"\n{word[::-1]}:")
    assert by_layout["qa"]["rw"].prompt.endswith(f"\nQ: {word[::-1]} A:")
    quoted = by_layout["quoted"]["rw"]
    assert quoted.prompt.endswith(f'\n"{word[::-1]}" =')
    assert quoted.correct(f' "{word}"') and not quoted.correct(f" {word[::-1]}")
    add = by_layout["json"]["add2"]
    header, *shots, query = add.prompt.split("\n")
    assert header == prompts.json_request({"answer": int})
    assert all(re.fullmatch(r'Q?.*\? = \{"answer": -?\d+\}', s) for s in shots)
    assert add.correct(f' {{"answer": {add.answer}}}') and not add.correct(f" {add.answer}")
    assert add.read(' {"answer": "12"}') is None     # a string where an integer was asked
    # With the description: the task's line first; the default layouts are GPT-3's.
    described = {e.task: e for e in icl_tasks.episodes(cfg, 1, True, 1)}
    assert described["a1"].prompt.startswith(icl_tasks.UNSCRAMBLE + "\n")
    assert re.fullmatch(r"Answer the question with a number:\nQ: What is .+\? A: -?\d+\n"
                        r"Q: What is .+\? A:", described["sub3"].prompt)
    # Orders: the same examples and query, in other orders.
    orders = [{e.task: e for e in icl_tasks.episodes(cfg, 8, False, 1, order=i)}
              for i in range(5)]
    lines = [o["cl"].prompt.split("\n") for o in orders]
    assert all(x[-1] == lines[0][-1] and sorted(x) == sorted(lines[0]) for x in lines)
    assert len({tuple(x) for x in lines}) == 5


def test_prompt_layout_is_lm_evals(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("HF_DATASETS_CACHE", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    from lm_eval.tasks import TaskManager
    task = icl_tasks.TASKS["add2"]
    pairs = [(f"What is {a} plus {b}?", str(a + b)) for a, b in ((3, 4), (17, 25), (42, 9),
                                                                 (99, 1))]
    rows = [dict(source=s, target=t) for s, t in pairs]
    for split, part in (("train", rows[:3]), ("test", rows[3:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    config = {
        "task": "icl_layout", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(tmp_path / f"{s}.jsonl")
                                          for s in ("train", "test")}},
        "training_split": "train", "test_split": "test", "fewshot_split": "train",
        "output_type": "generate_until", "description": task.description + "\n",
        "doc_to_text": "Q: {{source}} A:", "doc_to_target": "{{target}}",
        "target_delimiter": " ", "fewshot_delimiter": "\n",
        "fewshot_config": {"sampler": "first_n"},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                         "higher_is_better": True}]}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "icl.yaml").write_text(json.dumps(config))
    lm_task = TaskManager(include_path=str(tmp_path / "tasks"),
                          include_defaults=False).load(["icl_layout"])["tasks"]["icl_layout"]
    doc = next(iter(lm_task.test_docs()))
    for k in (0, 3):
        assert icl_tasks.prompt(task, pairs[:k], pairs[3][0]) == lm_task.fewshot_context(doc, k)


# ----------------------------------------------------------------------------- the evaluator


def render(e) -> str:
    """The line a model that knows the answer writes, in the episode's layout."""
    return " " + prompts.layout_answer(e.answer, e.layout, e.kind)


def make_episodes(cfg, queries=2):
    return lambda k, d, layout=None, order=0, seen=False: icl_tasks.episodes(
        cfg, k, d, queries, layout, order, seen)


VARIANTS = dict(families=("scramble", "arithmetic"), orders=5,
                layouts=("arrow", "colon", "qa", "quoted", "json"), variant_k=4)


def test_oracle_scores_one_and_a_wrong_scorer_zero():
    cfg = small()
    make = make_episodes(cfg)
    answer = {e.prompt: render(e) for k in (0, 1, 4) for d in (True, False)
              for layout in (None, *VARIANTS["layouts"]) for order in range(5)
              for e in make(k, d, layout, order)}
    asked = []

    def oracle(ps):
        asked.append(ps)
        return [answer[p] for p in ps]
    m = fewshot_metrics(oracle, make, (0, 1), per_task=True, prefix="icl",
                        answer_logp=lambda ps, ans: [0.0] * len(ps), **VARIANTS)
    assert len(asked) == 1 and len(set(asked[0])) == len(asked[0])   # once, each prompt once
    # Zero-shot without the description, "seventy-three =>" is one prompt of the number tasks
    # and of the labels, with one greedy answer: right for one of them. Every other setting
    # is solved.
    assert {v for k, v in m.items() if k.endswith(("/acc", "/in_task", "format_ok"))
            and not k.startswith("icl/k0/nodesc/")} == {1.0}
    assert m["icl/k0/nodesc/family/scramble/acc"] == m["icl/k0/nodesc/task/add3/acc"] == 1
    assert m["icl/k0/nodesc/family/knowledge/acc"] < 1
    assert {m[f"icl/exact_match_k{k}{s}"] for k in (0, 1) for s in ("", "_desc")} == {1.0}
    for key in ("icl/k1/nodesc/family/scramble/acc", "icl/k0/task/a2/acc", "icl/k1/tasks/acc",
                "icl/k0/nodesc/task/labels/logp", "icl/order/k4/std", "icl/layout/json/k4/acc",
                "icl/layout/json/k0/format_ok"):
        assert key in m
    assert m["icl/order/k4/mean"] == 1.0 and m["icl/order/k4/std"] == 0.0
    wrong = fewshot_metrics(lambda ps: ["?" for _ in ps], make, (0, 4), prefix="icl",
                            **VARIANTS)
    assert {v for k, v in wrong.items() if not k.endswith("std")} == {0.0}
    # The headline is the mean over the scrambling and arithmetic tasks (held-out items, no
    # description): right on the arithmetic only, it is 6 / 11.
    arith = lambda ps: [answer[p] if "What is" in p else " ?" for p in ps]  # noqa: E731
    got = fewshot_metrics(arith, make, (1,), per_task=True, prefix="icl",
                          families=VARIANTS["families"])
    assert got["icl/exact_match_k1"] == pytest.approx(6 / 11)
    assert got["icl/k1/nodesc/family/arithmetic/acc"] == 1.0
    assert got["icl/k1/nodesc/task/en_fr/acc"] == 0.0
    # An answer of the right kind but the wrong item counts as in_task, not as correct.
    rw = [e for e in make(0, True) if e.task == "rw"]
    other = lambda ps: [" " + next(w for w in icl_tasks.Items(cfg).words(True)  # noqa: E731
                                   if w != e.answer) for e in rw]
    kind = fewshot_metrics(other, lambda k, d, *a: rw, (0,), per_task=True)
    assert kind["fewshot/k0/task/rw/acc"] == 0.0 and kind["fewshot/k0/task/rw/in_task"] == 1.0
    with pytest.raises(ValueError, match="shots"):
        fewshot_metrics(oracle, make, ())
    with pytest.raises(ValueError, match="families"):
        fewshot_metrics(oracle, make, (0,), orders=5)


def test_seen_items_are_pretraining_items_and_scored_apart():
    """seen_k queries the pretraining tasks on their pretraining items (the model's memory),
    never on held-out ones; its headline and per-task scores are logged beside the rest."""
    cfg = small()
    items = icl_tasks.Items(cfg)
    seen = [e for e in icl_tasks.episodes(cfg, 4, False, 6, seen=True) if e.group == "items"]
    held = [e for e in icl_tasks.episodes(cfg, 4, False, 6) if e.group == "items"]
    words = [e.answer for e in seen if e.family == "scramble"]
    assert words and not set(words) & set(items.words(True))
    assert {e.answer for e in held if e.family == "scramble"} <= set(items.words(True))
    for e in seen:
        if e.family == "arithmetic" and (m := re.search(r"What is (\d+) (\w+) (\d+)\?",
                                                         e.prompt.splitlines()[-1])):
            assert not items.question_held(icl_tasks._canonical(int(m[1]), m[2], int(m[3])))
    make = make_episodes(cfg)
    right = {e.prompt: render(e) for e in make(4, False, seen=True)}
    only_seen = lambda ps: [right.get(p, " ?") for p in ps]  # noqa: E731
    m = fewshot_metrics(only_seen, make, (4,), families=("scramble", "arithmetic"),
                        seen_k=4)
    assert m["fewshot/seen/k4/acc"] == 1.0 and m["fewshot/seen/k4/task/rw/acc"] == 1.0
    assert m["fewshot/exact_match_k4"] == 0.0
    assert "fewshot/seen/k4/task/en_fr/acc" not in m     # the headline families only


def test_order_spread_and_context_score():
    cfg = small()
    make = make_episodes(cfg)
    # Right only when the prompt's first example line is alphabetically before its last:
    # each order of the examples scores differently, and the spread says so.
    by_prompt = {e.prompt: e for order in range(5) for d in (True, False) for k in (0, 4)
                 for e in make(k, d, None, order)}

    def picky(ps):
        lines = [by_prompt[p].prompt.split("\n") for p in ps]
        return [render(by_prompt[p]) if len(x) < 3 or x[0] < x[-2] else " ?"
                for p, x in zip(ps, lines)]
    m = fewshot_metrics(picky, make, (0,), families=("scramble", "arithmetic"), orders=5,
                        variant_k=4)
    values = [v for v in (m[f"fewshot/order/k4/{s}"] for s in ("min", "max", "mean"))]
    assert values[0] < values[2] < values[1] and m["fewshot/order/k4/std"] > 0
    losses = np.linspace(3.0, 2.0, 600)
    got = context_score(losses, (50, 500), "icl")
    assert got["icl/context_score"] == pytest.approx(losses[500] - losses[50])
    assert got["icl/context_score"] < 0
    with pytest.raises(ValueError, match="inside the context"):
        context_score(losses, (50, 595), "icl")
    with pytest.raises(ValueError, match="10 positions either side"):
        context_score(losses, (5, 500), "icl")
    noisy = losses + np.where(np.arange(600) == 500, 9.0, 0.0)    # one outlier is averaged out
    assert context_score(noisy, (50, 500), "icl")["icl/context_score"] == pytest.approx(
        losses[500] - losses[50] + 9.0 / 21)


def hf_gpt2(tmp_path, n_ctx=320):
    """A random transformers GPT-2 over bytes, saved as its directory, and imported."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from models import hf
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=257, n_positions=n_ctx, n_embd=24, n_layer=2, n_head=2,
        initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=256, eos_token_id=256)).eval()
    model.save_pretrained(tmp_path / "gpt2")
    cfg, params = hf.gpt2_from_pretrained(tmp_path / "gpt2")
    return model, cfg, params


def test_evaluator_on_an_imported_gpt2(tmp_path):
    """The evaluator runs on GPT-2 imported by hf.gpt2_from_pretrained; its greedy lines, the
    answers' log-likelihoods and the losses per position are transformers' own."""
    import torch
    from experiments import pretrain_lm
    model, cfg, params = hf_gpt2(tmp_path)
    tokenizer = byte_tokenizer()
    cfg_icl = small()
    config = ml_collections.ConfigDict(dict(
        data=dict(icl=cfg_icl), train=dict(eval_every=10, eval_steps=1),
        evals=dict(icl=evaluators.spec(type="fewshot", split="test", shots=(0, 2), queries=1,
                                       orders=2, layouts=("qa", "json"), variant_k=2,
                                       score_positions=(10, 300)))))
    fns = pretrain_lm.icl_eval_fns(cfg, config, tokenizer)
    suite = evaluators.build(config, evaluators.Context(program=None, data={}, fns=fns))
    m = suite.run(types.SimpleNamespace(params=params), step=0, final=True)["test"]
    assert {"icl/exact_match_k0", "icl/k2/nodesc/tasks/acc", "icl/k2/logp",
            "icl/layout/json/k2/format_ok", "icl/order/k2/std", "icl/context_score"} <= set(m)
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if k.endswith("/acc"))

    eps = icl_tasks.episodes(cfg_icl, 2, True, 1)[::6]
    got = pretrain_lm.completer(cfg, tokenizer, 8)(params, [e.prompt for e in eps])
    with torch.no_grad():
        for e, line in zip(eps, got):
            ids = torch.tensor([tokenizer.encode(e.prompt)])
            out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
            assert line == tokenizer.decode(out[0, ids.shape[1]:].tolist()).split("\n")[0].strip()
        e = eps[0]
        head, tail = tokenizer.encode(e.prompt), tokenizer.encode(f" {e.answer}\n")
        logp = torch.log_softmax(model(torch.tensor([head + tail])).logits[0].double(), -1)
        want = np.mean([logp[len(head) - 1 + i, t].item() for i, t in enumerate(tail)])
        assert fns["answer_logp"](params, [e.prompt, "x"], [e.answer, "y"])[0] == \
            pytest.approx(want, abs=1e-4)
    losses = fns["position_losses"](params)
    assert losses.shape == (320,) and np.all(losses > 0)
    # Each window is a document's first 321 tokens; a shorter document is passed over.
    texts = ["short", "the first long one " * 20, "and the second, " * 25]
    want = []
    with torch.no_grad():
        for t in texts[1:]:
            ids = torch.tensor([tokenizer.encode(t)[:321]])
            logp = torch.log_softmax(model(ids[:, :-1]).logits[0].double(), -1)
            want.append(-logp.gather(1, ids[0, 1:, None])[:, 0].numpy())
    got = pretrain_lm.position_losses(cfg, tokenizer, texts)(params)
    np.testing.assert_allclose(got, np.mean(want, 0), atol=1e-4)
    with pytest.raises(ValueError, match="holds a window of 321"):
        pretrain_lm.position_losses(cfg, tokenizer, texts[:1])
    too_long = config.copy_and_resolve_references()
    too_long.evals.icl.shots = (16,)
    with pytest.raises(ValueError, match="exceed the context"):
        pretrain_lm.icl_eval_fns(cfg, too_long, tokenizer)


def test_presets_and_sweep():
    from experiments.configs import gpt as gpt_configs
    from models import gpt
    configs = {name: gpt_configs.get_config(name) for name in ("icl-s", "icl-m", "icl-l")}
    params = {n: gpt.count_params(gpt.GPTConfig(**c.model.to_dict())) for n, c in
              configs.items()}
    assert params["icl-s"] < params["icl-m"] < params["icl-l"]
    assert params["icl-l"] >= 10 * params["icl-s"]
    tokens = {(c.train.steps * c.train.batch_size * c.data.seq_len) for c in configs.values()}
    assert len(tokens) == 1                       # the same tokens for every size
    config = configs["icl-l"]
    assert config.data.source == "icl" and config.data.tokenizer == "bytes"
    assert config.model.vocab_size == byte_tokenizer().vocab_size == 257
    assert config.evals.icl.type == "fewshot" and tuple(config.evals.icl.shots) == (
        0, 1, 2, 4, 8, 16)
    assert config.evals.icl.orders >= 5 and "json" in config.evals.icl.layouts
    sweep = gpt_configs.SWEEPS["icl"]
    assert [s["label"] for s in sweep["size"]] == ["l", "m", "s"] and sweep["seeds"] == 3
    assert sweep["metric"] == "test/icl/exact_match_k16"
    with pytest.raises(ValueError, match="heldout_tasks"):
        icl_tasks.heldout_task_names(small(heldout_tasks="en_fr,klingon"))


def test_report_tables_and_figure(tmp_path):
    from experiments import icl_report
    keys = [f"test/icl/k{k}{d}/{g}/{m}" for m in ("acc", "logp") for k in (0, 4)
            for d in ("", "/nodesc") for g in ("items", "tasks")]
    keys += [f"test/icl/exact_match_k{k}" for k in (0, 4)]
    keys += [f"test/icl/k{k}/nodesc/family/{f}/acc" for k in (0, 4)
             for f in ("scramble", "arithmetic")]
    keys += ["test/icl/order/k8/min", "test/icl/layout/json/k8/acc", "test/icl/context_score"]
    keys += [f"test/icl/k{k}/nodesc/family/scramble/logp" for k in (0, 4)]
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
    read = icl_report.read_rows(tmp_path / "results.csv", "size")
    # Mean ± sample std over the seeds: 1.6 + 0.01 * seed.
    assert "| l | 1.605 ± 0.0071 | 1.705 ± 0.0071 |" in icl_report.headline_table(read, "size")
    families = icl_report.family_tables(read, "size")
    assert "Exact match, arithmetic, no description:" in families and "mapping" not in families
    logp = icl_report.family_tables(read, "size", "logp")
    assert logp.startswith("Log-likelihood of the answer per token, scramble, no description:")
    assert "arithmetic" not in logp and "| K=0 | K=4 |" in logp
    (tmp_path / "size=l,seed=1").mkdir()
    (tmp_path / "size=l,seed=1" / "evaluate-test-200.json").write_text(json.dumps(
        {"step": 200, "split": "test", "icl/k0/nodesc/tasks/acc": 0.9}))
    ks, curves = icl_report.read(tmp_path / "results.csv", "size")
    assert curves[("l", False, "tasks")][0] == pytest.approx((0.3 + 0.9) / 2)
    icl_report.plot(tmp_path / "icl.png", ks, {"acc": curves, "logp": curves})
    assert (tmp_path / "icl.png").stat().st_size > 1000


def test_report_per_task_table_and_ri_figure(tmp_path):
    """Per task: mean ± std over seeds at each shown K, and on pretraining items; RI against
    K with and without the description."""
    from experiments import icl_report
    rows = []
    for size in ("s", "l"):
        for seed in (0, 1):
            base = 0.5 if size == "l" else 0.0
            rows.append({"size": size, "seed": str(seed),
                         "test/icl/k0/nodesc/task/ri/acc": str(0.1 * seed),
                         "test/icl/k16/nodesc/task/ri/acc": str(base + 0.2 * seed),
                         "test/icl/k16/task/ri/acc": str(base + 0.3),
                         "test/icl/k16/nodesc/task/cl/acc": "0.0",
                         "test/icl/seen/k16/acc": "0.5",
                         "test/icl/seen/k16/task/ri/acc": str(base + 0.4)})
    table = icl_report.task_table(rows, "size")
    assert table.splitlines()[0] == ("| task | s K=0 | s K=16 | s K=16, seen | l K=0 | l K=16 | "
                                     "l K=16, seen |")
    assert "| ri | 0.05 ± 0.071 | 0.1 ± 0.14 | 0.4 ± 0 | 0.05 ± 0.071 | 0.6 ± 0.14 | 0.9 ± 0 |" \
        in table
    assert "| cl |  | 0 ± 0 |  |  | 0 ± 0 |  |" in table
    curves = icl_report.task_curves(rows, "size", "ri")
    assert curves[("l", True)][16][0] == pytest.approx(0.8)
    assert curves[("s", False)][16] == pytest.approx((0.1, 0.2 / 2 ** 0.5, 2))
    icl_report.plot_task(tmp_path / "ri.png", curves, "ri")
    assert (tmp_path / "ri.png").stat().st_size > 1000
