"""GPT-1's transfer experiment: what unsupervised pretraining and the auxiliary LM objective buy.

    python -m experiments.gpt1_transfer --workdir=DIR \
        [--config=experiments/configs/gpt1.py:transfer]

It is the named sweep `transfer` of experiments/configs/gpt1.py plus its table, i.e.

    python -m experiments.sweep --config=experiments/configs/gpt1.py:transfer --name=transfer \
        --workdir=DIR

1. Pretrain the GPT with L1 on the standard library's train split (DIR/pretrain, pretrain_lm).
2. For each task (the four offline tasks, one per input transformation), fine-tune
       scratch_l2      a randomly initialised decoder with L2
       pretrained_l2   the pretrained decoder with L2 (config.init_from=DIR/pretrain)
       pretrained_l3   the pretrained decoder with L3 = L2 + lambda * L1 (lambda 0.5)
   with the same architecture, tokenizer, data, steps and seed (DIR/task=...,setting=...).
3. The sweep writes DIR/results.csv, summary.md and summary.png; this command adds the table
   of test accuracies DIR/transfer.md and its plot DIR/transfer.png.

Running the same command again resumes: finished runs are skipped, unfinished ones continue.
"""

import csv
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags

from experiments import launch  # noqa: F401  (--workdir, shared by the experiments)
from experiments.configs import gpt1
from experiments.figures import fmt_ms
from experiments.sweeps.results import mean_std

SETTINGS = tuple(s["label"] for s in gpt1.SETTINGS)
LABELS = {"scratch_l2": "scratch, L2", "pretrained_l2": "pretrained, L2",
          "pretrained_l3": "pretrained, L3"}
ROOT = pathlib.Path(__file__).resolve().parents[1]
# GPT-1 Figure 1's input transformation of each offline task.
TRANSFORMATIONS = {"package": "classification", "claims": "entailment",
                   "same_package": "similarity", "next_line": "multiple_choice",
                   "docstring": "entailment", "module": "similarity"}

flags.declare_key_flag("workdir")   # the sweep's directory; listed by --help
flags.DEFINE_string("config", "experiments/configs/gpt1.py:transfer",
                    "The fine-tuning preset; its named sweep has the preset's name.")
FLAGS = flags.FLAGS


def read_table(workdir: pathlib.Path) -> tuple[dict, list[str], dict]:
    """(test accuracies by (task, setting), each a {seed: accuracy}, task names, (kind,
    chance) by task) from the sweep's results.csv."""
    with (workdir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    acc, info = {}, {}
    for r in rows:
        acc.setdefault((r["task"], r["setting"]), {})[r["seed"]] = float(r["test/accuracy"])
        info[r["task"]] = (TRANSFORMATIONS.get(r["task"], ""), float(r["test/chance"]))
    names = list(dict.fromkeys(r["task"] for r in rows))
    return acc, names, info


def l3_gain(acc: dict, name: str) -> tuple[float, float, int] | None:
    """L3 minus L2 on the pretrained decoder, paired by seed: (mean, std, n)."""
    l2, l3 = acc.get((name, "pretrained_l2"), {}), acc.get((name, "pretrained_l3"), {})
    return mean_std(l3[s] - l2[s] for s in l2 if s in l3)


def write_table(acc: dict, names: list[str], task_info: dict, workdir: pathlib.Path) -> str:
    """transfer.md and transfer.png; returns the markdown table (test accuracy in %, mean ±
    sample std over seeds, and L3's paired gain over L2)."""
    seeds = max(len(v) for v in acc.values())
    lines = ["| task | transformation | chance | " + " | ".join(LABELS[s] for s in SETTINGS)
             + " | L3 - L2 |", "|---|---|---|" + "---|" * (len(SETTINGS) + 1)]
    for name in names:
        kind, chance = task_info[name]
        cells = [fmt_ms(mean_std(acc.get((name, s), {}).values())) for s in SETTINGS]
        lines.append(f"| {name} | {kind} | {100 * chance:.1f} | " + " | ".join(cells)
                     + f" | {fmt_ms(l3_gain(acc, name))} |")
    table = "\n".join(lines) + "\n"
    (workdir / "transfer.md").write_text(
        f"Test accuracy (%), mean ± std over {seeds} fine-tuning seed(s)\n\n" + table)
    plot(acc, names, task_info, workdir / "transfer.png")
    return table


def plot(acc: dict, names: list[str], task_info: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(SETTINGS)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for j, setting in enumerate(SETTINGS):
        xs = [i + (j - (len(SETTINGS) - 1) / 2) * width for i in range(len(names))]
        stats = [mean_std(acc.get((n, setting), {}).values()) or (0.0, 0.0, 0) for n in names]
        ax.bar(xs, [m for m, _, _ in stats], width, yerr=[sd for _, sd, _ in stats],
               capsize=2, label=LABELS[setting])
    for i, name in enumerate(names):
        ax.hlines(task_info[name][1], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{n}\n({task_info[n][0]})" for n in names], fontsize=8)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = pathlib.Path(FLAGS.workdir)
    preset = FLAGS.config.rsplit(":", 1)[-1]
    started = time.perf_counter()
    # The runs of a task share programs (scratch and pretrained L2 train the same step; all
    # three evaluate with the same one): compile each once, and not again on a rerun.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(workdir.absolute() / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    cmd = [sys.executable, "-m", "experiments.sweep", f"--config={FLAGS.config}",
           f"--name={preset}", f"--workdir={workdir}"]
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
        sys.exit("the sweep did not finish; run the same command again to resume")
    table = write_table(*read_table(workdir), workdir)
    print(f"\nTest accuracy ({time.perf_counter() - started:.0f} s)\n\n{table}")
    print(f"written: {workdir / 'transfer.md'}, transfer.png, results.csv, summary.md")


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
