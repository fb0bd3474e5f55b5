"""A family of small text tasks in GPT-3's in-context format (Brown et al. 2020, figure 2.1).

    Translate English to French:          <- the task description
    forty-two => quarante-deux            <- examples, "input => output", one per line
    seven => sept
    ninety-one =>                         <- the query; the model writes " quatre-vingt-onze"

Tasks map English number words to French, German or Spanish words (num2words) or to digits,
and words (common lower-case words of the standard library's source) to their reverse or upper
case. Some items of every task are held out (the few-shot queries, never in pretraining) and
some whole tasks are held out (never in pretraining, seen only in a prompt).

The pretraining corpus (data.source="icl") is GPT-3's weighted mixture (data/corpus_prep.py:
mix) of two sources: task lists (a description line, then many lines of one task) and ordinary
text (the standard library's source files, cut into pieces at line ends). Everything is
deterministic given data.icl.seed. Importing this module registers that corpus as
data.source="icl" (data/sources.py: register), which data/text.py tokenises.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import re
import sys
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np

from data import corpus_prep, prompts, sources

ARROW = " =>"           # between input and output; the output follows TARGET_DELIMITER
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n"


def _words_of(n: int, lang: str) -> str:
    from num2words import num2words
    return num2words(n, lang=lang)


Kind = str  # "number" | "word"


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    kind: Kind                         # which items it maps: numbers or words
    source: Callable[[object], str]    # the input text of an item
    target: Callable[[object], str]    # its output text

    def pair(self, item) -> tuple[str, str]:
        return self.source(item), self.target(item)


def _en(n):
    return _words_of(n, "en")


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("en_fr", "Translate English to French:", "number", _en,
         functools.partial(_words_of, lang="fr")),
    Task("en_de", "Translate English to German:", "number", _en,
         functools.partial(_words_of, lang="de")),
    Task("en_es", "Translate English to Spanish:", "number", _en,
         functools.partial(_words_of, lang="es")),
    Task("en_digits", "Write the number in digits:", "number", _en, str),
    Task("reverse", "Reverse the letters of the word:", "word", str, lambda w: w[::-1]),
    Task("upper", "Write the word in upper case:", "word", str, str.upper),
    # Held out by default: each asks for a mapping whose pieces pretraining holds, in a
    # direction or a form it never shows.
    Task("digits_en", "Write the number in English words:", "number", str, _en),
    Task("fr_en", "Translate French to English:", "number",
         functools.partial(_words_of, lang="fr"), _en),
    Task("copy", "Repeat the word:", "word", str, str),
)}


_DEFAULTS = dict(
    seed=0,
    numbers=100,               # number items 0 .. numbers-1
    words=200,                 # the most frequent lower-case words of the stdlib's source
    heldout_frac=0.1,          # items of every task kept out of pretraining (the queries)
    heldout_tasks="digits_en,fr_en,copy",   # tasks kept out of pretraining altogether
    task_weight=0.5,           # the mixture's weights (normalised): task lists ...
    text_weight=0.5,           # ... and ordinary text
    train_chars=2_000_000,     # the mixture's size (val and test: val_chars each)
    val_chars=100_000, 
    min_lines=4,               # lines per task list, drawn uniformly
    max_lines=30,
    text_chunk=2000,           # ordinary text comes in pieces of at most this many characters
)


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_DEFAULTS)


def _cfg(cfg) -> dict:
    out = dict(_DEFAULTS)
    if cfg is not None:
        given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        unknown = set(given) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown data.icl fields {sorted(unknown)}; known: "
                             f"{sorted(_DEFAULTS)}")
        out.update(given)
    if not 0 < out["heldout_frac"] < 1:
        raise ValueError(f"data.icl.heldout_frac must lie in (0, 1), not {out['heldout_frac']}")
    if not 1 <= out["min_lines"] <= out["max_lines"]:
        raise ValueError(f"data.icl lines per list: need 1 <= min_lines <= max_lines, got "
                         f"{out['min_lines']}, {out['max_lines']}")
    return out


def heldout_task_names(cfg=None) -> list[str]:
    names = [n.strip() for n in _cfg(cfg)["heldout_tasks"].split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"data.icl.heldout_tasks names {unknown}, not tasks; choose from "
                         f"{sorted(TASKS)}")
    return names


def seen_task_names(cfg=None) -> list[str]:
    held = set(heldout_task_names(cfg))
    return [n for n in TASKS if n not in held]


# ----------------------------------------------------------------------------- items


@functools.lru_cache(maxsize=4)
def common_words(n: int) -> tuple[str, ...]:
    """The n most frequent lower-case words of 4 to 8 letters in the standard library's
    train-split source (ties broken alphabetically): ordinary words, offline everywhere."""
    counts = collections.Counter()
    for _, source in sources.read_files(sources.stdlib_files("train")[:400]):
        counts.update(re.findall(r"(?<![A-Za-z_])[a-z]{4,8}(?![A-Za-z_0-9])", source))
    numberish = {_en(i) for i in range(100)}
    ranked = sorted((w for w in counts if w not in numberish), key=lambda w: (-counts[w], w))
    if len(ranked) < n:
        raise ValueError(f"the standard library gives only {len(ranked)} words, not {n}")
    return tuple(ranked[:n])


def items_of(kind: Kind, cfg=None) -> list:
    c = _cfg(cfg)
    if kind == "number":
        return list(range(c["numbers"]))
    if kind == "word":
        return list(common_words(c["words"]))
    raise ValueError(f"unknown item kind {kind!r}")


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a stable hash of `keys` (Python's hash() is salted per process)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def split_items(kind: Kind, cfg=None) -> tuple[list, list]:
    """(pretraining items, held-out items) of a kind: the held-out ones are never in a
    pretraining line of any task, so a query on them is new to the model."""
    c = _cfg(cfg)
    items = items_of(kind, cfg)
    order = _rng("split", kind, c["seed"]).permutation(len(items))
    k = max(1, round(c["heldout_frac"] * len(items)))
    held = sorted(order[:k].tolist())
    train = sorted(order[k:].tolist())
    return [items[i] for i in train], [items[i] for i in held]


# ----------------------------------------------------------------------------- layout


def query(source: str) -> str:
    return f"{source}{ARROW}"


def description_line(task: Task) -> str:
    return task.description + FEWSHOT_DELIMITER


def prompt(task: Task, examples: list[tuple[str, str]], source: str,
           with_description: bool = True) -> str:
    """lm-eval's few-shot layout (data/prompts.py: fewshot_prompt) with this family's
    delimiters: the description line, the examples "input => output" one per line, the query."""
    return prompts.fewshot_prompt(description_line(task) if with_description else "",
                                  [(query(s), t) for s, t in examples], query(source),
                                  TARGET_DELIMITER, FEWSHOT_DELIMITER)


def task_list(task: Task, pairs: list[tuple[str, str]]) -> str:
    """A pretraining document: the description line, then every pair on its own line (the
    few-shot layout with the last line's answer written out)."""
    *examples, (source, target) = pairs
    return prompt(task, examples, source) + TARGET_DELIMITER + target + FEWSHOT_DELIMITER


# ----------------------------------------------------------------------------- corpus


def task_documents(cfg, split: str, epoch: int = 0) -> Iterator[dict]:
    """Task lists of the pretraining tasks on their pretraining items, endlessly: a task drawn
    uniformly, then min_lines..max_lines of its items drawn without replacement."""
    c = _cfg(cfg)
    names = seen_task_names(cfg)
    if not names:
        raise ValueError("every task is held out: pretraining has no task lists")
    pools = {kind: split_items(kind, cfg)[0] for kind in ("number", "word")}
    rng = _rng("documents", split, epoch, c["seed"])
    for i in range(10 ** 12):
        task = TASKS[names[rng.integers(len(names))]]
        pool = pools[task.kind]
        n = int(rng.integers(c["min_lines"], c["max_lines"] + 1))
        chosen = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        yield {"id": f"tasks:{split}:{epoch}:{i}", "source": "tasks",
               "text": task_list(task, [task.pair(pool[j]) for j in chosen])}


def text_documents(cfg, split: str) -> Iterator[dict]:
    """Ordinary text: the split's standard-library files, in an order drawn from the seed,
    cut at line ends into pieces of at most text_chunk characters."""
    c = _cfg(cfg)
    paths = sources.stdlib_files(split)
    order = _rng("text", split, c["seed"]).permutation(len(paths))
    docs = ({"id": f"text:{path.name}", "source": "text", "text": text}
            for path, text in sources.read_files(paths[i] for i in order))
    return corpus_prep.split_long(corpus_prep.non_empty(docs), c["text_chunk"])


def mixture(cfg, split: str) -> Iterator[dict]:
    """The split's pretraining documents: GPT-3's weighted mixture of the task lists and the
    text, train_chars (val/test: val_chars) characters in all."""
    c = _cfg(cfg)
    epochs = {"tasks": 0}

    def tasks():    # each pass over the endless source is a fresh draw
        epochs["tasks"] += 1
        return task_documents(cfg, split, epochs["tasks"] - 1)

    total = c["train_chars"] if split == "train" else c["val_chars"]
    return corpus_prep.mix({"tasks": tasks, "text": lambda: text_documents(cfg, split)},
                           {"tasks": c["task_weight"], "text": c["text_weight"]}, total,
                           unit="chars")


def corpus_texts(cfg, split: str) -> list[str]:
    """The texts of mixture(cfg, split), for data/text.py's token streams."""
    sources.check_split(split)
    return [d["text"] for d in mixture(cfg, split)]


def identity(cfg) -> dict:
    """What the corpus depends on, for caches."""
    return dict(_cfg(cfg), tasks={n: t.description for n, t in TASKS.items()})


def _source_identity(data_cfg, split: str) -> dict:
    """What data.source="icl" depends on: data.icl and the standard library's files."""
    return dict(icl=identity(getattr(data_cfg, "icl", None)), python=sys.version,
                files=sources.file_stats(sources.stdlib_files(split)))


sources.register("icl", lambda data_cfg, split: corpus_texts(getattr(data_cfg, "icl", None),
                                                             split), _source_identity)


# ----------------------------------------------------------------------------- few-shot


@dataclasses.dataclass(frozen=True)
class Episode:
    prompt: str
    answer: str
    task: str
    group: str     # "items": a held-out item of a pretraining task; "tasks": a held-out task
    outputs: frozenset = frozenset()   # every output of the task: an answer in it is of the
                                       # right kind (French words for en_fr), right or not


@functools.lru_cache(maxsize=32)
def task_outputs(name: str, numbers: int, words: int) -> frozenset:
    task = TASKS[name]
    items = range(numbers) if task.kind == "number" else common_words(words)
    return frozenset(task.target(x) for x in items)


def episodes(cfg, k: int, with_description: bool, queries: int = 16) -> list[Episode]:
    """The few-shot evaluation at k examples: per task, `queries` queries, each with k
    examples drawn from the task's pretraining items (never the query).

    Pretraining tasks are queried on held-out items; held-out tasks on any item. The queries
    and each query's examples depend on the seed only, and the examples at k are the first k
    of the same draw for every k, so the curves over k compare like with like."""
    if k < 0 or queries < 1:
        raise ValueError(f"k must be >= 0 and queries >= 1, got k={k}, queries={queries}")
    c = _cfg(cfg)
    held_tasks = set(heldout_task_names(cfg))
    out = []
    for name, task in TASKS.items():
        train, held = split_items(task.kind, cfg)
        group = "tasks" if name in held_tasks else "items"
        pool_q = train + held if group == "tasks" else held
        rng = _rng("episodes", name, c["seed"])
        chosen = rng.choice(len(pool_q), size=min(queries, len(pool_q)), replace=False)
        for q in chosen:
            item = pool_q[q]
            others = [x for x in train if x != item]
            # The same draw for every k, of which the first k are used.
            order = _rng("shots", name, c["seed"], item).permutation(len(others))[:k]
            examples = [task.pair(others[j]) for j in order]
            source, target = task.pair(item)
            out.append(Episode(prompt(task, examples, source, with_description), target,
                               name, group, task_outputs(name, c["numbers"], c["words"])))
    return out


def answer_of(completion: str) -> str:
    """The model's answer in its continuation of a prompt: the rest of the line, without the
    target delimiter's space."""
    return completion.split(FEWSHOT_DELIMITER, 1)[0].strip()
