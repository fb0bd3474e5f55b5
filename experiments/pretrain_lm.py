"""Pretrain a GPT language model with the unsupervised objective L1 (next-token likelihood).

    python -m experiments.pretrain_lm --config=experiments/configs/gpt.py:tiny --workdir=DIR

Default data: the Python standard library's source files, split by file, with a byte-level BPE
trained on the train split; --config.data.source=hf --config.data.hf_dataset=NAME reads a
dataset through Hugging Face `datasets` instead.
"""

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from data import text
from experiments import launch
from models import gpt
from train import objectives
from train.trainer import Throughput, fit


def model_config(config) -> gpt.GPTConfig:
    try:
        return gpt.GPTConfig(**config.model.to_dict())
    except TypeError as e:
        raise ValueError(f"config.model: {e}") from e


def lm_loss_fn(model: gpt.GPT):
    """L1 for the trainer: loss_fn(params, state, batch, rng) on {"inputs", "targets"[, "weights"]}."""
    def loss_fn(params, state, batch, rng):
        train = rng is not None
        logits = model.apply({"params": params}, batch["inputs"], deterministic=not train,
                             rngs={"dropout": rng} if train else {})
        loss = objectives.lm_loss(logits, batch["targets"], batch.get("weights"))
        return loss, ({"perplexity": jnp.exp(loss)}, state)
    return loss_fn


def lm_data(config, tokenizer):
    """Train iterator (this process's shard) and a factory of one pass over the val split."""
    seq_len, batch = config.data.seq_len, config.train.batch_size
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_tokens = text.token_stream(config.data, "train", tokenizer)
    val_tokens = text.token_stream(config.data, "val", tokenizer)
    train_data = text.PackedWindows(train_tokens, seq_len, batch, seed=config.seed, **kw)
    eval_data = lambda: text.PackedWindows(val_tokens, seq_len, batch, seed=0,  # noqa: E731
                                           shuffle=False, **kw)
    return train_data, eval_data


def check_fit(cfg: gpt.GPTConfig, config, tokenizer=None) -> None:
    if config.data.seq_len < 1:
        raise ValueError(f"data.seq_len is {config.data.seq_len}; a window needs at least one "
                         "token")
    if config.data.seq_len > cfg.n_ctx:
        raise ValueError(f"data.seq_len {config.data.seq_len} is longer than the model's "
                         f"context model.n_ctx {cfg.n_ctx}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size "
                         f"is {cfg.vocab_size}")


def main(config, workdir):
    cfg = model_config(config)
    check_fit(cfg, config)                  # cheap checks before any data work
    tokenizer = text.get_tokenizer(config.data)
    check_fit(cfg, config, tokenizer)
    train_data, eval_data = lm_data(config, tokenizer)
    model = gpt.GPT(cfg)
    seq_len = config.data.seq_len
    state = fit(
        config, workdir=workdir, train_data=train_data, eval_data=eval_data,
        init_fn=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32)),
        loss_fn=lm_loss_fn(model), d_model=cfg.d_model,
        throughput=Throughput(seq_len, gpt.flops_per_token(cfg, seq_len) * seq_len))
    if config.sample.num_tokens > 0:
        # Every process takes part in gathering parameters that span processes.
        params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0 and config.sample.num_tokens > 0:
        prompt = tokenizer.encode(config.sample.prompt)
        out = gpt.generate(dataclasses.replace(cfg, dtype="float32"), params, prompt,
                           config.sample.num_tokens, jax.random.key(config.seed),
                           config.sample.temperature, config.sample.top_k)
        print("\n--- sample ---\n" + config.sample.prompt + tokenizer.decode(out))


if __name__ == "__main__":
    launch.run(main, "gpt.py:tiny")
