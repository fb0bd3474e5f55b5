"""Fine-tune a GPT on one supervised task with L2, or L3 = L2 + lambda * L1 (GPT-1 section 3.2).

    python -m experiments.finetune_gpt --config=experiments/configs/gpt1.py:finetune \
        --workdir=DIR --config.init_from=PRETRAIN_WORKDIR --config.task=next_line \
        [--config.lam=0]   # L2 alone

--config.init_from names a pretrain_lm workdir (or a transformers GPT-2 / GPT-1 directory):
its model and tokenizer are used, and its weights initialise the decoder (init_from_regex
leaves the new task head, `head/`, to its fresh initialisation). Left empty, the model of
--config.model is trained from a random initialisation with the tokenizer of --config.data.
Tasks: the offline ones (package, claims, same_package, next_line, docstring, module;
data/code_tasks.py) or a hub task (sst2, rte, mnli, mrpc, qqp, hellaswag, race);
--config.hub_data_files="train=a.jsonl,validation=b.jsonl" reads the hub task's columns from
local files.

Logs the validation and test accuracy (evaluators `val`, `test`) to metrics.jsonl.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data import code_tasks, gpt1_inputs, hub_tasks, sources, text
from data.iterators import ArrayBatches
from experiments import launch
from experiments.built import Built
from experiments.pretrain_lm import hf_gpt, load_lm
from models import gpt, gpt_tasks
from train import objectives
from train.logging import MetricWriter, read_metrics
from train.trainer import fit, preflight


def check_task(config) -> None:
    if config.task not in code_tasks.DEFAULT_TASKS and config.task not in hub_tasks.HUB_TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose an offline task "
                         f"{sorted(code_tasks.DEFAULT_TASKS)} or a hub task "
                         f"{sorted(hub_tasks.HUB_TASKS)}")


def load_task(config) -> gpt1_inputs.Task:
    check_task(config)
    if config.task in code_tasks.DEFAULT_TASKS:
        return code_tasks.default_task(config.task)
    files = sources.parse_data_files(config.hub_data_files)
    return hub_tasks.hub_task(config.task, data_files=files)


def encode_task(task: gpt1_inputs.Task, tokenizer, config) -> dict[str, dict[str, np.ndarray]]:
    """Each split as arrays (data/gpt1_inputs.py: encode_split), after the configured size limits."""
    sp = gpt1_inputs.add_task_tokens(tokenizer)
    out = {}
    for split, records in task.splits.items():
        limit = config.max_train_examples if split == "train" else config.max_eval_examples
        records = records[:limit] if limit > 0 else records
        out[split] = gpt1_inputs.encode_split(task.kind, records, tokenizer.encode_batch,
                                              config.max_len, sp, pad_id=tokenizer.eot_id)
    return out


def task_loss_fn(model: gpt_tasks.GPTForTasks, lam: float):
    """L2, or L3 = L2 + lam * L1 when lam > 0, for the trainer."""
    def loss_fn(params, state, batch, rng):
        train = rng is not None
        logits, lm_logits = model.apply({"params": params}, batch["tokens"], batch["lengths"],
                                        deterministic=not train,
                                        rngs={"dropout": rng} if train else {})
        metrics = {"accuracy": objectives.accuracy(logits, batch["labels"])}
        if lam > 0:
            loss, l2, l1 = objectives.auxiliary_loss(logits, batch["labels"], lm_logits,
                                                     batch["tokens"], batch["lengths"], lam)
            metrics.update(l2=l2, l1=l1)
        else:
            loss = objectives.supervised_loss(logits, batch["labels"])
        return loss, (metrics, state)
    return loss_fn


def sequences(kind: str, num_classes: int) -> int:
    """Input sequences per example (section 3.3): similarity reads both orderings, multiple
    choice one sequence per answer."""
    return {"similarity": 2, "multiple_choice": num_classes}.get(kind, 1)


def build(config, kind: str = "classification", num_classes: int = 2,
          length: int = 0) -> Built:
    """GPTForTasks of config.model with the head of a task of `kind` and `num_classes`,
    without loading data (setup first resolves config.model from init_from and the task's
    tokens). An example is sequences(kind) sequences of `length` tokens (0: max_len); FLOPs
    per token: the decoder's (gpt.flops_per_token), the head's not counted."""
    cfg = gpt.GPTConfig(**config.model.to_dict())
    model = gpt_tasks.GPTForTasks(cfg, kind=kind, num_classes=num_classes,
                                  head_dropout=config.head_dropout)
    n_seq, length = sequences(kind, num_classes), length or config.max_len

    def init_fn(rng):
        return model.init(rng, jnp.zeros((1, n_seq, length), jnp.int32),
                          jnp.ones((1, n_seq), jnp.int32))

    def predict_fn(params, model_state, batch):
        return model.apply({"params": params}, batch["tokens"], batch["lengths"])[0]

    return Built(cfg, model, init_fn, task_loss_fn(model, config.lam), predict_fn, "token",
                 gpt.flops_per_token(cfg, length), units_per_example=n_seq * length)


def decoder_and_tokenizer(config, workdir):
    """The decoder's config and tokenizer: init_from's when it is set (a workdir of ours or a
    transformers directory), else config.model's and config.data's (trained only for a run
    that has not started in workdir)."""
    source = pathlib.Path(config.init_from).expanduser() if config.init_from else None
    if source is None:
        return gpt.GPTConfig(**config.model.to_dict()), text.workdir_tokenizer(config.data,
                                                                               workdir)
    if not source.exists():
        raise FileNotFoundError(f"config.init_from: {source} does not exist")
    if (source / "checkpoints").is_dir():
        saved = ml_collections.ConfigDict(json.loads((source / "config.json").read_text()))
        return (gpt.GPTConfig(**saved.model.to_dict()),
                text.load_tokenizer(source))
    cfg, _, tokenizer = load_lm(source)
    return cfg, tokenizer


def setup(config, workdir) -> dict:
    workdir = pathlib.Path(workdir)
    cfg, tokenizer = decoder_and_tokenizer(config, workdir)
    if (workdir / "tokenizer.json").exists():    # a resumed run: exactly its own tokenizer
        tokenizer = text.load_tokenizer(workdir)
    task = load_task(config)
    arrays = encode_task(task, tokenizer, config)   # adds the task tokens
    if config.max_len > cfg.n_ctx:
        raise ValueError(f"max_len {config.max_len} is longer than the model's context "
                         f"{cfg.n_ctx}")
    # The vocabulary grows by the start, delimiter and extract tokens; the config records it.
    config.model.update({**cfg.__dict__, "vocab_size": max(cfg.vocab_size,
                                                           tokenizer.vocab_size)})
    t = config.train
    n_train = len(arrays["train"]["labels"])
    if config.epochs > 0:
        t.steps = max(int(round(config.epochs * n_train / t.batch_size)), 1)
    if config.warmup_fraction > 0:
        t.warmup_steps = max(int(round(config.warmup_fraction * t.steps)), 1)
    example = arrays["train"]
    n_seq, length = example["tokens"].shape[1:]
    if n_seq != sequences(task.kind, task.num_classes):
        raise ValueError(f"task {task.name!r} ({task.kind}) has {n_seq} sequences per example, "
                         f"not {sequences(task.kind, task.num_classes)}")
    built = build(config, task.kind, task.num_classes, length)
    return dict(
        **built.fit_args(),
        train_data=ArrayBatches(example, t.batch_size, repeat_small=True, **rows(config.seed)),
        # One ordered pass over each split, the last batch padded with weight-0 rows.
        data={split: lambda a=arrays[split]: ArrayBatches(
            a, t.batch_size, shuffle=False, drop_remainder=False, prefetch=0, **rows(0))
              for split in ("val", "test")},
        import_weights=lambda path: {"params": hf_gpt(path)[1]},
        artifacts={"tokenizer.json": lambda path: text.save_tokenizer(tokenizer, path)},
        task=task)


def rows(seed: int) -> dict:
    """This process's share of every global batch."""
    return dict(seed=seed, process_index=jax.process_index(), process_count=jax.process_count())


def last_metrics(workdir, split: str) -> dict:
    rows = [r for r in read_metrics(workdir) if r["split"] == split]
    return rows[-1] if rows else {}


def main(config, workdir):
    preflight(config, workdir, resume=False)   # setup resolves the model; fit then checks it
    check_task(config)
    run = setup(config, workdir)
    task = run.pop("task")
    state = fit(config, workdir=workdir, **run)
    if jax.process_index() == 0:
        val, test = last_metrics(workdir, "val"), last_metrics(workdir, "test")
        if "chance" not in test:   # beside the accuracy, for tables of several tasks
            writer = MetricWriter(workdir)
            writer.write(int(state.step), "test", chance=task.chance)
            writer.close()
        print(f"{task.name} ({task.kind}, chance {task.chance:.3f}): val accuracy "
              f"{val.get('accuracy', float('nan')):.4f}, test accuracy "
              f"{test.get('accuracy', float('nan')):.4f}", file=sys.stderr)


if __name__ == "__main__":
    launch.run(main, "gpt1.py:finetune")
