"""A sweep's results: DIR/results.csv (a row per finished run), DIR/summary.md (mean ± std over
seeds per setting) and DIR/summary.png.

results.csv columns, in order:
    one per axis (named as the axis), `seed`, one per other config key that varies over the
    grid (named as the key), `run` (the run's directory), `params` (the parameter count from
    the trainer's finished.json), `wall_s` (seconds from the run's first logged row to its
    finished record: a run stopped and resumed counts the pause), then per metric
    `<split>/<name>`           its final value (empty when that was non-finite)
    `<split>/<name>:best`      for a val/test metric logged at several steps: its best value
    `<split>/<name>:best_step` and the step of that value (the first one on a tie)
Best is the lowest value for a loss-like name (loss, nll, perplexity, ppl, error, err, wer,
cer, bpb), else the highest. Numbers keep 4 significant digits; counts and steps are exact.
"""

import csv
import dataclasses
import math
import os
import pathlib
import re
import statistics

from experiments.sweeps.grid import Run, SweepError, flat, format_value, run_name
from train.metrics import read_finished, read_metrics

SPLIT_ORDER = ("train", "val", "test")
LOWER_IS_BETTER = re.compile(r"(^|_)(loss|nll|perplexity|ppl|error|err|wer|cer|bpb)(_|$)")
RUN_COLUMNS = ("run", "params", "wall_s")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass
class RunResult:
    values: dict          # column -> value: params, wall_s, and each metric's final and best
    repeated: set         # val/test metrics logged at more than one step


def lower_is_better(metric: str) -> bool:
    return bool(LOWER_IS_BETTER.search(metric.rsplit("/", 1)[-1]))


def run_result(run_dir: pathlib.Path) -> RunResult:
    """What one finished run measured (see the module's docstring)."""
    rows = read_metrics(run_dir)
    finished = read_finished(run_dir) or {}
    final, history = {}, {}
    for row in rows:
        split = row.get("split")
        for k, v in row.items():
            if k in ("step", "split", "time") or not (v is None or _is_number(v)):
                continue
            final[f"{split}/{k}"] = v
            if split != "train":
                history.setdefault(f"{split}/{k}", []).append((row.get("step"), v))
    start = next((r["time"] for r in rows if _is_number(r.get("time"))), None)
    values = {"params": finished.get("params"),
              "wall_s": finished["time"] - start if start is not None and "time" in finished
              else None}
    for name, v in final.items():
        values[name] = v
        points = [(step, x) for step, x in history.get(name, []) if x is not None]
        if points:
            sign = 1 if lower_is_better(name) else -1
            step, best = min(points, key=lambda p: sign * p[1])   # min keeps the first tie
            values[f"{name}:best"], values[f"{name}:best_step"] = best, step
    return RunResult(values, {n for n, h in history.items() if len({s for s, _ in h}) > 1})


def last_metrics(run_dir: pathlib.Path) -> dict:
    """{"<split>/<name>": the last value logged} of every numeric metric of a run."""
    return {k: v for k, v in run_result(run_dir).values.items()
            if "/" in k and ":" not in k}


def metric_columns(results: list[RunResult]) -> list[str]:
    """Splits in the order train, val, test, then the others; names by first appearance; a
    metric's best and its step after it where some run logged it at several steps."""
    finals = list(dict.fromkeys(k for r in results for k in r.values
                                if "/" in k and ":" not in k))
    rank = lambda c: (SPLIT_ORDER.index(s) if (s := c.split("/", 1)[0]) in SPLIT_ORDER  # noqa: E731
                      else len(SPLIT_ORDER), "" if s in SPLIT_ORDER else s)
    repeated = set().union(*(r.repeated for r in results)) if results else set()
    out = []
    for c in sorted(finals, key=rank):   # stable: first appearance within a split
        out += [c, f"{c}:best", f"{c}:best_step"] if c in repeated else [c]
    return out


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value differs between runs of the grid, but the axes' and the seed."""
    configs = [flat(r.requested) for r in runs if r.requested is not None]
    named = set(runs[0].values) if runs else set()
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if k not in named and k != "seed"
            and len({repr(c.get(k)) for c in configs}) > 1]


