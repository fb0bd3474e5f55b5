"""Tables and figures of the ConvNet practice sweeps (convnets.py SWEEPS), from their results.

    python -m experiments.convnet_figures transfer --sweep_dir=DIR [--out=docs/figures/transfer.png]
    python -m experiments.convnet_figures scaling --sweep_dir=DIR \
        [--out=docs/figures/compound_scaling.png]

transfer: test top-1 of each way to start (scratch, fine-tune all, freeze the lower half, freeze
all but the head) against the training examples per class, a line per way.
scaling: test top-1 against forward FLOPs per image (XLA's cost analysis, models/convnets.py
`flops`) of the base and of its depth-, width-, resolution- and compound-scaled versions.
Each prints a markdown table and writes it to DIR/transfer.md or DIR/compound_scaling.md.
"""

import json
import pathlib
import sys

from absl import app, flags

from experiments.sweeps.results import mean_of, read_results, run_dir
from models import convnets

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
    plt = _pyplot()
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
    _save(fig, path)


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
                        top1=mean_of(group, "test/top1"), top5=mean_of(group, "test/top5"),
                        seeds=len(group)))
    return out


def scaling_markdown(table: list[dict]) -> str:
    base = next((t["flops"] for t in table if t["label"] == "base"), table[0]["flops"])
    lines = ["| scaling | depth mult | width mult | resolution | MFLOPs / image | x base | "
             "parameters | test top-1 | test top-5 |", "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['label']} | {t['depth']:.3g} | {t['width']:.3g} | "
                     f"{t['resolution']} | {t['flops'] / 1e6:.1f} | {t['flops'] / base:.2f} | "
                     f"{t['params']:,} | {pct(t['top1'])} | {pct(t['top5'])} |")
    return "\n".join(lines) + "\n"


def plot_scaling(path: pathlib.Path, table: list[dict]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for t in table:
        if t["top1"] is None:
            continue
        ax.scatter(t["flops"] / 1e6, 100 * t["top1"], s=40)
        ax.annotate(t["label"], (t["flops"] / 1e6, 100 * t["top1"]), fontsize=8,
                    xytext=(5, 3), textcoords="offset points")
    ax.set_xlabel("forward MFLOPs per image (XLA cost analysis)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("EfficientNet in miniature on the colour task: one scaling each", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    if len(argv) != 2 or argv[1] not in ("transfer", "scaling"):
        raise app.UsageError("usage: convnet_figures transfer|scaling --sweep_dir=DIR")
    sweep_dir = pathlib.Path(FLAGS.sweep_dir)
    rows = read_results(sweep_dir)
    if argv[1] == "transfer":
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
