"""Translation: the number-phrase corpus and its split, the joint BPE, HF-format files, length
batching, the BLEU evaluator against sacreBLEU, and the experiment end to end."""

import json
import pathlib
import types

import ml_collections
import numpy as np
import pytest
import sacrebleu
from num2words import num2words

from data import translation as tr
from experiments import translate
from experiments.configs import transformer as configs
from train import evaluators
from train.evaluators.translation import BLEU


def data_cfg(tmp_path, **overrides):
    d = configs.data_config(max_number=3000, train_size=400, val_size=24, test_size=24,
                            vocab_size=320, tokens_per_batch=256, cache_dir=str(tmp_path))
    d.update(overrides)
    return d


def rows(workdir, split):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ----------------------------------------------------------------------------- corpus


def test_numbers_are_split_by_number_and_aligned():
    sizes = dict(train=500, val=60, test=60)
    corpus = tr.number_pairs(2000, sizes, seed=3)
    assert {k: len(v) for k, v in corpus.items()} == sizes
    number_of = {num2words(n): n for n in range(2000)}
    numbers = {k: {number_of[s] for s in v.src} for k, v in corpus.items()}
    assert not numbers["test"] & numbers["train"] and not numbers["val"] & numbers["train"]
    assert not numbers["test"] & numbers["val"]
    for split in corpus.values():          # each target is its source's number, in French
        for s, t in zip(split.src[:50], split.tgt[:50]):
            assert t == num2words(number_of[s], lang="fr")
    assert tr.number_pairs(2000, sizes, seed=3)["test"].src == corpus["test"].src
    assert num2words(312000, lang="fr") == "trois cent douze mille"


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="no language 'xx'"):
        tr.load_corpus(data_cfg(tmp_path, tgt_lang="xx"))
    with pytest.raises(ValueError, match="both 'en'"):
        tr.load_corpus(data_cfg(tmp_path, tgt_lang="en"))
    with pytest.raises(ValueError, match="do not fit"):
        tr.number_pairs(100, dict(train=90, val=10, test=10))
    with pytest.raises(ValueError, match="unknown data.source"):
        tr.load_corpus(data_cfg(tmp_path, source="wmt"))
    with pytest.raises(ValueError, match="needs data.hf_dataset"):
        tr.load_corpus(data_cfg(tmp_path, source="hf"))


def write_jsonl(path, pairs, lang_a="en", lang_b="de", column="translation"):
    path.write_text("".join(json.dumps({column: {lang_a: a, lang_b: b}}) + "\n"
                            for a, b in pairs))
    return str(path)


def hf_cfg(tmp_path, files, **overrides):
    spec = ",".join(f"{k}={v}" for k, v in files.items())
    kind = pathlib.Path(files["train"]).suffix[1:].replace("jsonl", "json")
    fields = dict(source="hf", hf_dataset=kind, hf_data_files=spec, src_lang="en",
                  tgt_lang="de")
    return data_cfg(tmp_path, **{**fields, **overrides})


def test_hf_translation_files_jsonl_and_parquet(tmp_path):
    import datasets
    pairs = {s: [(f"{s} sentence {i}", f"{s} Satz {i}") for i in range(n)]
             for s, n in (("train", 12), ("validation", 3), ("test", 4))}
    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", p) for s, p in pairs.items()}
    corpus = tr.load_corpus(hf_cfg(tmp_path, files))
    assert corpus["val"].src == [a for a, _ in pairs["validation"]]
    assert corpus["test"].tgt == [b for _, b in pairs["test"]]
    assert len(corpus["train"]) == 12
    assert len(tr.hf_pairs(hf_cfg(tmp_path, files, max_examples=5), "train")) == 5
    parquet = {}
    for s, p in pairs.items():
        parquet[s] = str(tmp_path / f"{s}.parquet")
        datasets.Dataset.from_list([{"translation": {"en": a, "de": b}} for a, b in p]) \
            .to_parquet(parquet[s])
    corpus = tr.load_corpus(hf_cfg(tmp_path, parquet))
    assert corpus["train"].tgt[7] == "train Satz 7"
    with pytest.raises(ValueError, match="no language 'fr'.*has \\['de', 'en'\\]"):
        tr.load_corpus(hf_cfg(tmp_path, files, tgt_lang="fr"))
    with pytest.raises(ValueError, match="no column 'pairs'"):
        tr.load_corpus(hf_cfg(tmp_path, files, translation_column="pairs"))
    files["test"] = str(tmp_path / "empty.jsonl")
    write_jsonl(tmp_path / "empty.jsonl", [("", "leer")])   # no English side
    with pytest.raises(ValueError, match="test split .* holds no sentence pairs"):
        tr.load_corpus(hf_cfg(tmp_path, files))