def fmt(v) -> str:
    """4 significant digits; integers (counts, steps) exactly; empty for None."""
    if v is None:
        return ""
    if isinstance(v, bool) or not _is_number(v):
        return str(v)
    if isinstance(v, int) or not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    if 4 <= magnitude < 15:   # 12345.6 -> 12350, not 1.235e+04
        return str(int(round(v, 3 - magnitude)))
    return f"{v:.4g}"


@dataclasses.dataclass
class Table:
    """The finished runs' rows: `keys` (axes, seed, varying config keys) as text, the rest
    numbers; `axes` name the settings, `metrics` the measured columns."""
    axes: list[str]
    keys: list[str]
    metrics: list[str]
    rows: list[dict]
    settings: list[tuple]   # every setting of the grid, in the sweep's order


def results_table(runs: list[Run], results: dict[str, RunResult]) -> Table:
    axes = [k for k in (runs[0].values if runs else {}) if k != "seed"]
    keys = [*axes, "seed", *varying_keys(runs)]
    metrics = ["params", "wall_s", *metric_columns([results[r.name] for r in runs
                                                     if r.name in results])]
    rows = []
    for r in runs:
        if r.name in results:
            config = flat(r.requested or {})
            row = {k: r.values[k] if k in r.values else format_value(config.get(k))
                   for k in keys}
            row["run"] = r.name
            rows.append(row | {m: results[r.name].values.get(m) for m in metrics})
    settings = list(dict.fromkeys(tuple(r.values[a] for a in axes) for r in runs))
    return Table(axes, keys, metrics, rows, settings)


def write_results(path: pathlib.Path, table: Table) -> None:
    columns = [*table.keys, "run", *table.metrics]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in table.rows:
            w.writerow([fmt(row[c]) for c in columns])
    os.replace(tmp, path)


def read_results(path) -> list[dict]:
    """The rows of a sweep's results.csv (text values, "" where empty); `path` is the file or
    the sweep directory."""
    path = pathlib.Path(path)
    path = path / "results.csv" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the sweep first")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def mean_std(values) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of the values that are numbers (text from a CSV is parsed)."""
    xs = [float(v) for v in values if v not in ("", None)]
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def mean_of(rows: list[dict], column: str) -> float | None:
    """The mean of a column over rows (None when no row has a value)."""
    s = mean_std(r.get(column) for r in rows)
    return None if s is None else s[0]


def run_dir(sweep_dir, row: dict, axes: list[str]) -> pathlib.Path:
    """The directory of a results.csv row's run (named by its axes and seed in files written
    before results.csv had a `run` column)."""
    name = row.get("run") or run_name({**{a: row[a] for a in axes}, "seed": row["seed"]})
    return pathlib.Path(sweep_dir) / name


def group(rows: list[dict], axes: list[str]) -> dict[tuple, list[dict]]:
    """Rows by their values of the axes (every seed of a setting together)."""
    out = {}
    for row in rows:
        out.setdefault(tuple(row[a] for a in axes), []).append(row)
    return out


def summary_columns(metrics: list[str]) -> list[str]:
    """test, then val, then the other splits' metrics, then params and wall time; no steps."""
    shown = [m for m in metrics if "/" in m and not m.endswith(":best_step")]
    first = [m for s in ("test/", "val/") for m in shown if m.startswith(s)]
    return first + [m for m in shown if m not in first] + ["params", "wall_s"]


def cell(s, n: int) -> str:
    if s is None:
        return ""
    mean, std, k = s
    text = fmt(mean) if k == 1 else f"{fmt(mean)} ± {fmt(float(f'{std:.2g}'))}"
    return text if k == n else f"{text} (n={k})"


