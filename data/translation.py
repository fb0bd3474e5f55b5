"""Parallel corpora for translation -> one shared BPE -> batches of pairs of similar length.

Sources (data_cfg.source):
  sentences  offline, the default: English sentences built around cardinals, ordinals, years,
           dates and amounts of money, into French, German, Spanish and Italian (data.tgt_lang,
           a comma list), each source led by its target language's token (`<2de> ...`), split
           by template and by number (data/number_sentences.py)
  numbers  offline, a quick smoke test: integers drawn without repeats from [0, max_number), written out by
           `num2words` in both languages ("three hundred and twelve thousand" -> "trois cent
           douze mille"); split BY NUMBER, so no val or test number is ever seen in training
  hf       a Hugging Face translation dataset (wmt14 "de-en", "fr-en", ...): a column
           (`translation_column`) of {lang: text} per example; local json / jsonl / parquet
           files of that shape through hf_dataset="json" / "parquet" and hf_data_files

Vaswani et al. section 5.1: source and target share one BPE vocabulary (here byte-level, trained
on both sides of the train split, cached on disk), and "sentence pairs were batched together by
approximate sequence length. Each training batch contained a set of sentence pairs containing
approximately 25000 source tokens and 25000 target tokens": LengthBatches.

data.train_fraction keeps the first fraction of the training pairs, after the vocabulary is
built from all of them, so that runs on less data share one vocabulary.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
from filelock import FileLock

from data import number_sentences, sources, text
from data.iterators import EpochBatches
from data.tokenizer import Tokenizer, train_bpe

PAD, BOS, EOS = "<pad>", "<s>", "</s>"     # ids 0, 1, 2 of every tokenizer trained here
_FORMAT = 1  # bump to invalidate cached tokenizers


@dataclass
class Pairs:
    """One split: source and target sentences, index-aligned; `dropped` counts the rows left
    out by reason ("empty source", "empty target": nothing but whitespace)."""
    src: list[str]
    tgt: list[str]
    dropped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.src)


# ----------------------------------------------------------------------------- sources


def check_number_langs(*langs: str) -> None:
    from num2words import CONVERTER_CLASSES
    for lang in langs:
        if lang not in CONVERTER_CLASSES:
            raise ValueError(f"num2words has no language {lang!r}; choose from "
                             f"{sorted(CONVERTER_CLASSES)}")


def number_pairs(max_number: int, sizes: dict[str, int], seed: int = 0, src_lang: str = "en",
                 tgt_lang: str = "fr") -> dict[str, Pairs]:
    """{split: Pairs} of numbers written out in src_lang and tgt_lang. The numbers of all splits
    are drawn together without repeats (val first, then test, then train), so no number is in
    two splits."""
    from num2words import num2words
    check_number_langs(src_lang, tgt_lang)
    total = sum(sizes.values())
    if min(sizes.values()) <= 0:
        raise ValueError(f"every split needs at least one number, got sizes {sizes}")
    if total > max_number:
        raise ValueError(f"{total} numbers ({sizes}) do not fit in [0, max_number={max_number})")
    numbers = np.random.default_rng(seed).choice(max_number, size=total, replace=False)
    out, start = {}, 0
    for split in ("val", "test", "train"):
        chosen = numbers[start:start + sizes[split]]
        start += sizes[split]
        out[split] = Pairs([num2words(int(n), lang=src_lang) for n in chosen],
                           [num2words(int(n), lang=tgt_lang) for n in chosen])
    return out


def sentence_pairs(data_cfg) -> dict[str, Pairs]:
    """{split: Pairs} of number_sentences for data_cfg: the source led by the target's token."""
    d = data_cfg
    sizes = dict(val=d.val_size, test=d.test_size, train=d.train_size)
    if min(sizes.values()) <= 0:
        raise ValueError(f"every split needs at least one sentence, got sizes {sizes}")
    out = {}
    for split, n in sizes.items():
        drawn = number_sentences.sentences(split, n, d.split_seed, d.src_lang,
                                           target_langs(d), d.clauses, d.max_number)
        out[split] = Pairs([x.src for x in drawn], [x.tgt for x in drawn])
    return out


