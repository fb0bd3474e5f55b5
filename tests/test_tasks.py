import collections
import json

import numpy as np
import pytest

from data import code_tasks, gpt1_inputs, hub_tasks
from data.gpt1_inputs import Specials

SP = Specials(start=1, delim=2, extract=3)


def chars(texts):
    """A stand-in tokenizer: one id per character."""
    return [[ord(c) for c in t] for t in texts]


# --------------------------------------------------------------------------- transformations

def test_classification_layout():
    assert gpt1_inputs.classification([10, 11, 12], 16, SP) == [[1, 10, 11, 12, 3]]


def test_entailment_layout():
    assert gpt1_inputs.entailment([10, 11], [20, 21, 22], 16, SP) == [[1, 10, 11, 2, 20, 21, 22, 3]]


def test_similarity_layout_has_both_orders():
    assert gpt1_inputs.similarity([10, 11], [20], 16, SP) == [[1, 10, 11, 2, 20, 3],
                                                        [1, 20, 2, 10, 11, 3]]


def test_multiple_choice_layout():
    assert gpt1_inputs.multiple_choice([10, 11], [[20], [30, 31], [40]], 16, SP) == [
        [1, 10, 11, 2, 20, 3], [1, 10, 11, 2, 30, 31, 3], [1, 10, 11, 2, 40, 3]]


@pytest.mark.parametrize("max_len", [8, 9, 32])
def test_truncation_keeps_every_special_token(max_len):
    long_a, long_b = list(range(100, 200)), list(range(200, 260))
    outs = {
        "classification": gpt1_inputs.classification(long_a, max_len, SP),
        "entailment": gpt1_inputs.entailment(long_a, long_b, max_len, SP),
        "similarity": gpt1_inputs.similarity(long_a, long_b, max_len, SP),
        "multiple_choice": gpt1_inputs.multiple_choice(long_a, [long_b, long_b[:3]], max_len, SP),
    }
    for kind, seqs in outs.items():
        for s in seqs:
            assert len(s) <= max_len, kind
            assert s[0] == SP.start and s[-1] == SP.extract, kind
            assert s.count(SP.delim) == (0 if kind == "classification" else 1), kind
        assert len(outs["classification"][0]) == max_len


def test_pair_truncation_shortens_the_longer_text():
    (s,) = gpt1_inputs.entailment(list(range(100, 150)), [20, 21], 16, SP)
    assert s == [1, *range(100, 111), 2, 20, 21, 3]   # the short hypothesis is kept whole
    (s,) = gpt1_inputs.entailment(list(range(100, 150)), list(range(200, 250)), 13, SP)
    assert s == [1, *range(100, 105), 2, *range(200, 205), 3]


def test_similarity_orders_hold_the_same_tokens():
    a, b = gpt1_inputs.similarity(list(range(100, 140)), list(range(200, 210)), 24, SP)
    assert sorted(a) == sorted(b)
    cut = a.index(SP.delim)
    assert b == [SP.start, *a[cut + 1:-1], SP.delim, *a[1:cut], SP.extract]


def test_multiple_choice_context_keeps_its_end_and_is_shared():
    seqs = gpt1_inputs.multiple_choice(list(range(100, 150)), [[20, 21, 22], [30]], 12, SP)
    context = list(range(144, 150))  # room: 12 - 3 special tokens - the longest answer
    assert seqs == [[1, *context, 2, 20, 21, 22, 3], [1, *context, 2, 30, 3]]


def test_encode_split_arrays():
    records = [{"context": "ab", "answers": ["x", "yz"], "label": 1},
               {"context": "c", "answers": ["u", "v"], "label": 0}]
    out = gpt1_inputs.encode_split("multiple_choice", records, chars, 16, SP, pad_id=0)
    assert out["tokens"].shape == (2, 2, 7) and out["tokens"].dtype == np.int32
    np.testing.assert_array_equal(out["tokens"][0, 1], [1, 97, 98, 2, 121, 122, 3])
    np.testing.assert_array_equal(out["tokens"][1, 0], [1, 99, 2, 117, 3, 0, 0])
    np.testing.assert_array_equal(out["lengths"], [[6, 7], [5, 5]])
    np.testing.assert_array_equal(out["labels"], [1, 0])
    rows = np.arange(2)[:, None], np.arange(2)[None, :]
    assert (out["tokens"][rows[0], rows[1], out["lengths"] - 1] == SP.extract).all()


def test_task_tokens_are_single_new_ids():
    from data.tokenizer import train_bpe
    tok = train_bpe(["def f(x):\n    return x + 1\n"] * 20, 300)
    sp = gpt1_inputs.add_task_tokens(tok)
    assert len({sp.start, sp.delim, sp.extract, tok.eot_id}) == 4
    ids = tok.encode(f"{gpt1_inputs.START}x = 1{gpt1_inputs.DELIM}y{gpt1_inputs.EXTRACT}")
    assert ids[0] == sp.start and ids[-1] == sp.extract and sp.delim in ids
    assert gpt1_inputs.add_task_tokens(tok) == sp  # idempotent


