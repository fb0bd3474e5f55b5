"""The tables and figure of in-context learning in miniature (GPT-3 figure 1.2), from a sweep.

    python -m experiments.sweep --config=experiments/configs/gpt.py:icl-s --name=icl --workdir=DIR
    python -m experiments.icl_report --workdir=DIR [--figure=DIR/icl.png]

Reads DIR/results.csv (a row per run: the `icl` evaluator's test metrics; a run's newest
DIR/RUN/evaluate-test-STEP.json from `python -m experiments.evaluate --workdir=DIR/RUN` takes
precedence, so checkpoints can be scored again) and writes DIR/icl.md:

  - the headline: exact match on held-out items, no description, the mean over the scrambling
    and arithmetic tasks, against K, per size (mean ± sample std over seeds);
  - the same per family (scrambling, arithmetic, the per-prompt labels, number words);
  - the prompt variants at K = 8 (the spread over example orders, each line layout, JSON
    answers that parse) and the in-context score on natural text;
  - exact match, the share of answers of the queried task and the log-likelihood of the
    correct answer, with and without the description, on held-out items and held-out tasks;

  - exact match per task at K = 0, 1, 16 per size, and on pretraining items where measured;

and the figures: the headline and each group against K, a line per size (icl.png); random
insertion (RI) against K per size, with and without the description (icl-ri.png, GPT-3
figure 1.2's look).
"""

import json
import pathlib
import re
import sys

from absl import app, flags

from experiments import launch  # noqa: F401  (--workdir, shared by the experiments: the sweep's)
from experiments.sweeps.results import cell, mean_std, read_results, run_dir

flags.declare_key_flag("workdir")   # listed by --help
flags.DEFINE_string("figure", "", "Where the figure goes (default: DIR/icl.png).")
flags.DEFINE_string("axis", "size", "The swept column that names the models.")
FLAGS = flags.FLAGS

EVAL = "test/icl"     # the evaluator's metrics in results.csv
GROUPS = {"items": "held-out items of pretraining tasks", "tasks": "held-out tasks"}
METRICS = {"acc": "exact-match accuracy",
           "in_task": "answers of the queried task",
           "logp": "log-likelihood of the answer per token"}
FAMILIES = ("scramble", "arithmetic", "mapping", "knowledge")
VARIANTS = {"order/k8/min": "worst order", "order/k8/mean": "mean over orders",
            "order/k8/max": "best order", "layout/arrow/k8/acc": "`x => y`",
            "layout/colon/k8/acc": "`x: y`", "layout/qa/k8/acc": "`Q: x A: y`",
            "layout/quoted/k8/acc": "quoted", "layout/json/k8/acc": "JSON",
            "layout/json/k8/format_ok": "JSON parses",
            "layout/json/k0/acc": "JSON, K=0 (described only)",
            "layout/json/k0/format_ok": "JSON parses, K=0", "context_score": "in-context score"}


def read_rows(path: pathlib.Path, axis: str) -> list[dict]:
    """results.csv's rows, each run's newest rescoring merged in."""
    rows = read_results(path)
    if not rows or axis not in rows[0]:
        raise ValueError(f"{path} has no rows with a column {axis!r}")
    return [{**row, **rescored(run_dir(path.parent, row, [axis]))} for row in rows]


def read(path: pathlib.Path, axis: str, metric: str = "acc") -> tuple[list[int], dict]:
    """(the K measured, {(model, described, group): {K: mean of `metric` over seeds}})."""
    pattern = re.compile(rf"{EVAL}/k(\d+)(/nodesc)?/(items|tasks)/{metric}$")
    curves: dict = {}
    for row in read_rows(path, axis):
        for key, value in row.items():
            m = pattern.match(key)
            if m and value not in ("", None):
                k, described, group = int(m[1]), m[2] is None, m[3]
                cell_ = curves.setdefault((row[axis], described, group), {}).setdefault(k, [])
                cell_.append(float(value))
    if not curves:
        raise ValueError(f"{path} holds no {EVAL}/k*/... columns: did the runs end?")
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


