"""The Transformer's comparisons in miniature (Vaswani et al. 2017), from the runs of its sweeps
on the offline sentences (experiments/configs/transformer.py: SWEEPS).

    python -m experiments.table3 table --sweep_dirs=runs/table3-base_row,runs/table3-A,...
    python -m experiments.table3 averaging --sweep_dir=runs/table3-base_row [--average_last=N, 5 if unset]
    python -m experiments.table3 baseline --sweep_dirs=runs/table3-base_row,runs/table3-baseline
    python -m experiments.table3 data_size --sweep_dirs=runs/table3-data_size,runs/table3-base_row,runs/table3-baseline

table (Table 3): a row per setting in the paper's layout (N, d_model, d_ff, h, d_k, d_v,
P_drop, eps_ls, positions as each run's config.json has them), dev perplexity per target token
and dev BLEU (beam 4, the whole val split) at the end, parameters, and beside them test BLEU
with beam search and with greedy decoding on the same models; mean ± std over seeds. The
figure: dev BLEU per setting, the base row's band behind.
averaging (section 6.1): test BLEU of each run's newest checkpoint and of the mean of its last
N checkpoints (experiments.evaluate --average_last), and the gain per run.
baseline (section 1, Table 2 in spirit): the Transformer against the recurrent baseline on the
same data and steps: parameters, test BLEU, training tokens/s (median of the logged windows)
and the steps to reach dev BLEU --reach (greedy, on the evaluations' val batches; linear
between evaluations).
data_size: test BLEU against the share of the training pairs, a line per model (the full-data
points from the runs of `base_row` and `baseline`).

Each prints markdown, writes it to the first sweep's directory as table3-NAME.md and the
figure to docs/figures/transformer-NAME.png (--out).
"""

import pathlib
import statistics

import numpy as np
from absl import app, flags

from experiments import figures
from experiments.evaluate import evaluate
from experiments.figures import fmt_ms
from experiments.figures import axes_of
from experiments.launch import load_run
from experiments.sweeps.results import mean_std, read_results, run_dir
from train.metrics import read_metrics

FLAGS = flags.FLAGS
COMMANDS = ("table", "averaging", "baseline", "data_size")
# Table 3's columns: (header, config key) in the paper's order
LAYOUT = (("N", "model.n_layer"), ("d_model", "model.d_model"), ("d_ff", "model.d_ff"),
          ("h", "model.n_head"), ("d_k", "d_k"), ("d_v", "d_v"), ("P_drop", "model.dropout"),
          ("eps_ls", "label_smoothing"), ("positions", "model.positions"))


def runs(sweep_dir: pathlib.Path) -> list[tuple[str, pathlib.Path, dict]]:
    """(setting label, run directory, results row) of every finished run of a sweep."""
    rows = read_results(sweep_dir)
    if not rows:
        raise ValueError(f"{sweep_dir}: no finished runs in results.csv")
    axes = axes_of(rows)
    return [(", ".join(str(r[a]) for a in axes) or "base", run_dir(sweep_dir, r, axes), r)
            for r in rows]


def by_setting(items) -> dict[str, list]:
    out = {}
    for label, run, row in items:
        out.setdefault(label, []).append((run, row))
    return out


def read_config(run: pathlib.Path) -> dict:
    return load_run(run)[0].to_dict()


def config_value(config: dict, key: str):
    """A config key of a run, with d_k and d_v as the model computes them (0: d_model / h)."""
    model = config["model"]
    if key in ("d_k", "d_v"):
        return model.get("d_k") or model["d_model"] // model["n_head"]
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def number(row: dict, column: str) -> float | None:
    v = row.get(column)
    return None if v in (None, "") else float(v)


def stat(values) -> tuple[float, float, int] | None:
    values = [v for v in values if v is not None]
    return mean_std(values) if values else None


def write(text: str, sweep_dir: pathlib.Path, name: str) -> None:
    print(text)
    (sweep_dir / f"table3-{name}.md").write_text(text + "\n")


