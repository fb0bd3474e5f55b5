"""Decoder-only language models: GPT-1 (Radford et al. 2018), GPT-2 (2019), GPT-3 (Brown et al. 2020).

    h_0 = U W_e + W_p
    h_l = transformer_block(h_{l-1})          for l in 1..n
    P(u) = softmax(h_n W_e^T)                 (input and output embeddings tied)

GPT-1 normalises after each sub-block (post-norm); GPT-2/3 before each sub-block, with one more
LayerNorm after the last block and the residual projections initialised with std
0.02/sqrt(2 n_layer). GPT-3 alternates dense and locally banded attention by layer.
"""

import dataclasses
import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models import decode
from models.attention import constrain
from models.layers import (REMAT_POLICIES, LearnedPositions, TokenEmbedding, check_config,
                           layer_norm, param_count, scaled_init_std, stack,
                           training_flops_per_token)


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
    pad_vocab_multiple: int = 0   # > 0: W_e has rows up to a multiple of it (round matmul
                                  # shapes); the padded rows' logits are sliced off

    def __post_init__(self):
        check_config(self)
        if self.remat != "none" and self.remat not in REMAT_POLICIES:
            raise ValueError(f"GPTConfig.remat is {self.remat!r}; choose from none, "
                             f"{', '.join(REMAT_POLICIES)}")
        if self.pad_vocab_multiple < 0:
            raise ValueError(f"GPTConfig.pad_vocab_multiple is {self.pad_vocab_multiple}; "
                             "use 0 (no padding) or a positive multiple such as 128")

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def padded_vocab(self) -> int:
        """Rows of W_e: vocab_size rounded up to pad_vocab_multiple."""
        m = self.pad_vocab_multiple or 1
        return -(-self.vocab_size // m) * m

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
    # Table 2.1 lists 24 heads of 128 for 1.3B, but 24 x 128 = 3072 is not its d_model 2048
    # (that model would count 1.52B). We keep d_head 128 and take 16 heads, which gives 1.32B.
    "gpt3-1.3b": _gpt3(24, 2048, 16, 128),
    "gpt3-2.7b": _gpt3(32, 2560, 32, 80),
    "gpt3-6.7b": _gpt3(32, 4096, 32, 128),
    # 13B: 40 x 128 = 5120, not the listed d_model 5140; the table's numbers kept as printed.
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


class GPT(nn.Module):
    """decode=True: one position at a time (or a prompt at once: the prefill) against the
    `cache` collection; `init_cache` builds it. A batch of prompts of different lengths is left
    padded, pad_mask [batch, time] False on the padding: each row's positions count its own
    tokens only, and no query sees the padding."""

    cfg: GPTConfig
    decode: bool = False

    @nn.compact
    def __call__(self, tokens, *, deterministic: bool = True, with_hidden: bool = False,
                 pad_mask=None):
        """tokens int32 [batch, time] -> logits [batch, time, vocab]; with_hidden: (logits, h_n),
        as GPT-1's fine-tuning needs with its auxiliary L1."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if tokens.shape[-1] > cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens exceeds the context {cfg.n_ctx}")
        wte = TokenEmbedding(cfg.padded_vocab, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                             name="wte")
        wpe = LearnedPositions(cfg.n_ctx, cfg.d_model, init_std=0.01, param_dtype=param_dtype,
                               name="wpe")
        if self.decode or pad_mask is not None:
            positions, pad_mask = self.positions(tokens, pad_mask)
            h = wte(tokens) + jnp.take(wpe(cfg.n_ctx), positions, axis=0).astype(dtype)
        else:
            h = wte(tokens) + wpe(tokens.shape[-1]).astype(dtype)   # h_0 = U W_e + W_p
        h = constrain(h, "batch", "length", "embed")
        h = nn.Dropout(cfg.dropout, deterministic=deterministic)(h)
        out_std = (scaled_init_std(cfg.init_std, cfg.n_layer) if cfg.scale_residual_init
                   else cfg.init_std)
        h = stack(h, n_layer=cfg.n_layer, prefix="h_", layer_mask=cfg.layer_mask,
                  pad_mask=pad_mask, deterministic=deterministic,
                  remat="none" if self.decode else cfg.remat,
                  num_heads=cfg.n_head, head_dim=cfg.d_head, d_ff=cfg.ffn_dim, norm=cfg.norm,
                  act=cfg.act, window=cfg.local_window or None, dropout_rate=cfg.dropout,
                  attn_dropout_rate=cfg.attn_dropout, ln_eps=cfg.ln_eps, out_init_std=out_std,
                  attention_impl=cfg.attention_impl, dtype=dtype, param_dtype=param_dtype,
                  decode=self.decode)
        if cfg.norm == "pre":
            h = layer_norm("ln_f", cfg.ln_eps, dtype, param_dtype)(h)
        logits = real_vocab(cfg, wte.attend(h))                        # h_n W_e^T
        logits = constrain(logits, "batch", "length", "vocab")
        return (logits, h) if with_hidden else logits

    def positions(self, tokens, pad_mask):
        """Each token's position, counting only its row's real tokens, and the mask of the keys
        its attention may see: pad_mask itself, or in decoding the cache's slots holding real
        tokens (cache/key_mask, written at cache/index like the keys)."""
        real = jnp.ones(tokens.shape, bool) if pad_mask is None else pad_mask.astype(bool)
        before = 0
        if self.decode:
            ready = self.has_variable("cache", "index")
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            key_mask = self.variable("cache", "key_mask", jnp.zeros, tokens.shape, bool)
            if ready:
                before = key_mask.value.sum(axis=1, keepdims=True)
                key_mask.value = jax.lax.dynamic_update_slice(key_mask.value, real,
                                                              (0, index.value))
                index.value = index.value + tokens.shape[1]
                real_keys = key_mask.value
            else:
                real_keys = real   # init: the input's length sizes the cache
        else:
            real_keys = real
        positions = jnp.clip(before + jnp.cumsum(real, axis=1) - 1, 0, self.cfg.n_ctx - 1)
        return positions, real_keys


def real_vocab(cfg: GPTConfig, logits):
    """The logits of the real tokens: the padded rows of W_e are never predicted."""
    return logits if cfg.padded_vocab == cfg.vocab_size else logits[..., :cfg.vocab_size]


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
        total -= cfg.padded_vocab * cfg.d_model + cfg.n_ctx * cfg.d_model
    return total


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d_attn T (Kaplan et al. 2020, PaLM appendix B).

    N counts non-embedding parameters plus the output projection (matmul_params); the second
    term is the attention scores and weighted sum."""
    return training_flops_per_token(matmul_params(cfg), cfg.n_layer, cfg.n_head * cfg.d_head,
                                    seq_len)


def matmul_params(cfg: GPTConfig) -> int:
    """Non-embedding parameters plus the output projection (tied to W_e, it is still a [d, V]
    matmul per token, over the padded rows too)."""
    return count_params(cfg, non_embedding=True) + cfg.padded_vocab * cfg.d_model


def _cached_values_per_row(cfg: GPTConfig, prompt_len: int, new_tokens: int) -> float:
    """L h d_head t: one row's cached keys (or values) over the mean number t of positions a
    decoding step attends to (the prompt, then half the new tokens on average)."""
    mean_keys = prompt_len + (new_tokens - 1) / 2
    return cfg.n_layer * cfg.n_head * cfg.d_head * mean_keys


def decode_flops_per_token(cfg: GPTConfig, prompt_len: int, new_tokens: int) -> float:
    """FLOPs per generated token of cached greedy decoding: the forward's 2 N (N as in
    matmul_params) + 4 L d_attn t for scores and weighted sum over the t keys it attends
    to, averaged over the steps; the prefill's work is not counted."""
    return 2 * matmul_params(cfg) + 4 * _cached_values_per_row(cfg, prompt_len, new_tokens)


def decode_bytes_per_step(cfg: GPTConfig, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Memory traffic of one cached decoding step at the least: every matmul weight (as
    matmul_params counts them) once, plus each row's cached keys and values over the mean
    number of positions attended to, in the parameters' and compute dtype's bytes."""
    itemsize = jnp.dtype(cfg.dtype).itemsize
    cache = 2 * _cached_values_per_row(cfg, prompt_len, new_tokens) * batch * itemsize
    return matmul_params(cfg) * jnp.dtype(cfg.param_dtype).itemsize + cache


@functools.partial(jax.jit, static_argnames="cfg")
def token_scores(cfg: GPTConfig, params, inputs, targets):
    """log P(target_t | inputs_<=t) and whether target_t is the argmax, per position. Compiled
    once per model and shape, for every scorer (lm-eval's client, the few-shot evaluator)."""
    logits = GPT(cfg).apply({"params": params}, inputs).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return target_logp, jnp.argmax(logits, axis=-1) == targets


# ----------------------------------------------------------------------------- generation
def init_cache(cfg: GPTConfig, batch: int, max_len: int):
    """Zeros of the `cache` collection for decoding `batch` rows of up to max_len positions."""
    model = GPT(cfg, decode=True)
    tokens = jnp.zeros((batch, max_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def left_pad(prompts: list[list[int]], pad_id: int = 0,
             width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prompts of different lengths, right-aligned in one int32 [batch, width] array (width:
    the longest prompt's length unless given), and the mask of their real tokens: every row's
    next token then comes at the same slot."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if width is not None and width < longest:
        raise ValueError(f"width {width} is shorter than the longest prompt ({longest} tokens)")
    width = width or longest
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for row, p in zip(tokens, prompts):
        row[width - len(p):] = p
    return tokens, np.arange(width)[None, :] >= width - np.array([[len(p)] for p in prompts])


def check_context(cfg: GPTConfig, prompt_len: int, new_tokens: int) -> None:
    if prompt_len + new_tokens > cfg.n_ctx:
        raise ValueError(f"a prompt of {prompt_len} tokens and {new_tokens} new tokens do not fit "
                         f"the context of {cfg.n_ctx}; shorten the prompt or ask for fewer tokens")


@functools.partial(jax.jit, static_argnames=("cfg", "max_len"))
def prefill(cfg: GPTConfig, params, tokens, pad_mask, max_len: int):
    """The left-padded prompts [batch, time] through the model at once, into a cache of max_len
    slots: -> (float32 logits of each row's next token [batch, vocab], cache). Only the last
    position's logits are computed: the others' projection on W_e is dead code to XLA."""
    params = nn.meta.unbox(params)
    cache = init_cache(cfg, tokens.shape[0], max_len)
    (_, h), state = GPT(cfg, decode=True).apply(
        {"params": params, "cache": cache}, tokens, pad_mask=pad_mask, with_hidden=True,
        mutable=["cache"])
    wte = params["wte"]["embedding"].astype(h.dtype)
    return real_vocab(cfg, h[:, -1] @ wte.T).astype(jnp.float32), state["cache"]


def step_fn(cfg: GPTConfig, params) -> decode.Step:
    """One token per row against the cache -> (float32 logits [batch, vocab], cache)."""
    model = GPT(cfg, decode=True)

    def step(tokens, cache):
        logits, state = model.apply({"params": params, "cache": cache}, tokens[:, None],
                                    mutable=["cache"])
        return logits[:, 0].astype(jnp.float32), state["cache"]
    return step


@functools.partial(jax.jit, static_argnames=("cfg", "num_steps", "pad_id"))
def decode_steps(cfg: GPTConfig, params, logits, cache, rng, temperature=0.0, top_k=0,
                 top_p=1.0, stop_tokens=(), *, num_steps: int, pad_id: int = 0):
    """After `prefill`: up to num_steps tokens per row in one while_loop (models/decode.py:
    sample) -> (tokens int32 [batch, num_steps], lengths int32 [batch]). The sampling settings
    and stop_tokens (an int array) are traced: one compiled loop serves them all."""
    return decode.sample(logits, cache, step_fn(cfg, nn.meta.unbox(params)),
                         num_steps=num_steps, rng=rng, temperature=temperature, top_k=top_k,
                         top_p=top_p, stop_tokens=stop_tokens, pad_id=pad_id)


def generate_batch(cfg: GPTConfig, params, prompts: list[list[int]], max_new_tokens: int, rng,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   stop_tokens: Sequence[int] = (), pad_id: int = 0,
                   width: int | None = None) -> list[list[int]]:
    """Continue each prompt by up to max_new_tokens tokens, u_t ~ softmax(h_{t-1} W_e^T / T)
    (greedy at temperature 0; top_k, top_p narrow the choice), with the key/value cache.

    The prompts are left padded and run through the model at once (the prefill), then one
    position per step inside jit until max_new_tokens or until every row has drawn one of
    stop_tokens. Each row's list ends before its stop token; stop strings are for the caller
    to cut in decoded text (decode.truncate_at_stop). A fixed width (left padding the prompts
    to it) and a fixed number of prompts compile once for prompts of many lengths."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    tokens, pad_mask = left_pad(prompts, pad_id, width)
    check_context(cfg, tokens.shape[1], max_new_tokens)
    logits, cache = prefill(cfg, params, tokens, pad_mask, tokens.shape[1] + max_new_tokens)
    out, lengths = decode_steps(cfg, params, logits, cache, rng, float(temperature),
                                int(top_k), float(top_p), np.asarray(stop_tokens, np.int32),
                                num_steps=max_new_tokens, pad_id=pad_id)
    out, lengths = np.asarray(out), np.asarray(lengths)
    rows = [row[:n].tolist() for row, n in zip(out, lengths)]
    return [r[:-1] if r and r[-1] in stop_tokens else r for r in rows]


def generate(cfg: GPTConfig, params, prompt: list[int], num_tokens: int, rng,
             temperature: float = 1.0, top_k: int = 0) -> list[int]:
    """Sample num_tokens after prompt, autoregressively: u_t ~ softmax(h_{t-1} W_e^T / temp)
    (temperature 0: greedy).

    While the text fits the context the tokens come from the cache (generate_batch); past it
    the window slides, each token conditioned on the last n_ctx - 1, one full pass per token."""
    if not prompt:
        raise ValueError("generate needs a prompt of at least one token")
    tokens = list(prompt)
    cached = min(num_tokens, max(cfg.n_ctx - len(prompt), 0))
    if cached:
        tokens += generate_batch(cfg, params, [tokens], cached, rng, temperature, top_k)[0]
    for i in range(cached, num_tokens):
        window = np.asarray([tokens[-cfg.n_ctx + 1:]], np.int32)
        tokens.append(int(_next_token(cfg, params, window, jax.random.fold_in(rng, i),
                                      float(temperature), int(top_k))[0]))
    return tokens[len(prompt):]


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "top_k"))
def _next_token(cfg, params, window, rng, temperature, top_k):
    logits = GPT(cfg).apply({"params": params}, window)[:, -1]
    return decode.choose(logits, rng, temperature, top_k)
