"""Tables and figures of the ConvNet practice sweeps (convnets.py SWEEPS), from their results.

    python -m experiments.convnet_figures transfer --sweep_dir=DIR [--out=docs/figures/transfer.png]
    python -m experiments.convnet_figures scaling --sweep_dir=DIR \
        [--out=docs/figures/compound_scaling.png]
    python -m experiments.convnet_figures claims --sweep_dir=DIR [--out=docs/figures/NAME.png]

transfer: test top-1 of each way to start (scratch, fine-tune all, freeze the lower half, freeze
all but the head) against the training examples per class, a line per way.
scaling: test top-1 against forward FLOPs per image (XLA's cost analysis, models/convnets.py
`flops`) of the base and of its depth-, width-, resolution- and compound-scaled versions.
claims (the claims sweeps: plain-vs-residual, relu-vs-tanh, alexnet-tricks, googlenet-aux,
mobilenet-bottleneck, efficientnet-search/-scaling): per setting, mean ± std over seeds of the
test error, the final training error (`trainset`, 512 fixed training examples in evaluation
mode), the steps to reach 25% training error (AlexNet's figure 1 criterion), parameters,
multiply-adds per image and wall time; the figure has the training (top) and held-out (bottom)
error against steps, mean over seeds, a panel per value of the sweep's second axis.
Each prints a markdown table and writes it to DIR/transfer.md, DIR/compound_scaling.md or
DIR/NAME.md.
"""

import json
import pathlib
import sys

from absl import app, flags

from experiments import figures
from experiments.figures import axes_of, fmt_ms
from experiments.sweeps.results import group, mean_of, mean_std, read_results, run_dir
from models import convnets
from train.metrics import read_metrics

FLAGS = flags.FLAGS
STARTS = ("scratch", "fine-tune all", "freeze lower half", "freeze all but head")


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def shots_label(n: str) -> str:
    return "all" if n == "0" else n


def transfer_table(rows: list[dict], metric: str = "test/accuracy") -> tuple[list, dict]:
    """(per_class values in sweep order, {start: {per_class: mean metric}})."""
    shots = list(dict.fromkeys(r["data.per_class"] for r in rows))
    starts = [s for s in STARTS if any(r["start"] == s for r in rows)]
    table = {s: {n: mean_of([r for r in rows if r["start"] == s and r["data.per_class"] == n],
                            metric) for n in shots} for s in starts}
    return shots, table