# ----------------------------------------------------------------------------------- table

def table(sweep_dirs: list[pathlib.Path], out: pathlib.Path) -> str:
    lines = ["| row | " + " | ".join(h for h, _ in LAYOUT) + " | dev PPL | dev BLEU | params | "
             "test BLEU (beam 4) | test BLEU (greedy) | n |",
             "|" + "---|" * (len(LAYOUT) + 7)]
    bars = []
    for sweep_dir in sweep_dirs:
        name = sweep_dir.name.removeprefix("table3-")
        for label, members in by_setting(runs(sweep_dir)).items():
            config = read_config(members[0][0])
            rows = [row for _, row in members]
            dev_bleu = stat(number(r, "val/bleu_beam") for r in rows)
            cells = [str(config_value(config, key)) for _, key in LAYOUT]
            lines.append(
                f"| {name} | " + " | ".join(cells)
                + f" | {fmt_ms(stat(number(r, 'val/perplexity') for r in rows), 1, 3)}"
                + f" | {fmt_ms(dev_bleu, 1, 1)} | {int(number(rows[0], 'params')):,}"
                + f" | {fmt_ms(stat(number(r, 'test/bleu') for r in rows), 1, 1)}"
                + f" | {fmt_ms(stat(number(r, 'test/bleu_greedy') for r in rows), 1, 1)}"
                + f" | {len(rows)} |")
            bars.append((f"{name}: {label}" if label != "base" else name, dev_bleu))
    plot_bars(bars, out)
    return "\n".join(lines)


def plot_bars(bars, out: pathlib.Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(bars) + 1.2))
    names = [b[0] for b in bars]
    means = [b[1][0] if b[1] else np.nan for b in bars]
    stds = [b[1][1] if b[1] else 0.0 for b in bars]
    ax.barh(range(len(bars)), means, xerr=stds, color="tab:blue", alpha=0.8)
    base = next((b[1] for b in bars if b[0] == "base_row" and b[1]), None)
    if base:
        ax.axvspan(base[0] - base[1], base[0] + base[1], color="grey", alpha=0.25,
                   label="base row, mean ± std")
        ax.legend(loc="lower right")
    ax.set_yticks(range(len(bars)), names)
    ax.invert_yaxis()
    ax.set_xlabel("dev BLEU (beam 4), mean ± std over seeds")
    ax.set_title("Table 3 in miniature")
    figures.save(fig, out)


# ------------------------------------------------------------------------------- averaging

