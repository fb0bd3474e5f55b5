"""The Transformer (Vaswani et al. 2017, section 3): an encoder-decoder of attention alone.

    encoder:  N layers,  x = LayerNorm(x + Sublayer(x)),  Sublayer: self-attention, then FFN
    decoder:  N layers,  masked self-attention, attention over the encoder's output, FFN
    FFN(x) = max(0, x W_1 + b_1) W_2 + b_2                                           (3.3)
    one embedding matrix for the source, the target and the pre-softmax projection, its
    embeddings multiplied by sqrt(d_model)                                            (3.4)
    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),  PE(pos, 2i+1) = cos(...)           (3.5)
    residual dropout on every sub-layer's output and on the sums embedding + PE      (5.4)

Padding hides the source's pad tokens from the encoder's self-attention and from the
decoder's attention over the source; the decoder's self-attention is causal. Decoding
(`greedy_decode`, `beam_search`, after models/decode.py) runs the decoder one position at a time
against its key/value cache; Transformer(cfg, cached=True) is that mode.
"""

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models import decode as decoding
from models.attention import constrain
from models.layers import (DecoderBlock, TokenEmbedding, layer_norm, param_count,
                           sinusoidal_positions, stack, training_flops_per_token)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 37000        # one BPE vocabulary for source and target (WMT 2014 En-De)
    d_model: int = 512
    n_head: int = 8                # h; d_k = d_v = d_model / h
    d_k: int = 0                   # > 0: the head size d_k = d_v instead (Table 3 row B)
    n_layer: int = 6               # N, in the encoder and in the decoder
    d_ff: int = 2048
    dropout: float = 0.1           # P_drop: residual dropout, also on embedding + PE
    attn_dropout: float = 0.0      # on the attention probabilities (not in the paper)
    max_len: int = 256             # longest source or target sequence
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    sinusoid: Literal["interleaved", "halves"] = "interleaved"  # halves: Marian's [sin | cos]
    scale_embedding: bool = True   # embeddings times sqrt(d_model)
    act: str = "relu"
    norm: Literal["post", "pre"] = "post"   # post: LayerNorm(x + Sublayer(x)), as the paper
    ln_eps: float = 1e-5
    final_logits_bias: bool = False  # a bias on the output logits (Marian)
    pad_id: int = 0
    attention_impl: str = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.d_k or self.d_model // self.n_head


PRESETS: dict[str, TransformerConfig] = {
    # Table 3: base (65M parameters) and big (213M).
    "base": TransformerConfig(),
    "big": TransformerConfig(d_model=1024, n_head=16, d_ff=4096, dropout=0.3),
    # A laptop-sized model for CPU runs and tests.
    "tiny": TransformerConfig(vocab_size=512, d_model=64, n_head=4, n_layer=2, d_ff=128,
                              max_len=64),
}


def pick_preset(presets: dict, family: str, name: str, **overrides):
    """presets[name] with `overrides` (also the recurrent baseline's presets)."""
    if name not in presets:
        raise ValueError(f"unknown {family} preset {name!r}; choose from {sorted(presets)}")
    return dataclasses.replace(presets[name], **overrides)


def preset(name: str, **overrides) -> TransformerConfig:
    return pick_preset(PRESETS, "Transformer", name, **overrides)


def check(cfg: TransformerConfig) -> None:
    if cfg.d_k < 0:
        raise ValueError(f"d_k must be >= 0 (0: d_model / n_head), got {cfg.d_k}")
    if not cfg.d_k and cfg.d_model % cfg.n_head:
        raise ValueError(f"d_model {cfg.d_model} is not a multiple of n_head {cfg.n_head}")
    if cfg.positions not in ("sinusoidal", "learned"):
        raise ValueError(f"unknown positions {cfg.positions!r}; choose sinusoidal or learned")
    if cfg.norm not in ("post", "pre"):
        raise ValueError(f"unknown norm {cfg.norm!r}; choose post or pre")


