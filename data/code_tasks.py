"""Offline GPT-1 fine-tuning tasks from the Python standard library's own source code.

Built deterministically from the library files that are NOT in the pretraining split
(`data.sources.stdlib_files("train")`): one task per input transformation (`TRANSFER_TASKS`,
among `DEFAULT_TASKS`), with balanced labels and train/val/test splits by a hash of each function's
location. Records as data/gpt1_inputs.py describes them.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import functools
import hashlib
import os
import pathlib
import random
import textwrap
from collections.abc import Callable, Sequence

from data.gpt1_inputs import Task
from data.sources import read_files, stdlib_files, stdlib_root


@dataclasses.dataclass(frozen=True)
class Function:
    path: str               # relative to the library root, "/"-separated
    name: str
    lineno: int
    lines: tuple[str, ...]  # dedented source without the docstring and blank lines
    doc: str                # first line of the docstring, "" if none

    @property
    def package(self) -> str:
        """Top-level package, or "(top level)" for a module directly in the library root."""
        return self.path.split("/")[0] if "/" in self.path else "(top level)"

    def text(self, n_lines: int) -> str:
        return "\n".join(self.lines[:n_lines])


MAX_LINE_CHARS = 100   # longer lines (data tables, long strings) are cut
MIN_LINES = 3          # a def line and at least two statements


def _functions_in(tree: ast.Module, source_lines: list[str], path: str) -> list[Function]:
    """Module-level functions and methods (nested functions stay inside their parent)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.ClassDef):
            todo.extend(node.body)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            drop = set()
            doc = ast.get_docstring(node, clean=True) or ""
            if doc:
                first = node.body[0]
                drop = set(range(first.lineno, first.end_lineno + 1))
            lines = [source_lines[i - 1].rstrip() for i in range(node.lineno, node.end_lineno + 1)
                     if i not in drop]
            lines = [ln for ln in textwrap.dedent("\n".join(lines)).split("\n") if ln.strip()]
            lines = [ln[:MAX_LINE_CHARS] for ln in lines]
            if len(lines) >= MIN_LINES:
                out.append(Function(path, node.name, node.lineno, tuple(lines),
                                    doc.strip().split("\n")[0][:MAX_LINE_CHARS]))
    return out


def heldout_files() -> list[pathlib.Path]:
    """Library files outside the pretraining split (data/sources.py splits the library by
    file)."""
    return sorted(set(stdlib_files("val")) | set(stdlib_files("test")))


def extract_functions(files: Sequence[str], root: str) -> list[Function]:
    """Functions of the files that parse, in a fixed order, without repeated texts."""
    funcs, seen = [], set()
    for f, source in read_files(sorted(files, key=lambda p: os.path.relpath(p, root))):
        rel = os.path.relpath(f, root).replace(os.sep, "/")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue  # the library ships deliberately broken files for its tests
        for fn in _functions_in(tree, source.split("\n"), rel):
            key = fn.lines
            if key not in seen:  # copies would leak between splits
                seen.add(key)
                funcs.append(fn)
    return funcs


SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


def split_of(fn: Function) -> str:
    """train / val / test by a hash of the function's location: stable under any file list."""
    u = int(hashlib.sha256(f"{fn.path}:{fn.lineno}".encode()).hexdigest()[:8], 16) / 16 ** 8
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]


def _rng(task: str, split: str) -> random.Random:
    return random.Random(f"{task}/{split}")


def _by_split(funcs: Sequence[Function]) -> dict[str, list[Function]]:
    out = {name: [] for name, _ in SPLIT_FRACTIONS}
    for fn in funcs:
        out[split_of(fn)].append(fn)
    return out


CODE_LINES = 6     # lines of a function shown in classification and docstring entailment
CLAIM_LINES = 4    # lines shown with a claim: short enough to fit whole in 64 tokens
PAIR_LINES = 4     # lines of each function in a similarity pair
CONTEXT_LINES = 4  # lines given before the line to pick in multiple choice
N_PACKAGES = 4
N_ANSWERS = 4


def largest_packages(funcs: Sequence[Function], key=lambda fn: 1) -> list[str]:
    """The N_PACKAGES packages with the largest total `key` (ties by name)."""
    counts = collections.Counter()
    for fn in funcs:
        counts[fn.package] += key(fn)
    return sorted(sorted(counts), key=lambda p: -counts[p])[:N_PACKAGES]