# ----------------------------------------------------------------------------- vocabulary


def test_joint_bpe_shared_vocabulary_round_trip_and_cache(tmp_path):
    d = data_cfg(tmp_path)
    corpus = tr.load_corpus(d)
    tok = tr.get_tokenizer(d, corpus["train"])
    assert [tok.token_id(t) for t in (tr.PAD, tr.BOS, tr.EOS)] == [0, 1, 2]
    assert tok.vocab_size <= d.vocab_size
    for text in corpus["test"].src[:5] + corpus["test"].tgt[:5] + ["quatre-vingt-onze éà"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tr.detokenize(tok, [1, *ids, 2, 0, 0, 7]) == text   # cut at </s>
    # one vocabulary: the words of both languages are single tokens of it
    assert len(tok.encode(" mille")) == 1 and len(tok.encode(" thousand")) == 1
    cached = list((tmp_path / "tokenizers").glob("joint-bpe320-*.json"))
    assert len(cached) == 1
    assert tr.get_tokenizer(d).to_str() == tok.to_str()      # from the cache, no corpus given
    tok.save(tmp_path / "bad.json")
    bad = tr.train_bpe(["abc def"], 260)                      # no <pad>, <s>, </s>
    bad.save(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="'<pad>' as id 0"):
        tr.get_tokenizer(data_cfg(tmp_path, tokenizer=str(tmp_path / "bad.json")))


# ----------------------------------------------------------------------------- batches


def encoded(n=300, seed=0):
    rng = np.random.default_rng(seed)
    src = [rng.integers(3, 50, rng.integers(2, 30)).astype(np.int32) for _ in range(n)]
    tgt = [np.concatenate([[1], rng.integers(3, 50, rng.integers(1, 30)), [2]]).astype(np.int32)
           for _ in range(n)]
    return tr.Encoded(src, tgt)


def test_length_batches_token_budget_and_coverage():
    enc = encoded()
    it = tr.LengthBatches(enc, 200, seed=1, row_multiple=2, prefetch=0)
    seen = []
    for _ in range(it.steps_per_epoch):
        b = next(it)
        rows, length = b["src"].shape
        assert length % 8 == 0 and rows % 2 == 0 and b["tgt_in"].shape == (rows, length)
        assert rows * length <= 200 or rows == 2            # about tokens_per_batch per side
        real = b["index"] >= 0
        for r, i in zip(np.flatnonzero(real), b["index"][real]):
            s, t = enc.src[i], enc.tgt[i]
            assert length - 8 < max(len(s), len(t) - 1) <= length   # one length bucket
            np.testing.assert_array_equal(b["src"][r, :len(s)], s)
            assert not b["src"][r, len(s):].any()
            np.testing.assert_array_equal(b["tgt_in"][r, :len(t) - 1], t[:-1])
            np.testing.assert_array_equal(b["tgt_out"][r, :len(t) - 1], t[1:])
            assert b["weights"][r].sum() == len(t) - 1
        assert not b["weights"][~real].any()
        seen += b["index"][real].tolist()
    assert sorted(seen) == list(range(len(enc)))            # each pair once per epoch
    first = [next(it)["index"] for _ in range(3)]           # epoch 1 reshuffles
    assert any(len(a) != len(b) or (a != b).any() for a, b in
               zip(first, [it.batch_at(0, k)["index"] for k in range(3)]))


def test_length_batches_resume_bit_exact_and_process_rows():
    enc = encoded(120)
    a = tr.LengthBatches(enc, 160, seed=4, row_multiple=2)
    for _ in range(a.steps_per_epoch - 2):                  # resume across an epoch boundary
        next(a)
    state = json.loads(json.dumps(a.get_state()))
    want = [next(a) for _ in range(6)]
    b = tr.LengthBatches(enc, 160, seed=4, row_multiple=2)
    b.set_state(state)
    for x, y in zip(want, (next(b) for _ in range(6))):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="not the same data"):
        tr.LengthBatches(encoded(121), 160, seed=4, row_multiple=2).set_state(state)
    halves = [tr.LengthBatches(enc, 160, seed=4, row_multiple=2, process_index=p,
                               process_count=2).batch_at(1, 3) for p in (0, 1)]
    whole = tr.LengthBatches(enc, 160, seed=4, row_multiple=2).batch_at(1, 3)
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), whole[k])
    capped = tr.LengthBatches(enc, 160, seed=4, pad_step=16, max_len=30)
    assert capped.bucket_lengths[-1] == 30            # not 32: the model takes at most 30
    with pytest.raises(ValueError, match="longer than max_len 20"):
        tr.LengthBatches(enc, 160, seed=4, max_len=20)
    with pytest.raises(ValueError, match="no sentence pairs"):
        tr.LengthBatches(tr.Encoded([], []), 100, seed=0)


