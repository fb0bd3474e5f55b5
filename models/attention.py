"""Multi-head scaled dot-product attention (Vaswani et al. 2017, section 3.2).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V
    MultiHead(x) = Concat(head_1, ..., head_h) W^O,  head_i = Attention(x W_i^Q, x W_i^K, x W_i^V)

Masks: "full" (encoder / vision), "causal" (decoders), "local" (causal and banded to the last
`window` positions: GPT-3's locally banded sparse layers), plus an optional padding mask.
The softmax runs through `jax.nn.dot_product_attention`, which picks cuDNN's fused kernel on a
GPU when asked and XLA elsewhere; attention-probability dropout needs the probabilities, so
that case (training only) is written out by hand. implementation="xla_custom" is attention for
CPUs: the same softmax in head-major layout with a hand-derived backward
(`models/kernels.py`).

Decoding (decode=True) keeps the keys and values of the positions seen so far in a `cache`
collection, as Flax's own examples do: cached_key and cached_value [batch, max_len, heads,
head_dim] and cache_index (the next free slot). `model.init` on a [batch, max_len] input sizes
the cache; each later call writes its positions (one, or a prompt's worth at once: a prefill)
at cache_index and attends over the whole cache, masked to the slots written so far, the causal
or banded window, and the pad_mask over cache slots [batch, max_len] (prompt padding).
"""

import math
import warnings
from typing import Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from models.kernels import headmajor_attention, query_blocks, token_matmul

Mask = Literal["full", "causal", "local"]
Implementation = Literal["auto", "xla", "cudnn", "xla_custom"]

DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


def cudnn_supports(dtype, head_dim: int) -> bool:
    """cuDNN's fused attention: an NVIDIA GPU, half precision, head_dim a multiple of 8 <= 128."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return jax.default_backend() == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128


def resolve_implementation(implementation: str, dtype, head_dim: int = 64) -> str:
    """'auto': cuDNN's fused kernel where it can run, XLA elsewhere. An explicit 'cudnn' that
    cannot run here (a CPU, float32, an odd head size) falls back to XLA with a warning, so a
    GPU config still runs on a laptop."""
    if implementation not in ("auto", "xla", "cudnn", "xla_custom"):
        raise ValueError(f"unknown attention implementation {implementation!r}; "
                         "choose auto, xla, cudnn or xla_custom")
    if implementation in ("xla", "xla_custom"):
        return implementation
    if cudnn_supports(dtype, head_dim):
        return "cudnn"
    if implementation == "cudnn":
        warnings.warn(f"cuDNN attention cannot run on {jax.default_backend()} with "
                      f"{jnp.dtype(dtype).name} and head_dim {head_dim}; using XLA's")
    return "xla"


def constrain(x, *names):
    """Shard activation x over the mesh by logical axis names for its last len(names) dims.
    A no-op unless the trainer's logical axis rules and a mesh are active."""
    return nn.with_logical_constraint(x, (None,) * (x.ndim - len(names)) + names)


def mask_matrix(kind: Mask, q_len: int, kv_len: int, window: int | None = None,
                offset=0) -> jax.Array:
    """Boolean [q_len, kv_len]: True where a query may attend to a key. The queries sit at
    positions offset, offset + 1, ... (offset > 0: a decoding step against a cache)."""
    q = offset + jnp.arange(q_len)[:, None]
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
    implementation = resolve_implementation(implementation, q.dtype, q.shape[-1])
    if implementation == "xla_custom":
        allowed = mask_matrix(kind, q.shape[1], k.shape[1], window)[None, None]
        if pad_mask is not None:
            allowed = allowed & pad_mask[:, None, None, :]
        heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [b, t, h, d] <-> [b, h, t, d]
        out = headmajor_attention(heads_first(q), heads_first(k), heads_first(v), allowed,
                                  query_blocks(kind, q.shape[1], k.shape[1], window))
        return heads_first(out)
    mask = None if pad_mask is None else pad_mask[:, None, None, :]
    if mask is not None and implementation == "cudnn":   # cuDNN takes [B, 1, T, S], no broadcast
        mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
    local = (window - 1, 0) if kind == "local" else None
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=kind != "full", local_window_size=local,
        implementation=implementation)


