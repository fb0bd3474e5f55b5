"""Zero-, one- and few-shot evaluation without gradient updates (GPT-3 section 2, figure 1.2).

For every K of `shots`, with and without the task description, the experiment's episodes
(prompts in the few-shot layout, their answers, their task and group) are completed by greedy
generation and scored by exact match of the completed line, and the log-likelihood of the
correct answer is measured (a graded signal where exact match is still 0). The experiment
gives fit()

    eval_fns["fewshot_episodes"](k, with_description, queries) -> [episode]
        each with .prompt, .answer, .task, .group ("items": held-out items of a pretraining
        task, "tasks": a task held out of pretraining)
    eval_fns["complete"](params, prompts) -> [the answer each prompt's continuation gives]
    eval_fns["answer_logp"](params, prompts, answers) -> [log p(answer | prompt) per token]
        (optional)

and this evaluator logs, under its name (e.g. "fewshot"):

    NAME/k{K}/acc                 with the description, every episode
    NAME/k{K}/{items,tasks}/acc   with the description, one group
    NAME/k{K}/nodesc/acc, NAME/k{K}/nodesc/{items,tasks}/acc    the same without it
    NAME/k{K}/task/{task}/acc, .../nodesc/task/{task}/acc       per task (per_task=True)
    NAME/k{K}/.../logp            beside each acc: the mean per-token log-likelihood of the
                                  correct answer (and its newline), with answer_logp
    NAME/k{K}/.../in_task         beside each acc: the share of answers that are an output of
                                  the queried task (episode.outputs), right or wrong: whether
                                  the prompt told the model which task it is

At K = 0 the two are GPT-2's p(output | input, task) and p(output | input).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from train.evaluators.base import Evaluator, register


def _acc(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def fewshot_metrics(complete: Callable[[list[str]], list[str]],
                    episodes: Callable[[int, bool], list], shots: Sequence[int],
                    per_task: bool = False, prefix: str = "fewshot",
                    answer_logp: Callable[[list[str], list[str]], list[float]] | None = None
                    ) -> dict[str, float]:
    """Exact-match accuracy of `complete`'s answers to the episodes of every K of `shots`,
    with and without the description (and with answer_logp, the mean log-likelihood of the
    correct answers). All prompts go to `complete` in one list, so it can batch them as it
    likes."""
    if not shots or any(int(k) < 0 for k in shots):
        raise ValueError(f"shots must be a non-empty list of K >= 0, got {list(shots)}")
    runs = [(int(k), d, episodes(int(k), d)) for k in shots for d in (True, False)]
    prompts = [e.prompt for _, _, eps in runs for e in eps]
    answers = complete(prompts)
    if len(answers) != len(prompts):
        raise ValueError(f"complete returned {len(answers)} answers for {len(prompts)} prompts")
    logps = (answer_logp(prompts, [e.answer for _, _, eps in runs for e in eps])
             if answer_logp else None)
    out, i = {}, 0
    for k, described, eps in runs:
        if not eps:
            raise ValueError(f"no episodes at K={k}")
        got = answers[i:i + len(eps)]
        hits = [a == e.answer for a, e in zip(got, eps)]
        kind = [a in e.outputs for a, e in zip(got, eps)]
        scores = logps[i:i + len(eps)] if logps is not None else None
        i += len(eps)
        head = f"{prefix}/k{k}" + ("" if described else "/nodesc")
        keys = [None] + sorted({e.group for e in eps}) + (sorted({e.task for e in eps})
                                                          if per_task else [])
        for key in keys:
            rows = [j for j, e in enumerate(eps) if key in (None, e.group, e.task)]
            name = (head if key is None else f"{head}/{key}" if key in ("items", "tasks")
                    else f"{head}/task/{key}")
            out[f"{name}/acc"] = _acc([hits[j] for j in rows])
            if all(eps[j].outputs for j in rows):
                out[f"{name}/in_task"] = _acc([kind[j] for j in rows])
            if scores is not None:
                out[f"{name}/logp"] = sum(scores[j] for j in rows) / len(rows)
    return out


@register("fewshot")
class FewShot(Evaluator):
    """Few-shot accuracy of a language model at each K of `shots` (see the module docstring);
    `queries` episodes per task."""

    defaults = dict(shots=(0, 1, 2, 4, 8, 16), queries=16, per_task=True)

    def __init__(self, *args):
        super().__init__(*args)
        missing = [f for f in ("fewshot_episodes", "complete") if f not in self.ctx.fns]
        if missing:
            raise ValueError(f"evaluator {self.name!r} (fewshot) needs the experiment's "
                             f"{missing}: a language model on a task family (data.source=icl)")

    def run(self, state):
        make, logp = self.ctx.fns["fewshot_episodes"], self.ctx.fns.get("answer_logp")
        return fewshot_metrics(
            lambda prompts: self.ctx.fns["complete"](state.params, prompts),
            lambda k, d: make(k, d, int(self.cfg.queries)), tuple(self.cfg.shots),
            bool(self.cfg.per_task), prefix=self.name,
            answer_logp=logp and (lambda p, a: logp(state.params, p, a)))
