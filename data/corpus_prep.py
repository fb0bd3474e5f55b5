"""GPT-3's training-data preparation (Brown et al. 2020, section 2.2 and appendix A), streaming.

  1. Quality filtering: a logistic-regression classifier on hashed n-gram features separates
     curated reference text (positive) from the raw crawl (negative); a raw document with
     score s is kept iff np.random.pareto(alpha) > 1 - s, alpha = 9 (appendix A).
  2. Fuzzy deduplication: MinHash signatures of word (or character) shingles and
     locality-sensitive hashing find documents whose Jaccard similarity to one already kept
     reaches a threshold; those are dropped, within and across datasets.
  3. Mixture: datasets are drawn by a sampling weight, not by their size (Table 2.2), so a
     small curated set is seen for several epochs and the crawl for less than one.

Documents are dicts {"id", "source", "text"} flowing through generators; every step takes an
iterable and yields, and shards are JSONL files, so nothing holds the corpus in memory. What
grows with the corpus is the deduplication index: one short signature per kept document.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import os
import pathlib
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from data import sources

Doc = dict  # {"id": str, "source": str, "text": str}


# ----------------------------------------------------------------------------- JSONL shards


def read_jsonl(paths: Iterable, text_field: str = "text", source: str = "",
               id_field: str = "id") -> Iterator[Doc]:
    """Documents of JSONL files, one JSON object per line, read lazily. A line that is not
    UTF-8, not JSON, not an object or without a string `text_field` is an error naming the
    file and the line."""
    for path in paths:
        with open(path, "rb") as f:
            for i, raw in enumerate(f):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path} line {i + 1} is not UTF-8 text ({e.reason} at "
                                     f"byte {e.start}): not a JSONL file?") from None
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i + 1} is not JSON: {e.msg} at column "
                                     f"{e.colno}") from None
                if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                    raise ValueError(f"{path} line {i + 1} is not a JSON object with a string "
                                     f"field {text_field!r}")
                yield {"id": str(row.get(id_field, f"{pathlib.Path(path).name}:{i}")),
                       "source": row.get("source", source), "text": row[text_field]}


def write_shards(docs: Iterable[Doc], directory, docs_per_shard: int = 1000,
                 prefix: str = "shard") -> list[pathlib.Path]:
    """Writes docs as directory/prefix-00000.jsonl, ... (docs_per_shard lines each); returns the
    paths. Each shard is written under a temporary name and renamed when complete."""
    if docs_per_shard < 1:
        raise ValueError(f"docs_per_shard must be positive, not {docs_per_shard}")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths, f, tmp = [], None, None
    for i, doc in enumerate(docs):
        if i % docs_per_shard == 0:
            if f:
                f.close()
                os.replace(tmp, paths[-1])
            paths.append(directory / f"{prefix}-{len(paths):05d}.jsonl")
            tmp = paths[-1].with_suffix(".jsonl.tmp")
            f = open(tmp, "w", encoding="utf-8")
        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    if f:
        f.close()
        os.replace(tmp, paths[-1])
    return paths


# ----------------------------------------------------------------------------- local corpora


def _stdlib(tests: bool) -> Iterator[tuple[pathlib.Path, str]]:
    """(path, source) of the standard library's modules (tests=False) or test modules."""
    root = sources.stdlib_root()
    paths = (p for split in sources.SPLITS for p in sources.stdlib_files(split)
             if any(part in ("test", "tests", "idle_test")
                    for part in p.relative_to(root).parts) == tests)
    return sources.read_files(paths)


def _module_docstring(source: str) -> str | None:
    try:
        return ast.get_docstring(ast.parse(source))
    except (SyntaxError, ValueError):
        return None