def softmax_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d_k)) v over the keys `allowed` [batch | 1, heads | 1, q, k],
    written out: the decoding step's attention, a few queries against the whole cache."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def cached_attention(module: nn.Module, q, k, v, *, kind: Mask, window=None, pad_mask=None):
    """One decoding call of a self-attention `module`: write k, v at cache_index, attend from q
    over every slot written so far. Returns None while `model.init` creates the cache (sized
    by the init input), so that the caller runs its ordinary attention instead."""
    ready = module.has_variable("cache", "cached_key")
    key = module.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    value = module.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = module.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not ready:
        return None
    i, length = index.value, q.shape[1]
    key.value = jax.lax.dynamic_update_slice(key.value, k.astype(key.value.dtype), (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v.astype(value.value.dtype),
                                               (0, i, 0, 0))
    index.value = i + length
    slots = key.value.shape[1]
    allowed = mask_matrix(kind, length, slots, window, offset=i)
    allowed &= jnp.arange(slots)[None, :] < i + length   # "full": no slot not yet written
    allowed = allowed[None, None]
    if pad_mask is not None:
        allowed = allowed & pad_mask[:, None, None, :]
    return softmax_attention(q, key.value, value.value, allowed)


class Projection(nn.Module):
    """y = x W + b, contracting x's last `n_in` axes with W [*in, *features]: nn.Dense /
    nn.DenseGeneral's parameters and values, computed by `token_matmul`.

    W carries logical axis names and is initialised as the flat [fan_in, fan_out] matrix (as
    nn.DenseGeneral does, so the values match), without DenseGeneral's flattening of the boxed
    kernel, which breaks the sharding constraint of a rank > 2 kernel under axis rules."""

    features: tuple[int, ...]
    n_in: int
    kernel_axes: tuple
    bias_axes: tuple
    kernel_init: nn.initializers.Initializer = DEFAULT_INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.n_in:]
        flat = (math.prod(in_shape), math.prod(self.features))
        init = lambda rng, shape, dtype: self.kernel_init(rng, flat, dtype).reshape(shape)  # noqa
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.kernel_axes),
                            in_shape + tuple(self.features), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                               self.bias_axes),
                          tuple(self.features), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return token_matmul(x, kernel, self.n_in) + bias


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused Q/K/V projection, kernel [d, heads, 3, head_dim]: heads
    lead, so tensor parallelism splits heads and the kernel flattens to one 2-D matmul.

    decode=True: autoregressive decoding against the `cache` collection (`cached_attention`);
    pad_mask then covers the cache's slots, [batch, max_len]."""

    num_heads: int
    head_dim: int
    mask: Mask = "causal"
    window: int | None = None  # for mask="local"
    dropout_rate: float = 0.0
    implementation: Implementation = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT
    decode: bool = False

    @nn.compact
    def __call__(self, x, pad_mask=None, deterministic: bool = True):
        d_model = x.shape[-1]
        qkv = Projection((self.num_heads, 3, self.head_dim), 1, ("embed", "heads", None, "kv"),
                         ("heads", None, "kv"), dtype=self.dtype,
                         param_dtype=self.param_dtype, name="qkv")(x)
        qkv = constrain(qkv, "batch", "length", "heads", None, "kv")
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        out = None
        if self.decode:
            out = cached_attention(self, q, k, v, kind=self.mask, window=self.window,
                                   pad_mask=pad_mask)
        if out is None:
            use_dropout = self.dropout_rate > 0.0 and not deterministic
            out = attend(q, k, v, kind=self.mask, window=self.window, pad_mask=pad_mask,
                         implementation=self.implementation,
                         dropout_rate=self.dropout_rate if use_dropout else 0.0,
                         dropout_rng=self.make_rng("dropout") if use_dropout else None)
        out = constrain(out, "batch", "length", "heads", "kv")
        return Projection((d_model,), 2, ("heads", "kv", "embed"), ("embed",),
                          kernel_init=self.out_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="out")(out)


class CrossAttention(nn.Module):
    """Encoder-decoder attention (section 3.2.3): queries from the decoder, keys and values from
    the encoder's output `memory`, one query projection [d, heads, head_dim] and one fused
    key/value projection [d, heads, 2, head_dim]; memory_mask [batch, src_len] hides padding.

    decode=True: the call that passes `memory` (the prefill) projects its keys and values once
    and keeps them in the `cache` collection (cached_key, cached_value, cached_mask); later calls
    pass memory=None and attend to those."""

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    implementation: Implementation = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT
    decode: bool = False

    @nn.compact
    def __call__(self, x, memory, memory_mask=None, deterministic: bool = True):
        d_model = x.shape[-1]
        q = Projection((self.num_heads, self.head_dim), 1, ("embed", "heads", "kv"),
                       ("heads", "kv"), dtype=self.dtype, param_dtype=self.param_dtype,
                       name="q")(x)
        if memory is not None:
            kv = Projection((self.num_heads, 2, self.head_dim), 1,
                            ("embed", "heads", None, "kv"), ("heads", None, "kv"),
                            dtype=self.dtype, param_dtype=self.param_dtype, name="kv")(memory)
            kv = constrain(kv, "batch", "length", "heads", None, "kv")
            k, v = kv[..., 0, :], kv[..., 1, :]
        if self.decode:
            k, v, memory_mask = self.memory_cache(*((k, v, memory_mask) if memory is not None
                                                    else (None, None, None)))
        elif memory is None:
            raise ValueError("cross-attention needs the encoder output (memory)")
        use_dropout = self.dropout_rate > 0.0 and not deterministic
        out = attend(q, k, v, kind="full", pad_mask=memory_mask,
                     implementation=self.implementation,
                     dropout_rate=self.dropout_rate if use_dropout else 0.0,
                     dropout_rng=self.make_rng("dropout") if use_dropout else None)
        out = constrain(out, "batch", "length", "heads", "kv")
        return Projection((d_model,), 2, ("heads", "kv", "embed"), ("embed",),
                          kernel_init=self.out_init, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="out")(out)

    def memory_cache(self, k, v, mask):
        """Store the memory's keys, values and mask (k given) or read them back (k None)."""
        if k is None:
            if not self.has_variable("cache", "cached_key"):
                raise ValueError("a decoding step with memory=None needs a cache that a call "
                                 "with the encoder output (the prefill) has filled")
            cache = self.variables["cache"]
            return cache["cached_key"], cache["cached_value"], cache["cached_mask"]
        mask = jnp.ones(k.shape[:2], bool) if mask is None else mask
        for name, x in (("cached_key", k), ("cached_value", v), ("cached_mask", mask)):
            self.variable("cache", name, jnp.zeros, x.shape, x.dtype).value = x
        return k, v, mask
