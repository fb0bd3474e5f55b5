"""GPT-1's transfer experiment: what unsupervised pretraining and the auxiliary LM objective buy.

    python -m experiments.gpt1_transfer --workdir=DIR \
        [--config=experiments/configs/gpt1.py:transfer]

1. Pretrain the GPT with L1 on the standard library's train split (DIR/pretrain, pretrain_lm).
2. For each task (default: the four offline tasks, one per input transformation), fine-tune
       scratch_l2      a randomly initialised decoder with L2
       pretrained_l2   the pretrained decoder with L2
       pretrained_l3   the pretrained decoder with L3 = L2 + lambda * L1 (lambda 0.5)
   with the same architecture, data, steps and seed (DIR/finetune/TASK-SETTING).
3. Write the test accuracies to DIR/results.csv (task,setting,accuracy), DIR/results.md and
   DIR/results.png.

Running the same command again resumes: finished runs are read back, unfinished ones continue.
"""

import csv
import pathlib
import sys
import time

import jax
import ml_collections
from absl import logging

from data import tasks, text
from experiments import finetune_gpt, launch, pretrain_lm
from experiments.configs import gpt1
from models import gpt

SETTINGS = ("scratch_l2", "pretrained_l2", "pretrained_l3")
LABELS = {"scratch_l2": "scratch, L2", "pretrained_l2": "pretrained, L2",
          "pretrained_l3": "pretrained, L3"}


def pretrain_config(config) -> ml_collections.ConfigDict:
    pre = ml_collections.ConfigDict(config.to_dict())
    del pre["finetune"]
    return pre


def run_config(config, task: str, setting: str, pretrained_dir) -> ml_collections.ConfigDict:
    """The finetune_gpt config of one (task, setting) run."""
    f = config.finetune
    return gpt1.finetune_config(
        gpt.GPTConfig(**config.model.to_dict()), config.data,
        ml_collections.ConfigDict(f.train.to_dict()),
        seed=config.seed, task=task, lam=f.lam if setting.endswith("l3") else 0.0,
        pretrained=str(pretrained_dir) if setting.startswith("pretrained") else "",
        max_len=f.max_len, head_dropout=f.head_dropout, epochs=f.epochs,
        warmup_fraction=f.warmup_fraction,
        max_train_examples=f.max_train_examples, max_eval_examples=f.max_eval_examples)


def write_table(rows: list[dict], workdir: pathlib.Path, task_info: dict) -> str:
    """results.csv (task,setting,accuracy), results.md and results.png; returns the markdown."""
    with (workdir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["task", "setting", "accuracy"])
        writer.writeheader()
        for r in rows:
            writer.writerow({"task": r["task"], "setting": r["setting"],
                             "accuracy": f"{r['accuracy']:.4f}"})
    acc = {(r["task"], r["setting"]): r["accuracy"] for r in rows}
    names = list(dict.fromkeys(r["task"] for r in rows))
    lines = ["| task | transformation | chance | " + " | ".join(LABELS[s] for s in SETTINGS) + " |",
             "|---|---|---|" + "---|" * len(SETTINGS)]
    for name in names:
        kind, chance, _ = task_info[name]
        cells = [f"{acc[(name, s)]:.3f}" if (name, s) in acc else "" for s in SETTINGS]
        lines.append(f"| {name} | {kind} | {chance:.3f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (workdir / "results.md").write_text("Test accuracy\n\n" + table)
    plot(acc, names, task_info, workdir / "results.png")
    return table


def plot(acc: dict, names: list[str], task_info: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(SETTINGS)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
    for j, setting in enumerate(SETTINGS):
        xs = [i + (j - (len(SETTINGS) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [acc.get((n, setting), 0.0) for n in names], width, label=LABELS[setting])
    for i, name in enumerate(names):
        ax.hlines(task_info[name][1], i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(names)), [f"{n}\n({task_info[n][0]})" for n in names], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def task_names(config) -> list[str]:
    """config.finetune.tasks, every name checked against the offline and the hub tasks before
    pretraining starts."""
    names = [n.strip() for n in config.finetune.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in tasks.DEFAULT_TASKS and n not in tasks.HUB_TASKS]
    if unknown or not names:
        raise ValueError(f"finetune.tasks {config.finetune.tasks!r}: unknown "
                         f"{unknown or 'none given'}; choose from the offline tasks "
                         f"{sorted(tasks.DEFAULT_TASKS)} or the hub tasks "
                         f"{sorted(tasks.HUB_TASKS)}")
    return names


def main(config, workdir):
    names = task_names(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Orbax logs every checkpoint save at INFO; keep the terminal for progress.
    logging.set_verbosity(logging.WARNING)
    # The runs of a task share programs (scratch and pretrained L2 train the same step; all
    # three evaluate with the same one): compile each once, and not again on a rerun.
    jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    pre_dir = workdir / "pretrain"
    print(f"pretraining the decoder with L1 in {pre_dir}", file=sys.stderr)
    pretrain_lm.main(pretrain_config(config), pre_dir)
    pretrained_config, params = finetune_gpt.load_pretrained(pre_dir)
    tokenizer = text.get_tokenizer(pretrained_config.data)
    tasks.add_task_tokens(tokenizer)

    rows, task_info = [], {}
    total, done = len(names) * len(SETTINGS), 0
    for name in names:
        task = tasks.get_task(name)
        task_info[name] = (task.kind, task.chance, task.description)
        for setting in SETTINGS:
            cfg = run_config(config, name, setting, pre_dir)
            model_cfg = finetune_gpt.model_for(cfg, tokenizer, pretrained_config)
            t0 = time.perf_counter()
            result = finetune_gpt.finetune(
                cfg, workdir / "finetune" / f"{name}-{setting}", task=task, tokenizer=tokenizer,
                pretrained=params if setting.startswith("pretrained") else None,
                model_cfg=model_cfg)
            done += 1
            rows.append({"task": name, "setting": setting, "accuracy": result["test_accuracy"]})
            print(f"[{done}/{total}] {name} {setting}: test accuracy "
                  f"{result['test_accuracy']:.3f} (chance {task.chance:.3f}, "
                  f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    table = write_table(rows, workdir, task_info)
    print(f"\nTest accuracy ({time.perf_counter() - started:.0f} s in all)\n\n{table}")
    print(f"written: {workdir / 'results.csv'}, results.md, results.png")


if __name__ == "__main__":
    launch.run(main, "gpt1.py:transfer")
