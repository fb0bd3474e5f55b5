"""CLIP's modified ResNet (models/clip_resnet.py): open_clip's outputs from imported weights,
the released models' sizes, and CLIP trained with it as the image encoder."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import clip, convnets

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from open_clip.modified_resnet import ModifiedResNet  # noqa: E402


def _perturbed(model):
    """Weights off their init and BatchNorm statistics away from 0/1, so a swapped or dropped
    tensor shows (bn3 starts at zero scale, which would hide a whole residual branch)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    return model.eval()


@pytest.mark.parametrize("side", [70, 64])
def test_matches_open_clip_modified_resnet(side):
    # 70: odd maps (35, 17, 8, 4, 2) where the average pools drop a row; 64: even ones.
    torch.manual_seed(1)
    ref = _perturbed(ModifiedResNet(layers=[1, 2, 1, 1], output_dim=24, heads=4,
                                    image_size=side, width=16))
    x = np.random.default_rng(0).standard_normal((2, 3, side, side)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    module, variables = convnets.from_open_clip("clip-rn50", ref.state_dict(),
                                                layers=(1, 2, 1, 1), width=16, heads=4)
    assert module.num_classes == 24
    assert variables["params"]["attnpool"]["positional_embedding"].shape == (5, 512)
    got = module.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(want).max() > 0.5   # not a comparison of near-zero outputs


def test_open_clip_rn50_architecture():
    """open_clip's RN50 image tower (its config, random weights): the parameter count of the
    released 224 px model, and at 64 px (E_pos of 2 x 2 + 1 rows) every tensor imported and the
    same image features. The whole CLIP RN50 preset has the released model's count."""
    cfg = open_clip.get_model_config("RN50")
    v = cfg["vision_cfg"]
    assert (tuple(v["layers"]), v["width"], cfg["embed_dim"], v["image_size"]) == (
        convnets.CLIP_RESNETS["clip-rn50"])
    assert convnets.count_params("clip-rn50") == 38_316_896
    n = sum(x.size for x in jax.tree.leaves(clip.abstract_params(clip.preset("rn50"))))
    assert n == 102_007_137
    torch.manual_seed(2)
    ref = _perturbed(ModifiedResNet(v["layers"], cfg["embed_dim"], heads=v["width"] * 32 // 64,
                                    image_size=64, width=v["width"]))
    assert sum(p.numel() for p in ref.parameters()) == 38_316_896 - (49 - 4) * 2048
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    module, variables = convnets.from_open_clip("clip-rn50", ref.state_dict())
    assert module.heads == 32 and module.num_classes == 1024
    got = jax.jit(module.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=0)


def test_import_rejects_a_mismatch():
    ref = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=8, heads=2, image_size=32, width=8)
    with pytest.raises(ValueError, match="missing"):   # the preset has more blocks
        convnets.from_open_clip("clip-rn50", ref.state_dict(), width=8, heads=2)
    with pytest.raises(ValueError, match="not a CLIP ResNet"):
        convnets.from_open_clip("resnet18", ref.state_dict())


def test_tiny_variant_shapes():
    module = convnets.create("clip-rn-tiny")
    x = jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    params = variables["params"]
    assert [params[f"conv{i}"]["kernel"].shape[-1] for i in (1, 2, 3)] == [4, 4, 8]
    # stem stride 1, then four halvings (the stem's pooling, stages 2-4): a 2x2 map of 32 w
    assert params["attnpool"]["positional_embedding"].shape == (2 * 2 + 1, 256)
    assert "proj_conv" in params["conv2_1"] and "proj_conv" not in params.get("conv2_2", {})
    assert jax.eval_shape(module.apply, variables, x).shape == (2, 64)
    with pytest.raises(ValueError, match="heads"):
        jax.eval_shape(convnets.create("clip-rn-tiny", heads=3).init, jax.random.key(0), x)


def test_unknown_image_encoder_raises():
    with pytest.raises(ValueError, match="unknown image_encoder"):
        dataclasses.replace(clip.preset("tiny"), image_encoder="resnet-9000")


def test_clip_with_resnet_trains_batch_stats():
    """CLIP with the modified ResNet tower: no W_i, unit embeddings, and a training step that
    updates BatchNorm's running statistics and lowers the loss; evaluation keeps them."""
    from experiments import clip as experiment
    cfg = dataclasses.replace(clip.preset("tiny"), image_encoder="clip-rn-tiny")
    model = clip.CLIP(cfg)
    variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *clip.dummy_inputs(cfg)))
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    assert "W_i" not in params and "attnpool" in params["image_encoder"]
    batch = {"images": jax.random.normal(jax.random.key(1), (8, 32, 32, 1)),
             "tokens": jax.random.randint(jax.random.key(2), (8, 16), 1, cfg.text.vocab_size)}
    loss_fn = experiment.clip_loss_fn(model)

    @jax.jit
    def step(params):
        (loss, (_, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, batch, jax.random.key(0))
        i_e = model.apply({"params": params, **state}, batch["images"], method="encode_image")
        eval_loss, (_, eval_state) = loss_fn(params, state, batch, None)  # running statistics
        return (loss, new_state, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), i_e,
                eval_loss, eval_state)

    loss0, new_state, params1, i_e, eval_loss, eval_state = step(params)
    np.testing.assert_allclose(jnp.linalg.norm(i_e, axis=-1), 1.0, rtol=1e-5)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state, state)
    assert min(jax.tree.leaves(moved)) > 0
    assert float(step(params1)[0]) < float(loss0)
    kept = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), eval_state, state)
    assert max(jax.tree.leaves(kept)) == 0 and np.isfinite(float(eval_loss))
    assert float(eval_loss) != pytest.approx(float(loss0), rel=1e-3)  # batch vs running stats


def test_experiment_with_resnet_tower(tmp_path):
    """The experiment trains the ResNet tower and its evaluators read BatchNorm's running
    statistics (the zero-shot embeddings and the probe's features)."""
    from experiments import clip as experiment
    from experiments.configs import clip as configs
    config = configs.get_config("tiny-rn")
    config.train.steps, config.train.batch_size = 2, 16
    config.train.eval_every, config.train.log_every, config.train.warmup_steps = 2, 1, 1
    for name in ("val", "test", "val_zeroshot"):
        del config.evals[name]
    config.eval.tasks = "heldout_pairs"
    config.evals.test_zeroshot.images = 20
    config.evals.test_probe.update(images=20, train_images=40, val_images=20, Cs=(1.0,))
    experiment.main(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 1 and 0.0 <= test[0]["linear_probe_top1"] <= 1.0
    assert 0.0 <= test[0]["zeroshot_top1"] <= 1.0
    timed = [r for r in rows if r["split"] == "train" and "mfu" in r]
    assert timed and all(0.0 < r["mfu"] < 1.0 for r in timed)
