"""Decoding with a key/value cache: the cached attention against the full one, GPT's cached
generation against its uncached forward and against transformers' GPT2LMHeadModel, and
experiments.generate on both kinds of checkpoint."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import attention, decode, gpt, hf


def zeros_cache(model, *args, **kwargs):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@pytest.mark.parametrize("mask,window", [("causal", None), ("local", 3)])
def test_cached_attention_matches_full_attention(mask, window):
    """A prefill of 4 positions then one position per call, with left padding in one row,
    gives the outputs of one full pass."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 20))
    pad = jnp.arange(9)[None, :] >= jnp.array([[0], [2]])
    full_model = attention.MultiHeadAttention(4, 5, mask=mask, window=window)
    params = nn.meta.unbox(full_model.init(jax.random.key(1), x))["params"]
    want = full_model.apply({"params": params}, x, pad)
    model = attention.MultiHeadAttention(4, 5, mask=mask, window=window, decode=True)
    cache = zeros_cache(model, x, pad)
    assert cache["cached_key"].shape == (2, 9, 4, 5)
    step = jax.jit(lambda cache, x: model.apply({"params": params, "cache": cache}, x, pad,
                                                mutable=["cache"]))
    outs = []
    for start, stop in [(0, 4)] + [(t, t + 1) for t in range(4, 9)]:
        out, v = step(cache, x[:, start:stop])
        cache = v["cache"]
        outs.append(out)
    assert int(cache["cache_index"]) == 9
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1, 2:], want[1, 2:], atol=1e-5)   # real positions only


def test_cross_attention_cache_keeps_the_memory():
    """The prefill projects the memory once; later steps (memory=None) attend to the cached
    keys, values and mask, as a full pass does."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    memory = jax.random.normal(jax.random.key(1), (2, 7, 12))
    memory_mask = jnp.arange(7)[None, :] < jnp.array([[7], [4]])
    full_model = attention.CrossAttention(3, 4)
    params = nn.meta.unbox(full_model.init(jax.random.key(2), x, memory, memory_mask))["params"]
    assert params["kv"]["kernel"].shape == (12, 3, 2, 4)
    want = full_model.apply({"params": params}, x, memory, memory_mask)
    model = attention.CrossAttention(3, 4, decode=True)
    cache = zeros_cache(model, x, memory, memory_mask)
    out, v = model.apply({"params": params, "cache": cache}, x[:, :1], memory, memory_mask,
                         mutable=["cache"])
    step = jax.jit(lambda x: model.apply({"params": params, "cache": v["cache"]}, x, None,
                                         mutable=["cache"])[0])
    outs = [out] + [step(x[:, t:t + 1]) for t in range(1, 5)]
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, atol=1e-5)
    with pytest.raises(ValueError, match="prefill"):
        model.apply({"params": params}, x[:, :1], None, mutable=["cache"])


# ----------------------------------------------------------------------------- GPT generation
CONFIGS = {   # odd sizes; GPT-1's post-norm, GPT-2's pre-norm, GPT-3's banded layers
    "gpt1": gpt.GPTConfig(vocab_size=61, n_ctx=20, n_layer=2, n_head=3, d_model=36, norm="post",
                          dropout=0.0, attn_dropout=0.0, scale_residual_init=False),
    "gpt2": gpt.GPTConfig(vocab_size=61, n_ctx=20, n_layer=2, n_head=3, d_model=36,
                          dropout=0.0, attn_dropout=0.0),
    "gpt3": gpt.GPTConfig(vocab_size=61, n_ctx=20, n_layer=2, n_head=3, d_model=36,
                          local_window=3, dropout=0.0, attn_dropout=0.0),
}
PROMPTS = [[5, 7, 9, 11, 3], [1, 2], [40, 41, 42, 43, 44, 45, 46]]


def random_params(cfg, seed=0):
    """N(0, 0.3^2) weights (LayerNorm scales 1 + N(0, 0.3^2)), far from the small
    initialisation, so greedy decoding does not just repeat; drawn in numpy (nothing to
    compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (path[-1].key == "scale") + 0.3 * rng.standard_normal(s.shape, np.float32),
        gpt.abstract_params(cfg))


