"""Precision and memory options of the GPT: float32 parameters with bfloat16 or float32 compute,
rematerialisation policies, and the attention implementation (cuDNN falls back to XLA off GPU)."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from experiments.pretrain_lm import lm_loss_fn
from models import attention, gpt, kernels
from train import objectives

CFG = gpt.GPTConfig(vocab_size=128, n_ctx=16, n_layer=2, n_head=2, d_model=32, dropout=0.0,
                    attn_dropout=0.0, attention_impl="xla")
TOKENS = np.random.default_rng(0).integers(0, 128, (4, 17)).astype(np.int32)
BATCH = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}


def init(cfg):
    return nn.meta.unbox(gpt.GPT(cfg).init(jax.random.key(0), BATCH["inputs"]))["params"]


def loss_and_grads(cfg, params):
    loss_fn = lm_loss_fn(gpt.GPT(cfg))
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {}, BATCH, jax.random.key(1))
    return loss, grads


def test_bfloat16_compute_keeps_float32_parameters():
    cfg16 = dataclasses.replace(CFG, dtype="bfloat16")
    params = init(cfg16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits = gpt.GPT(cfg16).apply({"params": params}, BATCH["inputs"])
    assert logits.dtype == jnp.bfloat16
    loss16, grads16 = loss_and_grads(cfg16, params)
    loss32, grads32 = loss_and_grads(CFG, params)
    assert loss16.dtype == jnp.float32                       # the softmax is taken in float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    cos = [float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30))
           for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32))
           if float(jnp.linalg.norm(b)) > 1e-6]
    assert min(cos) > 0.98


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_gradients(policy):
    cfg = dataclasses.replace(CFG, remat=policy)
    params = init(CFG)
    loss, grads = loss_and_grads(cfg, params)
    want_loss, want_grads = loss_and_grads(CFG, params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    jaxpr = str(jax.make_jaxpr(lambda p: loss_and_grads(cfg, p))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_unknown_remat_policy_is_an_error():
    with pytest.raises(ValueError, match="remat"):
        init(dataclasses.replace(CFG, remat="sometimes"))


def test_attention_implementation_resolution_on_cpu():
    assert jax.default_backend() == "cpu"
    assert attention.resolve_implementation("auto", jnp.bfloat16, 64) == "xla"
    assert attention.resolve_implementation("xla", jnp.float32, 64) == "xla"
    assert attention.resolve_implementation("xla_custom", jnp.float32, 64) == "xla_custom"
    with pytest.warns(UserWarning, match="cuDNN attention cannot run"):
        assert attention.resolve_implementation("cudnn", jnp.bfloat16, 64) == "xla"
    with pytest.raises(ValueError, match="unknown attention implementation"):
        attention.resolve_implementation("flash", jnp.float32, 64)


@pytest.mark.parametrize("kind,window,padded", [("causal", None, False), ("local", 4, False),
                                                ("full", None, True), ("causal", None, True)])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_headmajor_attention_matches_xla(kind, window, padded, dtype, tol):
    """implementation="xla_custom" (hand-derived backward) against jax.nn.dot_product_attention."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 3, 8)), dtype) for _ in range(3))
    pad = jnp.asarray(np.arange(16)[None, :] < np.array([[16], [11]])) if padded else None

    def loss(implementation):
        def f(q, k, v):
            out = attention.attend(q, k, v, kind=kind, window=window, pad_mask=pad,
                                   implementation=implementation)
            return jnp.sum(jnp.sin(out.astype(jnp.float32)))
        return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

    (want, want_grads), (got, got_grads) = loss("xla"), loss("xla_custom")
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=tol, rtol=tol)


def test_query_blocks_cover_exactly_the_allowed_keys():
    """Every allowed (query, key) pair lies in its query block's key range, and the blocks skip
    the keys no query of theirs may see."""
    assert kernels.query_blocks("causal", 8, 8, n=4) == (
        (0, 2, 0, 2), (2, 4, 0, 4), (4, 6, 0, 6), (6, 8, 0, 8))
    assert kernels.query_blocks("local", 8, 8, window=3, n=4) == (
        (0, 2, 0, 2), (2, 4, 0, 4), (4, 6, 2, 6), (6, 8, 4, 8))
    assert kernels.query_blocks("full", 8, 8) == ((0, 8, 0, 8),)
    assert kernels.query_blocks("causal", 6, 6, n=4) == ((0, 6, 0, 6),)   # does not divide
    for kind, window in [("causal", None), ("local", 3)]:
        allowed = np.asarray(attention.mask_matrix(kind, 8, 8, window))
        covered = np.zeros_like(allowed)
        for q0, q1, k0, k1 in kernels.query_blocks(kind, 8, 8, window, n=4):
            covered[q0:q1, k0:k1] = True
        assert not (allowed & ~covered).any()


def test_gpu_config_falls_back_cleanly_on_cpu():
    """The GPU settings (bfloat16, cuDNN attention, remat) train on a CPU with XLA attention."""
    gpu = dataclasses.replace(CFG, dtype="bfloat16", attention_impl="cudnn", remat="dots")
    params = init(CFG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss, grads = loss_and_grads(gpu, params)
    want, _ = loss_and_grads(dataclasses.replace(gpu, attention_impl="xla"), params)
    assert np.isfinite(float(loss)) and float(loss) == float(want)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_cross_entropy_matches_optax_and_keeps_no_float32_logits():
    """softmax_nll has optax's value and gradient, returns the gradient in the logits' dtype,
    and keeps only the logits themselves (not a float32 copy) for the backward."""
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, 37, (3, 8)))
    mask = jnp.asarray(rng.random((3, 8)) > 0.3)

    def reference(logits):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return (nll * mask).sum() / mask.sum()

    ours = lambda logits: objectives.cross_entropy(logits, labels, mask)  # noqa: E731
    logits = jnp.asarray(rng.normal(size=(3, 8, 37)) * 3, jnp.float32)
    (got, got_grad), (want, want_grad) = (jax.value_and_grad(f)(logits) for f in (ours, reference))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got_grad, want_grad, atol=1e-7)

    half = logits.astype(jnp.bfloat16)
    grad = jax.grad(ours)(half)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grad, np.float32),
                               np.asarray(jax.grad(reference)(half), np.float32), atol=1e-3)
    kept = lambda f: [x for x in jax.tree.leaves(jax.vjp(f, half)[1])  # noqa: E731
                      if x.shape == half.shape and x.dtype == jnp.float32]
    assert kept(reference) and not kept(ours)