def test_fit_length_drops_or_cuts():
    enc = tr.Encoded([np.arange(3, 13, dtype=np.int32), np.array([5, 2], np.int32)],
                     [np.array([1, 4, 2], np.int32), np.array([1, 4, 2], np.int32)])
    kept, n = tr.fit_length(enc, 6, drop=True)
    assert n == 1 and len(kept) == 1 and kept.src[0].tolist() == [5, 2]
    cut, n = tr.fit_length(enc, 6, drop=False)
    assert n == 1 and cut.src[0].tolist() == [3, 4, 5, 6, 7, 12]


# ----------------------------------------------------------------------------- BLEU


STATE = types.SimpleNamespace(params={})


def bleu_evaluator(sources, refs, hyps, beam_size=4):
    """A bleu evaluator over one split whose 'model' returns the token ids of `hyps`."""
    words = sorted({w for h in hyps for w in h.split()})
    ids = {w: i + 3 for i, w in enumerate(words)}
    batches = [{"src": np.zeros((2, 4), np.int32), "index": np.array(idx, np.int32)}
               for idx in ([2, 0], [1, -1])]          # out of order, a padding row

    def translate(params, src, beam, alpha, extra):
        assert (beam, alpha, extra) == (beam_size, 0.6, 50)
        out = np.zeros((2, 12), np.int32)
        for r, i in enumerate(translate.indices.pop(0)):
            if i >= 0:
                t = [ids[w] for w in hyps[i].split()] + [2]
                out[r, :len(t)] = t
        return out
    translate.indices = [b["index"].tolist() for b in batches]
    fns = dict(translate=translate, texts={"test": (sources, refs)},
               detokenize=lambda row: " ".join(words[i - 3] for i in
                                               row[:list(row).index(2)]))
    ctx = evaluators.Context(program=None, data={"test": lambda: iter(batches)}, fns=fns)
    cfg = evaluators.spec(type="bleu", split="test", beam_size=beam_size, show=1)
    return BLEU("test_bleu", cfg, ml_collections.ConfigDict(dict(eval_every=10, eval_steps=0)),
                ctx)


def test_bleu_evaluator_matches_sacrebleu(capsys):
    refs = ["the cat sat on the mat", "a dog ran in the park today", "it is raining again"]
    hyps = ["the cat sat on a mat", "the dog ran in the park", "it is raining again"]
    got = bleu_evaluator(["s0", "s1", "s2"], refs, hyps).run(STATE)
    want = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert got == {"bleu": pytest.approx(want, abs=1e-9)} and 30 < want < 90
    assert "reference  the cat sat on the mat" in capsys.readouterr().err
    assert bleu_evaluator(["s"] * 3, refs, refs).run(STATE) == {"bleu": pytest.approx(100.0)}
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        bleu_evaluator(["s"] * 3, refs, refs, beam_size=0)


# ----------------------------------------------------------------------------- end to end


def tiny_config(tmp_path, steps=4):
    config = configs.get_config("tiny")
    config.data.update(max_number=3000, train_size=400, val_size=12, test_size=12,
                       vocab_size=320, tokens_per_batch=512, pad_step=32,
                       cache_dir=str(tmp_path / "cache"))   # one bucket: one shape to compile
    config.model.update(d_model=32, n_head=2, n_layer=1, d_ff=64, vocab_size=320, max_len=40)
    config.train.update(steps=steps, warmup_steps=2, noam_width=32, log_every=2,
                        eval_every=1000, ckpt_every=1000)
    del config.evals["val_bleu"]     # greedy decoding: test_transformer's
    return config


def test_tiny_run_logs_bleu_and_perplexity(tmp_path, capsys):
    config, workdir = tiny_config(tmp_path), tmp_path / "run"
    translate.main(config, str(workdir))
    test = rows(workdir, "test")[-1]
    assert test["step"] == 4 and 0.0 <= test["bleu"] <= 100.0
    assert test["perplexity"] == pytest.approx(np.exp(test["nll"]))
    assert test["perplexity"] < 320                          # below the uniform guess
    val = rows(workdir, "val")
    assert [r["step"] for r in val] == [0, 4]
    train = rows(workdir, "train")
    assert train[-1]["nll"] < train[0]["nll"]
    assert "examples" not in train[-1] and train[-1]["tokens_per_sec"] > 0
    assert (workdir / "tokenizer.json").exists()
    err = capsys.readouterr().err
    assert "hypothesis" in err and "test BLEU" in err
    translate.main(config, str(workdir))                     # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().err