def summary_table(table: Table) -> str:
    """Markdown: a row per setting in the sweep's order, n finished seeds, mean ± std."""
    columns = summary_columns(table.metrics)
    lines = ["| " + " | ".join(table.axes + ["n"] + columns) + " |",
             "|" + "---|" * (len(table.axes) + 1 + len(columns))]
    groups = group(table.rows, table.axes)
    for setting in table.settings:
        rows = groups.get(setting, [])
        cells = [cell(mean_std(r[m] for r in rows), len(rows)) for m in columns]
        lines.append("| " + " | ".join([*setting, str(len(rows)), *cells]) + " |")
    return "\n".join(lines) + "\n"


def main_metric(metrics: list[str], wanted: str = "") -> str | None:
    """--metric (as `split/name`, or a bare name looked up in test, val, train), else the first
    test metric, else the first val metric."""
    metrics = [m for m in metrics if "/" in m]
    if wanted:
        for c in ([wanted] if "/" in wanted else []) + [f"{s}/{wanted}" for s in
                                                        ("test", "val", "train")]:
            if c in metrics:
                return c
        raise SweepError(f"--metric={wanted}: no such metric in results.csv; there are "
                         f"{metrics}")
    for prefix in ("test/", "val/"):
        if first := next((c for c in metrics if c.startswith(prefix)), None):
            return first
    return metrics[0] if metrics else None


def write_summary(sweep_dir: pathlib.Path, header: str, table: Table, status: dict[str, str],
                  metric: str = "") -> str | None:
    """summary.md and summary.png; returns the main metric."""
    main = main_metric(table.metrics, metric)
    failed = {n: s for n, s in status.items() if s != "done"}
    text = [header, "",
            f"{len(table.rows)} finished runs of {len(status)}. Each cell: mean ± standard "
            f"deviation over the setting's n seeds (sample std); `(n=k)` where only k of them "
            f"logged the metric. Main metric: {main or 'none'}.", "",
            summary_table(table)]
    if failed:
        text += ["Not finished:", ""] + [f"- `{n}`: {s}" for n, s in failed.items()] + [""]
    (sweep_dir / "summary.md").write_text("\n".join(text))
    plot_summary(sweep_dir / "summary.png", table, main)
    return main


def _numeric(labels: list[str]) -> list[float] | None:
    try:
        return [float(x) for x in labels]
    except ValueError:
        return None


def plot_summary(path: pathlib.Path, table: Table, metric: str | None) -> None:
    import matplotlib.pyplot as plt
    fig = summary_figure(table, metric)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_figure(table: Table, metric: str | None):
    """The metric (mean over seeds, std as error bars) against the first axis, on a log axis
    when its values span a decade or more; a line per setting of the other axes. With no axes,
    the metric per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, axes = table.rows, table.axes
    x_key, others = (axes[0], axes[1:]) if axes else ("seed", [])
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs_all = list(dict.fromkeys([s[0] for s in table.settings] if axes else
                                [r["seed"] for r in rows]))
    numeric = _numeric(xs_all)
    pos = dict(zip(xs_all, numeric if numeric is not None else range(len(xs_all))))
    for setting, lines in (group(rows, others) if metric else {}).items():
        points = []
        for x, g in group(lines, [x_key]).items():
            if (s := mean_std(r[metric] for r in g)) is not None:
                points.append((pos[x[0]], s[0], s[1]))
        if not points:
            continue
        points.sort()
        label = ", ".join(f"{k}={v}" for k, v in zip(others, setting)) or None
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[p[2] for p in points], marker="o", capsize=3, label=label)
    if numeric is None:
        ax.set_xticks(range(len(xs_all)), xs_all, fontsize=8)
    elif len(numeric) > 1 and min(numeric) > 0 and max(numeric) / min(numeric) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric or "no metric")
    if not ax.lines:
        ax.text(0.5, 0.5, "no finished run reported this metric", ha="center",
                transform=ax.transAxes)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    n = max((len(g) for g in group(rows, axes).values()), default=0)
    ax.set_title(f"mean ± std over {n} seeds" if n > 1 else "", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
