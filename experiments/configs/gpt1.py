"""GPT-1 fine-tuning and transfer presets: get_config("PRESET").

    finetune          finetune_gpt: one task, L3 (lambda 0.5), the tiny GPT, 2 CPU cores
    finetune-gpt1     finetune_gpt with GPT-1's settings (section 3.3/4.1): lr 6.25e-5, batch 32,
                      3 epochs, warmup over 0.2% of training, lambda 0.5 (decay: cosine to 0
                      here, linear in the paper)
    transfer          gpt1_transfer: pretrain the tiny GPT, then 4 tasks x 3 settings;
                      about 10 minutes on 2 CPU cores
    transfer-micro    the same pipeline in seconds (tests)

A finetune config reads its model and tokenizer from `pretrained` (a pretrain_lm workdir) when it
is set, and from `model` / `data` when it is empty (training from a random initialisation).
"""

import dataclasses

import ml_collections

from data import code_tasks, text
from experiments.configs import gpt as gpt_configs
from models import gpt

TRANSFER_TASKS = ",".join(code_tasks.TRANSFER_TASKS)   # package, claims, same_package, next_line


def finetune_fields(**overrides) -> ml_collections.ConfigDict:
    """What one fine-tuning run reads besides model, data, mesh and train."""
    f = ml_collections.ConfigDict(dict(
        task="next_line",          # an offline task (data/code_tasks.py: DEFAULT_TASKS) or a hub
                                   # task (sst2, rte, mnli, mrpc, qqp, hellaswag, race)
        hub_data_files="",         # "train=a.jsonl,validation=b.jsonl": the hub task from files
        pretrained="",             # a pretrain_lm workdir; "" = random initialisation
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


def tiny_model() -> gpt.GPTConfig:
    return gpt.preset("tiny")


def finetune_config(model: gpt.GPTConfig, data: ml_collections.ConfigDict,
                    train: ml_collections.ConfigDict, seed: int = 0,
                    **fields) -> ml_collections.ConfigDict:
    config = finetune_fields(**fields)
    config.seed = seed
    config.data = data
    config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    config.mesh = gpt_configs.mesh_config()
    config.train = train
    return config


def tiny_data(model: gpt.GPTConfig) -> ml_collections.ConfigDict:
    data = text.default_config()
    data.vocab_size = model.vocab_size
    data.seq_len = model.n_ctx
    return data


def tiny_finetune_train(**overrides) -> ml_collections.ConfigDict:
    t = dict(steps=100, batch_size=16, lr=1e-3, warmup_steps=10, min_lr_ratio=0.0,
             weight_decay=0.01, eval_every=1000, eval_steps=0, ckpt_every=1000, log_every=10)
    t.update(overrides)
    return gpt_configs.train_config(**t)


def get_config(arg: str = "finetune") -> ml_collections.ConfigDict:
    if arg == "finetune":
        model = tiny_model()
        return finetune_config(model, tiny_data(model), tiny_finetune_train())
    if arg == "finetune-gpt1":
        # Section 4.1: lr 6.25e-5, batch 32, 3 epochs, linear warmup over 0.2% of training,
        # lambda 0.5, classifier dropout 0.1 (steps are set from the epochs).
        model = gpt.preset("gpt1")
        data = text.default_config()
        data.vocab_size, data.seq_len = model.vocab_size, model.n_ctx
        train = gpt_configs.train_config(steps=1000, batch_size=32, lr=6.25e-5, warmup_steps=2,
                                         min_lr_ratio=0.0, b2=0.999, weight_decay=0.01,
                                         eval_every=500, ckpt_every=500)
        return finetune_config(model, data, train, epochs=3.0, warmup_fraction=0.002,
                               max_len=model.n_ctx)
    if arg in ("transfer", "transfer-micro"):
        return transfer_config(arg)
    raise ValueError(f"unknown preset {arg!r}; see experiments/configs/gpt1.py")


def transfer_config(arg: str) -> ml_collections.ConfigDict:
    """Pretraining (seed, data, model, mesh, train, sample as pretrain_lm) + `finetune`."""
    config = gpt_configs.get_config("tiny")
    # The tiny GPT with a 4096-token BPE: the tasks' texts stay short in tokens, which keeps
    # the twelve fine-tuning runs cheap; 500 steps of 16 x 128 tokens (about 1M) of pretraining.
    model = tiny_model()
    config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
    config.data.vocab_size, config.data.seq_len = model.vocab_size, model.n_ctx
    config.train = gpt_configs.train_config(steps=500, batch_size=16, lr=3e-3, warmup_steps=50,
                                            eval_every=100, eval_steps=4, ckpt_every=500,
                                            log_every=10)
    config.sample.num_tokens = 0
    config.finetune = finetune_fields(lam=0.5, max_len=64, max_eval_examples=400)
    for per_run in ("task", "pretrained", "hub_data_files"):
        del config.finetune[per_run]
    config.finetune.tasks = TRANSFER_TASKS
    config.finetune.train = tiny_finetune_train()
    if arg == "transfer-micro":
        model = gpt.GPTConfig(vocab_size=512, n_ctx=64, n_layer=1, n_head=2, d_model=32,
                              dropout=0.0, attn_dropout=0.0)
        config.model = ml_collections.ConfigDict(dataclasses.asdict(model))
        config.data.vocab_size, config.data.seq_len, config.data.max_docs = 512, 64, 40
        config.train.update(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_steps=2,
                            ckpt_every=4, log_every=2)
        config.finetune.update(max_len=64, max_train_examples=32, max_eval_examples=16)
        config.finetune.train.update(steps=3, batch_size=4, warmup_steps=1, log_every=1)
    return config