def target_langs(data_cfg) -> tuple[str, ...]:
    """data.tgt_lang as a tuple: "fr,de,es" -> ("fr", "de", "es"); several only for the
    sentences, whose sources carry the target's token."""
    langs = tuple(x.strip() for x in data_cfg.tgt_lang.split(","))
    if len(langs) > 1 and data_cfg.source != "sentences":
        raise ValueError(f"data.tgt_lang {data_cfg.tgt_lang!r}: several target languages need "
                         f"data.source 'sentences' (it has {data_cfg.source!r})")
    if data_cfg.src_lang in langs:
        raise ValueError(f"data.src_lang {data_cfg.src_lang!r} is also in data.tgt_lang "
                         f"{data_cfg.tgt_lang!r}")
    return langs


def cached_pairs(data_cfg) -> dict[str, Pairs]:
    """The generated corpus of data_cfg (numbers or sentences), kept as JSON in the cache dir
    (num2words takes a minute for 50,000 sentences)."""
    d = data_cfg
    path = (text._cache_dir(d) / "translation" / f"{d.source}-"
            f"{text._digest(_identity(d, False))}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            if d.source == "numbers":
                check_number_langs(d.src_lang, d.tgt_lang)
                pairs = number_pairs(d.max_number, dict(train=d.train_size, val=d.val_size,
                                                        test=d.test_size),
                                     d.split_seed, d.src_lang, d.tgt_lang)
            else:
                pairs = sentence_pairs(d)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({k: [v.src, v.tgt] for k, v in pairs.items()}))
            os.replace(tmp, path)
        return {k: Pairs(*v) for k, v in json.loads(path.read_text()).items()}


def hf_pairs(data_cfg, split: str) -> Pairs:
    """`split` ("train", "val", "test") of a translation dataset through HF `datasets`: every
    example's {src_lang: ..., tgt_lang: ...} of the translation column."""
    ds = text._hf_split(data_cfg, split)
    column = data_cfg.translation_column
    name = repr(data_cfg.hf_dataset)
    if column not in ds.column_names:
        raise ValueError(f"hf dataset {name} has no column {column!r} (has {ds.column_names}); "
                         f"set data.translation_column")
    if data_cfg.max_examples > 0:
        ds = ds.select(range(min(int(data_cfg.max_examples), len(ds))))
    rows = ds.with_format("arrow")[column].to_pylist()
    if type(ds.features[column]).__name__ == "Json":   # rows of unlike keys: JSON strings
        rows = [json.loads(r) if isinstance(r, str) else r for r in rows]
    out, where = Pairs([], []), _where(data_cfg, split)
    for i, row in enumerate(rows):
        texts = _pair_of(row, data_cfg, f"{where}, row {i}")
        empty = [side for side, t in zip(("source", "target"), texts) if not t.strip()]
        if empty:
            reason = f"empty {empty[0]}"
            out.dropped[reason] = out.dropped.get(reason, 0) + 1
            continue
        out.src.append(texts[0])
        out.tgt.append(texts[1])
    return out


def _where(data_cfg, split: str) -> str:
    """The file(s) a split of an HF translation dataset comes from, for error messages."""
    files = sources.parse_data_files(data_cfg.hf_data_files)
    if isinstance(files, dict):
        files = next((files[n] for n in text._HF_SPLIT_NAMES[split] if n in files), None) \
            or [f"the {split} split carved from {', '.join(files.get('train', []))}"]
    return ", ".join(files) if files else f"the {split} split of {data_cfg.hf_dataset!r}"


def _pair_of(row, data_cfg, where: str) -> tuple[str, str]:
    """(source, target) of one row of the translation column; a row of another shape, or
    without one of the languages, is named."""
    column = data_cfg.translation_column
    if not isinstance(row, dict):
        raise ValueError(f"{where}: column {column!r} holds {type(row).__name__} "
                         f"{str(row)[:60]!r}, not {{language: text}}")
    out = []
    for lang in (data_cfg.src_lang, data_cfg.tgt_lang):
        value = row.get(lang)
        if not isinstance(value, str):
            has = sorted(k for k, v in row.items() if v is not None)
            raise ValueError(f"{where}: no language {lang!r} text (has {has}); every row needs "
                             f"both data.src_lang and data.tgt_lang")
        out.append(value)
    return out[0], out[1]


