"""Decoder-only language models: GPT-1 (Radford et al. 2018), GPT-2 (2019), GPT-3 (Brown et al. 2020).

    h_0 = U W_e + W_p
    h_l = transformer_block(h_{l-1})          for l in 1..n
    P(u) = softmax(h_n W_e^T)                 (input and output embeddings tied)

GPT-1 normalises after each sub-block (post-norm); GPT-2/3 before each sub-block, with one more
LayerNorm after the last block and the residual projections initialised with std
0.02/sqrt(2 n_layer). GPT-3 alternates dense and locally banded attention by layer.
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models.attention import constrain
from models.layers import (Block, LearnedPositions, TokenEmbedding, check_config, layer_norm,
                           param_count, scaled_init_std, training_flops_per_token)


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    n_ctx: int = 1024
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    head_dim: int = 0            # 0 = d_model // n_head; GPT-3's table sets it on its own
    d_ff: int = 0                # 0 = 4 * d_model
    norm: Literal["pre", "post"] = "pre"
    act: str = "gelu_tanh"
    ln_eps: float = 1e-5
    dropout: float = 0.1         # residual and embedding dropout
    attn_dropout: float = 0.1    # on the attention probabilities
    init_std: float = 0.02
    scale_residual_init: bool = True  # GPT-2's 1/sqrt(2 n_layer) on residual projections
    local_window: int = 0        # > 0: every odd layer attends only to the last local_window tokens
    attention_impl: str = "auto"  # auto | xla | cudnn
    dtype: str = "float32"        # compute dtype: float32 | bfloat16
    param_dtype: str = "float32"
    remat: str = "none"           # none | full | dots: what jax.checkpoint keeps per block

    def __post_init__(self):
        check_config(self)
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"GPTConfig.remat is {self.remat!r}; choose from none, "
                             f"{', '.join(REMAT_POLICIES)}")

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def layer_mask(self, layer: int) -> str:
        return "local" if self.local_window and layer % 2 == 1 else "causal"


def _gpt2(n_layer, n_head, d_model):
    return GPTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model)


def _gpt3(n_layer, d_model, n_head, head_dim):
    # The paper's table gives d_head separately (e.g. 1.3B: 24 heads x 128 on d_model 2048).
    # The width of the locally banded layers is not given in the paper; 256 is our choice.
    return GPTConfig(n_ctx=2048, n_layer=n_layer, n_head=n_head, d_model=d_model,
                     head_dim=head_dim, local_window=256, dropout=0.0, attn_dropout=0.0)


PRESETS: dict[str, GPTConfig] = {
    # GPT-1: 12 layers, 768 wide, 12 heads, 3072 FFN, context 512, 40,478 BPE tokens, post-norm;
    # its released code computes GELU with the tanh approximation.
    "gpt1": GPTConfig(vocab_size=40478, n_ctx=512, norm="post", act="gelu_tanh",
                      scale_residual_init=False),
    "gpt2-124m": _gpt2(12, 12, 768),
    "gpt2-355m": _gpt2(24, 16, 1024),
    "gpt2-774m": _gpt2(36, 20, 1280),
    "gpt2-1.5b": _gpt2(48, 25, 1600),
    # GPT-3 Table 2.1: n_layers, d_model, n_heads, d_head.
    "gpt3-125m": _gpt3(12, 768, 12, 64),
    "gpt3-350m": _gpt3(24, 1024, 16, 64),
    "gpt3-760m": _gpt3(24, 1536, 16, 96),
    "gpt3-1.3b": _gpt3(24, 2048, 24, 128),
    "gpt3-2.7b": _gpt3(32, 2560, 32, 80),
    "gpt3-6.7b": _gpt3(32, 4096, 32, 128),
    "gpt3-13b": _gpt3(40, 5140, 40, 128),
    "gpt3-175b": _gpt3(96, 12288, 96, 128),
    # A laptop-sized GPT-2-style model for CPU runs and tests.
    "tiny": GPTConfig(vocab_size=4096, n_ctx=128, n_layer=4, n_head=4, d_model=128,
                      dropout=0.0, attn_dropout=0.0),
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown GPT preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class GPT(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens, *, deterministic: bool = True, with_hidden: bool = False):
        """tokens int32 [batch, time] -> logits [batch, time, vocab]; with_hidden: (logits, h_n),
        as GPT-1's fine-tuning needs with its auxiliary L1."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if tokens.shape[-1] > cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens exceeds the context {cfg.n_ctx}")
        wte = TokenEmbedding(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                             name="wte")
        wpe = LearnedPositions(cfg.n_ctx, cfg.d_model, init_std=0.01, param_dtype=param_dtype,
                               name="wpe")
        h = wte(tokens) + wpe(tokens.shape[-1]).astype(dtype)       # h_0 = U W_e + W_p
        h = constrain(h, "batch", "length", "embed")
        h = nn.Dropout(cfg.dropout, deterministic=deterministic)(h)
        out_std = (scaled_init_std(cfg.init_std, cfg.n_layer) if cfg.scale_residual_init
                   else cfg.init_std)
        block_cls = Block
        if cfg.remat != "none":
            if cfg.remat not in REMAT_POLICIES:
                raise ValueError(f"unknown remat policy {cfg.remat!r}; choose none or "
                                 f"{sorted(REMAT_POLICIES)}")
            block_cls = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], static_argnums=(3,))
        for layer in range(cfg.n_layer):
            h = block_cls(
                cfg.n_head, cfg.d_head, cfg.ffn_dim, norm=cfg.norm, act=cfg.act,
                mask=cfg.layer_mask(layer), window=cfg.local_window or None,
                dropout_rate=cfg.dropout, attn_dropout_rate=cfg.attn_dropout, ln_eps=cfg.ln_eps,
                out_init_std=out_std, attention_impl=cfg.attention_impl, dtype=dtype,
                param_dtype=param_dtype, name=f"h_{layer}")(h, None, deterministic)
        if cfg.norm == "pre":
            h = layer_norm("ln_f", cfg.ln_eps, dtype, param_dtype)(h)
        logits = constrain(wte.attend(h), "batch", "length", "vocab")  # h_n W_e^T
        return (logits, h) if with_hidden else logits