def uncached_greedy(cfg, params, prompt, n, window=None):
    """argmax of the full forward pass, re-run on the whole text for every token (the last
    `window` tokens of it once the text outgrows the context). The text sits at the start of a
    fixed [1, n_ctx] buffer, so one compiled pass serves every length (causal attention)."""
    forward = jax.jit(lambda p, t: gpt.GPT(cfg).apply({"params": p}, t)[0])
    tokens = list(prompt)
    for _ in range(n):
        context = tokens[-window:] if window and len(tokens) >= cfg.n_ctx else tokens
        buffer = np.zeros((1, cfg.n_ctx), np.int32)
        buffer[0, :len(context)] = context
        tokens.append(int(jnp.argmax(forward(params, buffer)[len(context) - 1])))
    return tokens[len(prompt):]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_greedy_matches_uncached_decoding(name):
    """Left-padded prompts of three lengths, decoded together with the cache, give each
    prompt's tokens of the uncached argmax loop (banded layers included)."""
    cfg = CONFIGS[name]
    params = random_params(cfg)
    got = gpt.generate_batch(cfg, params, PROMPTS, 9, jax.random.key(0))
    want = [uncached_greedy(cfg, params, p, 9) for p in PROMPTS]
    assert got == want
    assert len({tuple(w) for w in want}) == 3 and any(len(set(w)) > 2 for w in want)


def test_batched_equals_one_prompt_at_a_time():
    """The most padded row of the batch (the shortest prompt) decodes as it does alone."""
    cfg = CONFIGS["gpt3"]
    params = random_params(cfg)
    batched = gpt.generate_batch(cfg, params, PROMPTS, 9, jax.random.key(0))
    assert gpt.generate_batch(cfg, params, [PROMPTS[1]], 9, jax.random.key(0)) == [batched[1]]


def test_stop_tokens_end_each_row_on_its_own():
    cfg = CONFIGS["gpt2"]
    params = random_params(cfg)
    full = gpt.generate_batch(cfg, params, PROMPTS, 9, jax.random.key(0))
    stop = full[0][3]
    got = gpt.generate_batch(cfg, params, PROMPTS, 9, jax.random.key(0), stop_tokens=(stop,))
    assert got == [row[:row.index(stop)] if stop in row else row for row in full]
    assert len(got[0]) == full[0].index(stop)


def test_generate_keeps_its_semantics_past_the_context():
    """generate(): greedy at temperature 0, the cache while the text fits the context, then a
    window of the last n_ctx - 1 tokens, as the uncached loop."""
    cfg = CONFIGS["gpt3"]
    params = random_params(cfg, seed=1)
    got = gpt.generate(cfg, params, [3, 1, 4, 1, 5], 24, jax.random.key(0), temperature=0)
    assert got == uncached_greedy(cfg, params, [3, 1, 4, 1, 5], 24, window=cfg.n_ctx - 1)
    with pytest.raises(ValueError, match="at least one token"):
        gpt.generate(cfg, params, [], 3, jax.random.key(0))


def test_sampling_is_reproducible_and_narrowed_by_top_k():
    cfg = CONFIGS["gpt2"]
    params = random_params(cfg)
    draw = lambda seed, **kw: gpt.generate_batch(cfg, params, PROMPTS, 9,  # noqa: E731
                                                 jax.random.key(seed), temperature=1.0, **kw)
    assert draw(0) == draw(0) and draw(0) != draw(1)
    greedy = gpt.generate_batch(cfg, params, PROMPTS, 9, jax.random.key(0))
    assert draw(1, top_k=1) == greedy


def test_prompt_and_new_tokens_must_fit_the_context():
    cfg = CONFIGS["gpt2"]
    with pytest.raises(ValueError, match="do not fit the context of 20"):
        gpt.generate_batch(cfg, random_params(cfg), [[1] * 15], 6, jax.random.key(0))


def test_filter_logits_top_k_and_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
    traced = jax.jit(decode.filter_logits)

    def kept(top_k=0, top_p=1.0):
        static = np.isfinite(np.asarray(decode.filter_logits(logits, top_k, top_p)))
        assert (np.isfinite(np.asarray(traced(logits, top_k, top_p))) == static).all()
        return static[0].tolist()
    assert kept(top_k=2) == [True, False, True, False]
    assert kept(top_p=0.8) == [True, False, True, False]      # 0.5 + 0.3 reaches 0.8
    assert kept(top_p=0.81) == [True, False, True, True]
    assert kept(top_p=0.1) == [True, False, False, False]     # the most probable always stays
    assert kept(top_k=3, top_p=0.9) == [True, False, True, True]   # 0.8 of the top 3's 0.95


