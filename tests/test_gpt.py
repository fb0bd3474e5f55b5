import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import gpt, hf
from models.attention import attend, mask_matrix
from models.layers import sinusoidal_positions


def test_gpt2_124m_matches_transformers_count():
    assert gpt.count_params(gpt.preset("gpt2-124m")) == 124_439_808


def test_gpt3_175b_is_175b():
    n = gpt.count_params(gpt.preset("gpt3-175b"))
    assert abs(n - 175e9) / 175e9 < 0.01


@pytest.mark.parametrize("name,size", [("gpt3-125m", 125e6), ("gpt3-350m", 350e6),
                                       ("gpt3-760m", 760e6), ("gpt3-1.3b", 1.3e9),
                                       ("gpt3-2.7b", 2.7e9), ("gpt3-6.7b", 6.7e9),
                                       ("gpt3-13b", 13e9), ("gpt3-175b", 175e9)])
def test_every_gpt3_preset_counts_its_name_within_2_percent(name, size):
    assert abs(gpt.count_params(gpt.preset(name)) - size) / size < 0.02


def test_gpt3_125m_and_gpt1_sizes():
    assert abs(gpt.count_params(gpt.preset("gpt3-125m")) - 125e6) / 125e6 < 0.01
    assert abs(gpt.count_params(gpt.preset("gpt1")) - 117e6) / 117e6 < 0.01


def test_unknown_preset_names_choices():
    with pytest.raises(ValueError, match="unknown GPT preset"):
        gpt.preset("gpt5")


def test_sinusoidal_encoding_values():
    pe = sinusoidal_positions(50, 16)
    pos, i = 7, 3
    assert np.isclose(pe[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 16)))
    assert np.isclose(pe[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 16)))


def test_masks():
    causal = np.asarray(mask_matrix("causal", 5, 5))
    assert (causal == np.tril(np.ones((5, 5), bool))).all()
    local = np.asarray(mask_matrix("local", 6, 6, window=2))
    assert local[4].tolist() == [False, False, False, True, True, False]
    assert np.asarray(mask_matrix("full", 3, 4)).all()


@pytest.mark.parametrize("kind,window", [("causal", None), ("local", 3), ("full", None)])
def test_attention_kernel_matches_explicit_softmax(kind, window):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 7, 4, 8))
    fast = attend(q, k, v, kind=kind, window=window)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    logits = jnp.where(mask_matrix(kind, 7, 7, window), logits, -1e30)
    ref = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
    np.testing.assert_allclose(fast, ref, atol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
    cfg = gpt.preset("tiny", vocab_size=64, n_layer=2, d_model=32, n_head=2, local_window=4)
    model = gpt.GPT(cfg)
    tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, 64)
    params = model.init(jax.random.key(0), tokens)["params"]
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, tokens.at[:, 10:].set(3))
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_context_longer_than_model_is_an_error():
    cfg = gpt.preset("tiny", n_ctx=8)
    with pytest.raises(ValueError, match="exceeds the context"):
        gpt.GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32))


def test_gpt2_parity_with_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=3,
                                     n_head=4)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters so the import is really checked
        for name, p in ref.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = hf.gpt2_from_pretrained(tmp_path)
    tokens = np.random.default_rng(0).integers(0, 101, (2, 32))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got = gpt.GPT(cfg).apply({"params": params}, jnp.asarray(tokens, jnp.int32))
    assert got.shape == (2, 32, 101)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4


def test_import_rejects_another_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(tmp_path, safe_serialization=True)
    import json
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["n_layer"] = 2
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="h.1"):
        hf.gpt2_from_pretrained(tmp_path)


def test_decode_costs_count_weights_and_the_mean_cache():
    cfg = gpt.preset("gpt2-124m")
    n = gpt.matmul_params(cfg)
    # 10 prompt tokens, 5 new ones: steps attend to 10..14 keys, 12 on average
    keys = 12 * 12 * 12 * 64                      # L h d_head t
    assert gpt.decode_flops_per_token(cfg, 10, 5) == 2 * n + 4 * keys
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    assert gpt.decode_bytes_per_step(cfg, 3, 10, 5) == (
        n * itemsize + 2 * keys * 3 * jnp.dtype(cfg.dtype).itemsize)