def load_corpus(data_cfg) -> dict[str, Pairs]:
    """{"train", "val", "test": Pairs} of data_cfg's source; an empty split is an error."""
    d = data_cfg
    if d.src_lang == d.tgt_lang:
        raise ValueError(f"data.src_lang and data.tgt_lang are both {d.src_lang!r}")
    target_langs(d)
    if d.source == "numbers":
        check_number_langs(d.src_lang, d.tgt_lang)
        corpus = cached_pairs(d)
    elif d.source == "sentences":
        corpus = cached_pairs(d)
    elif d.source == "hf":
        if not d.hf_dataset:
            raise ValueError("data.source 'hf' needs data.hf_dataset (a hub name such as "
                             "'wmt14' with data.hf_config 'de-en', or 'json' / 'parquet' with "
                             "data.hf_data_files)")
        corpus = {split: hf_pairs(d, split) for split in sources.SPLITS}
    else:
        raise ValueError(f"unknown data.source {d.source!r}; choose sentences, numbers or "
                         f"hf")
    for split, pairs in corpus.items():
        if not len(pairs):
            raise ValueError(f"the {split} split of data.source {d.source!r} holds no sentence "
                             f"pairs with both {d.src_lang!r} and {d.tgt_lang!r}")
    return corpus


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")


def take_fraction(pairs: Pairs, fraction: float) -> Pairs:
    """The first `fraction` of the pairs (at least one): data.train_fraction."""
    check_fraction(fraction)
    n = max(1, round(fraction * len(pairs)))
    return Pairs(pairs.src[:n], pairs.tgt[:n], dict(pairs.dropped))


# ----------------------------------------------------------------------------- vocabulary


def _identity(data_cfg, vocab: bool = True) -> dict:
    """What the splits (and with vocab=True the BPE) depend on."""
    keys = {"numbers": ("max_number", "train_size", "val_size", "test_size", "split_seed"),
            "sentences": ("max_number", "train_size", "val_size", "test_size", "split_seed",
                          "clauses")}.get(
        data_cfg.source,
        ("hf_dataset", "hf_config", "hf_data_files", "translation_column", "max_examples"))
    keys += ("vocab_size", "bpe_examples") if vocab else ()
    ident = {k: data_cfg[k] for k in ("source", "src_lang", "tgt_lang") + keys}
    if data_cfg.source == "hf":
        files = sources.parse_data_files(data_cfg.hf_data_files) or []
        paths = [pathlib.Path(os.path.expanduser(p)) for v in
                 (files.values() if isinstance(files, dict) else [files]) for p in v]
        ident["files"] = sources.file_stats(p for p in paths if p.is_file())
    return dict(ident, format=_FORMAT)


def joint_bpe(pairs: Pairs, vocab_size: int, limit: int = 0, extra_tokens=()) -> Tokenizer:
    """One byte-level BPE trained on both sides of `pairs` (the first `limit` pairs, 0: all);
    <pad>, <s>, </s> are ids 0, 1, 2, then extra_tokens (the target-language tokens)."""
    n = len(pairs) if limit <= 0 else min(limit, len(pairs))
    return train_bpe((s for p in zip(pairs.src[:n], pairs.tgt[:n]) for s in p), vocab_size,
                     special_tokens=(PAD, BOS, EOS, *extra_tokens))


def language_tokens(data_cfg) -> tuple[str, ...]:
    """The target-language tokens the sources begin with (sentences only)."""
    if data_cfg.source != "sentences":
        return ()
    return tuple(number_sentences.lang_token(lang) for lang in target_langs(data_cfg))


