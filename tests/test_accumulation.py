"""Gradient accumulation: grad_accum microbatches make the same update as one large batch."""

import jax
import jax.numpy as jnp
import numpy as np

from data.text import PackedWindows
from experiments.configs import gpt as gpt_configs
from experiments.pretrain_lm import lm_loss_fn
from models import gpt
from train.logging import read_metrics
from train.trainer import fit

MODEL = dict(vocab_size=128, n_ctx=16, n_layer=2, n_head=2, d_model=32, dropout=0.0,
             attn_dropout=0.0)


def train(workdir, grad_accum):
    config = gpt_configs.get_config("tiny")
    config.model.update(MODEL)
    config.train.update(steps=3, batch_size=16, grad_accum=grad_accum, lr=1e-2, warmup_steps=1,
                        log_every=1, eval_every=1000, ckpt_every=1000)
    model = gpt.GPT(gpt.GPTConfig(**config.model.to_dict()))
    phrase = np.random.default_rng(0).integers(0, MODEL["vocab_size"], 37)
    data = PackedWindows(np.tile(phrase, 40).astype(np.int32), MODEL["n_ctx"], 16, seed=0)
    state = fit(config, init_fn=lambda rng: model.init(rng, jnp.zeros((1, 16), jnp.int32)),
                loss_fn=lm_loss_fn(model), train_data=data, workdir=workdir)
    rows = [r for r in read_metrics(workdir) if r["split"] == "train"]
    return state, rows


def test_microbatches_equal_the_large_batch(tmp_path):
    big, big_rows = train(tmp_path / "big", 1)
    acc, acc_rows = train(tmp_path / "acc", 4)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in acc_rows], [r[key] for r in big_rows],
                                   rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(big.params)):
        # (atol: Adam turns rounding in gradients near 0 into updates of up to ~1e-6)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(acc.step) == 3
