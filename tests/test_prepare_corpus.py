"""GPT-3 data preparation: deduplication, the Pareto rule, the mixture, streaming, end to end."""

import itertools
import json
import logging
import re

import numpy as np
import pytest

pytest.importorskip("datasketch")
pytest.importorskip("sklearn")

from data import corpus_prep  # noqa: E402

WORDS = ("time person year way day thing man world life hand part child eye woman place work "
         "week case point government company number group problem fact be have do say get make "
         "go know take see come think look want give use find tell ask seem feel try leave "
         "call good new first last long great little own other old right big high different "
         "small large next early young important few public bad same able").split()


def prose(rng, n=120):
    return " ".join(rng.choice(WORDS, n))


JUNK = [f"0x{i:02x}" for i in range(60)] + ["{}", "[]", "=;", "&nbsp;", "|", "--", "//", "<br>"]


def junk(rng, n=120):  # boilerplate and markup: the negatives a crawl is full of
    return " ".join(rng.choice(JUNK, n))


def doc(i, text, source="s"):
    return {"id": f"{source}:{i}", "source": source, "text": text}


# ----------------------------------------------------------------------------- dedup


def test_identical_and_near_identical_documents_are_removed():
    rng = np.random.default_rng(0)
    base = [prose(rng, 200) for _ in range(6)]
    words = base[0].split()
    edited = " ".join(words[:100] + ["completely"] + words[101:])   # one word of 200 changed
    docs = [doc(i, t) for i, t in enumerate(base)]
    docs += [doc("copy", base[2]), doc("edit", edited), doc("spaced", base[4].replace(" ", "  "))]
    dropped = []
    index = corpus_prep.NearDuplicates(threshold=0.8, num_perm=128)
    kept = list(corpus_prep.drop_duplicates(
        docs, index, on_duplicate=lambda d, kind, other: dropped.append((d["id"], kind, other))))
    assert [d["id"] for d in kept] == [f"s:{i}" for i in range(6)]
    assert dropped == [("s:copy", "exact", "s:2"), ("s:edit", "near", "s:0"),
                       ("s:spaced", "near", "s:4")]


def test_distinct_documents_sharing_some_text_are_kept():
    rng = np.random.default_rng(1)
    shared = prose(rng, 60)
    # Same opening paragraph, different bodies: Jaccard of 5-word shingles well under 0.8.
    docs = [doc(i, shared + " " + prose(rng, 200)) for i in range(5)]
    index = corpus_prep.NearDuplicates(threshold=0.8)
    assert len(list(corpus_prep.drop_duplicates(docs, index))) == 5
    # Lowering the threshold far enough makes them repeats of the first.
    index = corpus_prep.NearDuplicates(threshold=0.1)
    assert len(list(corpus_prep.drop_duplicates(docs, index))) == 1


def test_character_shingles_catch_edits_inside_words():
    a = "the quick brown fox jumps over the lazy dog " * 8
    b = a.replace("quick", "quack", 3)
    assert len(corpus_prep.shingles("one two", "word", 5)) == 1
    index = corpus_prep.NearDuplicates(threshold=0.7, shingle="char", shingle_size=7)
    assert index.check("a", a) is None and index.check("b", b) == ("near", "a")
    with pytest.raises(ValueError, match="shingle kind"):
        corpus_prep.shingles("x", "line")
    with pytest.raises(ValueError, match="threshold"):
        corpus_prep.NearDuplicates(threshold=1.5)


# ----------------------------------------------------------------------------- quality


def test_pareto_rule_keeps_high_scores_more_often_and_is_seeded():
    scores = np.repeat([0.05, 0.5, 0.95], 20000)
    keep = corpus_prep.pareto_keep(scores, 9.0, np.random.default_rng(0))
    rates = keep.reshape(3, -1).mean(1)
    # P(pareto(9) > t) = (1 + t)^-9 at t = 1 - score.
    np.testing.assert_allclose(rates, (2 - np.array([0.05, 0.5, 0.95])) ** -9.0, atol=0.01)
    assert rates[0] < rates[1] < rates[2]
    again = corpus_prep.pareto_keep(scores, 9.0, np.random.default_rng(0))
    np.testing.assert_array_equal(keep, again)
    assert corpus_prep.pareto_keep([1.0] * 100, 9.0, np.random.default_rng(1)).all()


