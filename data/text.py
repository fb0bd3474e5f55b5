"""Text corpora -> cached BPE token streams -> packed, resumable training windows.

Sources (`data_cfg.source`):
  "stdlib"  the Python standard library's own .py files (ships with every Python), split by file;
  "files"   local text files (comma-separated paths/globs), split by file like the stdlib;
  "hf"      any Hugging Face `datasets` dataset (hub name or a local builder such as "json");
  NAME      a source registered in data/sources.py by the module that builds it, e.g. "icl":
            GPT-3's mixture of in-context task lists and the stdlib (data/icl_tasks.py, with
            the fields of `data_cfg.icl`);
  "auto"    (default) hf when hf_dataset is set, files when files is set, else stdlib.

A document is one file or one dataset row; empty documents are dropped. The token stream of a
split is every document followed by `<|endoftext|>`, concatenated, as in GPT-2's WebText.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import sys

import ml_collections
import numpy as np
from filelock import FileLock

from data import sources
from data.iterators import EpochBatches
from data.tokenizer import BYTES, Tokenizer, byte_tokenizer, from_gpt2_files, train_bpe

_FORMAT = 1  # bump to invalidate every cached tokenizer / token stream
_HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"),
                   "test": ("test",)}


_DEFAULTS = dict(
    source="auto",            # "stdlib" | "hf" | "files"; "auto": hf if hf_dataset is set,
                              # files if files is set, else stdlib
    hf_dataset="",            # e.g. "wikitext", or a builder such as "json" / "text"
    hf_config="",             # e.g. "wikitext-103-raw-v1"; "" = none
    hf_data_files="",         # "a.jsonl,b.jsonl" or "train=a.jsonl,test=b.jsonl"; "" = none
    hf_text_column="text",
    files="",                 # source="files": comma-separated paths/globs/directories, split
                              # 90/5/5 by a hash of each path; or explicit splits:
                              # "train=a/*.txt,val=b.txt,test=c.txt"
    encoding="utf-8",         # stdlib / files: how the files are decoded
    on_decode_error="skip",   # a file that does not decode: "skip" (one warning naming the
                              # files skipped) | "error" (data/sources.py: read_files)
    max_docs=0,               # first N non-empty documents of each split; 0 = all
    tokenizer="",             # tokenizer.json, or a directory with vocab.json + merges.txt,
                              # or "bytes": a token per byte (data/tokenizer.py: byte_tokenizer)
    vocab_size=8192,          # BPE trained on the train split when `tokenizer` is ""
    cache_dir="~/.cache/flaxpapers",
)


def default_config() -> ml_collections.ConfigDict:
    """Every field `data_cfg` is read for, with its default."""
    return ml_collections.ConfigDict(_DEFAULTS)


def _get(cfg, name):
    """A field of `data_cfg`; configs that lack it get the default."""
    return getattr(cfg, name, _DEFAULTS[name])


def _source(cfg) -> str:
    source = _get(cfg, "source")
    if source != "auto":
        return source
    return "hf" if _get(cfg, "hf_dataset") else "files" if _get(cfg, "files") else "stdlib"


def _cache_dir(cfg) -> pathlib.Path:
    path = pathlib.Path(os.path.expanduser(_get(cfg, "cache_dir") or "~/.cache/flaxpapers"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- files


def _read_files(paths, cfg, limit: int | None) -> list[str]:
    """The non-empty documents of `paths` (the first `limit`), by data/sources.py's rule for
    files that do not decode."""
    texts = []
    with contextlib.closing(sources.read_files(paths, _get(cfg, "encoding"),
                                               _get(cfg, "on_decode_error"))) as docs:
        for _, doc in docs:  # read lazily so a small max_docs stays cheap
            if doc:
                texts.append(doc)
            if len(texts) == limit:
                break
    return texts


# ----------------------------------------------------------------------------- Hugging Face


def _hf_split(cfg, split: str) -> datasets.Dataset:
    """Loads `split`; a missing val/test split is carved out of train (5% each, fixed seed)."""
    import datasets     # here, not at the top: packed windows and the benchmark do without it
    if not _get(cfg, "hf_dataset"):
        raise ValueError("source 'hf' needs data_cfg.hf_dataset (a hub name, or 'json'/'text'/"
                         "'parquet'/'csv' with hf_data_files)")
    dd = datasets.load_dataset(_get(cfg, "hf_dataset"), _get(cfg, "hf_config") or None,
                               data_files=sources.parse_data_files(_get(cfg, "hf_data_files")))
    names = {s: next((n for n in _HF_SPLIT_NAMES[s] if n in dd), None) for s in sources.SPLITS}
    if names[split] is not None and (split != "train" or all(names.values())):
        return dd[names[split]]
    if names["train"] is None:
        raise ValueError(f"hf dataset {_get(cfg, 'hf_dataset')!r} has no split for {split!r} "
                         f"and no train split to carve it from (has {list(dd)})")
    train, missing = dd[names["train"]], [s for s in ("val", "test") if names[s] is None]
    n = len(train)
    k = max(1, round(0.05 * n)) if n > len(missing) else 0
    perm = np.random.default_rng(0).permutation(n)  # fixed seed: the same carve every run
    if split != "train":
        i = missing.index(split)
        return train.select(np.sort(perm[i * k:(i + 1) * k]))
    return train.select(np.sort(perm[len(missing) * k:]))


# ----------------------------------------------------------------------------- documents


def load_texts(data_cfg, split: str) -> list[str]:
    """The non-empty documents of `split` (the first `max_docs` of them when max_docs > 0)."""
    sources.check_split(split)
    source, max_docs = _source(data_cfg), int(_get(data_cfg, "max_docs"))
    limit = max_docs if max_docs > 0 else None
    if source in ("stdlib", "files"):
        paths = (sources.stdlib_files(split) if source == "stdlib"
                 else sources.local_files(_get(data_cfg, "files"), split))
        texts = _read_files(paths, data_cfg, limit)
    elif sources.registered(source):
        texts = [t for t in sources.registered(source)[0](data_cfg, split) if t][:limit]
    elif source == "hf":
        ds, column = _hf_split(data_cfg, split), _get(data_cfg, "hf_text_column")
        if column not in ds.column_names:
            raise ValueError(f"hf dataset {_get(data_cfg, 'hf_dataset')!r} has no column "
                             f"{column!r} (has {ds.column_names})")
        # Arrow format reads the column in one go and honours a carved split's index mapping.
        texts = [t for t in ds.with_format("arrow")[column].to_pylist() if t][:limit]
    else:
        raise ValueError(f"unknown data source {source!r}; expected 'stdlib', 'hf', 'files' or "
                         f"a registered one {sources.registered_names()} ('icl' is registered "
                         "by importing data.icl_tasks)")
    if not texts:
        hint = {"files": " Name each split's files: --config.data.files='train=a/*.txt,"
                         "val=b.txt,test=c.txt' (or give more files, so that the 90/5/5 split "
                         "by path hash leaves every split some).",
                "hf": " Name the split's files: --config.data.hf_data_files='train=a.jsonl,"
                      "validation=b.jsonl,test=c.jsonl'."}.get(source, "")
        raise ValueError(f"source {_describe(data_cfg)} has no documents in split "
                         f"{split!r}.{hint}")
    return texts


def _describe(cfg) -> str:
    source = _source(cfg)
    if source == "hf":
        return f"'hf' ({_get(cfg, 'hf_dataset')!r}, config {_get(cfg, 'hf_config')!r})"
    if source == "files":
        return f"'files' ({_get(cfg, 'files')!r})"
    return repr(source)


def _source_identity(cfg, split: str) -> dict:
    """What the documents of `split` depend on, cheap to compute (file stats, not contents)."""
    source = _source(cfg)
    ident = dict(source=source, split=split, max_docs=int(_get(cfg, "max_docs")), format=_FORMAT)
    if source in ("stdlib", "files"):  # how the files decode is part of what they hold
        ident.update(encoding=_get(cfg, "encoding"), on_decode_error=_get(cfg, "on_decode_error"))
    if source == "stdlib":
        ident.update(python=sys.version, files=sources.file_stats(sources.stdlib_files(split)))
    elif source == "files":
        ident.update(files=sources.file_stats(sources.local_files(_get(cfg, "files"), split)))
    elif source == "hf":
        data_files = sources.parse_data_files(_get(cfg, "hf_data_files")) or []
        patterns = [p for v in (data_files.values() if isinstance(data_files, dict)
                                else [data_files]) for p in v]
        ident.update({k: _get(cfg, k) for k in ("hf_dataset", "hf_config", "hf_data_files",
                                               "hf_text_column")},
                     files=sources.file_stats(sources.match_files(",".join(patterns))))
    elif sources.registered(source):
        ident.update(sources.registered(source)[1](cfg, split))
    return ident


# ----------------------------------------------------------------------------- tokenizer


def get_tokenizer(data_cfg) -> Tokenizer:
    """Trains or loads: `data_cfg.tokenizer` if set ("bytes": the byte tokenizer), else a BPE
    of `vocab_size` trained on the train split, cached on disk."""
    if _get(data_cfg, "tokenizer") == BYTES:
        return byte_tokenizer()
    if path := _get(data_cfg, "tokenizer"):
        return load_tokenizer(os.path.expanduser(path))
    vocab_size = int(_get(data_cfg, "vocab_size"))
    key = _digest(dict(_source_identity(data_cfg, "train"), vocab_size=vocab_size))
    path = _cache_dir(data_cfg) / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # one process trains, the others wait and load
        if not path.exists():
            train_bpe(load_texts(data_cfg, "train"), vocab_size).save(path)
    return Tokenizer.load(path)


def workdir_tokenizer(data_cfg, workdir, init_from="") -> Tokenizer:
    """Trains or loads, for a run that trains in `workdir`: its tokenizer.json when it has one
    (a resumed run), else `data_cfg.tokenizer` when set, else the tokenizer of the weights it
    starts from (`init_from`: a workdir of ours or a transformers directory, loaded, never
    trained), else get_tokenizer's (the trainer then keeps a copy in the workdir:
    save_tokenizer). A workdir that holds checkpoints but no tokenizer.json is an error naming
    the file: a new tokenizer would not match the weights."""
    workdir = pathlib.Path(workdir)
    if (workdir / "tokenizer.json").exists() or (workdir / "checkpoints").is_dir():
        return load_tokenizer(workdir)
    if init_from and not _get(data_cfg, "tokenizer"):
        return load_tokenizer(os.path.expanduser(init_from))
    return get_tokenizer(data_cfg)


def save_tokenizer(tokenizer: Tokenizer, path) -> None:
    """Atomically, so a reader never sees half a file."""
    path = pathlib.Path(path)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tokenizer.save(tmp)
    os.replace(tmp, path)


def load_tokenizer(path) -> Tokenizer:
    """Loads, never trains: a tokenizer.json (the file, or in the directory, such as a run's
    workdir), or GPT-2's vocab.json + merges.txt. A missing one is a FileNotFoundError naming
    the file. What every path that loads a trained model uses."""
    path = pathlib.Path(path)
    if path.is_file():
        return Tokenizer.load(path)
    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path / "tokenizer.json")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return from_gpt2_files(path / "vocab.json", path / "merges.txt")
    if path.is_dir():
        raise FileNotFoundError(f"{path / 'tokenizer.json'} not found (nor vocab.json + "
                                "merges.txt): loading never trains a tokenizer, and a new one "
                                "would not match the weights")
    raise FileNotFoundError(f"tokenizer {path} not found")


# ----------------------------------------------------------------------------- token stream


def token_stream(data_cfg, split: str, tokenizer: Tokenizer) -> np.ndarray:
    """All documents of `split`, each followed by <|endoftext|>, as one flat read-only array.

    uint16 when the vocabulary fits, else int32. Tokenised once through `datasets.map` (its Arrow
    file is kept in the cache dir) and flattened into a .npy that later runs memory-map.
    """
    key = _digest(dict(_source_identity(data_cfg, split),
                       tokenizer=hashlib.sha1(tokenizer.to_str().encode()).hexdigest()))
    stem = _cache_dir(data_cfg) / "tokens" / f"{split}-{key}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    npy = stem.with_suffix(".npy")
    with FileLock(f"{stem}.lock"):
        if not npy.exists():
            flat = _tokenize(load_texts(data_cfg, split), tokenizer, stem.with_suffix(".arrow"),
                             key)
            tmp = stem.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, flat)
            os.replace(tmp, npy)
    return np.load(npy, mmap_mode="r")


def _tokenize(texts: list[str], tokenizer: Tokenizer, arrow_path: pathlib.Path,
              fingerprint: str) -> np.ndarray:
    import datasets
    import pyarrow.compute as pc
    dtype = "uint16" if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"
    eot = tokenizer.eot_id

    def encode(batch):
        return {"ids": [ids + [eot] for ids in tokenizer.encode_batch(batch["text"])]}

    ds = datasets.Dataset.from_dict({"text": texts}).map(
        encode, batched=True, batch_size=1000, num_proc=None, remove_columns=["text"],
        features=datasets.Features({"ids": datasets.List(datasets.Value(dtype))}),
        cache_file_name=str(arrow_path), new_fingerprint=fingerprint, desc="Tokenizing")
    chunks = ds.data.column("ids").chunks
    return np.concatenate([pc.list_flatten(c).to_numpy(zero_copy_only=False) for c in chunks]
                          ).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- windows


class PackedWindows(EpochBatches):
    """Batches of non-overlapping windows over a flat token array, resumable and sharded.

    Window i is tokens[i*seq_len : i*seq_len + seq_len + 1]; inputs are its first seq_len tokens,
    targets the last seq_len. Epochs, per-process rows, padding and state are EpochBatches'
    (data/iterators.py): shuffle=True visits the windows of epoch e in the order
    `default_rng((seed, e)).permutation`, forever; shuffle=False once in order.
    drop_remainder=False keeps the last partial batch, padded with window 0, and then every batch
    also carries "weights": float32[B/P, seq_len], 0 on padding rows.
    """

    def __init__(self, tokens, seq_len: int, batch_size: int, *, seed: int, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1, drop_remainder: bool = True,
                 prefetch: int = 2):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len {seq_len} and batch_size {batch_size}: both must be "
                             "positive")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens, but one window of seq_len {seq_len} needs "
                             f"{seq_len + 1}")
        self.tokens, self.seq_len = tokens, seq_len
        self.num_windows = (len(tokens) - 1) // seq_len
        if drop_remainder and self.num_windows < batch_size:
            raise ValueError(f"{len(tokens)} tokens make {self.num_windows} windows of "
                             f"{seq_len + 1}, fewer than one global batch of {batch_size} "
                             f"(needs {batch_size * seq_len + 1} tokens)")
        self.kind = f"PackedWindows(seq_len={seq_len})"
        super().__init__(self.num_windows, batch_size, seed=seed, shuffle=shuffle,
                         drop_remainder=drop_remainder, process_index=process_index,
                         process_count=process_count, prefetch=prefetch)

    def make_batch(self, windows, rngs):
        # One fancy-indexing gather: row r is tokens[w_r*seq_len : w_r*seq_len + seq_len + 1].
        idx = windows[:, None] * self.seq_len + np.arange(self.seq_len + 1)
        chunk = np.asarray(self.tokens[idx], dtype=np.int32)
        return {"inputs": chunk[:, :-1], "targets": chunk[:, 1:]}

    def weights(self, valid):
        return np.repeat(valid[:, None], self.seq_len, 1).astype(np.float32)
