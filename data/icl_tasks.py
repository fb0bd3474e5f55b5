"""In-context learning in miniature (Brown et al. 2020, sections 3.9.1-3.9.2, figure 1.2).

Four families of small tasks, each in GPT-3's format: a description line, then one example per
line, then the query, whose answer the model writes after a space.

    scramble    GPT-3's word scrambling: cycled letters (cl: "lyinevitab = inevitably"),
                anagrams of all but the first and last letter (a1: "criroptuon = corruption"),
                of all but the first and last two (a2: "opoepnnt = opponent"), a random
                punctuation mark or space inserted between the letters (ri: "s.u!c/c!e.s s i/o/n
                = succession"), reversed words (rw: "stcejbo = objects"). The words: the most
                frequent words of Python's own documentation (pydoc_data.topics, offline).
    arithmetic  2- and 3-digit addition and subtraction (add2, sub2, add3, sub3), 2-digit
                multiplication (mul2), one-digit composite (comp1): "Q: What is 48 plus 76? A: 124"
    mapping     labels: number words and other words get two labels drawn afresh for every
                prompt ("seventy-one => qvz"); only the prompt's examples say which is which
    knowledge   English number words to French, German, Spanish or digits (num2words), and two
                tasks held out of pretraining (digits to English, French to English): the
                answer is an item-level fact that examples cannot supply (the contrast)

The prompt determines the answer of the first three families; the fourth needs knowledge.

Held out: a deterministic share (heldout_frac) of the words and of the numbers (a permutation
drawn from data.icl.seed) and of the arithmetic questions (a hash of the question, commutative
ones in one order) is never a task item in pretraining; the few-shot queries come from it.

The pretraining corpus (data.source="icl") is GPT-3's weighted mixture (data/corpus_prep.py:
mix) of task lists (K + 1 lines of one task, K varied, a share with the description line) and
ordinary text (the standard library's source files, cut into pieces at line ends).
Everything is deterministic given data.icl.seed. Importing this module registers that corpus
as data.source="icl" (data/sources.py: register), which data/text.py tokenises.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import re
import string
import sys
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np

from data import corpus_prep, prompts, sources

TARGET_DELIMITER = " "     # between a question and its answer
FEWSHOT_DELIMITER = "\n"   # after each example
MAX_SHOTS = 32             # examples drawn for every query (the first K are used)


_DEFAULTS = dict(
    seed=0,
    numbers=100,               # number items 0 .. numbers-1
    words=1000,                # the most frequent words of 4-8 letters of Python's docs
    heldout_frac=0.1,          # words, numbers and arithmetic questions kept out of pretraining
    heldout_tasks="digits_en,fr_en",   # tasks kept out of pretraining altogether
    task_weight=0.5,           # the mixture's weights (normalised): task lists ...
    text_weight=0.5,           # ... and ordinary text
    train_chars=2_000_000,     # the mixture's size (val and test: val_chars each)
    val_chars=100_000,
    min_lines=2,               # lines per task list (K + 1), drawn uniformly
    max_lines=40,
    described=0.5,             # share of the task lists that begin with the description line
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
    if not 0 <= out["described"] <= 1:
        raise ValueError(f"data.icl.described is a share in [0, 1], not {out['described']}")
    return out


def _rng(*keys) -> np.random.Generator:
    """A generator seeded by a stable hash of `keys` (Python's hash() is salted per process)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# ----------------------------------------------------------------------------- items


def _en(n: int, lang: str = "en") -> str:
    from num2words import num2words
    return num2words(n, lang=lang)


@functools.lru_cache(maxsize=4)
def common_words(n: int) -> tuple[str, ...]:
    """The n most frequent lower-case words of 4 to 8 letters in the prose of Python's
    documentation (pydoc_data.topics, which ships with Python: its unindented lines, quoted
    names taken out; ties broken alphabetically), without the number words: ordinary English
    words, offline everywhere."""
    from pydoc_data import topics
    counts = collections.Counter()
    for text in topics.topics.values():
        for line in text.splitlines():
            if line[:1].isspace():     # code examples are indented
                continue
            line = re.sub(r'"[^"]*"', " ", line)
            counts.update(re.findall(r"(?<![A-Za-z_.-])[a-z]{4,8}(?![A-Za-z0-9_(-])", line))
    numberish = {_en(i) for i in range(100)}
    ranked = sorted((w for w in counts if w not in numberish), key=lambda w: (-counts[w], w))
    if len(ranked) < n:
        raise ValueError(f"Python's documentation gives only {len(ranked)} words, not {n}")
    return tuple(ranked[:n])


class Items:
    """The items of a config and which are held out: words and numbers by a permutation of
    their list, arithmetic questions by a hash of the question."""

    def __init__(self, cfg=None):
        c = _cfg(cfg)
        self.seed, self.frac = c["seed"], c["heldout_frac"]
        self.word_split = self._split("word", common_words(c["words"]))
        self.number_split = self._split("number", tuple(range(c["numbers"])))

    def _split(self, kind: str, items: tuple) -> dict:
        order = _rng("split", kind, self.seed).permutation(len(items))
        k = max(1, round(self.frac * len(items)))
        held = [items[i] for i in sorted(order[:k])]
        return {True: held, False: [items[i] for i in sorted(order[k:])], None: list(items)}

    def words(self, held: bool | None) -> list[str]:
        """held True: the held-out words; False: the pretraining ones; None: all."""
        return self.word_split[held]

    def numbers(self, held: bool | None) -> list[int]:
        return self.number_split[held]

    def question_held(self, question: str) -> bool:
        digest = hashlib.sha256(repr(("question", question, self.seed)).encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2 ** 64 < self.frac


def _items_key(cfg) -> tuple:
    c = _cfg(cfg)
    return tuple(sorted((k, c[k]) for k in ("seed", "heldout_frac", "words", "numbers")))


@functools.lru_cache(maxsize=8)
def _items_of(key: tuple) -> Items:
    return Items(dict(key))


def _items(cfg) -> Items:
    """The config's Items, built once."""
    return _items_of(_items_key(cfg))


def split_items(kind: str, cfg=None) -> tuple[list, list]:
    """(pretraining items, held-out items) of "word" or "number"."""
    items = _items(cfg)
    if kind not in ("word", "number"):
        raise ValueError(f"unknown item kind {kind!r}: 'word' or 'number'")
    get = items.words if kind == "word" else items.numbers
    return get(False), get(True)


# ----------------------------------------------------------------------------- scrambling


INSERTED = "".join(c for c in string.punctuation if c not in '"\\=') + " "


def _shuffled(rng, letters: str) -> str:
    return "".join(rng.permutation(list(letters)))


def cycle_letters(word: str, rng) -> str:
    i = int(rng.integers(1, len(word)))
    return word[i:] + word[:i]


def anagram_inside(keep: int) -> Callable[[str, object], str]:
    """All but the first and last `keep` letters in a random order."""
    def scramble(word: str, rng) -> str:
        return word[:keep] + _shuffled(rng, word[keep:-keep]) + word[-keep:]
    return scramble


def random_insertion(word: str, rng) -> str:
    marks = rng.choice(list(INSERTED), size=len(word) - 1)
    return word[0] + "".join(m + c for m, c in zip(marks, word[1:]))


def reverse_word(word: str, rng) -> str:
    return word[::-1]


def _can_scramble(name: str, word: str) -> bool:
    """Whether the task can write the word other than it is."""
    inside = {"a1": word[1:-1], "a2": word[2:-2]}.get(name)
    if inside is not None:
        return len(set(inside)) > 1
    return len(set(word)) > 1 and (name != "rw" or word != word[::-1])


# ----------------------------------------------------------------------------- arithmetic


def _canonical(a: int, op: str, b: int) -> str:
    """The question with a commutative operation's operands in one order."""
    return f"{min(a, b)} {op} {max(a, b)}" if op in ("plus", "times") else f"{a} {op} {b}"


def _binary(digits: int, op: str, fn: Callable[[int, int], int]):
    def draw(rng, items: Items, held):
        while True:
            a, b = (int(x) for x in rng.integers(0, 10 ** digits, size=2))
            if held is None or items.question_held(_canonical(a, op, b)) == held:
                return f"What is {a} {op} {b}?", str(fn(a, b))
    return draw


_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def composite(rng, items: Items, held):
    """One-digit composite: "What is (2 * 3) + 4?"."""
    while True:
        a, b, c = (int(x) for x in rng.integers(0, 10, size=3))
        o1, o2 = (str(o) for o in rng.choice(list(_OPS), size=2))
        expr = f"({a} {o1} {b}) {o2} {c}"
        if held is None or items.question_held(expr) == held:
            return f"What is {expr}?", str(_OPS[o2](_OPS[o1](a, b), c))


# ----------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: draw(rng, items, held, context) -> (input, output) of an item of the split
    (held True: held out, False: pretraining, None: any); context(rng), when given, is drawn
    once per prompt (a per-prompt mapping) and passed to every draw."""
    name: str
    family: str          # scramble | arithmetic | mapping | knowledge
    description: str
    layout: str          # its own line layout (data/prompts.py: LAYOUTS)
    draw: Callable
    kind: type = str     # the answer's type in a JSON answer
    context: Callable | None = None

    def pair(self, rng, items: Items, held, context=None) -> tuple[str, str]:
        return self.draw(rng, items, held, context)


def _scramble(name: str, fn):
    def draw(rng, items: Items, held, context):
        pool = items.words(held)
        while True:
            word = pool[int(rng.integers(len(pool)))]
            if _can_scramble(name, word):
                out = fn(word, rng)
                if out != word:
                    return out, word
    return draw


# name -> (description, input of a number, output of a number). digits_en and fr_en are held
# out by default: a mapping whose pieces pretraining holds, in a direction it never shows.
KNOWLEDGE = {
    "en_fr": ("Translate English to French:", _en, functools.partial(_en, lang="fr")),
    "en_de": ("Translate English to German:", _en, functools.partial(_en, lang="de")),
    "en_es": ("Translate English to Spanish:", _en, functools.partial(_en, lang="es")),
    "en_digits": ("Write the number in digits:", _en, str),
    "digits_en": ("Write the number in English words:", str, _en),
    "fr_en": ("Translate French to English:", functools.partial(_en, lang="fr"), _en),
}


def _number(name: str):
    _, source, target = KNOWLEDGE[name]

    def draw(rng, items: Items, held, context):
        pool = items.numbers(held)
        n = pool[int(rng.integers(len(pool)))]
        return source(n), target(n)
    return draw


def _labels(rng) -> tuple[str, str]:
    """Two distinct labels of three letters: for number words, for other words."""
    while True:
        a, b = ("".join(rng.choice(list(string.ascii_lowercase), size=3)) for _ in range(2))
        if a != b:
            return a, b


def _labelled(rng, items: Items, held, labels):
    if rng.random() < 0.5:
        return _en(items.numbers(held)[int(rng.integers(len(items.numbers(held))))]), labels[0]
    return items.words(held)[int(rng.integers(len(items.words(held))))], labels[1]


def _arith(name, draw):
    return Task(name, "arithmetic", "Answer the question with a number:", "qa",
                lambda rng, items, held, context: draw(rng, items, held), kind=int)


UNSCRAMBLE = "Please unscramble the letters into a word, and write that word:"   # GPT-3's

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cl", "scramble", UNSCRAMBLE, "equals", _scramble("cl", cycle_letters)),
    Task("a1", "scramble", UNSCRAMBLE, "equals", _scramble("a1", anagram_inside(1))),
    Task("a2", "scramble", UNSCRAMBLE, "equals", _scramble("a2", anagram_inside(2))),
    Task("ri", "scramble", UNSCRAMBLE, "equals", _scramble("ri", random_insertion)),
    Task("rw", "scramble", UNSCRAMBLE, "equals", _scramble("rw", reverse_word)),
    _arith("add2", _binary(2, "plus", _OPS["+"])),
    _arith("sub2", _binary(2, "minus", _OPS["-"])),
    _arith("add3", _binary(3, "plus", _OPS["+"])),
    _arith("sub3", _binary(3, "minus", _OPS["-"])),
    _arith("mul2", _binary(2, "times", _OPS["*"])),
    _arith("comp1", composite),
    Task("labels", "mapping", "Label each word as the examples do:", "arrow", _labelled,
         context=_labels),
    *(Task(name, "knowledge", description, "arrow", _number(name))
      for name, (description, _, _) in KNOWLEDGE.items()),
)}

# The paper's names (section 3.9).
PAPER_NAMES = {"cl": "CL", "a1": "A1", "a2": "A2", "ri": "RI", "rw": "RW", "add2": "2D+",
               "sub2": "2D-", "add3": "3D+", "sub3": "3D-", "mul2": "2Dx", "comp1": "1DC"}


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


def draw_pairs(task: Task, rng, items: Items, n: int, held, context=None,
               avoid: frozenset = frozenset()) -> list[tuple[str, str]]:
    """n pairs of the split with distinct inputs, none in `avoid` (as many as the split has
    when it has fewer)."""
    out, seen = [], set(avoid)
    for _ in range(50 * n):
        if len(out) == n:
            break
        pair = task.pair(rng, items, held, context)
        if pair[0] not in seen:
            seen.add(pair[0])
            out.append(pair)
    return out


# ----------------------------------------------------------------------------- layout


def description_line(task: Task) -> str:
    return task.description + FEWSHOT_DELIMITER


def prompt(task: Task, examples: list[tuple[str, str]], source: str,
           with_description: bool = True, layout: str | None = None) -> str:
    """lm-eval's few-shot layout (data/prompts.py: layout_prompt): the description line, the
    examples one per line in the layout (the task's own by default), the query's question."""
    return prompts.layout_prompt(description_line(task) if with_description else "", examples,
                                 source, layout or task.layout, task.kind, FEWSHOT_DELIMITER)


def task_list(task: Task, pairs: list[tuple[str, str]], with_description: bool = True) -> str:
    """A pretraining document: the few-shot layout with the last line's answer written out."""
    *examples, (source, target) = pairs
    return (prompt(task, examples, source, with_description) + TARGET_DELIMITER
            + prompts.layout_answer(target, task.layout, task.kind) + FEWSHOT_DELIMITER)


# ----------------------------------------------------------------------------- corpus


def task_documents(cfg, split: str, epoch: int = 0) -> Iterator[dict]:
    """Task lists of the pretraining tasks on their pretraining items, endlessly: a task drawn
    uniformly, min_lines..max_lines of its lines (a fresh mapping per list where the task has
    one), the description line first in a `described` share of them."""
    c = _cfg(cfg)
    names = seen_task_names(cfg)
    if not names:
        raise ValueError("every task is held out: pretraining has no task lists")
    items = _items(cfg)
    rng = _rng("documents", split, epoch, c["seed"])
    for i in range(10 ** 12):
        task = TASKS[names[rng.integers(len(names))]]
        n = int(rng.integers(c["min_lines"], c["max_lines"] + 1))
        context = task.context(rng) if task.context else None
        pairs = draw_pairs(task, rng, items, n, False, context)
        described = bool(rng.random() < c["described"])
        yield {"id": f"tasks:{split}:{epoch}:{i}", "source": "tasks", "task": task.name,
               "text": task_list(task, pairs, described)}


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
    return dict(_cfg(cfg), version=2,
                tasks={n: [t.family, t.description, t.layout] for n, t in TASKS.items()})


def _source_identity(data_cfg, split: str) -> dict:
    """What data.source="icl" depends on: data.icl and the standard library (its files, and
    the documentation the words come from, through the Python version)."""
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
    group: str       # "items": a held-out item of a pretraining task; "tasks": a held-out task
    family: str = ""
    layout: str = "equals"
    kind: type = str
    outputs: frozenset = frozenset()   # the task's outputs: an answer among them is of the
    pattern: str = ""                  # right kind (or matching the pattern), right or not

    def read(self, line: str) -> str | None:
        """The answer a completed line gives (None: a JSON answer that does not parse)."""
        return prompts.read_answer(line, self.layout, self.kind)

    def correct(self, line: str) -> bool:
        """Greedy exact match after stripping (the layout's quotes or JSON taken off)."""
        return self.read(line) == self.answer

    def in_task(self, answer: str | None) -> bool:
        return answer is not None and (answer in self.outputs or bool(
            self.pattern and re.fullmatch(self.pattern, answer)))


@functools.lru_cache(maxsize=64)
def task_outputs(name: str, key: tuple) -> frozenset:
    """Every output of a task with a finite set of them: the words (scrambling), the targets
    of every number (knowledge)."""
    items = _items_of(key)
    if TASKS[name].family == "scramble":
        return frozenset(items.words(None))
    return frozenset(KNOWLEDGE[name][2](n) for n in items.numbers(None))


def _outputs(task: Task, cfg, context) -> tuple[frozenset, str]:
    """(outputs, pattern) of an episode: what an answer of the task looks like."""
    if task.family == "arithmetic":
        return frozenset(), r"-?\d+"
    if task.context is not None:
        return frozenset(context), ""
    return task_outputs(task.name, _items_key(cfg)), ""


def episodes(cfg, k: int, with_description: bool, queries: int = 16,
             layout: str | None = None, order: int = 0, seen: bool = False) -> list[Episode]:
    """The few-shot evaluation at k examples: per task, `queries` queries, each with k
    examples of the task's pretraining items (never the query).

    Pretraining tasks are queried on held-out items (seen=True: on pretraining items, what
    the model could have memorised); held-out tasks on any item. The queries,
    each query's examples and its mapping (labels) depend on the seed only, and the examples
    at k are the first k of the same draw for every k, so the curves over k compare like with
    like. layout: the lines' layout (the task's own when None); order > 0: the same k
    examples in the order-th random permutation."""
    if not 0 <= k <= MAX_SHOTS or queries < 1 or order < 0:
        raise ValueError(f"need 0 <= k <= {MAX_SHOTS}, queries >= 1 and order >= 0, got k={k}, "
                         f"queries={queries}, order={order}")
    c = _cfg(cfg)
    held_tasks, items = set(heldout_task_names(cfg)), _items(cfg)
    out = []
    for name, task in TASKS.items():
        group = "tasks" if name in held_tasks else "items"
        rng, asked = _rng("queries", name, c["seed"], *(("seen",) if seen else ())), set()
        for q in range(queries):
            context = task.context(rng) if task.context else None
            query = draw_pairs(task, rng, items, 1, None if group == "tasks" else not seen,
                               context, avoid=frozenset(asked))
            if not query:       # every item of the split asked already
                break
            (source, target), = query
            asked.add(source)
            shots = draw_pairs(task, _rng("shots", name, c["seed"], q), items, MAX_SHOTS,
                               False, context, avoid=frozenset([source]))[:k]
            if order:
                perm = _rng("order", name, c["seed"], q, k, order).permutation(len(shots))
                shots = [shots[i] for i in perm]
            outputs, pattern = _outputs(task, cfg, context)
            out.append(Episode(prompt(task, shots, source, with_description, layout), target,
                               name, group, task.family, layout or task.layout, task.kind,
                               outputs, pattern))
    return out


def answer_of(completion: str) -> str:
    """The rest of the line a model writes after a prompt, stripped."""
    return completion.split(FEWSHOT_DELIMITER, 1)[0].strip()
