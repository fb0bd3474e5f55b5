"""The GPU path: cuDNN's fused attention against XLA's, and a bfloat16 GPT step that uses it.

These run only where JAX sees a GPU (`JAX_PLATFORMS=cuda python -m pytest tests/test_gpu.py`);
the CPU suite checks that the same settings fall back to XLA (test_precision.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from experiments.pretrain_lm import lm_loss_fn
from models import attention, gpt

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def test_auto_picks_cudnn_for_half_precision_only():
    assert attention.resolve_implementation("auto", jnp.bfloat16, 64) == "cudnn"
    assert attention.resolve_implementation("auto", jnp.float16, 128) == "cudnn"
    assert attention.resolve_implementation("auto", jnp.float32, 64) == "xla"
    assert attention.resolve_implementation("auto", jnp.bfloat16, 12) == "xla"


@pytest.mark.parametrize("kind,window,padded", [("causal", None, False), ("local", 32, False),
                                                ("full", None, True), ("causal", None, True)])
def test_cudnn_attention_matches_xla(kind, window, padded):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 128, 4, 64)), jnp.bfloat16) for _ in range(3))
    pad = jnp.asarray(np.arange(128)[None, :] < np.array([[128], [77]])) if padded else None

    def loss(implementation):
        def f(q, k, v):
            out = attention.attend(q, k, v, kind=kind, window=window, pad_mask=pad,
                                   implementation=implementation)
            keep = 1.0 if pad is None else pad[:, :, None, None]   # padded queries are junk
            return jnp.sum(jnp.sin(out.astype(jnp.float32)) * keep), out
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

    ((want, want_out), want_grads), ((got, got_out), got_grads) = loss("xla"), loss("cudnn")
    keep = np.ones((2, 128), bool) if pad is None else np.asarray(pad)
    np.testing.assert_allclose(np.asarray(got_out, np.float32)[keep],
                               np.asarray(want_out, np.float32)[keep], atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(got, want, rtol=1e-2)
    for a, b in zip(got_grads, want_grads):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max() + 1e-3


def test_bfloat16_gpt_step_on_cudnn_matches_xla():
    cfg = gpt.GPTConfig(vocab_size=512, n_ctx=128, n_layer=2, n_head=4, d_model=256,
                        dropout=0.0, attn_dropout=0.0, dtype="bfloat16", attention_impl="auto")
    tokens = np.random.default_rng(0).integers(0, 512, (4, 129)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    params = nn.meta.unbox(gpt.GPT(cfg).init(jax.random.key(0), batch["inputs"]))["params"]

    def run(impl):
        loss_fn = lm_loss_fn(gpt.GPT(dataclasses.replace(cfg, attention_impl=impl)))
        grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        (loss, _), grads = grad(params, {}, batch, jax.random.key(1))
        hlo = jax.jit(loss_fn).lower(params, {}, batch, None).as_text()
        return float(loss), grads, hlo

    loss, grads, hlo = run("auto")
    want, want_grads, xla_hlo = run("xla")
    assert "__cudnn$fmha" in hlo and "__cudnn$fmha" not in xla_hlo
    assert abs(loss - want) <= 1e-2 * abs(want)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 5e-2 * np.abs(b).max() + 1e-6