def get_tokenizer(data_cfg, train: Pairs | None = None) -> Tokenizer:
    """data_cfg.tokenizer if set, else the joint BPE of the train split, cached in cache_dir
    (train: the split when the caller has it loaded already)."""
    if data_cfg.tokenizer:
        tok = Tokenizer.load(os.path.expanduser(data_cfg.tokenizer))
    else:
        key = text._digest(_identity(data_cfg))
        path = (text._cache_dir(data_cfg) / "tokenizers"
                / f"joint-bpe{data_cfg.vocab_size}-{key}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):   # one process trains, the others wait and load
            if not path.exists():
                pairs = train if train is not None else load_corpus(data_cfg)["train"]
                joint_bpe(pairs, data_cfg.vocab_size, data_cfg.bpe_examples,
                          language_tokens(data_cfg)).save(path)
        tok = Tokenizer.load(path)
    check_specials(tok)
    return tok


def check_specials(tok: Tokenizer) -> None:
    for want, token in enumerate((PAD, BOS, EOS)):
        try:
            got = tok.token_id(token)
        except KeyError:
            got = None
        if got != want:
            raise ValueError(f"the tokenizer must have {token!r} as id {want} (pad, bos, eos = "
                             f"0, 1, 2), it has {got}")


def detokenize(tok: Tokenizer, ids) -> str:
    """Ids up to the first </s>, specials dropped, as text."""
    ids = [int(i) for i in ids]
    eos = ids.index(2) if 2 in ids else len(ids)
    return tok.decode([i for i in ids[:eos] if i > 2]).strip()


# ----------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """A split as token ids: src = x + </s>; tgt = <s> + y + </s> (tgt[:-1] is the decoder's
    input, tgt[1:] its target)."""
    src: list[np.ndarray]
    tgt: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.src)


def encode(tok: Tokenizer, pairs: Pairs) -> Encoded:
    def ids(texts, prefix):
        return [np.asarray(prefix + t + [2], np.int32) for t in tok.encode_batch(texts)]
    return Encoded(ids(pairs.src, []), ids(pairs.tgt, [1]))


def encode_splits(tok: Tokenizer, corpus: dict[str, Pairs], max_len: int
                  ) -> tuple[dict[str, Encoded], dict[str, dict]]:
    """Every split encoded and fitted to max_len (fit_length: training pairs too long are
    dropped, val and test ones cut, so BLEU scores those from a cut source). Returns the
    splits and the data report: {split: {"pairs": kept, "dropped": {reason: n}, "cut": n}}."""
    encoded, report = {}, {}
    for split, pairs in sorted(corpus.items(), key=lambda kv: sources.SPLITS.index(kv[0])):
        train = split == "train"
        encoded[split], long = fit_length(encode(tok, pairs), max_len, drop=train)
        dropped = dict(pairs.dropped)
        if train and long:
            dropped[f"longer than max_len {max_len}"] = long
        report[split] = {"pairs": len(encoded[split]), "dropped": dropped,
                         "cut": 0 if train else long}
    return encoded, report


def report_lines(report: dict[str, dict], max_len: int) -> list[str]:
    """One line per split of encode_splits' report."""
    lines = []
    for split, r in report.items():
        dropped = sum(r["dropped"].values())
        reasons = ", ".join(f"{n} {why}" for why, n in r["dropped"].items())
        lines.append(f"{split}: {r['pairs']} sentence pairs; {dropped} dropped"
                     + (f" ({reasons})" if dropped else "")
                     + (f"; {r['cut']} cut to max_len {max_len} (scored on their cut source)"
                        if r["cut"] else ""))
    return lines


def fit_length(enc: Encoded, max_len: int, drop: bool) -> tuple[Encoded, int]:
    """Pairs whose source or decoder input exceeds max_len tokens: dropped (training) or cut,
    keeping their final </s> (evaluation). Returns (pairs, how many were too long)."""
    long = [i for i in range(len(enc)) if len(enc.src[i]) > max_len
            or len(enc.tgt[i]) - 1 > max_len]
    if not long:
        return enc, 0
    if drop:
        keep = sorted(set(range(len(enc))) - set(long))
        return Encoded([enc.src[i] for i in keep], [enc.tgt[i] for i in keep]), len(long)
    cut = lambda a, n: a if len(a) <= n else np.append(a[:n - 1], a[-1])  # noqa: E731
    return Encoded([cut(s, max_len) for s in enc.src],
                   [cut(t, max_len + 1) for t in enc.tgt]), len(long)


# ----------------------------------------------------------------------------- batches