def transfer_markdown(shots, table) -> str:
    lines = ["| start | " + " | ".join(f"{shots_label(n)} per class" for n in shots) + " |",
             "|---|" + "---|" * len(shots)]
    best = {n: max((t[n] for t in table.values() if t[n] is not None), default=None)
            for n in shots}
    for s, t in table.items():
        cells = [f"**{pct(t[n])}**" if t[n] is not None and t[n] == best[n] else pct(t[n])
                 for n in shots]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_transfer(path: pathlib.Path, shots, table) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for s, t in table.items():
        xs = [i for i, n in enumerate(shots) if t[n] is not None]
        ax.plot(xs, [100 * t[shots[i]] for i in xs], marker="o", label=s)
    ax.set_xticks(range(len(shots)), [shots_label(n) for n in shots])
    ax.set_xlabel("training examples per class (digits 5-9)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("LeNet-5 pretrained on digits 0-4, transferred to 5-9", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, path)


def run_flops(run_dir: pathlib.Path) -> tuple[float, int, dict]:
    """(forward FLOPs per image, parameters, the run's depth/width/resolution) from its config."""
    config = json.loads((run_dir / "config.json").read_text())
    m, d = config["model"], config["data"]
    n = m["num_classes"] or 11
    flops = convnets.flops(m["name"], d["image_size"], n, 3, **m["overrides"])
    params = convnets.count_params(m["name"], n, 3, d["image_size"], **m["overrides"])
    shape = dict(depth=m["overrides"].get("depth_mult"), width=m["overrides"].get("width_mult"),
                 resolution=d["image_size"])
    return flops, params, shape


def scaling_rows(sweep_dir: pathlib.Path, rows: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["scaling"] for r in rows):
        group = [r for r in rows if r["scaling"] == label]
        flops, params, shape = run_flops(run_dir(sweep_dir, group[0], ["scaling"]))
        out.append(dict(label=label, flops=flops, params=params, **shape,
                        top1=mean_std(r.get("test/top1") for r in group),
                        top5=mean_std(r.get("test/top5") for r in group),
                        wall=mean_std(r.get("wall_s") for r in group), seeds=len(group)))
    return out


def scaling_markdown(table: list[dict]) -> str:
    base = next((t["flops"] for t in table if t["label"] == "base"), table[0]["flops"])
    lines = ["| scaling | depth mult | width mult | resolution | MFLOPs / image | x base | "
             "parameters | seeds | test top-1 (%) | test top-5 (%) | wall (s) / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        wall = "" if t["wall"] is None else f"{t['wall'][0]:.0f}"
        lines.append(f"| {t['label']} | {t['depth']:.3g} | {t['width']:.3g} | "
                     f"{t['resolution']} | {t['flops'] / 1e6:.1f} | {t['flops'] / base:.2f} | "
                     f"{t['params']:,} | {t['seeds']} | {fmt_ms(t['top1'])} | "
                     f"{fmt_ms(t['top5'])} | {wall} |")
    return "\n".join(lines) + "\n"


def scaling_family(label: str) -> str:
    """"compound phi=2" -> "compound"; the base belongs to every family."""
    return label.split(" ")[0]


def plot_scaling(path: pathlib.Path, table: list[dict]) -> None:
    """Test top-1 (mean ± std over seeds) against FLOPs: a line per way of scaling, each
    starting at the base (the paper's figure 8)."""
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    base = [t for t in table if t["label"] == "base" and t["top1"]]
    for family in dict.fromkeys(scaling_family(t["label"]) for t in table
                                if t["label"] != "base"):
        points = base + [t for t in table
                         if scaling_family(t["label"]) == family and t["top1"]]
        ax.errorbar([t["flops"] / 1e6 for t in points], [100 * t["top1"][0] for t in points],
                    yerr=[100 * t["top1"][1] for t in points], marker="o", capsize=3,
                    label=family)
    ax.set_xlabel("forward MFLOPs per image (XLA cost analysis)")
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title("EfficientNet in miniature: scaling one dimension or all three", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, path)


# ----------------------------------------------------------------------------- claims
TARGET_ERROR = 0.25    # AlexNet, figure 1: steps to reach 25% training error


def curve(run: pathlib.Path, split: str, key: str) -> dict[int, float]:
    """{step: error} of one run's `split` evaluations (1 - accuracy)."""
    return {r["step"]: 1.0 - r[key] for r in read_metrics(run)
            if r.get("split") == split and key in r}


def steps_to(errors: dict[int, float], target: float = TARGET_ERROR) -> int | None:
    return next((s for s in sorted(errors) if errors[s] <= target), None)


def claim_rows(sweep_dir: pathlib.Path, rows: list[dict]) -> list[dict]:
    """A row per setting: the metrics over its seeds and its error curves."""
    axes, out = axes_of(rows), []
    for setting, runs in group(rows, axes).items():
        dirs = [run_dir(sweep_dir, r, axes) for r in runs]
        train = [curve(d, "trainset", "accuracy") for d in dirs]
        held = [curve(d, "val", "accuracy") for d in dirs]
        reached = [steps_to(c) for c in train]
        config = json.loads((dirs[0] / "config.json").read_text())
        m, d = config["model"], config["data"]
        n_cls = m["num_classes"] or int(runs[0].get("num_classes") or 0) or None
        flops = convnets.flops(m["name"], d["image_size"], n_cls, None, **m["overrides"])
        out.append(dict(
            setting=setting, seeds=len(runs), flops=flops, params=runs[0].get("params"),
            test_err=mean_std(1 - float(r["test/top1"]) for r in runs if r.get("test/top1")),
            train_err=mean_std(c[max(c)] for c in train if c),
            reached=mean_std(s for s in reached if s is not None),
            not_reached=sum(s is None for s in reached),
            wall=mean_std(r.get("wall_s") for r in runs),
            train_curve=mean_curve(train), held_curve=mean_curve(held)))
    return out


def mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {s: sum(c[s] for c in curves) / len(curves) for s in steps}


def claims_markdown(axes: list[str], table: list[dict]) -> str:
    lines = ["| " + " | ".join(axes) + " | seeds | test error (%) | final training error (%) | "
             f"steps to {TARGET_ERROR:.0%} training error | parameters | M mult-adds / image | "
             "wall (s) / run |", "|" + "---|" * (len(axes) + 7)]
    for t in table:
        reached = "" if t["reached"] is None else fmt_ms(t["reached"], 1.0, 0)
        if t["not_reached"]:
            reached += f" ({t['not_reached']} of {t['seeds']} never)"
        wall = "" if t["wall"] is None else f"{t['wall'][0]:.0f}"
        params = f"{int(float(t['params'])):,}" if t["params"] else ""
        lines.append(f"| {' | '.join(t['setting'])} | {t['seeds']} | {fmt_ms(t['test_err'])} | "
                     f"{fmt_ms(t['train_err'])} | {reached} | {params} | "
                     f"{t['flops'] / 2e6:.2f} | {wall} |")
    return "\n".join(lines) + "\n"


def plot_claims(path: pathlib.Path, axes: list[str], table: list[dict], title: str) -> None:
    """Training (top) and held-out (bottom) error against steps; a panel per value of the
    second axis, a line per value of the first."""
    plt = figures.pyplot()
    panels = list(dict.fromkeys(t["setting"][1] if len(axes) > 1 else "" for t in table))
    fig, grid = plt.subplots(2, len(panels), figsize=(3.6 * len(panels) + 0.6, 6.0),
                             squeeze=False, sharey="row")
    for j, panel in enumerate(panels):
        for t in table:
            if len(axes) > 1 and t["setting"][1] != panel:
                continue
            label = ", ".join(t["setting"][:1] + t["setting"][2:])
            for i, key in enumerate(("train_curve", "held_curve")):
                c = t[key]
                grid[i][j].plot(list(c), [100 * e for e in c.values()], label=label)
        grid[0][j].set_title(f"{axes[1]} = {panel}" if panel else title, fontsize=9)
        grid[1][j].set_xlabel("step")
        for i in range(2):
            grid[i][j].grid(alpha=0.3)
    grid[0][0].set_ylabel("training error (%)")
    grid[1][0].set_ylabel("held-out error (%)")
    grid[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    figures.save(fig, path)


def main(argv):
    if len(argv) != 2 or argv[1] not in ("transfer", "scaling", "claims"):
        raise app.UsageError("usage: convnet_figures transfer|scaling|claims --sweep_dir=DIR")
    sweep_dir = pathlib.Path(FLAGS.sweep_dir)
    rows = read_results(sweep_dir)
    if argv[1] == "claims":
        axes, name = axes_of(rows), sweep_dir.resolve().name
        table = claim_rows(sweep_dir, rows)
        text = claims_markdown(axes, table)
        out = pathlib.Path(FLAGS.out or f"docs/figures/{name}.png")
        plot_claims(out, axes, table, name)
    elif argv[1] == "transfer":
        shots, table = transfer_table(rows)
        text = transfer_markdown(shots, table)
        out = pathlib.Path(FLAGS.out or "docs/figures/transfer.png")
        plot_transfer(out, shots, table)
    else:
        table = scaling_rows(sweep_dir, rows)
        text = scaling_markdown(table)
        out = pathlib.Path(FLAGS.out or "docs/figures/compound_scaling.png")
        plot_scaling(out, table)
    table_path = sweep_dir / out.with_suffix(".md").name
    table_path.write_text(text)
    print(text)
    print(f"written: {out}, {table_path}", file=sys.stderr)


if __name__ == "__main__":
    flags.DEFINE_string("sweep_dir", None, "The sweep's --workdir (results.csv, run "
                        "directories).")
    flags.DEFINE_string("out", "", "The figure (default docs/figures/transfer.png or "
                        "docs/figures/compound_scaling.png).")
    flags.mark_flag_as_required("sweep_dir")
    app.run(main)