def package_task(funcs: Sequence[Function]) -> Task:
    """Classification: which package does this code come from?

    Examples are the consecutive CODE_LINES-line pieces of every function (all pieces of a
    function fall in its split). Classes: the N_PACKAGES packages with the most pieces ("(top
    level)" = modules directly in the library root); every split keeps as many pieces of each
    class (chance 1/N_PACKAGES)."""
    def pieces(fn):
        return ["\n".join(fn.lines[i:i + CODE_LINES]) for i in range(0, len(fn.lines), CODE_LINES)]

    classes = largest_packages(funcs, key=lambda fn: len(pieces(fn)))
    splits = {}
    for split, fs in _by_split(funcs).items():
        rng = _rng("package", split)
        groups = [[t for fn in fs if fn.package == c for t in pieces(fn)] for c in classes]
        n = min(len(g) for g in groups)
        records = [{"text": t, "label": label}
                   for label, g in enumerate(groups) for t in rng.sample(g, n)]
        rng.shuffle(records)
        splits[split] = records
    return Task("package", "classification", len(classes), splits,
                "which package a piece of code comes from: " + ", ".join(classes))


# Statements checked against the lines shown: (hypothesis, test on the stripped body lines).
CLAIMS = (
    ("The code loops with for.", lambda body: any(ln.startswith("for ") for ln in body)),
    ("The code returns a value.", lambda body: any(ln.startswith("return ") for ln in body)),
    ("The code raises an exception.",
     lambda body: any(ln == "raise" or ln.startswith("raise ") for ln in body)),
    ("The code has an if statement.", lambda body: any(ln.startswith("if ") for ln in body)),
    ("The code opens a with block.", lambda body: any(ln.startswith("with ") for ln in body)),
    ("The code has a try statement.", lambda body: any(ln == "try:" for ln in body)),
)


def claims_task(funcs: Sequence[Function]) -> Task:
    """Entailment: is this statement about the code (hypothesis) true of it (premise)?

    The premise is a function's first CLAIM_LINES lines; the statements say which constructs
    they contain (CLAIMS), checked on those very lines. Each statement is true and false
    equally often in every split (chance 1/2)."""
    splits = {}
    for split, fs in _by_split(funcs).items():
        rng = _rng("claims", split)
        records = []
        for claim, holds in CLAIMS:
            true, false = [], []
            for fn in fs:
                body = [ln.strip() for ln in fn.lines[1:CLAIM_LINES]]
                (true if holds(body) else false).append(fn)
            n = min(len(true), len(false))
            for group, label in ((true, 1), (false, 0)):
                records += [{"premise": fn.text(CLAIM_LINES), "hypothesis": claim, "label": label}
                            for fn in rng.sample(group, n)]
        rng.shuffle(records)
        splits[split] = records
    return Task("claims", "entailment", 2, splits,
                "is this statement about the constructs in the code true")


def same_package_task(funcs: Sequence[Function]) -> Task:
    """Similarity: do these two functions come from the same package?

    Among the N_PACKAGES packages with the most functions, as many functions of each package
    are drawn; each meets a random function of its own package (positive) and a random function
    of another of these packages (negative), so the negatives follow the packages' sizes
    (chance 1/2)."""
    classes = largest_packages(funcs)
    splits = {}
    for split, fs in _by_split(funcs).items():
        rng = _rng("same_package", split)
        groups = {c: [fn for fn in fs if fn.package == c] for c in classes}
        n = min(len(g) for g in groups.values())
        records = []
        for c in classes:
            others = [fn for d in classes if d != c for fn in groups[d]]
            for a in rng.sample(groups[c], n):
                same = rng.choice([fn for fn in groups[c] if fn is not a])
                for b, label in ((same, 1), (rng.choice(others), 0)):
                    x, y = (a, b) if rng.random() < 0.5 else (b, a)
                    records.append({"text1": x.text(PAIR_LINES), "text2": y.text(PAIR_LINES),
                                    "label": label})
        rng.shuffle(records)
        splits[split] = records
    return Task("same_package", "similarity", 2, splits,
                "do two functions come from the same package: " + ", ".join(classes))


