"""Fine-tune a GPT on one supervised task with L2, or L3 = L2 + lambda * L1 (GPT-1 section 3.2).

    python -m experiments.finetune_gpt --config=experiments/configs/gpt1.py:finetune \
        --workdir=DIR --config.pretrained=PRETRAIN_WORKDIR --config.task=next_line \
        [--config.lam=0]   # L2 alone

--config.pretrained names a pretrain_lm workdir: its newest checkpoint, model and tokenizer are
used. Left empty, the model of --config.model is trained from a random initialisation with the
tokenizer of --config.data. Tasks: the offline ones (package, claims, same_package, next_line,
docstring, module; data/code_tasks.py) or a hub task (sst2, rte, mnli, mrpc, qqp, hellaswag, race);
--config.hub_data_files="train=a.jsonl,validation=b.jsonl" reads the hub task's columns from
local files.

Writes the validation accuracy during training and the final val/test accuracy to
metrics.jsonl, and DIR/results.json.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from data import code_tasks, gpt1_inputs, hub_tasks, text
from data.iterators import ArrayBatches
from experiments import launch
from models import gpt, gpt_tasks
from train import objectives, sharding
from train.checkpoint import Checkpointer
from train.logging import MetricWriter
from train.trainer import Throughput, build, fit


def load_pretrained(workdir) -> tuple[ml_collections.ConfigDict, dict]:
    """A pretrain_lm workdir -> (its saved config, the params of its newest checkpoint)."""
    workdir = pathlib.Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    ckpt = Checkpointer(workdir)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: pretrain first")
    state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ckpt.close()
    return config, jax.device_get(state["state"]["params"])


def load_task(config) -> gpt1_inputs.Task:
    if config.task in code_tasks.DEFAULT_TASKS:
        return code_tasks.default_task(config.task)
    files = text.parse_data_files(config.hub_data_files)
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


def make_accuracy(model: gpt_tasks.GPTForTasks, batch_size: int):
    """accuracy(params, arrays) over a whole split, in fixed-size batches (one compilation)."""
    @jax.jit
    def predict(params, tokens, lengths):
        logits, _ = model.apply({"params": params}, tokens, lengths)
        return logits.argmax(-1)

    def accuracy(params, arrays) -> float:
        n, hits = len(arrays["labels"]), 0
        for start in range(0, n, batch_size):
            rows = np.resize(np.arange(start, min(start + batch_size, n)), batch_size)
            pred = np.asarray(predict(params, arrays["tokens"][rows], arrays["lengths"][rows]))
            real = min(batch_size, n - start)
            hits += int((pred[:real] == arrays["labels"][rows[:real]]).sum())
        return hits / n
    return accuracy


def start_from_pretrained(config, workdir, init_fn, loss_fn, pretrained: dict, train_data,
                          d_model: int) -> None:
    """Write step 0 of the run, the decoder's pretrained weights in a fresh train state, as its
    first checkpoint; fit() then starts from it. The weights reach the device as arguments, so
    no compiled program carries them as constants (a GPT-1-sized model would not fit there)."""
    ckpt = Checkpointer(workdir)
    try:
        if ckpt.latest_step() is not None:
            return   # the run has started already
        mesh = sharding.make_mesh(config.mesh)
        program = build(config, init_fn=init_fn, loss_fn=loss_fn, mesh=mesh, d_model=d_model)
        with jax.set_mesh(mesh):
            state = program.init(jax.random.key(config.seed))
            params = jax.jit(gpt_tasks.with_pretrained,
                             out_shardings=program.state_shardings.params)(state.params,
                                                                           pretrained)
        # Adam's moments start at zero whatever the weights, so the fresh opt_state fits.
        ckpt.save(0, state.replace(params=params), train_data.get_state())
        ckpt.wait()
    finally:
        ckpt.close()


def model_for(config, tokenizer, pretrained_config=None) -> gpt.GPTConfig:
    """The decoder's config (the pretrained one when given), its vocabulary grown to hold the
    task tokens; the sequences must fit its context."""
    fields = (pretrained_config or config).model.to_dict()
    cfg = gpt.GPTConfig(**fields)
    vocab = max(cfg.vocab_size, tokenizer.vocab_size)
    if config.max_len > cfg.n_ctx:
        raise ValueError(f"max_len {config.max_len} is longer than the model's context {cfg.n_ctx}")
    return gpt.GPTConfig(**{**fields, "vocab_size": vocab})


def finetune(config, workdir, *, task: gpt1_inputs.Task | None = None, tokenizer=None,
             pretrained: dict | None = None, model_cfg: gpt.GPTConfig | None = None) -> dict:
    """One fine-tuning run; returns {"val_accuracy", "test_accuracy", "chance", ...}.

    gpt1_transfer passes the task, tokenizer, pretrained params and model it already holds;
    the command line loads them from the config. A finished run (results.json at the configured
    steps) is read back instead of redone."""
    workdir = pathlib.Path(workdir)
    results_path = workdir / "results.json"
    task = task or load_task(config)
    t = config.train
    n_train = len(task.splits["train"])
    if config.max_train_examples > 0:
        n_train = min(n_train, config.max_train_examples)
    if config.epochs > 0:
        t.steps = max(int(round(config.epochs * n_train / t.batch_size)), 1)
    if config.warmup_fraction > 0:
        t.warmup_steps = max(int(round(config.warmup_fraction * t.steps)), 1)
    if results_path.exists():
        done = json.loads(results_path.read_text())
        if done.get("step") == t.steps:
            return done

    arrays = encode_task(task, tokenizer, config)
    model = gpt_tasks.GPTForTasks(model_cfg, task.kind, task.num_classes, config.head_dropout)
    example = arrays["train"]
    train_data = ArrayBatches(example, t.batch_size, seed=config.seed, repeat_small=True,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
    loss_fn = task_loss_fn(model, config.lam)

    def init_fn(rng):
        return model.init(rng, jnp.asarray(example["tokens"][:1]),
                          jnp.asarray(example["lengths"][:1]))

    if pretrained is not None:
        start_from_pretrained(config, workdir, init_fn, loss_fn, pretrained, train_data,
                              model_cfg.d_model)
    accuracy = make_accuracy(model, t.batch_size)
    n_seq, length = example["tokens"].shape[1:]
    tokens_per_example = n_seq * length
    # Validation during training only when asked for (eval_every < steps); short runs are
    # validated once, at the end.
    periodic = t.eval_every < t.steps
    state = fit(
        config, workdir=workdir, init_fn=init_fn, loss_fn=loss_fn, train_data=train_data,
        on_eval=(lambda s: {"accuracy": accuracy(s.params, arrays["val"])}) if periodic else None,
        d_model=model_cfg.d_model,
        throughput=Throughput(tokens_per_example,
                              gpt.flops_per_token(model_cfg, length) * tokens_per_example))
    results = {"task": task.name, "kind": task.kind, "step": int(state.step),
               "val_accuracy": accuracy(state.params, arrays["val"]),
               "test_accuracy": accuracy(state.params, arrays["test"]),
               "chance": task.chance, "lam": config.lam, "pretrained": pretrained is not None,
               "n_train": n_train, "n_test": len(arrays["test"]["labels"])}
    writer = MetricWriter(workdir)
    if not periodic:
        writer.write(results["step"], "val", accuracy=results["val_accuracy"])
    writer.write(results["step"], "test", accuracy=results["test_accuracy"])
    if jax.process_index() == 0:
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(config, workdir):
    pretrained_config, params = None, None
    if config.pretrained:
        pretrained_config, params = load_pretrained(config.pretrained)
        data_cfg = pretrained_config.data     # the tokenizer the decoder was trained with
    else:
        data_cfg = config.data
    tokenizer = text.get_tokenizer(data_cfg)
    task = load_task(config)
    gpt1_inputs.add_task_tokens(tokenizer)
    cfg = model_for(config, tokenizer, pretrained_config)
    results = finetune(config, workdir, task=task, tokenizer=tokenizer, pretrained=params,
                       model_cfg=cfg)
    print(f"{task.name} ({task.kind}, chance {results['chance']:.3f}): "
          f"val accuracy {results['val_accuracy']:.4f}, test accuracy "
          f"{results['test_accuracy']:.4f}", file=sys.stderr)


if __name__ == "__main__":
    launch.run(main, "gpt1.py:finetune")
