"""Zero-, one- and few-shot evaluation without gradient updates (GPT-3 section 2, figure 1.2).

For every K of `shots`, with and without the task description, the experiment's episodes
(prompts in the few-shot layout with their answers) are completed by greedy generation and
scored by exact match of the completed line after stripping; the log-likelihood of the correct
answer is measured beside it (a graded signal where exact match is still 0). Prompt variants
are further evaluation settings of the same model, at K = variant_k without the description:
`orders` orders of the same K examples, and each of `layouts` (data/prompts.py: LAYOUTS, "json"
a structured answer read by parse_json_answer). The in-context learning score (Olsson et al.
2022) is the mean loss at a late position of natural text minus that at an early one, each
position counted from its document's start and averaged over the ten either side.

The experiment gives fit()

    eval_fns["fewshot_episodes"](k, with_description, queries, layout, order, seen)
        -> [episode], each with .prompt, .answer, .task, .family, .group ("items": held-out
        items of a pretraining task, "tasks": a task held out of pretraining), .correct(line),
        .read(line) (the answer in the line; None when it has none) and .in_task(answer);
        layout None is each task's own, order 0 the examples as drawn; seen True queries
        the pretraining items instead of the held-out ones
    eval_fns["complete"](params, prompts) -> [the line each prompt's continuation writes]
    eval_fns["answer_logp"](params, prompts, answers) -> [log p(answer | prompt) per token]
        (optional)
    eval_fns["position_losses"](params) -> mean loss per context position on natural text
        (optional)

and this evaluator logs, under its name NAME:

    NAME/exact_match_k{K}         the mean over the headline families' tasks (scrambling and
                                  arithmetic) of exact match on held-out items, no description;
                                  NAME/exact_match_k{K}_desc with it
    NAME/k{K}/acc, NAME/k{K}/nodesc/acc   every episode, with / without the description, and
    .../{items,tasks}/acc, .../family/{family}/acc, .../task/{task}/acc (per_task=True)
    .../logp, .../in_task         beside each acc: the mean per-token log-likelihood of the
                                  correct answer (with answer_logp); the share of answers that
                                  are an output of the queried task, right or wrong
    NAME/order/k{K}/{mean,min,max,std}    the headline over the orders of the same examples
    NAME/layout/{layout}/k{K}/acc         the headline in each layout
    NAME/layout/json/k{K}/format_ok       the share of answers that parse as the JSON asked for;
                                  also at K = 0, where only the request line describes it
    NAME/seen/k{K}/acc, .../task/{task}/acc   the headline and each task's exact match on
                                  pretraining items (seen_k = K >= 0, no description): what
                                  the model does on items it was trained on
    NAME/context_score            loss at score_positions[1] minus at score_positions[0]
    NAME/context_loss_early, NAME/context_loss_late

At K = 0 the two are GPT-2's p(output | input, task) and p(output | input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from train.evaluators.base import Evaluator, register


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@dataclasses.dataclass
class _Cell:
    """One evaluation setting: its episodes, and what is logged of it."""
    head: str
    episodes: list
    logp: bool = False
    lines: list = None
    scores: list = None


def _grid(prefix: str, k: int, described: bool) -> str:
    return f"{prefix}/k{k}" + ("" if described else "/nodesc")


def headline(rows: list, families: Sequence[str]) -> float | None:
    """The mean over the tasks of `families` of their exact match on held-out items (None
    when no row is of them)."""
    tasks: dict[str, list[bool]] = {}
    for r in rows:
        if r.family in families and r.group == "items":
            tasks.setdefault(r.task, []).append(r.hit)
    return _mean(_mean(h) for h in tasks.values()) if tasks else None


@dataclasses.dataclass
class _Scored:
    task: str
    family: str
    group: str
    hit: bool
    in_task: bool
    read: bool


def _scored(cell: _Cell) -> list[_Scored]:
    out = []
    for e, line in zip(cell.episodes, cell.lines):
        answer = e.read(line)
        out.append(_Scored(e.task, e.family, e.group, e.correct(line), e.in_task(answer),
                           answer is not None))
    return out


def _grid_metrics(cell: _Cell, per_task: bool) -> dict[str, float]:
    rows = _scored(cell)
    keys = ([None] + sorted({r.group for r in rows})
            + [f"family/{f}" for f in sorted({r.family for r in rows})]
            + ([f"task/{t}" for t in dict.fromkeys(r.task for r in rows)] if per_task else []))
    out = {}
    for key in keys:
        idx = [j for j, r in enumerate(rows)
               if key in (None, r.group, f"family/{r.family}", f"task/{r.task}")]
        name = cell.head if key is None else f"{cell.head}/{key}"
        out[f"{name}/acc"] = _mean(rows[j].hit for j in idx)
        out[f"{name}/in_task"] = _mean(rows[j].in_task for j in idx)
        if cell.scores is not None:
            out[f"{name}/logp"] = _mean(cell.scores[j] for j in idx)
    return out


def fewshot_metrics(complete: Callable[[list[str]], list[str]], episodes: Callable,
                    shots: Sequence[int], per_task: bool = False, prefix: str = "fewshot",
                    answer_logp: Callable[[list[str], list[str]], list[float]] | None = None,
                    families: Sequence[str] = (), orders: int = 0,
                    layouts: Sequence[str] = (), variant_k: int = 8,
                    seen_k: int = -1) -> dict[str, float]:
    """Exact match of `complete`'s lines to the episodes of every setting (module docstring).
    episodes(k, described, layout=None, order=0, seen=False) -> [episode]. Every distinct
    prompt goes to
    `complete` once, all in one list, so it can batch them as it likes."""
    if not shots or any(int(k) < 0 for k in shots):
        raise ValueError(f"shots must be a non-empty list of K >= 0, got {list(shots)}")
    if (orders or layouts or seen_k >= 0) and not families:
        raise ValueError("prompt variants (orders, layouts, seen_k) are scored on the "
                         "headline families: name them (families)")
    # A K whose prompts the context cannot hold has no episodes, and no metrics.
    cells = [c for k in shots for d in (True, False)
             if (c := _Cell(_grid(prefix, int(k), d), episodes(int(k), d), logp=True)).episodes]
    if not cells:
        raise ValueError(f"no episodes at any K of {list(shots)}")

    def variant(head, k=variant_k, **kw):
        eps = [e for e in episodes(k, False, **kw) if e.family in families]
        cells.append(_Cell(head, eps))
    if seen_k >= 0:
        variant(f"{prefix}/seen/k{seen_k}", k=seen_k, seen=True)
    for i in range(orders):
        variant(f"{prefix}/order/{i}", order=i)
    for layout in layouts:
        variant(f"{prefix}/layout/{layout}/k{variant_k}", layout=layout)
    if "json" in layouts and variant_k:     # the format only described, shown by no example
        variant(f"{prefix}/layout/json/k0", k=0, layout="json")
    _complete(cells, complete, answer_logp)

    out = {}
    for cell in cells:
        if cell.logp:
            out.update(_grid_metrics(cell, per_task))
    for k in shots:
        for d, suffix in ((False, ""), (True, "_desc")):
            cell = next((c for c in cells if c.head == _grid(prefix, int(k), d)), None)
            value = headline(_scored(cell), families) if cell and families else None
            if value is not None:
                out[f"{prefix}/exact_match_k{k}{suffix}"] = value
    by_order = [headline(_scored(c), families) for c in cells if "/order/" in c.head]
    if by_order and None not in by_order:
        head = f"{prefix}/order/k{variant_k}"
        out.update({f"{head}/mean": float(np.mean(by_order)), f"{head}/min": min(by_order),
                    f"{head}/max": max(by_order), f"{head}/std": float(np.std(by_order))})
    for cell in cells:
        if "/layout/" in cell.head and cell.episodes:
            rows = _scored(cell)
            out[f"{cell.head}/acc"] = headline(rows, families)
            if "/layout/json/" in cell.head:
                out[f"{cell.head}/format_ok"] = _mean(r.read for r in rows)
        if "/seen/" in cell.head and cell.episodes:
            rows = _scored(cell)
            out[f"{cell.head}/acc"] = headline(rows, families)
            for task in dict.fromkeys(r.task for r in rows):
                out[f"{cell.head}/task/{task}/acc"] = _mean(r.hit for r in rows
                                                            if r.task == task)
    return out


def _complete(cells: list[_Cell], complete, answer_logp) -> None:
    """Fills each cell's lines (and scores where it asks for them): one call of `complete` on
    the distinct prompts, one of answer_logp on the distinct (prompt, answer) pairs."""
    prompts = list(dict.fromkeys(e.prompt for c in cells for e in c.episodes))
    lines = complete(prompts)
    if len(lines) != len(prompts):
        raise ValueError(f"complete returned {len(lines)} answers for {len(prompts)} prompts")
    line_of = dict(zip(prompts, lines))
    pairs = list(dict.fromkeys((e.prompt, e.answer) for c in cells if c.logp
                               for e in c.episodes)) if answer_logp else []
    score_of = dict(zip(pairs, answer_logp([p for p, _ in pairs], [a for _, a in pairs])
                        if pairs else []))
    for c in cells:
        c.lines = [line_of[e.prompt] for e in c.episodes]
        if c.logp and answer_logp:
            c.scores = [score_of[(e.prompt, e.answer)] for e in c.episodes]


def context_score(losses: np.ndarray, positions: Sequence[int], prefix: str,
                  band: int = 10) -> dict:
    """Olsson et al. 2022: the mean loss at the late position minus that at the early one
    (negative: later tokens are predicted better, from what the context holds); each the mean
    over the positions within `band` of it, so that a hundred-odd documents measure it."""
    early, late = (int(p) for p in positions)
    if not band <= early < late < len(losses) - band:
        raise ValueError(f"score_positions {tuple(positions)} must be early < late, each with "
                         f"{band} positions either side inside the context of {len(losses)}")
    at = {p: float(np.mean(losses[p - band:p + band + 1])) for p in (early, late)}
    return {f"{prefix}/context_score": at[late] - at[early],
            f"{prefix}/context_loss_early": at[early], f"{prefix}/context_loss_late": at[late]}


@register("fewshot")
class FewShot(Evaluator):
    """Few-shot exact match of a language model at each K of `shots`, the prompt variants and
    the in-context learning score (see the module docstring); `queries` episodes per task."""

    defaults = dict(shots=(0, 1, 2, 4, 8, 16), queries=16, per_task=True,
                    families=("scramble", "arithmetic"), orders=0, layouts=(), variant_k=8,
                    seen_k=-1, score_positions=(50, 500))

    def __init__(self, *args):
        super().__init__(*args)
        missing = [f for f in ("fewshot_episodes", "complete") if f not in self.ctx.fns]
        if missing:
            raise ValueError(f"evaluator {self.name!r} (fewshot) needs the experiment's "
                             f"{missing}: a language model on a task family (data.source=icl)")

    def run(self, state):
        fns, cfg = self.ctx.fns, self.cfg
        make, logp = fns["fewshot_episodes"], fns.get("answer_logp")
        out = fewshot_metrics(
            lambda prompts: fns["complete"](state.params, prompts),
            lambda k, d, layout=None, order=0, seen=False: make(k, d, int(cfg.queries), layout,
                                                                order, seen),
            tuple(cfg.shots), bool(cfg.per_task), prefix=self.name,
            answer_logp=logp and (lambda p, a: logp(state.params, p, a)),
            families=tuple(cfg.families), orders=int(cfg.orders), layouts=tuple(cfg.layouts),
            variant_k=int(cfg.variant_k), seen_k=int(cfg.seen_k))
        if "position_losses" in fns and cfg.score_positions:
            out.update(context_score(fns["position_losses"](state.params),
                                     cfg.score_positions, self.name))
        return out
