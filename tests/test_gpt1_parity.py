"""GPT-1 import against transformers' OpenAIGPTDoubleHeadsModel (post-norm, learned positions):
LM logits, multiple-choice logits and L3 = mc_loss + lambda * lm_loss on one batch."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models import gpt, gpt_tasks, hf  # noqa: E402
from train import objectives  # noqa: E402

LAM = 0.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small random OpenAIGPTDoubleHeadsModel saved as safetensors, LayerNorms randomised too."""
    config = transformers.OpenAIGPTConfig(
        vocab_size=101, n_positions=24, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    torch.manual_seed(0)
    model = transformers.OpenAIGPTDoubleHeadsModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("openai-gpt")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def batch(seed=0):
    """Two examples of three answers, right-padded; the last token is the extract token."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 98, size=(2, 3, 16)).astype(np.int32)
    lengths = np.array([[16, 11, 7], [9, 14, 12]], np.int32)
    for i, j in np.ndindex(lengths.shape):
        tokens[i, j, lengths[i, j] - 1] = 100          # extract
        tokens[i, j, lengths[i, j]:] = 0               # padding
    return tokens, lengths, np.array([2, 0], np.int32)


def run_reference(model, tokens, lengths, labels):
    lm_labels = torch.tensor(np.where(np.arange(tokens.shape[-1]) < lengths[..., None], tokens,
                                      -100), dtype=torch.long)
    with torch.no_grad():
        out = model(torch.tensor(tokens, dtype=torch.long),
                    mc_token_ids=torch.tensor(lengths - 1, dtype=torch.long),
                    labels=lm_labels, mc_labels=torch.tensor(labels, dtype=torch.long))
    return out


def ours(path, tokens, lengths):
    cfg, params = hf.gpt1_from_pretrained(path)
    model = gpt_tasks.GPTForTasks(cfg, kind="multiple_choice", num_classes=tokens.shape[1])
    variables = {"params": {**params, "head": hf.gpt1_multiple_choice_head(path)}}
    return cfg, params, model.apply(variables, jnp.asarray(tokens), jnp.asarray(lengths))


def test_config_is_gpt1(reference):
    _, path = reference
    cfg, _ = hf.gpt1_from_pretrained(path)
    assert (cfg.norm, cfg.act, cfg.n_layer, cfg.d_model, cfg.n_ctx) == ("post", "gelu_tanh", 2,
                                                                        32, 24)


def test_lm_logits_match(reference):
    model, path = reference
    tokens, lengths, labels = batch()
    cfg, params = hf.gpt1_from_pretrained(path)
    flat = tokens.reshape(-1, tokens.shape[-1])
    logits = gpt.GPT(cfg).apply({"params": params}, jnp.asarray(flat))
    with torch.no_grad():
        want = model(torch.tensor(flat, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)


def test_multiple_choice_logits_and_l3_match(reference):
    model, path = reference
    tokens, lengths, labels = batch(1)
    out = run_reference(model, tokens, lengths, labels)
    _, _, (mc_logits, lm_logits) = ours(path, tokens, lengths)
    np.testing.assert_allclose(np.asarray(mc_logits), out.mc_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(lm_logits), out.logits.numpy(), atol=1e-4, rtol=0)
    l3, l2, l1 = objectives.auxiliary_loss(mc_logits, jnp.asarray(labels), lm_logits,
                                           jnp.asarray(tokens), jnp.asarray(lengths), LAM)
    np.testing.assert_allclose(float(l2), out.mc_loss.item(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(l1), out.loss.item(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(float(l3), out.mc_loss.item() + LAM * out.loss.item(), atol=1e-5,
                               rtol=0)


def test_rejects_other_families(reference, tmp_path):
    _, path = reference
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="not GPT-1"):
        hf.gpt1_from_pretrained(tmp_path)