def _docstrings_and_comments(source: str) -> list[str]:
    """The function and class docstrings of Python source, then its blocks of whole-line
    comments (a line-based reading: fast, and the prose of comments is on such lines)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    parts = [ast.get_docstring(node) for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    parts = [p for p in parts if p]
    block = []
    for line in source.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            if comment := stripped.lstrip("#").strip():
                block.append(comment)
        elif block:
            parts.append("\n".join(block))
            block = []
    return parts


def _package_texts() -> Iterator[pathlib.Path]:
    """Text files shipped inside the installed packages: READMEs, licences, metadata, notes."""
    roots = dict.fromkeys(pathlib.Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))
    names = re.compile(r"(METADATA|README.*|LICEN[CS]E.*|COPYING.*|NOTICE.*|AUTHORS.*|"
                       r"CHANGE.*|.*\.(txt|md|rst))$", re.IGNORECASE)
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in sorted(filenames):
                if names.match(name):
                    yield pathlib.Path(dirpath, name)


def local_corpus(spec: str, source: str) -> Iterator[Doc]:
    """The documents of one offline corpus, lazily.

      stdlib_modules      the standard library's .py files, tests excluded (one per file)
      stdlib_tests        its test modules
      stdlib_docstrings   per file: its function/class docstrings and comment blocks
      stdlib_module_docs  per module: its module docstring
      package_texts       text files inside the installed packages (README, LICENSE, ...)
      jsonl:A,B           JSONL files with a "text" field
      files:GLOB,GLOB     local text files (paths, globs, directories), one document each

    Text files that are not UTF-8 are skipped by data/sources.py's rule (one warning naming
    them); a JSONL line that does not parse is an error naming the file and the line.
    """
    root = sources.stdlib_root()
    if spec in ("stdlib_modules", "stdlib_tests"):
        for p, text in _stdlib(tests=spec == "stdlib_tests"):
            yield {"id": f"{source}:{p.relative_to(root)}", "source": source, "text": text}
    elif spec in ("stdlib_docstrings", "stdlib_module_docs"):
        for p, text in _stdlib(tests=False):
            body = (_module_docstring(text) if spec == "stdlib_module_docs"
                    else "\n\n".join(_docstrings_and_comments(text)))
            if body:
                yield {"id": f"{source}:{p.relative_to(root)}", "source": source, "text": body}
    elif spec == "package_texts":
        for p, text in sources.read_files(_package_texts()):
            yield {"id": f"{source}:{p}", "source": source, "text": text}
    elif spec.startswith(("jsonl:", "files:")):
        paths = sources.match_files(spec[6:])
        if not paths:
            raise FileNotFoundError(f"corpus {spec!r} matches no file")
        if spec.startswith("jsonl:"):
            for doc in read_jsonl(paths, source=source):
                yield {**doc, "id": f"{source}:{doc['id']}", "source": source}
        else:
            for p, text in sources.read_files(paths):
                yield {"id": f"{source}:{p}", "source": source, "text": text}
    else:
        raise ValueError(f"unknown corpus {spec!r}: stdlib_modules, stdlib_tests, "
                         "stdlib_docstrings, stdlib_module_docs, package_texts, jsonl:PATHS, "
                         "files:GLOBS")


def non_empty(docs: Iterable[Doc], limit: int = 0) -> Iterator[Doc]:
    """Documents with visible text, the first `limit` of them when limit > 0."""
    docs = (d for d in docs if d["text"].strip())
    return itertools.islice(docs, limit) if limit > 0 else iter(docs)


# ----------------------------------------------------------------------------- features


def words(text: str) -> list[str]:
    """Spark's standard tokenizer, which the paper's features used: lower case, split on
    whitespace."""
    return text.lower().split()


def shingles(text: str, kind: str = "word", n: int = 5) -> set[bytes]:
    """The set of n-word (kind="word") or n-character (kind="char", whitespace runs squashed)
    windows of a text; a text shorter than n is one shingle."""
    if kind == "word":
        toks = words(text)
        grams = {" ".join(toks[i:i + n]) for i in range(max(1, len(toks) - n + 1))}
    elif kind == "char":
        squashed = " ".join(text.split())
        grams = {squashed[i:i + n] for i in range(max(1, len(squashed) - n + 1))}
    else:
        raise ValueError(f"unknown shingle kind {kind!r}: 'word' or 'char'")
    return {g.encode("utf-8") for g in grams if g}


# ----------------------------------------------------------------------------- deduplication


class NearDuplicates:
    """Fuzzy deduplication with MinHash + LSH (datasketch): `check` returns the id of a kept
    document whose estimated Jaccard similarity to the new one reaches `threshold`, or None
    after indexing the new one. Identical texts are caught first by a hash of the text."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: str = "word",
                 shingle_size: int = 5, seed: int = 1):
        from datasketch import MinHashLSH
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"Jaccard threshold must lie in (0, 1], not {threshold}")
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.shingle, self.shingle_size = shingle, shingle_size
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures: dict[str, np.ndarray] = {}
        self._exact: dict[bytes, str] = {}

    def signature(self, text: str):
        from datasketch import MinHash
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(sorted(shingles(text, self.shingle, self.shingle_size)))
        return m

    def check(self, key: str, text: str) -> tuple[str, str] | None:
        """None if `text` is new (it is then indexed under key), else ("exact" | "near",
        the id of the kept document it repeats)."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self._exact:
            return "exact", self._exact[digest]
        m = self.signature(text)
        best, best_sim = None, -1.0
        for other in self.lsh.query(m):  # candidates; the signature estimate confirms them
            sim = float(np.mean(self._signatures[other] == m.hashvalues))
            if sim > best_sim:
                best, best_sim = other, sim
        if best is not None and best_sim >= self.threshold:
            return "near", best
        if key in self._signatures:
            raise ValueError(f"document id {key!r} seen twice: ids must be unique")
        self.lsh.insert(key, m)
        self._signatures[key] = m.hashvalues
        self._exact[digest] = key
        return None


def drop_duplicates(docs: Iterable[Doc], index: NearDuplicates,
                    on_duplicate: Callable[[Doc, str, str], None] | None = None
                    ) -> Iterator[Doc]:
    """The documents that repeat no earlier one (in this stream or already in `index`);
    on_duplicate(doc, kind, kept_id) hears of each one dropped."""
    for doc in docs:
        found = index.check(doc["id"], doc["text"])
        if found is None:
            yield doc
        elif on_duplicate:
            on_duplicate(doc, *found)


# ----------------------------------------------------------------------------- quality


def reservoir(items: Iterable, k: int, rng: np.random.Generator) -> list:
    """A uniform sample of k items from a stream of unknown length (Algorithm R)."""
    sample = []
    for i, item in enumerate(items):
        if i < k:
            sample.append(item)
        else:
            j = int(rng.integers(0, i + 1))
            if j < k:
                sample[j] = item
    return sample


def fold_of(doc_id: str, folds: int) -> int:
    """A document's cross-fitting fold, from a hash of its id (stable across runs)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(),
                          "little") % folds