def docstring_task(funcs: Sequence[Function]) -> Task:
    """Entailment: does this docstring (hypothesis) belong to this function (premise)?

    Every documented function appears twice, once with its own docstring and once with the
    docstring of another function of the split, so each text is seen with both labels and only
    the pair decides the answer (chance 1/2)."""
    splits = {}
    for split, fs in _by_split([fn for fn in funcs if fn.doc]).items():
        rng = _rng("docstring", split)
        fs = list(fs)
        rng.shuffle(fs)
        records = []
        for i, fn in enumerate(fs):
            other = fs[(i + 1) % len(fs)]  # a shifted shuffle: every docstring used once as a foil
            if other.doc == fn.doc:
                continue
            code = fn.text(CODE_LINES)
            records += [{"premise": code, "hypothesis": fn.doc, "label": 1},
                        {"premise": code, "hypothesis": other.doc, "label": 0}]
        rng.shuffle(records)
        splits[split] = records
    return Task("docstring", "entailment", 2, splits,
                "does this docstring belong to this function")


MAX_PAIRS_PER_FILE = 8  # keeps the few very large test files from making up most pairs


def module_task(funcs: Sequence[Function]) -> Task:
    """Similarity: do these two functions come from the same module (file)?

    Positives pair two functions of one file; each positive's first function also forms a
    negative with a function of another file (chance 1/2)."""
    splits = {}
    for split, fs in _by_split(funcs).items():
        rng = _rng("module", split)
        by_file = collections.defaultdict(list)
        for fn in fs:
            by_file[fn.path].append(fn)
        records = []
        for path in sorted(by_file):
            group = list(by_file[path])
            rng.shuffle(group)
            others = [fn for fn in fs if fn.path != path]
            if not others:
                continue
            for a, b in list(zip(group[0::2], group[1::2]))[:MAX_PAIRS_PER_FILE]:
                c = rng.choice(others)
                for x, y, label in ((a, b, 1), (a, c, 0)):
                    if rng.random() < 0.5:
                        x, y = y, x
                    records.append({"text1": x.text(PAIR_LINES), "text2": y.text(PAIR_LINES),
                                    "label": label})
        rng.shuffle(records)
        splits[split] = records
    return Task("module", "similarity", 2, splits, "do two functions come from the same module")


def next_line_task(funcs: Sequence[Function]) -> Task:
    """Multiple choice: given a function's first lines, which of N_ANSWERS lines comes next?

    The foils are the lines at the same position in other functions of the split, so they are
    indented like the answer; the right answer sits equally often at each position (chance
    1/N_ANSWERS)."""
    splits = {}
    for split, fs in _by_split(funcs).items():
        rng = _rng("next_line", split)
        fs = [fn for fn in fs if len(fn.lines) > CONTEXT_LINES]
        pool = [fn.lines[CONTEXT_LINES] for fn in fs]
        if len({ln.strip() for ln in pool}) < N_ANSWERS:
            raise ValueError(f"next_line: too few distinct lines in the {split} split")
        records = []
        for i, fn in enumerate(fs):
            answer = fn.lines[CONTEXT_LINES]
            foils = []
            while len(foils) < N_ANSWERS - 1:
                line = pool[rng.randrange(len(pool))]
                if line.strip() != answer.strip() and line not in foils:
                    foils.append(line)
            label = i % N_ANSWERS
            answers = foils[:label] + [answer] + foils[label:]
            records.append({"context": fn.text(CONTEXT_LINES), "answers": answers,
                            "label": label})
        rng.shuffle(records)
        splits[split] = records
    return Task("next_line", "multiple_choice", N_ANSWERS, splits,
                "which line comes next in this function")


DEFAULT_TASKS: dict[str, Callable[[Sequence[Function]], Task]] = {
    "package": package_task,           # classification
    "claims": claims_task,             # entailment
    "same_package": same_package_task, # similarity
    "next_line": next_line_task,       # multiple choice
    # Harder pairs: their relation lies only in matching identifiers across the two texts,
    # which the tiny CPU models barely learn (near chance, pretrained or not).
    "docstring": docstring_task,       # entailment
    "module": module_task,             # similarity
}
TRANSFER_TASKS = ("package", "claims", "same_package", "next_line")  # one per transformation


def default_task(name: str, files: Sequence[str] | None = None, root: str | None = None) -> Task:
    """One offline default task, from `files` (default: the held-out library files)."""
    if name not in DEFAULT_TASKS:
        raise ValueError(f"unknown default task {name!r}; choose from {sorted(DEFAULT_TASKS)}")
    root = root or stdlib_root()
    files = heldout_files() if files is None else files
    return DEFAULT_TASKS[name](_cached_functions(tuple(map(str, files)), str(root)))


@functools.lru_cache(maxsize=2)
def _cached_functions(files: tuple[str, ...], root: str) -> tuple[Function, ...]:
    """The tasks of one run share the parse of the same files."""
    return tuple(extract_functions(files, root))