# --------------------------------------------------------------------------- default tasks

PACKAGES = {"alpha": "a", "beta": "b", "gamma": "g", "delta": "d", "eps": "e"}


BRANCHES = ("    if {v}:\n        {v} += {m}\n",
            "    for i in range({v}):\n        {v} += i\n",
            "    with open({v}) as f:\n        {v} = f.read()\n",
            "    try:\n        {v} = {v} / y\n    except ZeroDivisionError:\n        raise\n")


@pytest.fixture(scope="module")
def fake_library(tmp_path_factory):
    """Five packages of three modules (one for "eps"), each with 20 documented functions."""
    root = tmp_path_factory.mktemp("lib")
    files = []
    for pkg, p in PACKAGES.items():
        (root / pkg).mkdir()
        for m in range(3 if pkg != "eps" else 1):
            src = []
            for k in range(20):
                v = f"{p}{m}_{k}"
                src.append(f"def {p}{m}_f{k}(x, y):\n"
                           f"    \"\"\"Return {p}{m} {k} of x.\"\"\"\n"
                           f"    {v} = x + {k}\n"
                           f"    {p}{m}_y = y * {k + m}\n"
                           + BRANCHES[k % 4].format(v=v, m=m) +
                           f"    return {v} - y {'+-*'[k % 3]} {m}\n\n")
            path = root / pkg / f"mod{m}.py"
            path.write_text("".join(src))
            files.append(path)
    (root / "broken.py").write_text("def f(:\n")
    files.append(root / "broken.py")
    return root, files


def build(name, fake_library):
    root, files = fake_library
    return code_tasks.default_task(name, files=files, root=str(root))


def test_functions_drop_docstrings_and_keep_order(fake_library):
    root, files = fake_library
    funcs = code_tasks.extract_functions(files, str(root))
    assert len(funcs) == 13 * 20
    f = funcs[0]
    assert (f.path, f.name, f.package, f.doc) == ("alpha/mod0.py", "a0_f0", "alpha",
                                                  "Return a0 0 of x.")
    assert f.lines[:2] == ("def a0_f0(x, y):", "    a0_0 = x + 0")
    assert f.lines[-1] == "    return a0_0 - y + 0"


@pytest.mark.parametrize("name", sorted(code_tasks.DEFAULT_TASKS))
def test_default_tasks_are_balanced_and_deterministic(name, fake_library):
    task = build(name, fake_library)
    again = build(name, fake_library)
    assert task.splits == again.splits
    assert set(task.splits) == {"train", "val", "test"}
    for split, records in task.splits.items():
        assert records, split
        counts = collections.Counter(r["label"] for r in records)
        assert set(counts) <= set(range(task.num_classes))
        if name == "next_line":  # right answer equally often at each position, up to one
            assert max(counts.values()) - min(counts.values()) <= 1
        else:
            assert len(set(counts.values())) == 1 and len(counts) == task.num_classes
    assert set(gpt1_inputs.TEXT_FIELDS[task.kind]) | {"label"} == set(task.splits["train"][0])


def test_package_classes_are_the_largest_packages(fake_library):
    task = build("package", fake_library)
    assert task.description.endswith("alpha, beta, delta, gamma")
    assert task.chance == 0.25


def test_docstring_negatives_come_from_other_functions(fake_library):
    task = build("docstring", fake_library)
    for r in task.splits["train"]:
        name = r["premise"].split("(")[0][4:]          # "a0_f3" -> docstring "Return a0 3"
        own = f"Return {name[:2]} {name.split('_f')[1]} of x."
        assert (r["hypothesis"] == own) == (r["label"] == 1)


def test_claims_are_read_off_the_lines_shown(fake_library):
    task = build("claims", fake_library)
    holds = dict(code_tasks.CLAIMS)
    seen = set()
    for r in task.splits["train"]:
        lines = r["premise"].split("\n")
        assert len(lines) == code_tasks.CLAIM_LINES
        assert holds[r["hypothesis"]]([ln.strip() for ln in lines[1:]]) == bool(r["label"])
        seen.add(r["hypothesis"])
    assert {"The code loops with for.", "The code has a try statement."} <= seen
    for claim in seen:  # each statement as often true as false
        labels = [r["label"] for r in task.splits["train"] if r["hypothesis"] == claim]
        assert 2 * sum(labels) == len(labels)


