"""RNNsearch (Bahdanau, Cho and Bengio 2015, "Neural Machine Translation by Jointly Learning to
Align and Translate"): a bidirectional GRU reads the source, a GRU decoder attends over it at
every step. The Transformer's recurrent baseline.

    annotations  h_j = [h_fwd_j ; h_bwd_j]                                    (section 3.2)
    alignment    e_ij = v_a^T tanh(W_a s_{i-1} + U_a h_j)                       (A.1.2)
                 alpha_ij = exp(e_ij) / sum_k exp(e_ik)                            (6)
    context      c_i = sum_j alpha_ij h_j                                          (5)
    state        s_i = GRU(s_{i-1}, [E y_{i-1} ; c_i]),  s_0 = tanh(W_s h_bwd_1)  (A.2.2)
    output       t_i = maxout(U_o s_{i-1} + V_o E y_{i-1} + C_o c_i)              (A.2.2)
                 p(y_i | y_<i, x) = softmax(W_o t_i)

Here source and target share one BPE and one embedding E (the paper has a vocabulary and an
embedding per language), U_o, V_o and C_o are one matrix over [s_{i-1} ; E y_{i-1} ; c_i], and
the padding of a batch is hidden from the attention and skipped by the backward GRU. Training
feeds the reference (teacher forcing) through one `nn.scan` of the decoder step; decoding runs
the same step once per token from a cache of (s, h, U_a h, mask) through the decoding loops the
Transformer uses (models/transformer.py: greedy_decode, beam_search).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import transformer
from models.layers import TokenEmbedding, param_count


@dataclasses.dataclass(frozen=True)
class RNNConfig:
    vocab_size: int = 30000      # the paper: 30,000 words per language; here one shared BPE
    embed_dim: int = 620         # m, the word embedding
    hidden: int = 1000           # n, the decoder's state and each encoder direction
    attn_dim: int = 1000         # n', the alignment model's hidden layer
    maxout: int = 500            # l, the deep output's units (maxout over pairs of 2l)
    dropout: float = 0.0         # on the embeddings and on t_i (not in the paper)
    max_len: int = 256           # longest source or target sequence
    pad_id: int = 0
    dtype: str = "float32"
    param_dtype: str = "float32"


PRESETS: dict[str, RNNConfig] = {
    # RNNsearch-50 of the paper (section 4.2, appendix B.1).
    "rnnsearch": RNNConfig(),
    # The recurrent baseline of the translation experiment, near the parameters of its
    # Transformer (experiments/configs/transformer.py: sentences).
    "tiny": RNNConfig(vocab_size=1024, embed_dim=64, hidden=72, attn_dim=64, maxout=64,
                      dropout=0.1, max_len=128),
}


def preset(name: str, **overrides) -> RNNConfig:
    return transformer.pick_preset(PRESETS, "RNN", name, **overrides)


def check(cfg: RNNConfig) -> None:
    for field in ("vocab_size", "embed_dim", "hidden", "attn_dim", "maxout", "max_len"):
        if getattr(cfg, field) < 1:
            raise ValueError(f"RNNConfig.{field} must be positive, got {getattr(cfg, field)}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"RNNConfig.dropout must be in [0, 1), got {cfg.dropout}")


def dense(features: int, name: str, cfg: RNNConfig, bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), name=name)


class Encoder(nn.Module):
    """Source embeddings -> annotations h [batch, src_len, 2 n] and the decoder's s_0."""

    cfg: RNNConfig

    @nn.compact
    def __call__(self, x, lengths):
        cfg = self.cfg
        gru = functools.partial(nn.GRUCell, cfg.hidden, dtype=jnp.dtype(cfg.dtype),
                                param_dtype=jnp.dtype(cfg.param_dtype))
        h = nn.Bidirectional(nn.RNN(gru(name="forward")),
                             nn.RNN(gru(name="backward"), reverse=True, keep_order=True),
                             name="birnn")(x, seq_lengths=lengths)
        s0 = jnp.tanh(dense(cfg.hidden, "W_s", cfg)(h[:, 0, cfg.hidden:]))   # h_bwd_1
        return h, s0


class DecoderStep(nn.Module):
    """One target position: (s_{i-1}, E y_{i-1}) and the source -> (s_i, t_i)."""

    cfg: RNNConfig

    @nn.compact
    def __call__(self, s, y_embedded, annotations, keys, src_mask):
        cfg = self.cfg
        query = dense(cfg.attn_dim, "W_a", cfg)(s)
        e = dense(1, "v_a", cfg, bias=False)(jnp.tanh(keys + query[:, None]))[..., 0]
        e = jnp.where(src_mask, e.astype(jnp.float32), -1e9)
        alpha = jax.nn.softmax(e, axis=-1).astype(annotations.dtype)
        c = jnp.einsum("bj,bjd->bd", alpha, annotations)
        t = dense(2 * cfg.maxout, "U_o", cfg)(jnp.concatenate([s, y_embedded, c], axis=-1))
        t = jnp.max(t.reshape(t.shape[:-1] + (cfg.maxout, 2)), axis=-1)           # maxout
        s, _ = nn.GRUCell(cfg.hidden, dtype=jnp.dtype(cfg.dtype),
                          param_dtype=jnp.dtype(cfg.param_dtype), name="gru")(
            s, jnp.concatenate([y_embedded, c], axis=-1))
        return s, t


