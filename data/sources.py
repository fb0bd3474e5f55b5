"""Where text comes from: file listing, the train/val/test split by file, reading.

Every module of data/ that reads text files lists and reads them here, so one rule holds
everywhere: a file that does not decode (binary data, or text in another encoding) is skipped,
and one warning names the files skipped; data.on_decode_error="error" stops instead, naming the
file. No replacement characters slip into a corpus.

Sources beyond the files and Hugging Face datasets (data/text.py) are registered here by the
module that builds them (data/icl_tasks.py: "icl"), so that data/text.py never imports them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Callable, Iterable, Iterator

from absl import logging

SPLITS = ("train", "val", "test")
DECODE_ERROR_POLICIES = ("skip", "error")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_of(rel_path: str) -> str:
    """90/5/5 bucket from a hash of the relative path: stable across machines and runs."""
    bucket = int(hashlib.sha1(rel_path.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


# ----------------------------------------------------------------------------- listing


def stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _stdlib_all() -> list[pathlib.Path]:
    root, out = stdlib_root(), []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinked dirs
        dirnames[:] = [d for d in dirnames
                       if d not in ("site-packages", "dist-packages", "__pycache__")]
        out += [pathlib.Path(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(p for p in out if p.is_file() and p.stat().st_size > 0)


def stdlib_files(split: str) -> list[pathlib.Path]:
    """Non-empty .py files of the standard library in `split`, sorted."""
    check_split(split)
    root = stdlib_root()
    return [p for p in _stdlib_all() if split_of(p.relative_to(root).as_posix()) == split]


def match_files(spec: str) -> list[pathlib.Path]:
    """The non-empty files named by comma-separated paths, globs (** recurses) and directories
    (every visible file below them), resolved and sorted."""
    found = set()
    for pattern in filter(None, (s.strip() for s in spec.split(","))):
        for match in glob.glob(os.path.expanduser(pattern), recursive=True):
            path = pathlib.Path(match).resolve()
            if path.is_dir():
                found |= {p for p in path.rglob("*") if p.is_file()
                          and not any(part.startswith(".") for part in p.relative_to(path).parts)}
            elif path.is_file():
                found.add(path)
    return sorted(p for p in found if p.stat().st_size > 0)


def local_files(spec: str, split: str) -> list[pathlib.Path]:
    """The matched non-empty files of `split`: those named for it ("train=...,val=...,
    test=..."), or those its hash of the path relative to their common parent puts in it."""
    check_split(split)
    named = parse_data_files(spec)
    if isinstance(named, dict):
        unknown = set(named) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.files names splits {sorted(unknown)}; use {SPLITS}")
        return match_files(",".join(named.get(split, [])))
    files = match_files(spec)
    root = pathlib.Path(os.path.commonpath([p.parent for p in files])) if files else None
    return [p for p in files if split_of(p.relative_to(root).as_posix()) == split]


def parse_data_files(spec: str) -> list[str] | dict[str, list[str]] | None:
    """"a,b" -> [a, b]; "train=a,test=b" -> {"train": [a], "test": [b]}; "" -> None.

    The form of `data_files` that HF `datasets.load_dataset` takes, from a command-line string."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        return None
    if not all("=" in s for s in items):
        return items
    out: dict[str, list[str]] = {}
    for item in items:
        name, path = item.split("=", 1)
        out.setdefault(name.strip(), []).append(path.strip())
    return out


def file_stats(paths: Iterable) -> list:
    """(path, size, mtime) of each file: what a cache of their contents depends on, cheaply."""
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(pathlib.Path, paths)]


# ----------------------------------------------------------------------------- reading


def read_text(path, encoding: str = "utf-8") -> str | None:
    """The file decoded as `encoding`, or None if it does not decode."""
    try:
        return pathlib.Path(path).read_bytes().decode(encoding)
    except UnicodeDecodeError:
        return None


def read_files(paths: Iterable, encoding: str = "utf-8", on_decode_error: str = "skip"
               ) -> Iterator[tuple[pathlib.Path, str]]:
    """(path, text) of each file that decodes, lazily. The files that do not are skipped and
    named in one warning when the iteration ends or is closed; on_decode_error="error" raises
    at the first, naming it."""
    if on_decode_error not in DECODE_ERROR_POLICIES:
        raise ValueError(f"data.on_decode_error {on_decode_error!r}; choose from "
                         f"{DECODE_ERROR_POLICIES}")
    skipped = []
    try:
        for p in map(pathlib.Path, paths):
            text = read_text(p, encoding)
            if text is not None:
                yield p, text
            elif on_decode_error == "error":
                raise ValueError(f"not {encoding} text: {p} (set data.encoding, or "
                                 "data.on_decode_error=skip)")
            else:
                skipped.append(str(p))
    finally:
        if skipped:
            named = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more"
                                              if len(skipped) > 5 else "")
            logging.warning("skipped %d file(s) that are not %s text: %s", len(skipped),
                            encoding, named)


# ----------------------------------------------------------------------------- registered


# name -> (texts(data_cfg, split) -> list[str], identity(data_cfg, split) -> dict for caches)
_REGISTERED: dict[str, tuple[Callable, Callable]] = {}


def register(name: str, texts: Callable, identity: Callable) -> None:
    """A corpus source for data.source=`name`, registered by the module that builds it."""
    _REGISTERED[name] = (texts, identity)


def registered(name: str) -> tuple[Callable, Callable] | None:
    return _REGISTERED.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTERED)