def test_classifier_separates_reference_from_raw_and_filters():
    rng = np.random.default_rng(2)
    clf = corpus_prep.QualityClassifier(n_features=2 ** 12, seed=0)
    report = clf.fit([doc(i, prose(rng), "ref") for i in range(40)],
                     [doc(i, junk(rng), "raw") for i in range(40)])
    assert report["heldout_accuracy"] == 1.0 and report["folds"] == 2
    good = clf.score([doc(i, prose(rng), "new") for i in range(20)])
    bad = clf.score([doc(i, junk(rng), "new") for i in range(20)])
    assert good.min() > 0.5 > bad.max()
    mixed = [doc(i, prose(rng) if i % 2 else junk(rng)) for i in range(200)]
    seen = []
    kept = list(corpus_prep.quality_filter(mixed, clf, 9.0, np.random.default_rng(3), batch=64,
                                           on_scored=lambda d, s, k: seen.append(k)))
    assert len(seen) == 200 and sum(seen) == len(kept)
    from_prose = sum(int(d["id"].split(":")[1]) % 2 for d in kept)
    assert from_prose > 3 * (len(kept) - from_prose)


# ----------------------------------------------------------------------------- mixture


def test_mixture_follows_the_weights_in_characters():
    rng = np.random.default_rng(4)
    lengths = {"crawl": 300, "books": 2000, "wiki": 80}
    pools = {s: [doc(i, "x" * int(rng.integers(n // 2, n * 3 // 2)), s) for i in range(30)]
             for s, n in lengths.items()}
    weights = {"crawl": 0.6, "books": 0.3, "wiki": 0.1}
    out = list(corpus_prep.mix({s: (lambda s=s: iter(pools[s])) for s in pools}, weights,
                               total=200_000))
    chars = {s: sum(len(d["text"]) for d in out if d["source"] == s) for s in pools}
    total = sum(chars.values())
    assert 200_000 <= total < 200_000 + 3000
    for s, w in weights.items():
        assert abs(chars[s] / total - w) < 0.01, (s, chars[s] / total)
    # The small sources were read several times over (epochs), in their order each time.
    wiki = [d["id"] for d in out if d["source"] == "wiki"]
    assert len(wiki) > 60 and wiki[:30] == wiki[30:60]


def test_cross_fitting_scores_each_document_with_a_model_that_did_not_see_it():
    rng = np.random.default_rng(8)
    ref = [doc(i, prose(rng), "ref") for i in range(30)]
    raw = [doc(i, junk(rng) if i % 2 else prose(rng), "raw") for i in range(60)]
    crossed = corpus_prep.QualityClassifier(n_features=2 ** 12, C=100.0, folds=2)
    crossed.fit(ref, raw)
    memorised = corpus_prep.QualityClassifier(n_features=2 ** 12, C=100.0, folds=1)
    memorised.fit(ref, raw)
    raw_prose = raw[::2]  # prose labelled raw: a model that trained on them calls them raw
    assert memorised.score(raw_prose).mean() < crossed.score(raw_prose).mean()
    assert {corpus_prep.fold_of(d["id"], 2) for d in raw} == {0, 1}
    with pytest.raises(ValueError, match="not trained"):
        corpus_prep.QualityClassifier().score(raw)


def test_long_documents_are_mixed_as_pieces():
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 9 characters a line
    one_long_line = "x" * 25
    pieces = list(corpus_prep.split_long([doc(0, text), doc(1, "short"), doc(2, one_long_line)],
                                         100))
    assert len(pieces) == 10 + 2 and "".join(p["text"] for p in pieces[:-2]) == text
    assert all(len(p["text"]) <= 100 and p["text"].endswith("\n") for p in pieces[:-2])
    assert [p["id"] for p in pieces[:2]] == ["s:0#0", "s:0#1"]
    assert [p["id"] for p in pieces[-2:]] == ["s:1", "s:2"]
    assert [p["text"] for p in corpus_prep.split_long([doc(2, one_long_line)], 10)] == \
        ["x" * 10, "x" * 10, "x" * 5]


def test_mixture_by_documents_and_bad_weights():
    pools = {"a": [doc(i, "a" * 10, "a") for i in range(3)], "b": [doc(0, "b", "b")]}
    factories = {s: (lambda s=s: pools[s]) for s in pools}
    out = list(corpus_prep.mix(factories, {"a": 3, "b": 1}, total=400, unit="docs"))
    assert sum(d["source"] == "a" for d in out) == 300
    with pytest.raises(ValueError, match="weights name"):
        list(corpus_prep.mix(factories, {"a": 1}, total=5))
    with pytest.raises(ValueError, match="no documents"):
        list(corpus_prep.mix({"a": lambda: iter([])}, {"a": 1}, total=5))


def test_mixture_never_takes_a_source_past_its_cap():
    pools = {"crawl": [doc(0, "x" * 50, "crawl")],
             "books": [doc(i, "b" * 2000, "books") for i in range(10)]}
    factories = {s: (lambda s=s: pools[s]) for s in pools}
    caps = {"crawl": 3.4 * 50, "books": 3.4 * 20_000}
    out = list(corpus_prep.mix(factories, {"crawl": 0.6, "books": 0.4}, 10 ** 6, caps=caps))
    chars = {s: sum(len(d["text"]) for d in out if d["source"] == s) for s in pools}
    assert chars == {"crawl": 150, "books": 68_000}   # 3 and 34 whole documents: the mixture
    # ended when both sources had given what their caps allow, far short of 10**6


def test_plan_caps_a_source_too_small_for_its_weight_and_says_what_it_would_need():
    sizes, longest = {"crawl": 55, "books": 20_000, "wiki": 3000}, {"crawl": 55, "books": 2000,
                                                                    "wiki": 300}
    weights = {"crawl": 0.6, "books": 0.3, "wiki": 0.1}
    plan = corpus_prep.plan_mixture(sizes, longest, weights, 3.4)
    # Honouring the crawl at 3.4 epochs would leave 312 characters in all, less than one
    # document of books at its weight (2000 / 0.3): the crawl is capped, wiki binds instead.
    assert plan["nominal"] == pytest.approx(3.4 * 3000 / 0.1)
    assert plan["quota"] == pytest.approx({"crawl": 3.4 * 55, "books": 0.3 * 102_000,
                                           "wiki": 0.1 * 102_000})
    assert plan["too_small"] == pytest.approx({"crawl": 0.6 * 102_000 / 55})
    ample = {"crawl": 50_000, "books": 20_000, "wiki": 3000}
    plan = corpus_prep.plan_mixture(ample, longest, weights, 3.4)
    assert not plan["too_small"] and plan["quota"]["wiki"] == pytest.approx(3.4 * 3000)
    assert all(plan["quota"][n] / plan["nominal"] == pytest.approx(w) for n, w in weights.items())
    given = corpus_prep.plan_mixture(ample, longest, weights, 3.4, total=200_000)
    assert given["too_small"] == pytest.approx({"wiki": 0.1 * 200_000 / 3000})


def test_prepare_corpus_names_a_source_too_small_for_its_weight(tmp_path, caplog):
    """GPT-3's weights with a crawl that filtering left nearly empty (the tiny preset's case):
    before, the mixture was that one document, 6 times over, with no word said."""
    from experiments import prepare_corpus
    from experiments.configs import corpus
    rng = np.random.default_rng(9)
    rows = {"crawl": ["a short page of the crawl"],
            "books": [prose(rng, 300) for _ in range(10)],
            "wiki": [prose(rng, 40) for _ in range(20)]}
    for name, texts in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    config = corpus.get_config("tiny")
    config.sources = {name: corpus.source(w, f"jsonl:{tmp_path}/{name}.jsonl")
                      for name, w in (("crawl", 0.6), ("books", 0.3), ("wiki", 0.1))}
    with caplog.at_level(logging.WARNING):
        stats = prepare_corpus.main(config, tmp_path / "out")
    mix = stats["mixture"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    needed = mix["too_small"]["crawl"]["epochs_needed"]
    assert re.search(rf"source crawl is too small.* {needed:.1f} epochs.*max_epochs 3\.4",
                     warnings[0]), warnings[0]
    assert list(mix["too_small"]) == ["crawl"] and needed > 100
    assert max(mix["epochs"].values()) <= 3.4
    assert mix["epochs"]["wiki"] == pytest.approx(3.4, abs=0.2)    # the source that binds
    assert mix["share"]["books"] / mix["share"]["wiki"] == pytest.approx(3.0, rel=0.1)


def test_binary_and_latin1_files_are_skipped_with_one_warning_naming_them(tmp_path, caplog):
    (tmp_path / "page.txt").write_text("plain text\n", encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin.txt").write_bytes("un café\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        docs = list(corpus_prep.local_corpus(f"files:{tmp_path}/*", "crawl"))
    assert [d["text"] for d in docs] == ["plain text\n"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "blob.bin" in warnings[0] and "latin.txt" in warnings[0]


def test_a_bad_jsonl_line_names_the_file_and_the_line(tmp_path):
    cases = {"json": (b'{"text": "a"}\n\n{"text": "b"\n', 3, "is not JSON"),
             "list": (b'{"text": "a"}\n["a"]\n', 2, "not a JSON object"),
             "number": (b'{"text": 7}\n', 1, "string field 'text'"),
             "binary": (b'{"text": "a"}\n' + bytes(range(128, 256)) + b"\n", 2, "not UTF-8")}
    for name, (body, line, what) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(body)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} line {line} .*{what}"):
            list(corpus_prep.read_jsonl([path]))


# ----------------------------------------------------------------------------- streaming


def test_every_step_streams_from_a_generator(tmp_path):
    rng = np.random.default_rng(5)
    pulled = itertools.count()

    def endless():  # an unbounded corpus: only a streaming pipeline can take a prefix of it
        for i in itertools.count():
            next(pulled)
            yield doc(i, prose(rng, 50) if i % 3 else "repeated text " * 20)

    clf = corpus_prep.QualityClassifier(n_features=2 ** 10, folds=1)
    clf.fit([doc(i, prose(rng), "ref") for i in range(10)],
            [doc(i, junk(rng), "raw") for i in range(10)])
    scored = []
    steps = corpus_prep.drop_duplicates(
        corpus_prep.quality_filter(endless(), clf, 9.0, np.random.default_rng(0), batch=8,
                                   on_scored=lambda d, s, k: scored.append(k)),
        corpus_prep.NearDuplicates())
    paths = corpus_prep.write_shards(itertools.islice(steps, 25), tmp_path, docs_per_shard=10)
    assert [p.name for p in paths] == ["shard-00000.jsonl", "shard-00001.jsonl",
                                       "shard-00002.jsonl"]
    back = list(corpus_prep.read_jsonl(paths))
    assert len(back) == 25 and len({d["text"] for d in back}) == 25
    # It ended on an endless corpus, having read nothing beyond the batch it was scoring.
    assert 0 <= next(pulled) - len(scored) < 8
    assert not list(tmp_path.glob("*.tmp"))


def test_reservoir_sample_is_uniform_and_bounded():
    rng = np.random.default_rng(6)
    counts = np.zeros(50)
    for _ in range(2000):
        counts[corpus_prep.reservoir(iter(range(50)), 5, rng)] += 1
    np.testing.assert_allclose(counts / 2000, 0.1, atol=0.03)
    assert corpus_prep.reservoir(range(3), 5, rng) == [0, 1, 2]


def test_stdlib_corpora():
    modules = list(itertools.islice(corpus_prep.local_corpus("stdlib_modules", "books1"), 3))
    assert all(d["id"].startswith("books1:") and d["text"] for d in modules)
    docs = list(itertools.islice(corpus_prep.local_corpus("stdlib_module_docs", "wiki"), 3))
    assert all("\n" not in d["id"] and d["text"] for d in docs)
    source = '"""Module."""\n# A comment\n# on two lines.\nx = 1  # inline\n\ndef f():\n' \
             '    """Does f."""\n'
    assert corpus_prep._docstrings_and_comments(source) == ["Does f.", "A comment\non two lines."]
    with pytest.raises(ValueError, match="unknown corpus"):
        next(corpus_prep.local_corpus("cc", "x"))


# ----------------------------------------------------------------------------- end to end


def test_prepare_corpus_end_to_end(tmp_path):
    from experiments import prepare_corpus
    from experiments.configs import corpus
    rng = np.random.default_rng(7)
    rows = {
        "ref": [prose(rng, 80) for _ in range(30)],
        "crawl": [junk(rng, 60) for _ in range(40)] + [prose(rng, 80) for _ in range(10)],
        "books": [prose(rng, 300) for _ in range(10)]}
    rows["crawl"] += [rows["ref"][0], rows["crawl"][0]]         # one across, one within
    for name, texts in rows.items():
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    config = corpus.get_config("tiny")
    config.sources = {
        "crawl": corpus.source(0.6, f"jsonl:{tmp_path}/crawl.jsonl", filter=True),
        "ref": corpus.source(0.3, f"jsonl:{tmp_path}/ref.jsonl"),
        "books": corpus.source(0.1, f"jsonl:{tmp_path}/books.jsonl")}
    config.quality.update(reference="ref", n_features=2 ** 12, alpha=3.0, C=10.0)
    config.docs_per_shard = 25
    stats = prepare_corpus.main(config, tmp_path / "out")

    crawl = stats["sources"]["crawl"]
    assert crawl["docs_in"] == 52 and crawl["quality"]["scored"] == 52
    assert 0 < crawl["quality"]["kept"] < 52
    assert crawl["docs_out"] == crawl["quality"]["kept"] - crawl["dedup"]["exact_duplicates"] \
        - crawl["dedup"]["near_duplicates"]
    assert stats["sources"]["ref"]["docs_out"] == 30 and stats["sources"]["books"]["docs_out"] == 10
    assert stats["classifier"]["reference_docs"] == 30 and stats["classifier"]["raw_docs"] == 52
    kept = [int(d["id"].split(":")[1]) for d in corpus_prep.read_jsonl(
        sorted((tmp_path / "out" / "sources" / "crawl").glob("*.jsonl")))]
    prose_rate, junk_rate = sum(40 <= i < 50 for i in kept) / 10, sum(i < 40 for i in kept) / 40
    assert prose_rate > 2 * junk_rate
    assert 50 not in kept and 51 not in kept  # the repeats of ref 0 and crawl 0
    mix = stats["mixture"]
    for name, weight in (("crawl", 0.6), ("ref", 0.3), ("books", 0.1)):
        assert abs(mix["share"][name] - weight) < 0.05
    assert max(mix["epochs"].values()) == pytest.approx(3.4, abs=0.3)  # within a document
    out = list(corpus_prep.read_jsonl(sorted((tmp_path / "out" / "corpus").glob("*.jsonl"))))
    assert len(out) == mix["docs"] and mix["shards"] == -(-len(out) // 25)
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["mixture"] == mix
    assert stats["machine"]["cores"] >= 1


def test_bad_config_is_named(tmp_path):
    from experiments import prepare_corpus
    from experiments.configs import corpus
    config = corpus.get_config("tiny")
    config.quality.reference = "webtext3"
    with pytest.raises(ValueError, match="quality.reference"):
        prepare_corpus.main(config, tmp_path)
    with pytest.raises(ValueError, match="unknown preset"):
        corpus.get_config("huge")