def _step(cell, s, y_embedded, annotations, keys, src_mask):
    return cell(s, y_embedded, annotations, keys, src_mask)


class RNNSearch(nn.Module):
    """apply(params, src_tokens [batch, src_len], tgt_in_tokens [batch, tgt_len]) -> logits
    [batch, tgt_len, vocab]; method="encode" / "step" for decoding."""

    cfg: RNNConfig

    def setup(self):
        cfg = self.cfg
        check(cfg)
        self.embed = TokenEmbedding(cfg.vocab_size, cfg.embed_dim, dtype=jnp.dtype(cfg.dtype),
                                    param_dtype=jnp.dtype(cfg.param_dtype))
        self.encoder = Encoder(cfg)
        self.U_a = dense(cfg.attn_dim, "U_a", cfg, bias=False)
        self.decoder = DecoderStep(cfg)
        self.W_o = dense(cfg.vocab_size, "W_o", cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def __call__(self, src_tokens, tgt_in_tokens, deterministic: bool = True):
        cache = self.encode(src_tokens, deterministic)
        y = self.drop(self.embed(tgt_in_tokens), deterministic=deterministic)
        scan = nn.scan(_step, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast), out_axes=1)
        _, t = scan(self.decoder, cache["s"], y, cache["annotations"], cache["keys"],
                    cache["mask"])
        return self.W_o(self.drop(t, deterministic=deterministic))

    def encode(self, src_tokens, deterministic: bool = True):
        """The decoder's starting cache: s_0, annotations h, U_a h (computed once per source,
        as the paper notes) and the source mask."""
        cfg = self.cfg
        if max(src_tokens.shape[1], 1) > cfg.max_len:
            raise ValueError(f"a sequence of {src_tokens.shape[1]} tokens exceeds max_len "
                             f"{cfg.max_len}")
        mask = src_tokens != cfg.pad_id
        x = self.drop(self.embed(src_tokens), deterministic=deterministic)
        h, s0 = self.encoder(x, jnp.sum(mask, axis=1))
        return dict(s=s0, annotations=h, keys=self.U_a(h), mask=mask)

    def step(self, tokens, cache):
        """tokens [batch] (y_{i-1}) and the cache -> (logits [batch, vocab] of y_i, cache)."""
        s, t = self.decoder(cache["s"], self.embed(tokens), cache["annotations"], cache["keys"],
                            cache["mask"])
        return self.W_o(t), dict(cache, s=s)


def count_params(cfg: RNNConfig) -> int:
    tokens = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: RNNSearch(cfg).init(jax.random.key(0), tokens, tokens))
    return param_count(nn.meta.unbox(shapes["params"]))


def flops_per_token(cfg: RNNConfig, src_len: float, tgt_len: float) -> float:
    """Training FLOPs per target token, 6 per multiply-add parameter use as for the
    Transformer (2 forward, 4 backward): the encoder's GRUs and U_a over the source tokens; per
    target token the decoder's matrices, W_o, and the alignment over the src_len annotations
    (tanh(keys + query) then v_a: 2 n' each; the context sum: 2 * 2n each)."""
    m, n, a, l, v = cfg.embed_dim, cfg.hidden, cfg.attn_dim, cfg.maxout, cfg.vocab_size
    gru = lambda d_in: 3 * (d_in * n + n * n)           # noqa: E731
    encoder = 2 * gru(m) + 2 * n * a
    decoder = n * a + (n + m + 2 * n) * 2 * l + gru(m + 2 * n) + l * v
    attention = src_len * (a + 2 * n)
    return 6.0 * (encoder * src_len / tgt_len + decoder + attention)


# ----------------------------------------------------------------------------- decoding
def prefill(cfg: RNNConfig, params, src_tokens, max_len: int, bos_id: int, eos_id: int):
    """Encode the source and feed BOS: -> (logits of the first token, cache, step), as
    transformer.prefill."""
    model = RNNSearch(cfg)
    cache = model.apply({"params": params}, src_tokens, method="encode")

    def run(tokens, cache):
        logits, cache = model.apply({"params": params}, tokens, cache, method="step")
        return transformer.ban_padding(cfg, logits.astype(jnp.float32), eos_id), cache

    batch = src_tokens.shape[0]
    logits, cache = run(jnp.full((batch,), bos_id, jnp.int32), cache)
    return logits, cache, run


greedy_decode = functools.partial(transformer.greedy_decode, prefill_fn=prefill)
beam_search = functools.partial(transformer.beam_search, prefill_fn=prefill)