class QualityClassifier:
    """P(reference | document): logistic regression on hashed word n-gram counts (the paper:
    Spark's standard tokenizer + HashingTF + logistic regression), L2-normalised.

    Cross-fitted: documents fall into `folds` folds by a hash of their id; model k trains on
    the sample's documents outside fold k and scores the documents of fold k, so no document
    is scored by a model that saw it (a raw document in the training sample would otherwise
    be scored by a model that learnt to call it raw). folds=1: one model, no held-out score."""

    def __init__(self, n_features: int = 2 ** 18, ngram: int = 2, C: float = 1.0,
                 folds: int = 2, max_chars: int = 100_000, seed: int = 0):
        from sklearn.feature_extraction.text import HashingVectorizer
        if folds < 1:
            raise ValueError(f"folds must be at least 1, not {folds}")
        self.vectorizer = HashingVectorizer(
            n_features=n_features, ngram_range=(1, ngram), lowercase=True,
            token_pattern=None, tokenizer=str.split, alternate_sign=False, norm="l2")
        self.C, self.folds, self.max_chars, self.seed = C, folds, max_chars, seed
        self.models = []

    def _features(self, docs: list[Doc]):
        return self.vectorizer.transform([d["text"][:self.max_chars] for d in docs])

    def fit(self, reference: list[Doc], raw: list[Doc]) -> dict:
        """Trains on reference (label 1) vs raw (label 0) documents; returns the sample sizes,
        the training accuracy and the held-out (cross-fitted) accuracy."""
        from sklearn.linear_model import LogisticRegression
        if not reference or not raw:
            raise ValueError(f"the classifier needs reference and raw documents (got "
                             f"{len(reference)} and {len(raw)})")
        docs = list(reference) + list(raw)
        labels = np.array([1] * len(reference) + [0] * len(raw))
        x = self._features(docs)
        fold = np.array([fold_of(d["id"], self.folds) for d in docs])
        self.models, train_acc, predicted = [], [], np.zeros(len(docs), bool)
        for k in range(self.folds):
            train = fold != k if self.folds > 1 else np.ones(len(docs), bool)
            if len(set(labels[train])) < 2:
                raise ValueError(f"fold {k}: too few documents to train on both classes")
            model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000,
                                       random_state=self.seed)
            model.fit(x[train], labels[train])
            self.models.append(model)
            train_acc.append(model.score(x[train], labels[train]))
            predicted[fold == k] = model.predict(x[fold == k]) == 1
        report = {"reference_docs": len(reference), "raw_docs": len(raw), "folds": self.folds,
                  "train_accuracy": float(np.mean(train_acc))}
        if self.folds > 1:
            report["heldout_accuracy"] = float(np.mean(predicted == (labels == 1)))
        return report

    def score(self, docs: list[Doc]) -> np.ndarray:
        """P(reference) of each document, from the model of its fold."""
        if not self.models:
            raise ValueError("the classifier is not trained: call fit first")
        x = self._features(docs)
        fold = np.array([fold_of(d["id"], self.folds) for d in docs])
        out = np.zeros(len(docs))
        for k, model in enumerate(self.models):
            if (rows := fold == k).any():
                out[rows] = model.predict_proba(x[rows])[:, 1]
        return out


