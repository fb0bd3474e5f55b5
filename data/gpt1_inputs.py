"""GPT-1's task-aware input transformations (Radford et al. 2018, section 3.3, Figure 1).

Every task is turned into token sequences that the pretrained decoder reads unchanged; only the
start, delimiter and extract tokens are new (special tokens added to the vocabulary):

    classification   [start] text [extract]
    entailment       [start] premise [delim] hypothesis [extract]
    similarity       [start] text1 [delim] text2 [extract]  and
                     [start] text2 [delim] text1 [extract]  (states added)
    multiple choice  [start] context [delim] answer_i [extract]        for every answer i

The transformations are pure functions on lists of token ids. Each returns the sequences of one
example; truncation shortens the texts, never the special tokens, so the extract token is always
last. `encode_split` packs a whole split into arrays of shape [examples, sequences, length]
(sequences: 1 for classification and entailment, 2 for similarity, the number of answers for
multiple choice) plus the length of every sequence, whose last token is the extract token.

Records, one dict per example, grouped by split in a `Task`:
    classification   {"text", "label"}
    entailment       {"premise", "hypothesis", "label"}
    similarity       {"text1", "text2", "label"}
    multiple_choice  {"context", "answers": [...], "label"}  (label = index of the right answer)

Tasks come from data/code_tasks.py (offline, from the standard library's held-out files) and
data/hub_tasks.py (SST-2, RTE, MNLI, MRPC, QQP, HellaSwag, RACE through HF `datasets`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np


START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"
TASK_TOKENS = (START, DELIM, EXTRACT)
KINDS = ("classification", "entailment", "similarity", "multiple_choice")


@dataclasses.dataclass(frozen=True)
class Specials:
    """Ids of the start, delimiter and extract tokens."""
    start: int
    delim: int
    extract: int


def add_task_tokens(tokenizer) -> Specials:
    """Adds start, delimiter and extract to the tokenizer's vocabulary; returns their ids."""
    return Specials(*tokenizer.add_special_tokens(list(TASK_TOKENS)))


# ---------------------------------------------------------------------------------------------
# Input transformations (Figure 1): token ids in, the example's sequences out.

def _fit_pair(a: Sequence[int], b: Sequence[int], budget: int) -> tuple[list[int], list[int]]:
    """Shortens the longer of the two texts until both fit in `budget` tokens (heads are kept)."""
    la, lb = len(a), len(b)
    if la + lb > budget:
        short = min(la, lb, budget // 2)
        la, lb = (budget - short, short) if la >= lb else (short, budget - short)
    return list(a[:la]), list(b[:lb])


def classification(text: Sequence[int], max_len: int, sp: Specials) -> list[list[int]]:
    """[start] text [extract]."""
    return [[sp.start, *text[:max_len - 2], sp.extract]]


def entailment(premise: Sequence[int], hypothesis: Sequence[int], max_len: int,
               sp: Specials) -> list[list[int]]:
    """[start] premise [delim] hypothesis [extract]."""
    p, h = _fit_pair(premise, hypothesis, max_len - 3)
    return [[sp.start, *p, sp.delim, *h, sp.extract]]


def similarity(text1: Sequence[int], text2: Sequence[int], max_len: int,
               sp: Specials) -> list[list[int]]:
    """Both orders, [start] a [delim] b [extract]: the pair has no inherent order (section 3.3)."""
    a, b = _fit_pair(text1, text2, max_len - 3)
    return [[sp.start, *a, sp.delim, *b, sp.extract], [sp.start, *b, sp.delim, *a, sp.extract]]


def multiple_choice(context: Sequence[int], answers: Sequence[Sequence[int]], max_len: int,
                    sp: Specials) -> list[list[int]]:
    """[start] context [delim] answer_k [extract] for every answer k.

    Each answer keeps at most half the room; the context keeps its end (the part next to the
    answer) and the same tokens in every sequence."""
    budget = max_len - 3
    answers = [list(a[:budget // 2]) for a in answers]
    room = budget - max(len(a) for a in answers)
    context = list(context[max(len(context) - room, 0):])
    return [[sp.start, *context, sp.delim, *a, sp.extract] for a in answers]


def transform(kind: str, record: dict, encoded: dict[str, list], max_len: int,
              sp: Specials) -> list[list[int]]:
    """The sequences of one record, given its texts already tokenised (`encoded[field]`)."""
    if kind == "classification":
        return classification(encoded["text"], max_len, sp)
    if kind == "entailment":
        return entailment(encoded["premise"], encoded["hypothesis"], max_len, sp)
    if kind == "similarity":
        return similarity(encoded["text1"], encoded["text2"], max_len, sp)
    if kind == "multiple_choice":
        return multiple_choice(encoded["context"], encoded["answers"], max_len, sp)
    raise ValueError(f"unknown task kind {kind!r}; choose from {KINDS}")


TEXT_FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"),
               "similarity": ("text1", "text2"), "multiple_choice": ("context", "answers")}


def encode_split(kind: str, records: Sequence[dict], encode_batch: Callable, max_len: int,
                 sp: Specials, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Records -> {"tokens" int32 [N, S, L], "lengths" int32 [N, S], "labels" int32 [N]}.

    L is the longest sequence of the split (at most max_len); padding goes after the extract
    token, where a causal model never looks from it."""
    if not records:
        raise ValueError("no records to encode")
    texts = []
    for r in records:
        for field in TEXT_FIELDS[kind]:
            texts.extend(r[field] if field == "answers" else [r[field]])
    ids = iter(encode_batch(texts))
    examples = []
    for r in records:
        enc = {f: [next(ids) for _ in r[f]] if f == "answers" else next(ids)
               for f in TEXT_FIELDS[kind]}
        examples.append(transform(kind, r, enc, max_len, sp))
    n_seq = len(examples[0])
    if any(len(e) != n_seq for e in examples):
        raise ValueError("every example of a split needs the same number of sequences "
                         "(multiple choice: the same number of answers)")
    length = max(len(s) for e in examples for s in e)
    tokens = np.full((len(examples), n_seq, length), pad_id, np.int32)
    lengths = np.zeros((len(examples), n_seq), np.int32)
    for i, e in enumerate(examples):
        for j, s in enumerate(e):
            tokens[i, j, :len(s)] = s
            lengths[i, j] = len(s)
    labels = np.asarray([r["label"] for r in records], np.int32)
    return {"tokens": tokens, "lengths": lengths, "labels": labels}


@dataclasses.dataclass
class Task:
    name: str
    kind: str
    num_classes: int               # classes, or answers per example for multiple choice
    splits: dict[str, list[dict]]  # "train", "val", "test" -> records
    description: str = ""

    @property
    def chance(self) -> float:
        """Accuracy of always answering the most frequent label of the test split."""
        counts = collections.Counter(r["label"] for r in self.splits["test"])
        return max(counts.values()) / sum(counts.values())