def averaging(sweep_dir: pathlib.Path, n: int) -> str:
    lines = [f"| run | newest checkpoint | mean of the last {n} | gain |", "|---|---|---|---|"]
    newest, averaged = [], []
    for label, run, _ in runs(sweep_dir):
        a = evaluate(run, "test", 0)["bleu"]
        b = evaluate(run, "test", n)["bleu"]
        newest.append(a)
        averaged.append(b)
        lines.append(f"| {run.name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    gains = [b - a for a, b in zip(newest, averaged)]
    lines.append(f"| mean ± std | {fmt_ms(stat(newest), 1, 2)} | {fmt_ms(stat(averaged), 1, 2)}"
                 f" | {fmt_ms(stat(gains), 1, 2)} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- baseline

def logged(run: pathlib.Path, split: str, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run) if r.get("split") == split and key in r}


def steps_to_reach(curve: dict[int, float], target: float) -> float | None:
    """The first step at which a logged curve reaches target, linear between evaluations; None
    if it never does."""
    steps = sorted(curve)
    for i, s in enumerate(steps):
        if curve[s] >= target:
            if i == 0:
                return float(s)
            s0 = steps[i - 1]
            return s0 + (s - s0) * (target - curve[s0]) / (curve[s] - curve[s0])
    return None


def model_name(run: pathlib.Path) -> str:
    return read_config(run)["model"]["arch"]


def baseline(sweep_dirs: list[pathlib.Path], reach: float) -> str:
    models = {}
    for sweep_dir in sweep_dirs:
        for _, run, row in runs(sweep_dir):
            if number(row, "data.train_fraction") not in (None, 1.0):
                continue
            models.setdefault(model_name(run), []).append((run, row))
    lines = ["| model | params | test BLEU (beam 4) | dev BLEU (beam 4) | training tokens/s | "
             f"steps to dev BLEU {reach:g} (greedy) | reached | n |", "|---|---|---|---|---|---|---|---|"]
    for name, members in models.items():
        rows = [row for _, row in members]
        speed = [statistics.median(logged(run, "train", "tokens_per_sec").values())
                 for run, _ in members]
        reached = [steps_to_reach(logged(run, "val", "bleu"), reach) for run, _ in members]
        lines.append(
            f"| {name} | {int(number(rows[0], 'params')):,}"
            f" | {fmt_ms(stat(number(r, 'test/bleu') for r in rows), 1, 1)}"
            f" | {fmt_ms(stat(number(r, 'val/bleu_beam') for r in rows), 1, 1)}"
            f" | {fmt_ms(stat(speed), 1, 0)} | {fmt_ms(stat(reached), 1, 0)}"
            f" | {sum(r is not None for r in reached)} of {len(reached)} | {len(rows)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- data size

def data_size(sweep_dirs: list[pathlib.Path], out: pathlib.Path) -> str:
    points = {}    # {model: {fraction: [test BLEU]}}
    for sweep_dir in sweep_dirs:
        for _, run, row in runs(sweep_dir):
            fraction = number(row, "data.train_fraction")
            fraction = 1.0 if fraction is None else fraction
            points.setdefault(model_name(run), {}).setdefault(fraction, []).append(
                number(row, "test/bleu"))
    fractions = sorted({f for by in points.values() for f in by})
    lines = ["| model | " + " | ".join(f"{f:g} of the pairs" for f in fractions) + " |",
             "|---|" + "---|" * len(fractions)]
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by in points.items():
        stats = [stat(by.get(f, [])) for f in fractions]
        lines.append(f"| {name} | " + " | ".join(fmt_ms(s, 1, 1) for s in stats) + " |")
        xs = [f * 50_000 for f, s in zip(fractions, stats) if s]
        ax.errorbar(xs, [s[0] for s in stats if s], yerr=[s[1] for s in stats if s],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("test BLEU (beam 4), mean ± std")
    ax.legend()
    ax.set_title("Transformer and recurrent baseline against data")
    figures.save(fig, out)
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m experiments.table3 {{{'|'.join(COMMANDS)}}} "
                             "--sweep_dir(s)=...")
    command = argv[1]
    dirs = [pathlib.Path(d) for d in (FLAGS.sweep_dirs or [FLAGS.sweep_dir]) if d]
    if not dirs:
        raise app.UsageError("give --sweep_dir or --sweep_dirs")
    for d in dirs:
        if not (d / "results.csv").exists():
            raise FileNotFoundError(f"{d}: no results.csv (run its sweep first)")
    out = pathlib.Path(FLAGS.out or f"docs/figures/transformer-{command}.png")
    if command == "table":
        text = table(dirs, out)
    elif command == "averaging":
        text = averaging(dirs[0], FLAGS.average_last or 5)   # experiments.evaluate's flag
    elif command == "baseline":
        text = baseline(dirs, FLAGS.reach)
    else:
        text = data_size(dirs, out)
    write(text, dirs[0], command)


if __name__ == "__main__":
    flags.DEFINE_string("sweep_dir", "", "A sweep's directory.")
    flags.DEFINE_list("sweep_dirs", [], "Sweep directories, in the order of the report.")
    flags.DEFINE_float("reach", 60.0, "baseline: the dev BLEU (greedy) whose steps are counted.")
    flags.DEFINE_string("out", "", "The figure's path (default docs/figures/transformer-NAME.png).")
    app.run(main)