def pareto_keep(scores, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """GPT-3 appendix A: keep a document iff np.random.pareto(alpha) > 1 - score. Mostly
    high-scoring documents, with some out of distribution ones (alpha = 9 in the paper)."""
    scores = np.asarray(scores, np.float64)
    return rng.pareto(alpha, size=scores.shape) > 1.0 - scores


def quality_filter(docs: Iterable[Doc], classifier: QualityClassifier, alpha: float,
                   rng: np.random.Generator, batch: int = 256,
                   on_scored: Callable[[Doc, float, bool], None] | None = None
                   ) -> Iterator[Doc]:
    """The documents the Pareto rule keeps, scored `batch` at a time."""
    it = iter(docs)
    while chunk := list(itertools.islice(it, batch)):
        scores = classifier.score(chunk)
        keep = pareto_keep(scores, alpha, rng)
        for doc, s, k in zip(chunk, scores, keep):
            if on_scored:
                on_scored(doc, float(s), bool(k))
            if k:
                yield doc


# ----------------------------------------------------------------------------- mixture


def split_long(docs: Iterable[Doc], max_chars: int) -> Iterator[Doc]:
    """Documents longer than max_chars cut at line ends into pieces of at most max_chars
    (a longer line is cut where it must), ids suffixed #0, #1, ...; shorter ones pass as they
    are. GPT-3 trains on 2048-token windows, so a mixture counted in characters can be too."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, not {max_chars}")
    for doc in docs:
        text = doc["text"]
        if len(text) <= max_chars:
            yield doc
            continue
        pieces, current = [], ""
        for line in text.splitlines(keepends=True):
            while len(line) > max_chars:
                room = max_chars - len(current)
                pieces.append(current + line[:room])
                current, line = "", line[room:]
            if len(current) + len(line) > max_chars:
                pieces.append(current)
                current = ""
            current += line
        if current:
            pieces.append(current)
        for k, piece in enumerate(pieces):
            yield {**doc, "id": f"{doc['id']}#{k}", "text": piece}


def plan_mixture(sizes: dict[str, float], longest: dict[str, float],
                 weights: dict[str, float], max_epochs: float, total: float = 0) -> dict:
    """How much of each source a mixture takes, by GPT-3's rule: source n gives its
    normalised weight w_n of a nominal size X, but never more than max_epochs times its size
    S_n (Table 2.2: Wikipedia 3.4 epochs, Common Crawl 0.44).

    X is `total` when given. Else it is the largest X at which no source needs more than
    max_epochs, X = min_n max_epochs * S_n / w_n, taken over the sources that allow at least
    the smallest mixture in which every source's share holds its longest document,
    max_n longest_n / w_n: a source too small for that would shrink the mixture below one
    document of the others, so it is capped instead. Returns {"nominal": X, "quota": {n: count},
    "cap": {n: max_epochs * S_n}, "too_small": {n: epochs its weight would need}}."""
    if max_epochs <= 0:
        raise ValueError(f"mixture.max_epochs must be positive, not {max_epochs}")
    norm = sum(weights.values())
    share = {n: w / norm for n, w in weights.items() if w > 0}
    cap = {n: max_epochs * sizes[n] for n in share}
    if total > 0:
        nominal = float(total)
    else:
        allows = {n: cap[n] / share[n] for n in share}
        floor = max(longest[n] / share[n] for n in share)
        nominal = min((a for a in allows.values() if a >= floor), default=floor)
    quota = {n: min(share[n] * nominal, cap[n]) for n in share}
    too_small = {n: share[n] * nominal / sizes[n] for n in share
                 if share[n] * nominal > cap[n] * (1 + 1e-9)}
    return {"nominal": nominal, "quota": quota, "cap": cap, "too_small": too_small}


def mix(factories: dict[str, Callable[[], Iterable[Doc]]], weights: dict[str, float],
        total: float, unit: str = "chars", caps: dict[str, float] | None = None
        ) -> Iterator[Doc]:
    """Draws `total` characters (unit="chars", the paper's tokens) or documents (unit="docs")
    from the sources (factories of one pass over each) so that each one's share follows its
    normalised weight.

    Weighted fair queueing: each source holds its next document, and the one to go next is
    the one whose count after it, divided by its weight, is smallest, so shares stay within
    a document of their targets. A source that runs out starts again (another epoch), as
    GPT-3's Wikipedia was seen 3.4 times and its Common Crawl 0.44 times. caps: the most a
    source may give (max_epochs times its size); one whose next document would pass its cap
    gives no more, and the mixture ends early when every source has stopped."""
    if unit not in ("chars", "docs"):
        raise ValueError(f"unknown mixture unit {unit!r}: 'chars' or 'docs'")
    if set(weights) != set(factories):
        raise ValueError(f"weights name {sorted(weights)}, sources are {sorted(factories)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum: {weights}")
    norm = sum(weights.values())
    share = {s: w / norm for s, w in weights.items() if w > 0}
    streams = {s: iter(factories[s]()) for s in share}

    def pull(name: str) -> Doc:
        doc = next(streams[name], None)
        if doc is None:  # the end of an epoch
            streams[name] = iter(factories[name]())
            doc = next(streams[name], None)
            if doc is None:
                raise ValueError(f"source {name!r} has no documents to mix")
        return doc

    size = (lambda d: len(d["text"])) if unit == "chars" else (lambda d: 1)
    head = {s: pull(s) for s in share}
    got = dict.fromkeys(share, 0)
    active = list(share)
    done = 0
    while done < total and active:
        name = min(active, key=lambda s: (got[s] + size(head[s])) / share[s])
        doc = head[name]
        if caps is not None and got[name] + size(doc) > caps[name]:
            active.remove(name)
            continue
        got[name] += size(doc)
        done += size(doc)
        yield doc
        if done < total:
            head[name] = pull(name)