def abstract_params(cfg: GPTConfig):
    """Parameter shapes of a preset, computed without allocating them."""
    tokens = jax.ShapeDtypeStruct((1, min(cfg.n_ctx, 8)), jnp.int32)
    variables = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros(tokens.shape,
                                                                                 tokens.dtype)))
    return nn.meta.unbox(variables["params"])


def count_params(cfg: GPTConfig, *, non_embedding: bool = False) -> int:
    """Number of parameters (tied embedding counted once), via jax.eval_shape."""
    params = abstract_params(cfg)
    total = param_count(params)
    if non_embedding:
        total -= cfg.vocab_size * cfg.d_model + cfg.n_ctx * cfg.d_model
    return total


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d_attn T (Kaplan et al. 2020, PaLM appendix B).

    N counts non-embedding parameters plus the output projection (tied to W_e, it is still a
    [d, V] matmul per token); the second term is the attention scores and weighted sum."""
    n = count_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.d_model
    return training_flops_per_token(n, cfg.n_layer, cfg.n_head * cfg.d_head, seq_len)


def generate(cfg: GPTConfig, params, prompt: list[int], num_tokens: int, rng,
             temperature: float = 1.0, top_k: int = 0) -> list[int]:
    """Sample num_tokens after prompt, autoregressively: u_t ~ softmax(h_{t-1} W_e^T / temp).

    The sequence lives in a fixed [1, n_ctx] buffer so one compiled step serves every position
    (causal attention makes the padding after position t irrelevant); a longer text slides."""
    model = GPT(cfg)

    @jax.jit
    def next_token(buffer, position, key):
        logits = model.apply({"params": params}, buffer)[0, position - 1].astype(jnp.float32)
        if top_k:
            kth = jnp.sort(logits)[-top_k]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        if temperature == 0:
            return jnp.argmax(logits)
        return jax.random.categorical(key, logits / temperature)

    tokens = list(prompt)
    for i in range(num_tokens):
        window = tokens[-cfg.n_ctx + 1:] if len(tokens) >= cfg.n_ctx else tokens
        buffer = np.zeros((1, cfg.n_ctx), np.int32)
        buffer[0, :len(window)] = window
        tokens.append(int(next_token(buffer, len(window), jax.random.fold_in(rng, i))))
    return tokens[len(prompt):]
