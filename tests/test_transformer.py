"""The encoder-decoder Transformer: Table 3's sizes, padding and causality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import transformer
from models.layers import sinusoidal_positions

def test_table_3_parameter_counts():
    """base 65M, big 213M (Table 3) with a shared vocabulary of 37,000 BPE tokens; base comes
    to 63.1M here: the paper's count is rounded from an unstated vocabulary size."""
    base = transformer.count_params(transformer.preset("base"))
    big = transformer.count_params(transformer.preset("big"))
    assert abs(base - 65e6) / 65e6 < 0.05 and base == 63_082_496
    assert abs(big - 213e6) / 213e6 < 0.01


def test_sinusoid_layouts():
    interleaved, halves = sinusoidal_positions(9, 6), sinusoidal_positions(9, 6, "halves")
    np.testing.assert_array_equal(halves[:, :3], interleaved[:, 0::2])    # the sines
    np.testing.assert_array_equal(halves[:, 3:], interleaved[:, 1::2])    # the cosines
    assert np.isclose(halves[5, 4], np.cos(5 / 10000 ** (2 / 6)))


def test_source_padding_and_future_targets_are_hidden():
    cfg = transformer.preset("tiny", dropout=0.0, pad_id=0)
    src = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    tgt = jnp.array([[1, 3, 4, 5], [1, 6, 7, 8]])
    model = transformer.Transformer(cfg)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), src, tgt))["params"]
    apply = jax.jit(lambda src, tgt: model.apply({"params": params}, src, tgt))
    logits = apply(src, tgt)
    assert logits.shape == (2, 4, cfg.vocab_size)
    more_padding = jnp.pad(src, ((0, 0), (0, 3)))
    np.testing.assert_allclose(apply(more_padding, tgt)[0], logits[0], atol=1e-5)
    changed_future = apply(src, tgt.at[:, 2:].set(9))
    np.testing.assert_allclose(changed_future[:, :2], logits[:, :2], atol=1e-6)
    halves = jax.jit(lambda src, tgt: model.apply(
        {"params": params}, model.apply({"params": params}, src, method="encode"), src != 0, tgt,
        method="decode"))
    np.testing.assert_allclose(halves(src, tgt), logits, atol=1e-6)
