"""Building blocks shared by the Transformer family: FFN, embeddings, the residual block."""

import math
from typing import Callable, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models.attention import (DEFAULT_INIT, CrossAttention, Implementation, Mask,
                              MultiHeadAttention, Projection, constrain)
from models.kernels import token_matmul


def quick_gelu(x):
    """x * sigmoid(1.702 x): the GELU approximation of the released CLIP models."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,                                     # Transformer (Vaswani)
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),     # GPT-1 (erf form)
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), # GPT-2/3 (tanh form)
    "quick_gelu": quick_gelu,                                # CLIP
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


DTYPES = ("float32", "bfloat16", "float16")


def check_config(cfg) -> None:
    """Unknown names in a model config (dtype, param_dtype, attention_impl, act, norm) fail when
    the config is built, naming the field, rather than inside tracing."""
    choices = {"dtype": DTYPES, "param_dtype": DTYPES, "attention_impl": get_args(Implementation),
               "act": tuple(ACTIVATIONS), "norm": ("pre", "post")}
    for field, allowed in choices.items():
        if hasattr(cfg, field) and getattr(cfg, field) not in allowed:
            raise ValueError(f"{type(cfg).__name__}.{field} is {getattr(cfg, field)!r}; "
                             f"choose from {', '.join(allowed)}")


def param_count(tree) -> int:
    """Number of values in a tree of parameters (or of their shapes)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def training_flops_per_token(n_params: int, n_layer: int, d_attn: int, context: int) -> float:
    """6 N + 12 L d_attn T (Kaplan et al. 2020, PaLM appendix B): forward and backward through
    N matmul parameters, plus the attention scores and weighted sum over a context of T
    (causal masking not discounted)."""
    return 6.0 * n_params + 12.0 * n_layer * d_attn * context


def layer_norm(name: str, eps: float, dtype, param_dtype) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class FFN(nn.Module):
    """Position-wise feed-forward network: FFN(x) = act(x W1 + b1) W2 + b2."""

    d_ff: int
    act: str = "relu"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    out_init: nn.initializers.Initializer = DEFAULT_INIT

    @nn.compact
    def __call__(self, x):
        d_model = x.shape[-1]
        h = Projection((self.d_ff,), 1, ("embed", "mlp"), ("mlp",), dtype=self.dtype,
                       param_dtype=self.param_dtype, name="fc")(x)
        h = constrain(activation(self.act)(h), "batch", "length", "mlp")
        return Projection((d_model,), 1, ("mlp", "embed"), ("embed",), kernel_init=self.out_init,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(h)


class TokenEmbedding(nn.Module):
    """Token embedding matrix W_e, also used (transposed) as the output projection when tied."""

    vocab_size: int
    d_model: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    init: nn.initializers.Initializer = DEFAULT_INIT

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.init, ("vocab", "embed")),
            (self.vocab_size, self.d_model), self.param_dtype)

    def __call__(self, tokens):
        # Gather the table's width (FSDP) before the lookup, so that the looked-up rows come out
        # split over the batch like the tokens, not over the width like the table.
        table = constrain(self.embedding, jax.sharding.PartitionSpec.UNCONSTRAINED, None)
        return jnp.take(table, tokens, axis=0).astype(self.dtype)

    def attend(self, h):
        """Logits h W_e^T against every token."""
        return token_matmul(h, self.embedding.astype(self.dtype).T)


class LearnedPositions(nn.Module):
    """W_p: one learned vector per position (GPT-1/2/3, ViT)."""

    max_len: int
    d_model: int
    init_std: float = 0.01
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, length: int):
        wpe = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_std), (None, "embed")),
            (self.max_len, self.d_model), self.param_dtype)
        return wpe[:length]


