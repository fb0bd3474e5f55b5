"""The table and figure of in-context learning in miniature (GPT-3 figure 1.2), from a sweep.

    python -m experiments.sweep --config=experiments/configs/gpt.py:icl-s --name=icl --workdir=DIR
    python -m experiments.icl_report --workdir=DIR [--figure=docs/figures/icl.png]

Reads DIR/results.csv (a row per model size: the fewshot evaluator's test metrics; a run's
newest DIR/RUN/evaluate-test-STEP.json from `python -m experiments.evaluate --workdir=DIR/RUN`
takes precedence, so checkpoints can be scored again) and writes DIR/icl.md: exact-match
accuracy, the share of answers that are an output of the queried task, and the mean
per-token log-likelihood of the correct answer against K, the number of examples in the prompt, per size, with and without the task
description, on held-out items of the pretraining tasks and on held-out tasks; and the
figure: both against K, a line per size, solid with the description and dashed without it,
a panel per metric and group.
"""

import json
import pathlib
import re
import sys

from absl import app, flags

from experiments import launch  # noqa: F401  (--workdir, shared by the experiments: the sweep's)
from experiments.sweeps.results import read_results, run_dir

flags.declare_key_flag("workdir")   # listed by --help
flags.DEFINE_string("figure", "docs/figures/icl.png", "Where the figure goes.")
flags.DEFINE_string("axis", "size", "The swept column that names the models.")
FLAGS = flags.FLAGS

GROUPS = {"items": "held-out items of pretraining tasks", "tasks": "held-out tasks"}
METRICS = {"acc": "exact-match accuracy",
           "in_task": "answers of the queried task",
           "logp": "log-likelihood of the answer per token"}


def read(path: pathlib.Path, axis: str, metric: str = "acc") -> tuple[list[int], dict]:
    """(the K measured, {(model, described, group): {K: mean of `metric` over seeds}})."""
    rows = read_results(path)
    if not rows or axis not in rows[0]:
        raise ValueError(f"{path} has no rows with a column {axis!r}")
    rows = [{**row, **rescored(run_dir(path.parent, row, [axis]))} for row in rows]
    pattern = re.compile(rf"test/fewshot/k(\d+)(/nodesc)?/(items|tasks)/{metric}$")
    curves: dict = {}
    for row in rows:
        for key, value in row.items():
            m = pattern.match(key)
            if m and value not in ("", None):
                k, described, group = int(m[1]), m[2] is None, m[3]
                cell = curves.setdefault((row[axis], described, group), {}).setdefault(k, [])
                cell.append(float(value))
    if not curves:
        raise ValueError(f"{path} holds no test/fewshot/k*/... columns: did the runs end?")
    ks = sorted({k for c in curves.values() for k in c})
    return ks, {key: {k: sum(v) / len(v) for k, v in c.items()} for key, c in curves.items()}


def rescored(run: pathlib.Path) -> dict:
    """The test metrics of the run's newest evaluate-test-STEP.json, as `test/NAME`."""
    found = sorted(run.glob("evaluate-test-*.json"),
                   key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not found:
        return {}
    data = json.loads(found[-1].read_text())
    return {f"test/{k}": str(v) for k, v in data.items() if k not in ("step", "split")}


def table(ks: list[int], curves: dict, metric: str = "acc") -> str:
    models = list(dict.fromkeys(m for m, _, _ in curves))
    lines = []
    for group, title in GROUPS.items():
        lines += [f"{METRICS[metric].capitalize()}, {title}:", "",
                  "| model | description | " + " | ".join(f"K={k}" for k in ks) + " |",
                  "|---|---|" + "---:|" * len(ks)]
        for model in models:
            for described in (True, False):
                c = curves.get((model, described, group), {})
                lines.append(f"| {model} | {'yes' if described else 'no'} | "
                             + " | ".join(f"{c[k]:.3f}" if k in c else "" for k in ks) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(path: pathlib.Path, ks: list[int], by_metric: dict[str, dict]) -> None:
    """by_metric: {metric: curves}, a row of panels per metric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, grid = plt.subplots(len(by_metric), 2, figsize=(10, 3.6 * len(by_metric)),
                             sharey="row", squeeze=False)
    for axes, (metric, curves) in zip(grid, by_metric.items()):
        _panels(plt, axes, ks, curves)
        axes[0].set_ylabel(METRICS[metric])
    grid[0][0].legend(fontsize=7)
    fig.suptitle("In-context learning in miniature (GPT-3 figure 1.2)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _panels(plt, axes, ks: list[int], curves: dict) -> None:
    models = list(dict.fromkeys(m for m, _, _ in curves))
    x = {k: i for i, k in enumerate(ks)}   # K on an even axis: 0, 1, 2, 4, 8, 16
    for ax, (group, title) in zip(axes, GROUPS.items()):
        for i, model in enumerate(models):
            colour = plt.cm.viridis(i / max(len(models) - 1, 1) * 0.85)
            for described, style in ((True, "-"), (False, "--")):
                c = curves.get((model, described, group), {})
                if c:
                    ax.plot([x[k] for k in sorted(c)], [c[k] for k in sorted(c)], style,
                            marker="o", color=colour,
                            label=f"{model}, {'with' if described else 'no'} description")
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("examples in context (K)")
        ax.set_title(title)
        ax.grid(alpha=0.3)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    sweep = pathlib.Path(FLAGS.workdir)
    if not (sweep / "results.csv").is_file():
        sys.exit(f"error: {sweep} holds no results.csv: --workdir names the directory of a "
                 "finished experiments.sweep")
    by_metric, parts = {}, []
    for metric in METRICS:
        ks, by_metric[metric] = read(sweep / "results.csv", FLAGS.axis, metric)
        parts.append(table(ks, by_metric[metric], metric))
    text = "\n".join(parts)
    (sweep / "icl.md").write_text(text + "\n")
    plot(pathlib.Path(FLAGS.figure), ks, by_metric)
    print(text)
    print(f"written: {sweep / 'icl.md'}, {FLAGS.figure}", file=sys.stderr)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