def _by_model(rows: list[dict], axis: str) -> dict[str, list[dict]]:
    out: dict = {}
    for row in rows:
        out.setdefault(row[axis], []).append(row)
    return out


def _stat_table(rows: list[dict], axis: str, columns: dict[str, str], first: str) -> str:
    """A row per model, a column per (key under EVAL: title): mean ± std over seeds."""
    models = _by_model(rows, axis)
    keys = [k for k in columns if any(f"{EVAL}/{k}" in r for r in rows)]
    lines = [f"| {first} | " + " | ".join(columns[k] for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for model, runs in models.items():
        lines.append(f"| {model} | " + " | ".join(
            cell(mean_std(r.get(f"{EVAL}/{k}") for r in runs), len(runs)) for k in keys) + " |")
    return "\n".join(lines)


def _shots(rows: list[dict], pattern: str) -> list[int]:
    return sorted({int(m[1]) for r in rows for key in r if (m := re.fullmatch(pattern, key))})


def headline_table(rows: list[dict], axis: str) -> str:
    ks = _shots(rows, rf"{EVAL}/exact_match_k(\d+)")
    return _stat_table(rows, axis, {f"exact_match_k{k}": f"K={k}" for k in ks}, "model")


def family_tables(rows: list[dict], axis: str, metric: str = "acc") -> str:
    ks = _shots(rows, rf"{EVAL}/k(\d+)/nodesc/family/\w+/{metric}")
    title = {"acc": "Exact match"}.get(metric, METRICS[metric].capitalize())
    parts = []
    for family in FAMILIES:
        columns = {f"k{k}/nodesc/family/{family}/{metric}": f"K={k}" for k in ks}
        if any(f"{EVAL}/{c}" in r for r in rows for c in columns):
            parts += [f"{title}, {family}, no description:", "",
                      _stat_table(rows, axis, columns, "model"), ""]
    return "\n".join(parts)


def task_table(rows: list[dict], axis: str, shown: tuple[int, ...] = (0, 1, 16)) -> str:
    """Exact match per task (no description, held-out items) at the K of `shown` the runs
    have, per model, mean ± std over seeds; and on pretraining items (seen) where measured."""
    ks = [k for k in shown if k in _shots(rows, rf"{EVAL}/k(\d+)/nodesc/task/\w+/acc")]
    seen = _shots(rows, rf"{EVAL}/seen/k(\d+)/acc")
    tasks = list(dict.fromkeys(m[1] for r in rows for key in r
                               if (m := re.fullmatch(rf"{EVAL}/k\d+/nodesc/task/(\w+)/acc", key))))
    models = _by_model(rows, axis)
    columns = [column for model in models for column in
               [(model, f"k{k}/nodesc/task/{{}}/acc", f"K={k}") for k in ks]
               + [(model, f"seen/k{k}/task/{{}}/acc", f"K={k}, seen") for k in seen]]
    lines = ["| task | " + " | ".join(f"{m} {title}" for m, _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for task in tasks:
        cells = []
        for model, key, _ in columns:
            runs = models[model]
            s = mean_std(r.get(f"{EVAL}/{key.format(task)}") for r in runs)
            cells.append(cell(s, len(runs)) if s else "")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_curves(rows: list[dict], axis: str, task: str) -> dict:
    """{(model, described): {K: (mean, std, n)}} of one task's exact match, over seeds."""
    out: dict = {}
    pattern = re.compile(rf"{EVAL}/k(\d+)(/nodesc)?/task/{task}/acc$")
    for model, runs in _by_model(rows, axis).items():
        for key in dict.fromkeys(k for r in runs for k in r):
            if m := pattern.match(key):
                if s := mean_std(r.get(key) for r in runs):
                    out.setdefault((model, m[2] is None), {})[int(m[1])] = s
    return out


def plot_task(path: pathlib.Path, curves: dict, task: str) -> None:
    """GPT-3 figure 1.2's look: one task's exact match against K, a colour per model, solid
    with the description (the natural-language prompt), dashed without; bars: ± std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(m for m, _ in curves))
    ks = sorted({k for c in curves.values() for k in c})
    x = {k: i for i, k in enumerate(ks)}
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, model in enumerate(models):
        colour = plt.cm.viridis(i / max(len(models) - 1, 1) * 0.85)
        for described, style in ((True, "-"), (False, "--")):
            c = curves.get((model, described), {})
            if c:
                ax.errorbar([x[k] for k in sorted(c)], [c[k][0] for k in sorted(c)],
                            yerr=[c[k][1] for k in sorted(c)], fmt=style, marker="o",
                            capsize=2, color=colour,
                            label=f"{model}, {'description' if described else 'no prompt'}")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set(xlabel="examples in context (K)", ylabel="exact match (mean ± std over seeds)",
           title=f"{task}: held-out words (GPT-3 figure 1.2 in miniature)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def plot(path: pathlib.Path, ks: list[int], by_metric: dict[str, dict],
         headline: dict | None = None) -> None:
    """by_metric: {metric: curves}, a row of panels per metric; headline: {model: {K: mean}},
    a panel of its own above them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    top = int(bool(headline))     # the headline's row, when there is one
    rows = len(by_metric) + top
    fig, grid = plt.subplots(rows, 2, figsize=(10, 3.6 * rows), squeeze=False)
    if headline:
        ax = grid[0][0]
        for i, (model, c) in enumerate(headline.items()):
            ax.plot(range(len(c)), [c[k] for k in sorted(c)], "-o", label=model,
                    color=plt.cm.viridis(i / max(len(headline) - 1, 1) * 0.85))
            ax.set_xticks(range(len(c)), [str(k) for k in sorted(c)])
        ax.set(title="scrambling + arithmetic, held-out, no description",
               xlabel="examples in context (K)", ylabel="exact match")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        grid[0][1].axis("off")
    for axes, (metric, curves) in zip(grid[top:], by_metric.items()):
        _panels(plt, axes, ks, curves)
        axes[0].set_ylabel(METRICS[metric])
    grid[top][0].legend(fontsize=7)
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
    rows = read_rows(sweep / "results.csv", FLAGS.axis)
    parts = ["Exact match, scrambling + arithmetic, held-out items, no description:", "",
             headline_table(rows, FLAGS.axis), "", family_tables(rows, FLAGS.axis),
             family_tables(rows, FLAGS.axis, "logp"),
             "Exact match per task, held-out items (seen: pretraining items), no description:",
             "", task_table(rows, FLAGS.axis), "",
             "Prompt variants at K=8 (no description) and the in-context score:", "",
             _stat_table(rows, FLAGS.axis, VARIANTS, "model"), ""]
    by_metric = {}
    for metric in METRICS:
        ks, by_metric[metric] = read(sweep / "results.csv", FLAGS.axis, metric)
        parts.append(table(ks, by_metric[metric], metric))
    text = "\n".join(parts)
    (sweep / "icl.md").write_text(text + "\n")
    headline = {model: {k: s[0] for k in _shots(runs, rf"{EVAL}/exact_match_k(\d+)")
                        if (s := mean_std(r.get(f"{EVAL}/exact_match_k{k}") for r in runs))}
                for model, runs in _by_model(rows, FLAGS.axis).items()}
    figure = pathlib.Path(FLAGS.figure or sweep / "icl.png")
    plot(figure, ks, by_metric, {m: c for m, c in headline.items() if c})
    ri = figure.with_name(figure.stem + "-ri" + figure.suffix)
    plot_task(ri, task_curves(rows, FLAGS.axis, "ri"), "ri")
    print(text)
    print(f"written: {sweep / 'icl.md'}, {figure}, {ri}", file=sys.stderr)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
