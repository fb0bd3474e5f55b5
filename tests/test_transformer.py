"""The encoder-decoder Transformer: Table 3's sizes, padding and causality, and an imported
transformers MarianMTModel: logits, greedy decoding against its generate(), beam search."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decode, hf, transformer
from models.layers import sinusoidal_positions

PAD, EOS, MAX_LEN = 66, 0, 12


def test_table_3_parameter_counts():
    """base 65M, big 213M (Table 3) with a shared vocabulary of 37,000 BPE tokens; base comes
    to 63.1M here: the paper's count is rounded from an unstated vocabulary size."""
    base = transformer.count_params(transformer.preset("base"))
    big = transformer.count_params(transformer.preset("big"))
    assert abs(base - 65e6) / 65e6 < 0.05 and base == 63_082_496
    assert abs(big - 213e6) / 213e6 < 0.01


def test_smaller_d_k_keeps_d_model():
    """Table 3 row B: d_k (= d_v here) set apart from d_model / h shrinks every attention
    projection and nothing else."""
    cfg = transformer.preset("tiny", d_k=5)
    shapes = transformer.abstract_params(cfg)
    attn = shapes["encoder"]["layer_0"]["attn"]
    assert attn["qkv"]["kernel"].shape == (64, 4, 3, 5) and attn["out"]["kernel"].shape == (4, 5, 64)
    full = transformer.preset("tiny")
    attention = 3 * cfg.n_layer * (4 * 64 * 4 * (16 - 5) + 3 * 4 * (16 - 5))  # W and b of q k v o
    assert transformer.count_params(full) - transformer.count_params(cfg) == attention
    src = jnp.array([[5, 6, 7, 0]])
    logits = transformer.Transformer(cfg).apply({"params": random_params(cfg)}, src, src)
    assert logits.shape == (1, 4, cfg.vocab_size)
    with pytest.raises(ValueError, match="d_k must be >= 0"):
        transformer.check(transformer.preset("tiny", d_k=-1))
    transformer.check(transformer.preset("tiny", n_head=3, d_k=8))   # h need not divide d_model


def test_sinusoid_layouts():
    interleaved, halves = sinusoidal_positions(9, 6), sinusoidal_positions(9, 6, "halves")
    np.testing.assert_array_equal(halves[:, :3], interleaved[:, 0::2])    # the sines
    np.testing.assert_array_equal(halves[:, 3:], interleaved[:, 1::2])    # the cosines
    assert np.isclose(halves[5, 4], np.cos(5 / 10000 ** (2 / 6)))