def test_recurrent_baseline_trains_through_the_same_trainer_and_evaluators(tmp_path):
    config, workdir = tiny_config(tmp_path, steps=6), tmp_path / "rnn"
    config.model.arch = "rnn"
    config.rnn.update(embed_dim=24, hidden=20, attn_dim=16, maxout=12)
    config.data.train_fraction = 0.5
    translate.main(config, str(workdir))
    saved = json.loads((workdir / "data_report.json").read_text())
    assert saved["train"]["pairs"] == 200                     # half of the 400 pairs
    test = rows(workdir, "test")[-1]
    assert test["step"] == 6 and 0.0 <= test["bleu"] <= 100.0 and test["perplexity"] < 320
    train = rows(workdir, "train")
    assert train[-1]["nll"] < train[0]["nll"]
    assert json.loads((workdir / "config.json").read_text())["model"]["arch"] == "rnn"


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        configs.get_config("huge")
    config = tiny_config(tmp_path)
    config.label_smoothing = 1.0
    with pytest.raises(ValueError, match="label_smoothing"):
        translate.setup(config, str(tmp_path / "a"))
    config = tiny_config(tmp_path)
    config.model.vocab_size = 100
    with pytest.raises(ValueError, match="the tokenizer has .* tokens but model.vocab_size"):
        translate.setup(config, str(tmp_path / "b"))
    config = tiny_config(tmp_path)
    config.model.n_head = 3
    with pytest.raises(ValueError, match="not a multiple of n_head"):
        translate.setup(config, str(tmp_path / "c"))
    config = tiny_config(tmp_path)
    config.model.arch = "lstm"
    with pytest.raises(ValueError, match="unknown model.arch 'lstm'; choose from transformer"):
        translate.setup(config, str(tmp_path / "d"))
    config = tiny_config(tmp_path)
    config.data.train_fraction = 1.5
    with pytest.raises(ValueError, match=r"data.train_fraction must be in \(0, 1\]"):
        translate.main(config, str(tmp_path / "e"))
    assert not (tmp_path / "e").exists()
    for preset in ("base", "big"):
        c = configs.get_config(preset)
        assert (c.train.optimizer, c.train.b2, c.train.eps, c.train.warmup_steps) == \
            ("adam", 0.98, 1e-9, 4000)
        assert c.data.tokens_per_batch == 25_000 and c.label_smoothing == 0.1
    assert configs.get_config("base").model.d_model == 512
    default, rnn = configs.get_config(), configs.get_config("rnn")
    assert (default.data.source, default.model.arch, rnn.model.arch) == (
        "sentences", "transformer", "rnn")
    assert rnn.data.to_dict() == default.data.to_dict() and rnn.train == default.train
    assert configs.get_config("big").model.dropout == 0.3


# ----------------------------------------------------------------------------- named sweeps


@pytest.mark.parametrize("name, runs, varied", [
    ("A", 12, {"model.n_head": {1, 2, 8, 16}}),
    ("B", 6, {"model.d_k": {4, 8}}),
    ("C", 18, {"model.n_layer": {1, 2, 4}, "model.d_model": {32, 64, 128},
               "model.d_ff": {128, 256, 512}}),
    ("D", 12, {"model.dropout": {0.0, 0.1, 0.2}, "label_smoothing": {0.0, 0.1, 0.2}}),
    ("E", 3, {"model.positions": {"learned"}}),
    ("base_row", 3, {"model.n_head": {4}}),
    ("baseline", 3, {"model.arch": {"rnn"}}),
    ("data_size", 18, {"data.train_fraction": {0.125, 0.25, 0.5},
                       "model.arch": {"transformer", "rnn"}}),
])
def test_table_3_baseline_and_data_size_sweeps_expand_to_valid_configs(tmp_path, name, runs,
                                                                       varied):
    """Each named sweep on the sentences: 3 seeds per setting, every run's config parsed by the
    experiment's flags (nothing trained); the sweep varies what it names and follows the
    model (train.noam_width tracks d_model)."""
    from experiments import sweep
    from experiments.sweeps.grid import flat
    config = pathlib.Path(configs.__file__)
    plan = sweep.plan(["sweep", f"--config={config}:sentences", f"--workdir={tmp_path}",
                       f"--name={name}"])
    assert len(plan.runs) == runs and plan.metric == "test/bleu"
    assert {r.requested["seed"] for r in plan.runs} == {0, 1, 2}
    requested = [flat(r.requested) for r in plan.runs]
    for key, values in varied.items():
        assert {f[key] for f in requested} == values, key
    assert all(f["train.noam_width"] == f["model.d_model"] for f in requested)
    assert all(f["data.source"] == "sentences" for f in requested)
