"""RNNsearch (Bahdanau et al. 2015), the recurrent baseline: shapes, its size against the
Transformer's, source padding, decoding against the teacher-forced model, a training step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from experiments import translate
from experiments.configs import defaults
from experiments.configs import transformer as configs
from models import decode, rnn_seq2seq, transformer

CFG = rnn_seq2seq.preset("tiny", vocab_size=53, embed_dim=12, hidden=10, attn_dim=9,
                         maxout=7, dropout=0.0, max_len=14)
EOS = 2
SRC = jnp.array([[5, 6, 7, 8, EOS, 0, 0], [9, 10, 11, 12, 13, 14, EOS], [20, EOS, 0, 0, 0, 0, 0]])
TGT = jnp.array([[1, 30, 31, 32, EOS], [1, 33, 34, EOS, 0], [1, 40, 41, 42, 43]])


@pytest.fixture(scope="module")
def params():
    """Weights scaled up, so that the outputs depend on the source, and EOS made likelier, so
    that some outputs end before max_len."""
    model = rnn_seq2seq.RNNSearch(CFG)
    p = jax.tree.map(lambda x: 3.0 * x, nn.meta.unbox(model.init(jax.random.key(0), SRC, TGT)))
    p["params"]["W_o"]["bias"] = p["params"]["W_o"]["bias"].at[EOS].add(2.0)
    return p["params"]


def forward(params, src, tgt):
    return rnn_seq2seq.RNNSearch(CFG).apply({"params": params}, src, tgt)


def test_presets_mirror_the_config_defaults_and_the_baseline_matches_the_transformer():
    for name in rnn_seq2seq.PRESETS:
        assert defaults.rnn(name).to_dict() == dataclasses.asdict(rnn_seq2seq.preset(name))
    assert defaults.rnn().to_dict() == dataclasses.asdict(rnn_seq2seq.RNNConfig())
    config = configs.get_config("rnn")
    rnn = translate.model_config(config)
    config.model.arch = "transformer"
    tf = translate.model_config(config)
    assert isinstance(rnn, rnn_seq2seq.RNNConfig) and isinstance(tf, transformer.TransformerConfig)
    assert (rnn.vocab_size, rnn.max_len) == (tf.vocab_size, tf.max_len)     # one data pipeline
    n_rnn, n_tf = rnn_seq2seq.count_params(rnn), transformer.count_params(tf)
    assert abs(n_rnn - n_tf) / n_tf < 0.05, (n_rnn, n_tf)
    # RNNsearch-50's sizes: m 620, n 1000 (both directions and the decoder), l 500
    big = rnn_seq2seq.count_params(rnn_seq2seq.preset("rnnsearch"))
    assert 60e6 < big < 80e6


def test_logits_shape_and_source_padding_is_hidden(params):
    logits = forward(params, SRC, TGT)
    assert logits.shape == (3, 5, CFG.vocab_size)
    more_padding = jnp.pad(SRC, ((0, 0), (0, 4)))
    np.testing.assert_allclose(forward(params, more_padding, TGT), logits, atol=1e-5)
    # the decoder reads its inputs in order: a change at position 3 leaves 0-2 alone
    changed = forward(params, SRC, TGT.at[:, 3:].set(17))
    np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-6)
    assert not np.allclose(changed[:, 3:], logits[:, 3:])
    # each source changes its own translation
    other = forward(params, SRC.at[0, 1].set(25), TGT)
    assert not np.allclose(other[0], logits[0]) and np.allclose(other[1:], logits[1:])


def score(params, src, out, alpha=0.6):
    """log P(out | src) / lp(|out|) under the teacher-forced model (eos included)."""
    tgt_in = jnp.concatenate([jnp.ones((out.shape[0], 1), jnp.int32), out[:, :-1]], axis=1)
    logits = transformer.ban_padding(CFG, forward(params, src, tgt_in), EOS)
    logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), out[..., None], -1)[..., 0]
    ended = out == EOS
    length = np.where(ended.any(1), ended.argmax(1) + 1, out.shape[1])
    total = np.where(np.arange(out.shape[1]) < length[:, None], logp, 0.0).sum(1)
    return total / np.asarray(decode.length_penalty(length, alpha))


def test_greedy_decoding_is_the_teacher_forced_argmax_and_beam_scores_higher(params):
    max_len = 9
    out = np.asarray(rnn_seq2seq.greedy_decode(CFG, params, SRC, max_len=max_len, bos_id=1,
                                               eos_id=EOS))
    assert out.shape[0] == 3 and 1 <= out.shape[1] <= max_len and out.dtype == np.int32
    ended = [EOS in row for row in out]
    assert any(ended) and not all(ended)
    for row in out[ended]:                           # tokens, eos, then padding
        assert not row[list(row).index(EOS) + 1:].any()
    assert len({tuple(r) for r in out}) == 3
    padded = np.pad(out, ((0, 0), (0, max_len - out.shape[1])))
    tgt_in = np.concatenate([np.ones((3, 1), np.int32), padded[:, :-1]], axis=1)
    logits = transformer.ban_padding(CFG, forward(params, SRC, jnp.asarray(tgt_in)), EOS)
    best = np.asarray(jnp.argmax(logits, -1))
    for r in range(3):                               # the step agrees with the scanned decoder
        n = list(padded[r]).index(EOS) + 1 if EOS in padded[r] else max_len
        np.testing.assert_array_equal(best[r, :n], padded[r, :n])
    beam, scores = rnn_seq2seq.beam_search(CFG, params, SRC, 3, 0.6, max_len=max_len, bos_id=1,
                                           eos_id=EOS, return_scores=True)
    beam = np.pad(np.asarray(beam), ((0, 0), (0, max_len - beam.shape[1])))
    np.testing.assert_allclose(score(params, SRC, beam), scores, rtol=1e-4, atol=1e-4)
    assert (score(params, SRC, beam) >= score(params, SRC, padded) - 1e-4).all()


def test_a_training_step_lowers_the_loss_on_a_fixed_batch():
    config = configs.get_config("rnn")
    config.rnn.update(dataclasses.asdict(CFG))
    config.model.update(vocab_size=CFG.vocab_size, max_len=CFG.max_len)
    built = translate.build(config, 7, 4)
    assert isinstance(built.model, rnn_seq2seq.RNNSearch) and built.flops > 0
    batch = {"src": SRC, "tgt_in": TGT[:, :-1], "tgt_out": TGT[:, 1:],
             "weights": (TGT[:, 1:] != 0).astype(jnp.float32), "index": jnp.arange(3)}
    params = built.init_fn(jax.random.key(0))["params"]
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def loss(p):
        return built.loss_fn(p, {}, batch, None)[0]
    before, grads = jax.value_and_grad(loss)(params)
    updates, _ = opt.update(grads, state, params)
    after = loss(optax.apply_updates(params, updates))
    assert float(after) < float(before) - 0.01
    assert float(before) == pytest.approx(np.log(CFG.vocab_size), rel=0.1)   # chance at init