class Embed(nn.Module):
    """x = Dropout(E[tokens] * sqrt(d_model) + PE[offset : offset + time]), E shared."""

    cfg: TransformerConfig
    embed: TokenEmbedding

    @nn.compact
    def __call__(self, tokens, offset=0, deterministic: bool = True):
        cfg = self.cfg
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(f"a sequence of {tokens.shape[1]} tokens exceeds max_len "
                             f"{cfg.max_len}")
        if cfg.positions == "learned":
            table = self.param("positions", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, "embed")), (cfg.max_len, cfg.d_model),
                jnp.dtype(cfg.param_dtype))
        else:
            table = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model, cfg.sinusoid))
        pe = jax.lax.dynamic_slice_in_dim(table, offset, tokens.shape[1])
        x = self.embed(tokens)
        if cfg.scale_embedding:
            x = x * jnp.asarray(np.sqrt(cfg.d_model), x.dtype)
        x = constrain(x + pe.astype(x.dtype), "batch", "length", "embed")
        return nn.Dropout(cfg.dropout, deterministic=deterministic)(x)


class Encoder(nn.Module):
    cfg: TransformerConfig
    embed: TokenEmbedding

    @nn.compact
    def __call__(self, src_tokens, src_mask, deterministic: bool = True):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        x = Embed(cfg, self.embed, name="embed")(src_tokens, 0, deterministic)
        x = stack(x, n_layer=cfg.n_layer, prefix="layer_", layer_mask=lambda _: "full",
                  pad_mask=src_mask, deterministic=deterministic, num_heads=cfg.n_head,
                  head_dim=cfg.head_dim, d_ff=cfg.d_ff, norm=cfg.norm, act=cfg.act,
                  dropout_rate=cfg.dropout, attn_dropout_rate=cfg.attn_dropout,
                  ln_eps=cfg.ln_eps, attention_impl=cfg.attention_impl, dtype=dtype,
                  param_dtype=jnp.dtype(cfg.param_dtype))
        if cfg.norm == "pre":
            x = layer_norm("ln_f", cfg.ln_eps, dtype, jnp.dtype(cfg.param_dtype))(x)
        return x


class Decoder(nn.Module):
    """Target tokens (shifted right: BOS first) and the encoder's output -> next-token logits.

    decode=True: the `cache` collection holds every layer's keys and values and cache/index, the
    position of the next target token; the first call (the prefill) passes `encoded`, later ones
    None (models/attention.py: CrossAttention)."""

    cfg: TransformerConfig
    embed: TokenEmbedding
    decode: bool = False

    @nn.compact
    def __call__(self, encoded, src_mask, tgt_tokens, deterministic: bool = True):
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        param_dtype = jnp.dtype(cfg.param_dtype)
        offset = 0
        if self.decode:
            ready = self.has_variable("cache", "index")
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            if ready:
                offset = index.value
                index.value = offset + tgt_tokens.shape[1]
        x = Embed(cfg, self.embed, name="embed")(tgt_tokens, offset, deterministic)
        for layer in range(cfg.n_layer):
            x = DecoderBlock(cfg.n_head, cfg.head_dim, cfg.d_ff, norm=cfg.norm, act=cfg.act,
                             dropout_rate=cfg.dropout, attn_dropout_rate=cfg.attn_dropout,
                             ln_eps=cfg.ln_eps, attention_impl=cfg.attention_impl, dtype=dtype,
                             param_dtype=param_dtype, decode=self.decode,
                             name=f"layer_{layer}")(x, encoded, src_mask, deterministic)
        if cfg.norm == "pre":
            x = layer_norm("ln_f", cfg.ln_eps, dtype, param_dtype)(x)
        logits = self.embed.attend(x)                     # pre-softmax projection: x E^T
        if cfg.final_logits_bias:
            logits = logits + self.param("final_logits_bias", nn.with_logical_partitioning(
                nn.initializers.zeros, ("vocab",)), (cfg.vocab_size,), param_dtype).astype(dtype)
        return constrain(logits, "batch", "length", "vocab")