def sinusoidal_positions(max_len: int, d_model: int,
                         layout: Literal["interleaved", "halves"] = "interleaved") -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    layout="halves" keeps the same values with every sine first, then every cosine:
    [sin(pos / 10000^(2i/d)) for all i | cos(...) for all i], as Marian lays them out."""
    if layout not in ("interleaved", "halves"):
        raise ValueError(f"unknown sinusoid layout {layout!r}; choose interleaved or halves")
    pos = np.arange(max_len)[:, None]
    two_i = np.arange(0, d_model, 2)[None, :]
    angle = pos / np.power(10000.0, two_i / d_model)
    sin, cos = np.sin(angle), np.cos(angle[:, : d_model // 2])
    pe = np.zeros((max_len, d_model), np.float32)
    if layout == "halves":
        pe[:, : sin.shape[1]], pe[:, sin.shape[1]:] = sin, cos
    else:
        pe[:, 0::2], pe[:, 1::2] = sin, cos
    return pe


class Block(nn.Module):
    """One Transformer layer: self-attention then FFN, each wrapped in a residual connection.

    norm="post" (Vaswani, GPT-1): x = LN(x + Dropout(Sublayer(x)))
    norm="pre"  (GPT-2/3, ViT, CLIP): x = x + Dropout(Sublayer(LN(x)))
    """

    num_heads: int
    head_dim: int
    d_ff: int
    norm: Literal["pre", "post"] = "pre"
    act: str = "gelu_tanh"
    mask: Mask = "causal"
    window: int | None = None
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    ln_eps: float = 1e-5
    out_init_std: float = 0.02  # GPT-2 scales the residual projections by 1/sqrt(2 n_layer)
    attention_impl: Implementation = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    decode: bool = False        # attention against the `cache` collection (models/attention.py)

    @nn.compact
    def __call__(self, x, pad_mask=None, deterministic: bool = True):
        out_init = nn.initializers.normal(self.out_init_std)
        attn = MultiHeadAttention(
            self.num_heads, self.head_dim, mask=self.mask, window=self.window,
            dropout_rate=self.attn_dropout_rate, implementation=self.attention_impl,
            dtype=self.dtype, param_dtype=self.param_dtype, out_init=out_init,
            decode=self.decode, name="attn")
        ffn = FFN(self.d_ff, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype,
                  out_init=out_init, name="ffn")
        drop = nn.Dropout(self.dropout_rate, deterministic=deterministic)
        ln_1 = layer_norm("ln_1", self.ln_eps, self.dtype, self.param_dtype)
        ln_2 = layer_norm("ln_2", self.ln_eps, self.dtype, self.param_dtype)
        if self.norm == "pre":
            x = x + drop(attn(ln_1(x), pad_mask, deterministic))
            x = x + drop(ffn(ln_2(x)))
        else:
            x = ln_1(x + drop(attn(x, pad_mask, deterministic)))
            x = ln_2(x + drop(ffn(x)))
        return constrain(x, "batch", "length", "embed")


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stack(x, *, n_layer: int, prefix: str, layer_mask=lambda layer: "causal", pad_mask=None,
          deterministic: bool = True, remat: str = "none", **block):
    """The Transformer stack that GPT-1/2/3, ViT, CLIP's text tower and the Transformer's
    encoder share: n_layer Blocks in sequence, layer l named f"{prefix}{l}" with the attention
    mask layer_mask(l) (GPT-3 alternates dense and banded layers). The blocks are created in the
    calling module, so parameters keep each paper's names (h_0/..., block_0/..., layer_0/...).
    remat: none, or what jax.checkpoint keeps of each block (full | dots)."""
    if remat != "none" and remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; choose none or "
                         f"{sorted(REMAT_POLICIES)}")
    block_cls = Block if remat == "none" else nn.remat(
        Block, policy=REMAT_POLICIES[remat], static_argnums=(3,))
    for layer in range(n_layer):
        x = block_cls(mask=layer_mask(layer), name=f"{prefix}{layer}", **block)(
            x, pad_mask, deterministic)
    return x


class DecoderBlock(nn.Module):
    """A layer of the Transformer's decoder (section 3.1): masked self-attention, attention over
    the encoder's output `memory`, then the FFN, each a residual sub-layer as in Block."""

    num_heads: int
    head_dim: int
    d_ff: int
    norm: Literal["pre", "post"] = "post"
    act: str = "relu"
    dropout_rate: float = 0.0
    attn_dropout_rate: float = 0.0
    ln_eps: float = 1e-5
    out_init_std: float = 0.02
    attention_impl: Implementation = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    decode: bool = False

    @nn.compact
    def __call__(self, x, memory, memory_mask=None, deterministic: bool = True):
        out_init = nn.initializers.normal(self.out_init_std)
        kw = dict(dropout_rate=self.attn_dropout_rate, implementation=self.attention_impl,
                  dtype=self.dtype, param_dtype=self.param_dtype, out_init=out_init,
                  decode=self.decode)
        self_attn = MultiHeadAttention(self.num_heads, self.head_dim, mask="causal",
                                       name="self_attn", **kw)
        cross_attn = CrossAttention(self.num_heads, self.head_dim, name="cross_attn", **kw)
        ffn = FFN(self.d_ff, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype,
                  out_init=out_init, name="ffn")
        sublayers = (lambda h: self_attn(h, None, deterministic),
                     lambda h: cross_attn(h, memory, memory_mask, deterministic),
                     ffn)
        drop = nn.Dropout(self.dropout_rate, deterministic=deterministic)
        for i, sublayer in enumerate(sublayers, 1):
            ln = layer_norm(f"ln_{i}", self.ln_eps, self.dtype, self.param_dtype)
            x = x + drop(sublayer(ln(x))) if self.norm == "pre" else ln(x + drop(sublayer(x)))
        return constrain(x, "batch", "length", "embed")


def scaled_init_std(base_std: float, n_layer: int) -> float:
    """GPT-2: residual-path projections initialised with std base / sqrt(2 * n_layer)."""
    return base_std / math.sqrt(2 * n_layer)
