"""Our CLIP with weights imported from a random transformers.CLIPModel gives its outputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from models import clip, hf  # noqa: E402


def _random_clip(path, eos_token_id, act):
    torch.manual_seed(0)
    text = transformers.CLIPTextConfig(
        vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=20, hidden_act=act,
        bos_token_id=97, eos_token_id=eos_token_id, pad_token_id=0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=30, patch_size=6, hidden_act=act)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=16, logit_scale_init_value=3.0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # move every weight off its init (LayerNorms at 1/0 would hide swaps)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def _tokens(rng, eos_token_id, batch=3, length=12):
    # Start token, words, end-of-text, then padding; the end-of-text sits at different places.
    tokens = np.zeros((batch, length), np.int64)
    for i, n in enumerate(rng.integers(2, length - 1, size=batch)):
        tokens[i, 0] = 97
        tokens[i, 1:n] = rng.integers(3, 90, size=n - 1)
        tokens[i, n] = eos_token_id if eos_token_id != 2 else 98  # legacy: pooled at the top id
    return tokens


@pytest.mark.parametrize("eos_token_id,act", [(98, "quick_gelu"), (2, "gelu")])
def test_clip_matches_transformers(tmp_path, eos_token_id, act):
    model = _random_clip(tmp_path, eos_token_id, act)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, 30, 30)).astype(np.float32)
    tokens = _tokens(rng, eos_token_id)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(pixels))
    cfg, params = hf.clip_from_pretrained(tmp_path)
    assert cfg.vision.act == cfg.text.act == act
    image_embeds, text_embeds, logits = clip.CLIP(cfg).apply(
        {"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)),
        jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(image_embeds, out.image_embeds.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(text_embeds, out.text_embeds.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=1e-4, rtol=0)


def test_import_rejects_other_models(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="not CLIP"):
        hf.clip_from_pretrained(tmp_path)