def test_truncate_at_stop_strings():
    assert decode.truncate_at_stop("a = 1\n\ndef f():", ["\n\n", "def"]) == "a = 1"
    assert decode.truncate_at_stop("no stop here", ["\n\n"]) == "no stop here"


def test_gpt2_greedy_matches_transformers_generate(tmp_path):
    """Greedy tokens of transformers' GPT2LMHeadModel.generate, token for token, on left-padded
    prompts of two lengths, through models.hf.gpt2_from_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=97, n_positions=40, n_embd=36, n_layer=2,
                                     n_head=3, bos_token_id=96, eos_token_id=96)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():   # weights far from the initialisation: varied greedy tokens
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = hf.gpt2_from_pretrained(tmp_path)
    prompts = [[11, 22, 33, 44, 55, 66, 77], [8, 9, 10]]
    tokens, mask = gpt.left_pad(prompts)
    with torch.no_grad():
        want = ref.generate(torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long),
                            max_new_tokens=12, do_sample=False, pad_token_id=0)
    want = [row[tokens.shape[1]:].tolist() for row in want]
    want = [row[:row.index(96)] if 96 in row else row for row in want]
    got = gpt.generate_batch(cfg, params, prompts, 12, jax.random.key(0), stop_tokens=(96,))
    assert got == want
    assert any(len(set(row)) > 3 for row in got)


# ----------------------------------------------------------------------------- experiments.generate
def byte_level_files(directory):
    """GPT-2 vocab.json + merges.txt of the 256 byte characters and <|endoftext|>, no merges."""
    from tokenizers import pre_tokenizers
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def test_generate_experiment_reads_gpt2_directories_and_workdirs(tmp_path, capsys):
    """experiments.generate on a transformers GPT-2 directory and on a pretrain_lm workdir
    (config.json, checkpoints/<step>/, tokenizer.json): the same tokens as generate_batch, and
    the command line prints the continuation and its speed."""
    transformers = pytest.importorskip("transformers")
    import ml_collections

    from data import tokenizer as tokenization
    from experiments import generate as cli
    from train.checkpoint import Checkpointer
    hf_dir, workdir = tmp_path / "gpt2", tmp_path / "run"
    hf_dir.mkdir(), workdir.mkdir()
    vocab = byte_level_files(hf_dir)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=24, n_layer=1, n_head=2)).save_pretrained(hf_dir)
    cfg, params, tok = cli.load_model(hf_dir)
    prompt = tok.encode("def f(x):")
    assert tok.decode(prompt) == "def f(x):" and len(prompt) == 9
    new = gpt.generate_batch(cfg, params, [prompt], 5, None, stop_tokens=(tok.eot_id,))[0]

    tokenization.from_gpt2_files(hf_dir / "vocab.json", hf_dir / "merges.txt").save(
        workdir / "tokenizer.json")
    config = ml_collections.ConfigDict({"model": dataclasses.asdict(cfg), "data": {}})
    (workdir / "config.json").write_text(config.to_json())
    ckpt = Checkpointer(workdir)
    ckpt.save(7, {"params": params}, {})
    ckpt.wait()
    ckpt.close()
    cfg2, params2, tok2 = cli.load_model(workdir)
    assert cfg2 == cfg and tok2.encode("def f(x):") == prompt
    assert jax.tree.all(jax.tree.map(np.array_equal, params2, params))

    cli.FLAGS(["generate", f"--workdir={workdir}", "--prompt=def f(x):",
               "--max_new_tokens=5", "--temperature=0"])
    try:
        cli.main(["generate"])
    finally:
        cli.FLAGS.unparse_flags()
    out = capsys.readouterr()
    assert out.out == "def f(x):" + tok.decode(new) + "\n"
    assert "9 prompt tokens" in out.err and "prefill" in out.err and "tokens/s" in out.err
