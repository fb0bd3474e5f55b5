"""Decoding with a key/value cache: the cached attention against the full one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import attention


def zeros_cache(model, *args, **kwargs):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@pytest.mark.parametrize("mask,window", [("causal", None), ("local", 3)])
def test_cached_attention_matches_full_attention(mask, window):
    """A prefill of 4 positions then one position per call, with left padding in one row,
    gives the outputs of one full pass."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 20))
    pad = jnp.arange(9)[None, :] >= jnp.array([[0], [2]])
    full_model = attention.MultiHeadAttention(4, 5, mask=mask, window=window)
    params = nn.meta.unbox(full_model.init(jax.random.key(1), x))["params"]
    want = full_model.apply({"params": params}, x, pad)
    model = attention.MultiHeadAttention(4, 5, mask=mask, window=window, decode=True)
    cache = zeros_cache(model, x, pad)
    assert cache["cached_key"].shape == (2, 9, 4, 5)
    outs = []
    for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, 9)]:
        out, v = model.apply({"params": params, "cache": cache}, x[:, start:stop], pad,
                             mutable=["cache"])
        cache = v["cache"]
        outs.append(out)
    assert int(cache["cache_index"]) == 9
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, 2:], want[1, 2:], atol=1e-5)   # real positions only


def test_cross_attention_cache_keeps_the_memory():
    """The prefill projects the memory once; later steps (memory=None) attend to the cached
    keys, values and mask, as a full pass does."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    memory = jax.random.normal(jax.random.key(1), (2, 7, 12))
    memory_mask = jnp.arange(7)[None, :] < jnp.array([[7], [4]])
    full_model = attention.CrossAttention(3, 4)
    params = nn.meta.unbox(full_model.init(jax.random.key(2), x, memory, memory_mask))["params"]
    assert params["kv"]["kernel"].shape == (12, 3, 2, 4)
    want = full_model.apply({"params": params}, x, memory, memory_mask)
    model = attention.CrossAttention(3, 4, decode=True)
    cache = zeros_cache(model, x, memory, memory_mask)
    out, v = model.apply({"params": params, "cache": cache}, x[:, :1], memory, memory_mask,
                         mutable=["cache"])
    outs = [out]
    for t in range(1, 5):
        out, _ = model.apply({"params": params, "cache": v["cache"]}, x[:, t:t + 1], None,
                             mutable=["cache"])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)
    with pytest.raises(ValueError, match="prefill"):
        model.apply({"params": params}, x[:, :1], None, mutable=["cache"])