def random_params(cfg):
    """N(0, 0.1^2) weights, LayerNorm scales 1 + N(0, 0.1^2), drawn in numpy (nothing to
    compile)."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + 0.1 * rng.standard_normal(s.shape, np.float32),
        transformer.abstract_params(cfg))


def test_source_padding_and_future_targets_are_hidden():
    """(pre-norm and learned positions here; the Marian tests below cover post-norm and the
    sinusoid)"""
    cfg = transformer.preset("tiny", dropout=0.0, pad_id=0, positions="learned", norm="pre")
    src = jnp.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    tgt = jnp.array([[1, 3, 4, 5], [1, 6, 7, 8]])
    model = transformer.Transformer(cfg)
    params = random_params(cfg)
    apply = jax.jit(lambda src, tgt: model.apply({"params": params}, src, tgt))
    logits = apply(src, tgt)
    assert logits.shape == (2, 4, cfg.vocab_size)
    more_padding = jnp.pad(src, ((0, 0), (0, 3)))
    np.testing.assert_allclose(apply(more_padding, tgt)[0], logits[0], atol=1e-5)
    changed_future = apply(src, tgt.at[:, 2:].set(9))
    np.testing.assert_allclose(changed_future[:, :2], logits[:, :2], atol=1e-6)
    halves = jax.jit(lambda src, tgt: model.apply(
        {"params": params}, model.apply({"params": params}, src, method="encode"), src != 0, tgt,
        method="decode"))
    np.testing.assert_allclose(halves(src, tgt), logits, atol=1e-6)


def test_dropout_only_in_training():
    """Residual, embedding and attention dropout (every sub-layer, both attentions) act with
    deterministic=False and a dropout rng, and not otherwise."""
    cfg = transformer.preset("tiny", dropout=0.1, attn_dropout=0.1)
    without = transformer.preset("tiny", dropout=0.0, attn_dropout=0.0)
    src, tgt = jnp.array([[5, 6, 7, 0]]), jnp.array([[1, 3, 4]])
    params = random_params(cfg)

    @jax.jit
    def outputs(rng):
        def apply(c, **kw):
            return transformer.Transformer(c).apply({"params": params}, src, tgt, **kw)
        train = [apply(cfg, deterministic=False, rngs={"dropout": jax.random.fold_in(rng, i)})
                 for i in range(2)]
        return train, apply(cfg), apply(without)

    (a, b), evaluated, reference = outputs(jax.random.key(0))
    assert np.isfinite(a).all() and not np.allclose(a, b)
    np.testing.assert_allclose(evaluated, reference, atol=1e-6)


# ----------------------------------------------------------------------------- Marian
@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """A small random MarianMTModel with odd sizes, saved as safetensors. Its weights are moved
    far from their initialisation (LayerNorms less), and EOS favoured a little, so that greedy
    decoding ends some rows early and runs others to the length limit."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.MarianConfig(
        vocab_size=67, d_model=36, encoder_layers=2, decoder_layers=2, encoder_attention_heads=3,
        decoder_attention_heads=3, encoder_ffn_dim=52, decoder_ffn_dim=52,
        activation_function="relu", scale_embedding=True, share_encoder_decoder_embeddings=True,
        max_position_embeddings=40, pad_token_id=PAD, decoder_start_token_id=PAD,
        eos_token_id=EOS, forced_eos_token_id=EOS, static_position_embeddings=True)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.add_((0.05 if "shared" in name else 0.1 if "norm" in name else 1.0)
                       * torch.randn_like(p))
        model.final_logits_bias.normal_(0, 0.1)
        model.final_logits_bias[0, EOS] = 1.0
    path = tmp_path_factory.mktemp("marian")
    model.save_pretrained(path, safe_serialization=True)
    cfg, params = hf.marian_from_pretrained(path)
    src = np.random.default_rng(0).integers(1, PAD, (4, 9))
    for row, length in ((1, 6), (2, 4), (3, 8)):
        src[row, length:] = PAD
    return model, path, cfg, params, src


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg, params, src, tgt):
    return transformer.Transformer(cfg).apply({"params": params}, src, tgt)


def test_marian_logits_match(marian):
    torch = pytest.importorskip("torch")
    model, _, cfg, params, src = marian
    assert (cfg.sinusoid, cfg.norm, cfg.pad_id, cfg.final_logits_bias) == ("halves", "post", PAD,
                                                                           True)
    tgt = np.random.default_rng(1).integers(1, PAD, (4, 7))
    tgt[:, 0] = PAD                                   # decoder_start_token_id
    with torch.no_grad():
        want = model(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD),
                     decoder_input_ids=torch.tensor(tgt)).logits.numpy()
    got = forward(cfg, params, jnp.asarray(src), jnp.asarray(tgt))
    assert got.shape == want.shape == (4, 7, 67)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4


def test_greedy_decode_matches_marian_generate(marian):
    """generate(num_beams=1, do_sample=False) starting from decoder_start_token_id = pad, with
    padding banned (bad_words_ids, as Marian's generation configs do) and no EOS forced at the
    length limit; both stop a row at EOS and pad after it."""
    torch = pytest.importorskip("torch")
    model, _, cfg, params, src = marian
    with torch.no_grad():
        want = model.generate(torch.tensor(src), attention_mask=torch.tensor(src != PAD),
                              num_beams=1, do_sample=False, max_new_tokens=MAX_LEN,
                              bad_words_ids=[[PAD]], forced_eos_token_id=None).numpy()
    assert (want[:, 0] == PAD).all()
    got = np.asarray(transformer.greedy_decode(cfg, params, src, max_len=MAX_LEN, bos_id=PAD,
                                               eos_id=EOS))
    np.testing.assert_array_equal(got, want[:, 1:])
    ended = [EOS in row[:-1] for row in got]
    assert any(ended) and not all(ended)              # rows stop early and rows run on