class Transformer(nn.Module):
    """apply(params, src_tokens [batch, src_len], tgt_in_tokens [batch, tgt_len]) -> logits
    [batch, tgt_len, vocab]; apply(..., method="encode" / "decode") runs one half."""

    cfg: TransformerConfig
    cached: bool = False      # the decoder runs against its key/value cache

    def setup(self):
        cfg = self.cfg
        check(cfg)
        # E ~ N(0, 1/d_model), so that sqrt(d_model) E has unit variance, as PE has.
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                                    param_dtype=jnp.dtype(cfg.param_dtype),
                                    init=nn.initializers.normal(cfg.d_model ** -0.5))
        self.encoder = Encoder(cfg, self.embed)
        self.decoder = Decoder(cfg, self.embed, decode=self.cached)

    def __call__(self, src_tokens, tgt_in_tokens, deterministic: bool = True):
        encoded = self.encode(src_tokens, deterministic)
        return self.decode(encoded, src_tokens != self.cfg.pad_id, tgt_in_tokens, deterministic)

    def encode(self, src_tokens, deterministic: bool = True):
        """src_tokens int32 [batch, src_len] (pad_id after the end) -> [batch, src_len, d]."""
        return self.encoder(src_tokens, src_tokens != self.cfg.pad_id, deterministic)

    def decode(self, encoded, src_mask, tgt_in_tokens, deterministic: bool = True):
        """(encoded [batch, src_len, d], src_mask bool [batch, src_len], tgt_in_tokens int32
        [batch, tgt_len]) -> logits [batch, tgt_len, vocab]."""
        return self.decoder(encoded, src_mask, tgt_in_tokens, deterministic)


def abstract_params(cfg: TransformerConfig):
    tokens = jnp.zeros((1, 4), jnp.int32)
    variables = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), tokens, tokens))
    return nn.meta.unbox(variables["params"])


def count_params(cfg: TransformerConfig) -> int:
    """Number of parameters, the shared embedding counted once."""
    return param_count(abstract_params(cfg))


def encoder_decoder_params(cfg: TransformerConfig) -> tuple[int, int]:
    """Non-embedding parameters of the encoder and of the decoder."""
    params = abstract_params(cfg)
    return param_count(params["encoder"]), param_count(params["decoder"])


def flops_per_token(cfg: TransformerConfig, src_len: float, tgt_len: float) -> float:
    """Training FLOPs per target token, 6 N + 12 L d T per token of each stack (as GPT's
    count; layers.training_flops_per_token): the encoder's over the source tokens, the
    decoder's (its N with the tied output projection, V d) over the target tokens, plus the
    attention over the source, 12 L d S per target token (d: the attention's width h d_k)."""
    n_enc, n_dec = encoder_decoder_params(cfg)
    d, layers = cfg.n_head * cfg.head_dim, cfg.n_layer
    encoder = training_flops_per_token(n_enc, layers, d, src_len) * src_len
    decoder = (training_flops_per_token(n_dec + cfg.vocab_size * cfg.d_model, layers, d,
                                        tgt_len) + 12 * layers * d * src_len) * tgt_len
    return (encoder + decoder) / tgt_len


def decode_flops_per_token(cfg: TransformerConfig, src_len: int, new_tokens: int,
                           beam_size: int = 1) -> float:
    """FLOPs per output token of cached decoding: the decoder's forward for each of the
    beam_size hypotheses, 2 (N_dec + V d) + 4 L d (t + S) for scores and weighted sums over t
    cached target positions (their mean over the steps) and S source positions; the encoder's
    work is not counted."""
    _, n_dec = encoder_decoder_params(cfg)
    mean_keys = (new_tokens + 1) / 2
    return beam_size * (2 * (n_dec + cfg.vocab_size * cfg.d_model)
                        + 4 * cfg.n_layer * cfg.d_model * (mean_keys + src_len))


# ----------------------------------------------------------------------------- decoding
def init_cache(cfg: TransformerConfig, batch: int, src_len: int, max_len: int):
    """Zeros of the decoder's `cache` for `batch` sources of src_len tokens and up to max_len
    target positions (BOS included)."""
    model = Transformer(cfg, cached=True)
    encoded = jnp.zeros((batch, src_len, cfg.d_model), jnp.dtype(cfg.dtype))
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), encoded, jnp.ones((batch, src_len), bool),
        jnp.zeros((batch, max_len), jnp.int32), method="decode"))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def ban_padding(cfg: TransformerConfig, logits, eos_id: int):
    """The model is never trained to emit padding, so decoding never picks it (as Marian's
    generation config bans it), unless padding doubles as EOS."""
    if cfg.pad_id == eos_id:
        return logits
    return logits.at[..., cfg.pad_id].set(-jnp.inf)


