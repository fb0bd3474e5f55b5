import json
import os
import pathlib

import datasets
import ml_collections
import numpy as np
import pytest

from data import sources, text
from data.tokenizer import EOT, Tokenizer, train_bpe


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Keeps `datasets.load_dataset` caches of local builders out of the home directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


def cfg(tmp_path, **kw) -> ml_collections.ConfigDict:
    c = text.default_config()
    c.cache_dir = str(tmp_path / "cache")
    c.update(kw)
    return c


def write_docs(d, n: int, suffix=".txt") -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    docs = [f"document {i}: " + "the cat sat on the mat. " * (i % 7 + 1) for i in range(n)]
    for i, doc in enumerate(docs):
        (d / f"doc{i:03d}{suffix}").write_text(doc, encoding="utf-8")
    return docs


# --------------------------------------------------------------------------- stdlib split


def test_stdlib_split_deterministic_disjoint_covering():
    root = sources.stdlib_root()
    splits = {s: sources.stdlib_files(s) for s in sources.SPLITS}
    assert splits["train"] == sources.stdlib_files("train")
    sets = {s: set(f) for s, f in splits.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    expected = {p for p in root.rglob("*.py")
                if "site-packages" not in p.relative_to(root).parts and p.is_file()
                and p.stat().st_size > 0}
    assert sets["train"] | sets["val"] | sets["test"] == expected
    n = len(expected)
    assert 0.85 < len(sets["train"]) / n < 0.95
    assert 0.02 < len(sets["val"]) / n < 0.08 and 0.02 < len(sets["test"]) / n < 0.08
    assert all(f == sorted(f) for f in splits.values())


def test_split_depends_only_on_relative_path():
    # Pinned: a changed hash would move files between splits, leaking val/test into training.
    pinned = {"os.py": "train", "m0.py": "test", "m6.py": "val", "m14.py": "test"}
    assert {p: sources.split_of(p) for p in pinned} == pinned
    buckets = [sources.split_of(f"pkg/mod{i}.py") for i in range(2000)]
    assert abs(buckets.count("train") / 2000 - 0.9) < 0.03


def test_stdlib_load_texts_max_docs(tmp_path):
    texts = text.load_texts(cfg(tmp_path, max_docs=3), "val")
    assert len(texts) == 3 and all(texts)
    assert texts[0] == sources.stdlib_files("val")[0].read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------- local files / hf


def test_files_source_split_by_file(tmp_path):
    docs = write_docs(tmp_path / "corpus", 80)
    c = cfg(tmp_path, source="files", files=str(tmp_path / "corpus" / "*.txt"))
    got = {s: text.load_texts(c, s) for s in sources.SPLITS}
    assert sorted(sum(got.values(), [])) == sorted(docs)
    assert len(got["train"]) > len(got["val"]) and got["val"] and got["test"]
    # A directory, or the same files under another root, split identically.
    moved = tmp_path / "elsewhere" / "deep"
    write_docs(moved, 80)
    assert text.load_texts(cfg(tmp_path, source="files", files=str(moved)), "val") == got["val"]


def test_empty_corpus_and_empty_split(tmp_path):
    with pytest.raises(ValueError, match=r"'files'.*split 'train'"):
        text.load_texts(cfg(tmp_path, source="files", files=str(tmp_path / "nothing*.txt")),
                        "train")
    write_docs(tmp_path / "one", 1)
    c = cfg(tmp_path, source="files", files=str(tmp_path / "one"))
    empty = [s for s in sources.SPLITS if s != sources.split_of("doc000.txt")]
    with pytest.raises(ValueError, match=f"split '{empty[0]}'"):
        text.load_texts(c, empty[0])
    with pytest.raises(ValueError, match="unknown split"):
        text.load_texts(c, "validation")


def test_hf_json_carves_val_and_test(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"body": f"row {i} " * (i % 5 + 1), "label": i} for i in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cfg(tmp_path, source="hf", hf_dataset="json", hf_data_files=str(path),
            hf_text_column="body")
    got = {s: text.load_texts(c, s) for s in sources.SPLITS}
    assert len(got["val"]) == len(got["test"]) == 10 and len(got["train"]) == 180
    assert sorted(sum(got.values(), [])) == sorted(r["body"] for r in rows)
    assert got == {s: text.load_texts(c, s) for s in sources.SPLITS}  # deterministic
    c.source = "auto"  # the default: naming hf_dataset is enough to select the hub path
    assert text.load_texts(c, "val") == got["val"]
    c.max_docs = 7
    assert text.load_texts(c, "train") == got["train"][:7]
    c.hf_text_column = "missing"
    with pytest.raises(ValueError, match="no column 'missing'"):
        text.load_texts(c, "train")


def test_hf_text_builder_with_named_splits(tmp_path):
    lines = [f"line {i}" if i % 4 else "" for i in range(80)]
    (tmp_path / "tr.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "va.txt").write_text("validation line\n")
    c = cfg(tmp_path, source="hf", hf_dataset="text",
            hf_data_files=f"train={tmp_path / 'tr.txt'},validation={tmp_path / 'va.txt'}")
    assert text.load_texts(c, "val") == ["validation line"]
    train, test = text.load_texts(c, "train"), text.load_texts(c, "test")  # test carved off
    assert sorted(train + test) == sorted(filter(None, lines))  # empty rows dropped
    assert 0 < len(test) <= 4


# --------------------------------------------------------------------------- tokenizer / stream


@pytest.fixture
def files_cfg(tmp_path):
    write_docs(tmp_path / "corpus", 60)
    return cfg(tmp_path, source="files", files=str(tmp_path / "corpus"), vocab_size=300)


def test_get_tokenizer_trains_once_then_loads(files_cfg, monkeypatch):
    tok = text.get_tokenizer(files_cfg)
    assert tok.vocab_size <= 300 and tok.decode(tok.encode("the cat")) == "the cat"
    assert len(list(pathlib.Path(files_cfg.cache_dir).rglob("*.json"))) == 1
    monkeypatch.setattr(text, "train_bpe", lambda *a, **k: pytest.fail("trained twice"))
    again = text.get_tokenizer(files_cfg)
    assert again.encode("the mat sat") == tok.encode("the mat sat")
    files_cfg.vocab_size = 280  # another key: trains again
    with pytest.raises(pytest.fail.Exception):
        text.get_tokenizer(files_cfg)


def test_get_tokenizer_from_path(tmp_path):
    tok = train_bpe(["hello world"] * 5, 270)
    tok.save(tmp_path / "tokenizer.json")
    for path in (tmp_path / "tokenizer.json", tmp_path):
        loaded = text.get_tokenizer(cfg(tmp_path, tokenizer=str(path)))
        assert loaded.encode("hello world") == tok.encode("hello world")
    with pytest.raises(FileNotFoundError):
        text.get_tokenizer(cfg(tmp_path, tokenizer=str(tmp_path / "missing")))


def test_token_stream_is_docs_with_eot_and_cached(files_cfg, monkeypatch):
    tok = text.get_tokenizer(files_cfg)
    stream = text.token_stream(files_cfg, "train", tok)
    expected = [i for doc in text.load_texts(files_cfg, "train")
                for i in tok.encode(doc) + [tok.eot_id]]
    assert stream.dtype == np.uint16 and stream.tolist() == expected
    assert isinstance(stream, np.memmap)
    cache = os.listdir(os.path.join(files_cfg.cache_dir, "tokens"))
    assert any(f.endswith(".arrow") for f in cache) and any(f.endswith(".npy") for f in cache)
    monkeypatch.setattr(text, "load_texts", lambda *a: pytest.fail("tokenised twice"))
    assert text.token_stream(files_cfg, "train", tok).tolist() == expected
    # Another tokenizer is another stream.
    other = Tokenizer.load(next(pathlib.Path(files_cfg.cache_dir).rglob("bpe*.json")))
    other.add_special_tokens(["<|x|>"])
    with pytest.raises(pytest.fail.Exception):
        text.token_stream(files_cfg, "train", other)


def test_token_stream_keeps_eot_text_as_one_id(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    for i in range(40):
        (d / f"{i}.txt").write_text(f"a{EOT}b {i}")
    c = cfg(tmp_path, source="files", files=str(d))
    tok = train_bpe(["ab"], 260)
    stream = text.token_stream(c, "train", tok)
    docs = text.load_texts(c, "train")
    assert int((stream == tok.eot_id).sum()) == 2 * len(docs)


# --------------------------------------------------------------------------- PackedWindows


def windows(n_tokens=1001, seq_len=10, batch=4, **kw):
    return text.PackedWindows(np.arange(n_tokens, dtype=np.uint16), seq_len, batch,
                              **{"seed": 0, **kw})


def test_shapes_and_shifted_targets():
    it = windows()
    assert it.num_windows == 100 and it.steps_per_epoch == 25
    b = next(it)
    assert b["inputs"].shape == b["targets"].shape == (4, 10)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # arange: shifted by one
    assert (b["inputs"][:, 0] % 10 == 0).all()  # windows start at multiples of seq_len


def test_epoch_is_a_permutation_then_next_epoch_differs():
    it = windows()
    first = [next(it)["inputs"][:, 0] // 10 for _ in range(it.steps_per_epoch)]
    assert sorted(np.concatenate(first).tolist()) == list(range(100))
    second = [next(it)["inputs"][:, 0] // 10 for _ in range(it.steps_per_epoch)]
    assert sorted(np.concatenate(second).tolist()) == list(range(100))
    assert not np.array_equal(np.concatenate(first), np.concatenate(second))
    assert it.get_state()["epoch"] == 1
    assert not np.array_equal(next(windows(seed=1))["inputs"][:, 0] // 10, first[0])


def test_process_shards_partition_global_batch():
    full = windows(batch=8)
    shards = [windows(batch=8, process_index=p, process_count=4) for p in range(4)]
    for _ in range(30):
        g = next(full)
        parts = [next(s) for s in shards]
        assert all(p["inputs"].shape == (2, 10) for p in parts)
        np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), g["inputs"])
    with pytest.raises(ValueError, match="divisible"):
        windows(batch=6, process_count=4)


def test_state_round_trip_resumes_exactly():
    it = windows(seq_len=7)
    for _ in range(it.steps_per_epoch + 3):  # across an epoch boundary
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    resumed = windows(seq_len=7)
    resumed.set_state(state)
    for _ in range(2 * it.steps_per_epoch):
        a, b = next(it), next(resumed)
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"], b["targets"])
    with pytest.raises(ValueError, match="not the same data"):
        windows(seq_len=8).set_state(state)


def test_eval_mode_one_pass_in_order():
    it = windows(shuffle=False)
    batches = list(it)
    assert len(batches) == it.steps_per_epoch == 25
    starts = np.concatenate([b["inputs"][:, 0] for b in batches])
    np.testing.assert_array_equal(starts, np.arange(100) * 10)
    with pytest.raises(StopIteration):
        next(it)


def test_keep_remainder_pads_and_weights():
    it = windows(n_tokens=71, batch=4, shuffle=False, drop_remainder=False)  # 7 windows
    batches = list(it)
    assert len(batches) == 2 and batches[1]["inputs"].shape == (4, 10)
    np.testing.assert_array_equal(batches[0]["weights"], np.ones((4, 10)))
    np.testing.assert_array_equal(batches[1]["weights"][:, 0], [1, 1, 1, 0])
    shard = windows(n_tokens=71, batch=4, shuffle=False, drop_remainder=False,
                    process_index=1, process_count=2)
    np.testing.assert_array_equal(list(shard)[1]["weights"][:, 0], [1, 0])


def test_too_short_errors():
    with pytest.raises(ValueError, match="5 tokens, but one window of seq_len 10 needs 11"):
        windows(n_tokens=5)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        windows(n_tokens=31, batch=4)


def test_a_registered_source_is_read_and_keyed_by_its_identity(tmp_path, monkeypatch):
    """data/text.py reads sources that other modules register (data/icl_tasks.py: "icl")
    without importing them."""
    monkeypatch.setattr(sources, "_REGISTERED", {})
    version = {"v": 1}
    sources.register("letters", lambda c, split: [f"{split} a", "", f"{split} b"],
                     lambda c, split: dict(version))
    c = cfg(tmp_path, source="letters", max_docs=2)
    assert text.load_texts(c, "val") == ["val a", "val b"]   # empty documents dropped
    key = text._source_identity(c, "train")
    version["v"] = 2
    assert text._source_identity(c, "train") != key   # its identity keys the caches
    with pytest.raises(ValueError, match=r"unknown data source 'nope'.*\['letters'\]"):
        text.load_texts(cfg(tmp_path, source="nope"), "train")


def test_explicit_split_files_and_the_hint_when_a_split_is_empty(tmp_path):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(f"contents of {name}\n")
    spec = f"train={tmp_path / 'a.txt'},val={tmp_path / 'b.txt'},test={tmp_path / 'c.txt'}"
    c = cfg(tmp_path, source="files", files=spec)
    assert [text.load_texts(c, s) for s in sources.SPLITS] == [
        ["contents of a.txt\n"], ["contents of b.txt\n"], ["contents of c.txt\n"]]
    c = cfg(tmp_path, source="files", files=f"train={tmp_path / 'a.txt'}")
    with pytest.raises(ValueError, match="val=b.txt,test=c.txt"):
        text.load_texts(c, "val")
