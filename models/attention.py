"""Multi-head scaled dot-product attention (Vaswani et al. 2017, section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
    MultiHead(x) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(x W_i^Q, x W_i^K, x W_i^V)

Masks: "full" (encoder / vision), "causal" (decoders), "local" (causal and banded to the last
`window` positions: GPT-3's locally banded sparse layers), plus an optional padding mask.
The softmax runs through `jax.nn.dot_product_attention`, which picks cuDNN's fused kernel on a
GPU when asked and XLA elsewhere; attention-probability dropout needs the probabilities, so
that case (training only) is written out by hand.
"""

from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

Mask = Literal["full", "causal", "local"]
Implementation = Literal["auto", "xla", "cudnn"]

DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


def resolve_implementation(implementation: str, dtype) -> str | None:
    """'auto' asks for cuDNN's fused kernel when it can run (GPU, half precision), XLA elsewhere."""
    if implementation == "auto":
        on_gpu = jax.default_backend() == "gpu"
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if on_gpu and half else "xla"
    return implementation


def mask_matrix(kind: Mask, q_len: int, kv_len: int, window: int | None = None) -> jax.Array:
    """Boolean [q_len, kv_len]: True where a query may attend to a key."""
    q = jnp.arange(q_len)[:, None]
    k = jnp.arange(kv_len)[None, :]
    if kind == "full":
        return jnp.ones((q_len, kv_len), bool)
    allowed = k <= q
    if kind == "local":
        allowed &= k > q - window
    return allowed


def attend(q, k, v, *, kind: Mask, window=None, pad_mask=None, implementation="xla",
           dropout_rate=0.0, dropout_rng=None):
    """softmax(q k^T / sqrt(d_k) + mask) v for q, k, v: [batch, time, heads, head_dim]."""
    if dropout_rate > 0.0 and dropout_rng is not None:
        scale = q.shape[-1] ** -0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
        allowed = mask_matrix(kind, q.shape[1], k.shape[1], window)[None, None]
        if pad_mask is not None:
            allowed = allowed & pad_mask[:, None, None, :]
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    mask = None if pad_mask is None else pad_mask[:, None, None, :]
    local = (window - 1, 0) if kind == "local" else None
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=kind != "full", local_window_size=local,
        implementation=resolve_implementation(implementation, q.dtype))


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused Q/K/V projection (so tensor parallelism splits heads)."""

    num_heads: int
    head_dim: int
    mask: Mask = "causal"
    window: int | None = None  # for mask="local"
    dropout_rate: float = 0.0
    implementation: Implementation = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x, pad_mask=None, deterministic: bool = True):
        d_model = x.shape[-1]
        qkv = nn.DenseGeneral(
            (3, self.num_heads, self.head_dim), dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(DEFAULT_INIT, ("embed", None, "heads", "kv")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads", "kv")),
            name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        use_dropout = self.dropout_rate > 0.0 and not deterministic
        out = attend(q, k, v, kind=self.mask, window=self.window, pad_mask=pad_mask,
                     implementation=self.implementation,
                     dropout_rate=self.dropout_rate if use_dropout else 0.0,
                     dropout_rng=self.make_rng("dropout") if use_dropout else None)
        return nn.DenseGeneral(
            d_model, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(self.out_init, ("heads", "kv", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="out")(out)