def sequence_scores(cfg, params, src, out, alpha, penalty):
    """log P(y | x) / lp(|y|) by teacher forcing, |y| up to and including EOS (padding banned,
    as in decoding)."""
    out = np.pad(out, ((0, 0), (0, MAX_LEN - out.shape[1])), constant_values=PAD)
    tgt_in = np.concatenate([np.full((len(out), 1), PAD), out[:, :-1]], axis=1)
    logits = forward(cfg, params, jnp.asarray(src), jnp.asarray(tgt_in))
    logp = jax.nn.log_softmax(transformer.ban_padding(cfg, logits, EOS), axis=-1)
    token_logp = np.take_along_axis(np.asarray(logp), out[..., None], axis=-1)[..., 0]
    ended = out == EOS
    length = np.where(ended.any(1), ended.argmax(1) + 1, MAX_LEN)
    total = np.where(np.arange(MAX_LEN) < length[:, None], token_logp, 0.0).sum(1)
    return total / np.asarray(decode.length_penalty(length, alpha, penalty))


@pytest.mark.parametrize("penalty,alpha,improves", [("gnmt", 0.6, True), ("hf", 1.0, False)])
def test_beam_search_never_scores_worse_than_greedy(marian, penalty, alpha, improves):
    """On every row; with GNMT's penalty it finds better hypotheses than greedy on some."""
    _, _, cfg, params, src = marian
    greedy = np.asarray(transformer.greedy_decode(cfg, params, src, max_len=MAX_LEN, bos_id=PAD,
                                                  eos_id=EOS))
    beam, score = transformer.beam_search(cfg, params, src, 4, alpha, max_len=MAX_LEN,
                                          bos_id=PAD, eos_id=EOS, length_penalty=penalty,
                                          return_scores=True)
    beam_scores = sequence_scores(cfg, params, src, np.asarray(beam), alpha, penalty)
    greedy_scores = sequence_scores(cfg, params, src, greedy, alpha, penalty)
    np.testing.assert_allclose(beam_scores, score, rtol=1e-5, atol=1e-5)
    assert (beam_scores >= greedy_scores - 1e-5).all()
    assert (beam_scores > greedy_scores + 1e-3).any() == improves


def test_marian_import_checks_every_tensor(marian, tmp_path):
    """Another model type is refused; a missing tensor is named; the tied embedding copies and
    sinusoid tables older files hold are accepted when they are what the model uses, and named
    when not."""
    from safetensors.numpy import load_file, save_file
    _, path, cfg, params, _ = marian
    config = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="bart")))
    with pytest.raises(ValueError, match="not Marian"):
        hf.marian_from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(path / "model.safetensors")

    def load(**changes):
        save_file({k: v for k, v in {**tensors, **changes}.items() if v is not None},
                  tmp_path / "model.safetensors")
        return hf.marian_from_pretrained(tmp_path)

    with pytest.raises(ValueError, match="decoder.layers.1.encoder_attn.v_proj.bias"):
        load(**{"model.decoder.layers.1.encoder_attn.v_proj.bias": None})
    table = sinusoidal_positions(40, 36, "halves")
    older = {"lm_head.weight": tensors["model.shared.weight"],
             "model.encoder.embed_positions.weight": table,
             "model.decoder.embed_positions.weight": table}
    _, again = load(**older)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, params))
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        load(**dict(older, **{"lm_head.weight": tensors["model.shared.weight"] + 1}))
    with pytest.raises(ValueError, match="decoder.embed_positions.weight is not"):
        load(**dict(older, **{"model.decoder.embed_positions.weight":
                              sinusoidal_positions(40, 36)}))
