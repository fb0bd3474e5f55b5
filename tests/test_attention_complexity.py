"""Table 1 measured (experiments/attention_complexity.py): the exponent fit, XLA's FLOP counts
growing as the paper's complexities, sequential operations and path lengths, on tiny shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import attention_complexity as cx
from models.attention import softmax_attention


def test_fit_recovers_exponents_of_synthetic_costs():
    n, d = np.meshgrid([64, 128, 256, 512], [16, 32, 64])
    a, b, c = cx.fit_exponents(n.ravel(), d.ravel(), 3.0 * n.ravel() ** 2 * d.ravel())
    assert (a, b, c) == pytest.approx((2.0, 1.0, math.log(3.0)))
    noisy = 5.0 * n * d ** 2 * np.exp(np.random.default_rng(0).normal(0, 0.01, n.shape))
    assert cx.fit_exponents(n.ravel(), d.ravel(), noisy.ravel())[:2] == pytest.approx(
        (1.0, 2.0), abs=0.05)
    with pytest.raises(ValueError, match="two values of n and two of d"):
        cx.fit_exponents([64, 128], [16, 16], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        cx.fit_exponents([64, 128, 64], [16, 16, 32], [1.0, 0.0, 2.0])


def flops(name, n, d, k=3, r=9):
    model = cx.build(name, k, r, heads=1)
    x = jnp.ones((1, n, d))
    params = model.init(jax.random.key(0), x)
    forward = cx.compiled(lambda p, x: model.apply(p, x), params, x)
    return cx.layer_flops(name, forward, params, x)


@pytest.mark.parametrize("name,expected,tolerance", [
    ("self-attention", (2, 1), (0.05, 0.15)),   # softmax adds n^2 per head, independent of d
    ("recurrent", (1, 2), (0.02, 0.2)),         # the GRU's biases and gates add n d
    ("convolutional", (1, 2), (0.05, 0.05)),
    ("restricted", (1, 1), (0.02, 0.2)),
])
def test_flops_grow_as_table_1(name, expected, tolerance):
    grid = [(n, d) for n in (32, 128) for d in (8, 16)]
    costs = [flops(name, n, d) for n, d in grid]
    a, b, _ = cx.fit_exponents([n for n, _ in grid], [d for _, d in grid], costs)
    assert abs(a - expected[0]) < tolerance[0] and abs(b - expected[1]) < tolerance[1], (a, b)


def test_recurrent_flops_count_every_step_and_convolution_scales_with_k():
    # XLA counts a loop body once; the layer's count must still double with n.
    assert flops("recurrent", 64, 8) / flops("recurrent", 32, 8) == pytest.approx(2, rel=0.02)
    assert flops("convolutional", 128, 8, k=9) / flops("convolutional", 128, 8, k=3) == \
        pytest.approx(3, rel=0.05)
    assert flops("restricted", 64, 16, r=17) / flops("restricted", 64, 16, r=9) == \
        pytest.approx(2, rel=0.1)


def test_sequential_operations():
    x = jnp.ones((1, 24, 8))
    for name, expected in [("self-attention", 1), ("recurrent", 24), ("convolutional", 1),
                           ("restricted", 1)]:
        model = cx.build(name, 3, 5, heads=1)
        params = model.init(jax.random.key(0), x)
        assert cx.sequential_ops(lambda p, x: model.apply(p, x), params, x) == expected, name


@pytest.mark.parametrize("name,k,r,expected", [
    ("self-attention", 3, 5, 1),
    ("recurrent", 3, 5, 15),          # n - 1 transitions from position 0 to position n - 1
    ("convolutional", 3, 5, 15),      # a centred kernel reaches (k - 1) / 2 further per layer
    ("convolutional", 5, 5, 8),
    ("restricted", 3, 5, 8),          # ceil((n - 1) / ((r - 1) / 2))
    ("restricted", 3, 17, 2),
])
def test_maximum_path_length(name, k, r, expected):
    assert cx.max_path_length(name, 16, 4, k, r, heads=1) == expected


def test_recurrent_hops_iterated_are_the_gru():
    """The path measurement's hop, applied n - 1 times after the start, is the scanned GRU."""
    model = cx.build("recurrent", 3, 5, heads=1)
    x = jax.random.normal(jax.random.key(1), (1, 7, 4))
    params = model.init(jax.random.key(0), x)
    hop = cx.hop_of("recurrent", model, params)
    h = hop.start(x)
    for _ in range(6):
        h = hop.step(h, x)
    np.testing.assert_allclose(h, model.apply(params, x), atol=1e-6)
    lengths = cx.path_lengths(hop, x)
    assert lengths[6, 0] == 6 and lengths[0, 6] == -1      # causal: never backwards


def test_restricted_attention_is_banded_dense_attention():
    n, r, heads = 12, 5, 2
    x = jax.random.normal(jax.random.key(0), (2, n, 8))
    out = cx.RestrictedSelfAttention(r, heads).apply({}, x)
    h = x.reshape(2, n, heads, 4)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    dense = softmax_attention(h, h, h, jnp.asarray(abs(i - j) <= (r - 1) // 2)[None, None])
    np.testing.assert_allclose(out, dense.reshape(x.shape), atol=1e-5)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="odd r and n a multiple of r - 1"):
        cx.RestrictedSelfAttention(5).apply({}, jnp.ones((1, 10, 4)))
    with pytest.raises(ValueError, match="must be odd"):
        cx.build("convolutional", 4, 5, 1)
    with pytest.raises(ValueError, match="unknown layer type 'lstm'"):
        cx.build("lstm", 3, 5, 1)