def test_same_package_pairs_follow_their_packages(fake_library):
    task = build("same_package", fake_library)
    assert task.description.endswith("alpha, beta, delta, gamma")
    for r in task.splits["train"]:
        p1, p2 = (r[t][4] for t in ("text1", "text2"))   # "def a0_f3" -> package letter "a"
        assert (p1 == p2) == (r["label"] == 1)
        assert {p1, p2} <= set("abdg")


def test_module_pairs_follow_their_files(fake_library):
    task = build("module", fake_library)
    for r in task.splits["train"]:
        m1, m2 = (r[t].split("_f")[0][4:] for t in ("text1", "text2"))   # e.g. "a0"
        assert (m1 == m2) == (r["label"] == 1)


def test_next_line_answer_follows_the_context(fake_library):
    task = build("next_line", fake_library)
    root, files = fake_library
    funcs = {fn.text(code_tasks.CONTEXT_LINES): fn
             for fn in code_tasks.extract_functions(files, str(root))}
    for r in task.splits["test"]:
        fn = funcs[r["context"]]
        assert r["answers"][r["label"]] == fn.lines[code_tasks.CONTEXT_LINES]
        assert len(set(r["answers"])) == code_tasks.N_ANSWERS


def test_splits_do_not_share_functions(fake_library):
    task = build("package", fake_library)
    texts = {s: {r["text"] for r in rs} for s, rs in task.splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"]


def test_real_tasks_use_only_files_outside_the_pretraining_split():
    from data import sources
    held = code_tasks.heldout_files()
    train = set(sources.stdlib_files("train"))
    assert held and not train & set(held)
    task = code_tasks.default_task("next_line", files=held)
    assert all(len(task.splits[s]) >= 100 for s in ("train", "val", "test"))
    assert abs(task.chance - 0.25) < 0.01


# --------------------------------------------------------------------------- hub tasks

HUB_ROWS = {
    "sst2": [{"sentence": "a gripping film", "label": 1, "idx": 0},
             {"sentence": "dull", "label": 0, "idx": 1},
             {"sentence": "hidden", "label": -1, "idx": 2}],
    "rte": [{"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0}],
    "mnli": [{"premise": "He ran.", "hypothesis": "He moved.", "label": 0, "idx": 0},
             {"premise": "He ran.", "hypothesis": "He slept.", "label": 2, "idx": 1}],
    "mrpc": [{"sentence1": "It rose 5%.", "sentence2": "It went up 5%.", "label": 1, "idx": 0}],
    "qqp": [{"question1": "How to cook rice?", "question2": "How do I cook rice?", "label": 1,
             "idx": 0}],
    "hellaswag": [{"ind": 4, "activity_label": "Baking", "ctx_a": "She mixes flour.",
                   "ctx_b": "then she", "ctx": "She mixes flour. then she",
                   "endings": ["bakes it.", "swims.", "sings.", "flies."],
                   "source_id": "x", "split": "train", "split_type": "indomain", "label": "0"}],
    "race": [{"example_id": "m1.txt", "article": "Tom has a dog.", "answer": "C",
              "question": "What does Tom have?",
              "options": ["a cat", "a bird", "a dog", "a fish"]}],
}
EXPECTED = {
    "sst2": [{"text": "a gripping film", "label": 1}, {"text": "dull", "label": 0}],
    "rte": [{"premise": "A cat sat.", "hypothesis": "An animal sat.", "label": 0}],
    "mnli": [{"premise": "He ran.", "hypothesis": "He moved.", "label": 0},
             {"premise": "He ran.", "hypothesis": "He slept.", "label": 2}],
    "mrpc": [{"text1": "It rose 5%.", "text2": "It went up 5%.", "label": 1}],
    "qqp": [{"text1": "How to cook rice?", "text2": "How do I cook rice?", "label": 1}],
    "hellaswag": [{"context": "She mixes flour. then she",
                   "answers": ["bakes it.", "swims.", "sings.", "flies."], "label": 0}],
    "race": [{"context": "Tom has a dog.\nWhat does Tom have?",
              "answers": ["a cat", "a bird", "a dog", "a fish"], "label": 2}],
}


@pytest.mark.parametrize("name", sorted(hub_tasks.HUB_TASKS))
def test_hub_loaders_on_local_files(name, tmp_path):
    spec = hub_tasks.HUB_TASKS[name]
    data_files = {}
    for split in set(spec.splits.values()):
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in HUB_ROWS[name]))
        data_files[split] = str(path)
    task = hub_tasks.hub_task(name, data_files=data_files)
    assert task.kind == spec.kind and task.num_classes == spec.num_classes
    for split in ("train", "val", "test"):
        assert task.splits[split] == EXPECTED[name]
    enc = gpt1_inputs.encode_split(task.kind, task.splits["test"], chars, 32, SP)
    n_seq = {"similarity": 2, "multiple_choice": 4}.get(task.kind, 1)
    assert enc["tokens"].shape[:2] == (len(EXPECTED[name]), n_seq)