def prefill(cfg: TransformerConfig, params, src_tokens, max_len: int, bos_id: int, eos_id: int):
    """Encode the source, then feed BOS through the decoder, filling the cache (the source's
    keys and values in every cross-attention): -> (logits of the first token, cache, step)."""
    model = Transformer(cfg, cached=True)
    encoded = model.apply({"params": params}, src_tokens, method="encode")
    batch = src_tokens.shape[0]
    cache = init_cache(cfg, batch, src_tokens.shape[1], max_len)

    def run(tokens, cache, encoded=None, src_mask=None):
        logits, state = model.apply({"params": params, "cache": cache}, encoded, src_mask,
                                    tokens[:, None], method="decode", mutable=["cache"])
        return ban_padding(cfg, logits[:, 0].astype(jnp.float32), eos_id), state["cache"]

    logits, cache = run(jnp.full((batch,), bos_id, jnp.int32), cache, encoded,
                        src_tokens != cfg.pad_id)
    return logits, cache, run


def check_lengths(cfg: TransformerConfig, max_len: int) -> None:
    if not 1 <= max_len <= cfg.max_len:
        raise ValueError(f"max_len {max_len} must be between 1 and the model's max_len "
                         f"{cfg.max_len}")


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "bos_id", "eos_id",
                                             "prefill_fn"))
def _greedy(cfg, params, src_tokens, max_len, bos_id, eos_id, prefill_fn):
    logits, cache, step = prefill_fn(cfg, params, src_tokens, max_len, bos_id, eos_id)
    return decoding.sample(logits, cache, step, num_steps=max_len, stop_tokens=(eos_id,),
                           pad_id=cfg.pad_id)


def greedy_decode(cfg: TransformerConfig, params, src_tokens, *, max_len: int, bos_id: int,
                  eos_id: int, prefill_fn=prefill) -> jax.Array:
    """y_t = argmax P(y_t | y_<t, x) for a batch of sources (pad_id after their end), one
    jitted loop that stops when every row has produced eos_id. Returns int32 [batch, n] with
    n <= max_len the longest output: each row's tokens, its eos_id, then pad_id. prefill_fn:
    another encoder-decoder's `prefill` for its cfg (models/rnn_seq2seq.py)."""
    check_lengths(cfg, max_len)
    tokens, lengths = _greedy(cfg, nn.meta.unbox(params), jnp.asarray(src_tokens, jnp.int32),
                              max_len, bos_id, eos_id, prefill_fn)
    return tokens[:, :int(jnp.max(lengths))]


@functools.partial(jax.jit, static_argnames=("cfg", "beam_size", "alpha", "max_len", "bos_id",
                                             "eos_id", "length_penalty", "prefill_fn"))
def _beam(cfg, params, src_tokens, beam_size, alpha, max_len, bos_id, eos_id, length_penalty,
          prefill_fn):
    logits, cache, step = prefill_fn(cfg, params, src_tokens, max_len, bos_id, eos_id)
    return decoding.beam_search(logits, cache, step, beam_size=beam_size, max_len=max_len,
                                eos_id=eos_id, alpha=alpha, penalty=length_penalty,
                                pad_id=cfg.pad_id)


def beam_search(cfg: TransformerConfig, params, src_tokens, beam_size: int = 4,
                alpha: float = 0.6, *, max_len: int, bos_id: int, eos_id: int,
                length_penalty: decoding.LengthPenalty = "gnmt", return_scores: bool = False,
                prefill_fn=prefill):
    """The best of beam_size hypotheses per source by log P(y | x) / lp(y): lp is GNMT's
    ((5 + |y|) / 6)^alpha (section 6.1 of the paper: beam 4, alpha 0.6) or transformers'
    |y|^alpha (length_penalty="hf"), |y| counting the tokens generated, eos included.
    Batched and jitted (models/decode.py: beam_search). Returns int32 [batch, n], n <= max_len,
    laid out as greedy_decode's, and with return_scores the scores [batch] too; prefill_fn
    as greedy_decode's."""
    check_lengths(cfg, max_len)
    seqs, scores = _beam(cfg, nn.meta.unbox(params), jnp.asarray(src_tokens, jnp.int32),
                         beam_size, float(alpha), max_len, bos_id, eos_id, length_penalty,
                         prefill_fn)
    best = seqs[:, 0]
    ended = best == eos_id
    lengths = jnp.where(ended.any(axis=1), jnp.argmax(ended, axis=1) + 1, max_len)
    best = best[:, :int(jnp.max(lengths))]
    return (best, scores[:, 0]) if return_scores else best