def bucket_length(n: int, step: int) -> int:
    return -(-n // step) * step


class LengthBatches(EpochBatches):
    """Pairs grouped by length: each batch holds pairs of one length bucket (the longer of the
    source and the decoder input, rounded up to a multiple of `pad_step`, at most `max_len`
    when given), padded to it, and
    about `tokens_per_batch` tokens per side: tokens_per_batch // length rows, rounded down to a
    multiple of `row_multiple` (the data-parallel shards times the gradient-accumulation
    microbatches). tokens_per_batch 0: `rows` rows per batch. A bucket's last batch is filled
    with padding rows of weight 0 (so there are only as many batch shapes as buckets).

    Each epoch the pairs of a bucket are shuffled (rng (seed, epoch, bucket)) and cut into
    batches, and the base class orders the batches (its permutation of the epoch): a batch is
    an "example" of the base, which owns the position, so a resume is bit-exact. shuffle=False:
    buckets in order of length, pairs in their order, one pass.

    Batch: src, tgt_in, tgt_out int32 [rows, length]; weights float32 [rows, length] (1 on the
    target tokens that count); index int32 [rows] (the pair's index, -1 on padding rows).
    With process_count P, each process gets its share of the rows of every batch."""

    kind = "LengthBatches"

    def __init__(self, enc: Encoded, tokens_per_batch: int, *, seed: int, shuffle: bool = True,
                 rows: int = 0, row_multiple: int = 1, pad_step: int = 8, max_len: int = 0,
                 pad_id: int = 0,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 2):
        if not len(enc):
            raise ValueError("no sentence pairs to batch")
        if tokens_per_batch < 0 or (tokens_per_batch == 0 and rows <= 0):
            raise ValueError(f"tokens_per_batch must be positive (or 0 with rows > 0), got "
                             f"{tokens_per_batch} and rows {rows}")
        multiple = int(np.lcm(row_multiple, process_count))
        self.enc, self.pad_id, self.multiple = enc, pad_id, multiple
        self.process_index, self.process_count = process_index, process_count
        lengths = np.array([max(len(s), len(t) - 1) for s, t in zip(enc.src, enc.tgt)])
        padded = -(-lengths // pad_step) * pad_step
        if max_len:     # pad no further than the model's longest sequence
            if lengths.max() > max_len:
                raise ValueError(f"a pair of {lengths.max()} tokens is longer than max_len "
                                 f"{max_len}")
            padded = np.minimum(padded, max_len)
        self.bucket_lengths = sorted(set(padded.tolist()))
        self.members = [np.flatnonzero(padded == b) for b in self.bucket_lengths]
        if tokens_per_batch:
            self.bucket_rows = [max(multiple, tokens_per_batch // b // multiple * multiple)
                                for b in self.bucket_lengths]
        else:
            self.bucket_rows = [-(-rows // multiple) * multiple] * len(self.bucket_lengths)
        self.slots = [(b, j) for b, m in enumerate(self.members)
                      for j in range(-(-len(m) // self.bucket_rows[b]))]
        self._groups_epoch, self._groups = None, None
        super().__init__(len(self.slots), 1, seed=seed, shuffle=shuffle, prefetch=prefetch)

    def identity(self) -> dict:
        return dict(super().identity(), pairs=len(self.enc), rows=list(self.bucket_rows))

    def groups(self, epoch: int) -> list[np.ndarray]:
        """The pair indices of every batch slot in `epoch`."""
        if self._groups_epoch != epoch:
            out = []
            for b, m in enumerate(self.members):
                if self.shuffle:
                    m = np.random.default_rng((self.seed, epoch, b)).permutation(m)
                r = self.bucket_rows[b]
                out += [m[k:k + r] for k in range(0, len(m), r)]
            self._groups, self._groups_epoch = out, epoch
        return self._groups

    def make_batch(self, indices, rngs):
        slot = int(indices[0])          # one batch slot per base "example"
        b = self.slots[slot][0]
        return self.build(self.groups(rngs.epoch)[slot], self.bucket_rows[b],
                          self.bucket_lengths[b])

    def build(self, pairs: np.ndarray, rows: int, length: int) -> dict[str, np.ndarray]:
        """This process's rows of the batch of `pairs`, padded to `rows` x `length`."""
        local = rows // self.process_count
        ids = np.full(rows, -1, np.int32)
        ids[:len(pairs)] = pairs
        ids = ids[self.process_index * local:(self.process_index + 1) * local]
        src = np.full((local, length), self.pad_id, np.int32)
        tgt = np.full((local, length + 1), self.pad_id, np.int32)
        for r, i in enumerate(ids):
            s, t = self.enc.src[i if i >= 0 else pairs[0]], self.enc.tgt[i if i >= 0 else pairs[0]]
            src[r, :len(s)], tgt[r, :len(t)] = s, t
        weights = (tgt[:, 1:] != self.pad_id) & (ids >= 0)[:, None]
        return {"src": src, "tgt_in": tgt[:, :-1], "tgt_out": tgt[:, 1:],
                "weights": weights.astype(np.float32), "index": ids}

