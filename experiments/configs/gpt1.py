"""GPT-1 fine-tuning and transfer presets: get_config("PRESET").

    finetune          finetune_gpt: one task, L3 (lambda 0.5), the tiny GPT, 2 CPU cores
    finetune-gpt1     finetune_gpt with GPT-1's settings (section 3.3/4.1): lr 6.25e-5, batch 32,
                      3 epochs, warmup over 0.2% of training, lambda 0.5 (decay: cosine to 0
                      here, linear in the paper)
    transfer          the fine-tuning runs of GPT-1's transfer table (experiments.gpt1_transfer,
                      the named sweep `transfer`, after pretraining gpt.py:tiny-4k): at most 64
                      tokens per sequence, 400 scored
    transfer-micro    the same pipeline in seconds (tests; pretraining gpt.py:micro)

Named sweeps (SWEEPS below): `transfer`, 1 pretraining run and 12 fine-tuning runs: 15 min on
2 quiet CPU cores (measured, README, as `python -m experiments.gpt1_transfer`, which runs it);
`transfer-micro`, the same on 1 task with micro sizes, for tests (no measured time).

A finetune config reads its model and tokenizer from `init_from` (a pretrain_lm workdir, or a
transformers GPT directory) when it is set, and from `model` / `data` when it is empty (training
from a random initialisation).
"""

import ml_collections

from experiments.configs import defaults
from experiments.configs.common import base_config, check_preset, eval_spec, train_config
from experiments.configs.gpt import MICRO_MODEL

EXPERIMENT = "finetune_gpt"

# GPT-1's transfer table (experiments.gpt1_transfer): each offline task x three settings, the
# same architecture, tokenizer, data, steps and seed; pretraining runs first, in DIR/pretrain.
TRANSFER_TASKS = list(defaults.TRANSFER_TASKS)   # one task per input transformation
SETTINGS = [
    {"label": "scratch_l2", "init_from": "", "lam": 0.0,
     "data.tokenizer": "{sweep_dir}/pretrain/tokenizer.json"},
    {"label": "pretrained_l2", "init_from": "{sweep_dir}/pretrain", "lam": 0.0},
    {"label": "pretrained_l3", "init_from": "{sweep_dir}/pretrain", "lam": 0.5},
]
SWEEPS = {
    name: {"task": tasks, "setting": SETTINGS, "seeds": seeds, "metric": "test/accuracy",
           "before": {"experiment": "pretrain_lm", "config": f"gpt.py:{pretrain}",
                      "workdir": "pretrain"}}
    # Five fine-tuning seeds (head initialisation, dropout, batch order) on one pretrained
    # decoder: cells move by several points between seeds, more than L3's effect.
    for name, tasks, pretrain, seeds in (("transfer", TRANSFER_TASKS, "tiny-4k", 5),
                                         ("transfer-micro", TRANSFER_TASKS[:1], "micro", 1))}


def finetune_fields(**overrides) -> ml_collections.ConfigDict:
    """What one fine-tuning run reads besides model, data, mesh and train."""
    f = ml_collections.ConfigDict(dict(
        task="next_line",          # an offline task (data/code_tasks.py: DEFAULT_TASKS) or a hub
                                   # task (sst2, rte, mnli, mrpc, qqp, hellaswag, race)
        hub_data_files="",         # "train=a.jsonl,validation=b.jsonl": the hub task from files
        lam=0.5,                   # L3 = L2 + lam * L1 on the task inputs; 0 = L2 alone
        max_len=128,               # tokens per sequence, special tokens included
        head_dropout=0.1,          # GPT-1: dropout 0.1 on the classifier
        epochs=0.0,                # > 0: train.steps = epochs * train examples / batch
        warmup_fraction=0.0,       # > 0: train.warmup_steps = this fraction of train.steps
        max_train_examples=0,      # 0 = every example of the split
        max_eval_examples=0,
    ))
    f.update(overrides)
    return f


def tiny_model() -> ml_collections.ConfigDict:
    return defaults.gpt("tiny")


def finetune_config(model: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
                    train: ml_collections.ConfigDict, seed: int = 0,
                    **fields) -> ml_collections.ConfigDict:
    config = base_config(seed)
    config.update(finetune_fields(**fields))
    # Everything but the new task head comes from init_from.
    config.init_from_regex = "(?!head/).*"
    config.data = data
    config.model = model
    # Plain values, not references to the model: finetune_gpt replaces the model's fields with
    # init_from's, and the data's must not change with them.
    config.data.update(vocab_size=model.vocab_size, seq_len=model.n_ctx)
    config.train = train
    # Accuracy over the whole of each split, at the end (evals.val.every=N: also during).
    config.evals.val = eval_spec(type="accuracy", split="val", every=0, steps=0)
    config.evals.test = eval_spec(type="accuracy", split="test", every=0, steps=0)
    return config


def tiny_data() -> ml_collections.ConfigDict:
    """The text fields; vocab_size and seq_len are the model's (finetune_config)."""
    return defaults.text_data(seq_len=0)


def tiny_finetune_train(**overrides) -> ml_collections.ConfigDict:
    t = dict(steps=100, batch_size=16, lr=1e-3, warmup_steps=10, min_lr_ratio=0.0,
             weight_decay=0.01, eval_every=1000, eval_steps=0, ckpt_every=1000, log_every=10)
    t.update(overrides)
    return train_config(**t)


PRESETS = ("finetune", "finetune-gpt1", "transfer", "transfer-micro")


def get_config(arg: str = "finetune") -> ml_collections.ConfigDict:
    check_preset(arg, PRESETS)
    if arg == "finetune":
        model = tiny_model()
        return finetune_config(model, tiny_data(), tiny_finetune_train())
    if arg == "finetune-gpt1":
        # Section 4.1: lr 6.25e-5, batch 32, 3 epochs, linear warmup over 0.2% of training,
        # lambda 0.5, classifier dropout 0.1 (steps are set from the epochs).
        model = defaults.gpt("gpt1")
        data = tiny_data()
        train = train_config(steps=1000, batch_size=32, lr=6.25e-5, warmup_steps=2,
                             min_lr_ratio=0.0, b2=0.999, weight_decay=0.01, eval_every=500,
                             ckpt_every=500)
        return finetune_config(model, data, train, epochs=3.0, warmup_fraction=0.002,
                               max_len=model.n_ctx)
    if arg in ("transfer", "transfer-micro"):
        model = tiny_model() if arg == "transfer" else defaults.gpt(**MICRO_MODEL)
        config = finetune_config(model, tiny_data(), tiny_finetune_train(), lam=0.5,
                                 max_len=64, max_eval_examples=400)
        if arg == "transfer-micro":
            config.data.max_docs = 40
            config.update(max_train_examples=32, max_eval_examples=16)
            config.train.update(steps=3, batch_size=4, warmup_steps=1, log_every=1)
        return config
