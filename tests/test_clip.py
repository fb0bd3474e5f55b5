import json
import math
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from models import clip
from train import objectives, optim
from train.evaluators import clip_evals
from conftest import digit_folder, simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(**overrides) -> clip.CLIPConfig:
    cfg = clip.preset("tiny")
    return clip.CLIPConfig(**{**cfg.__dict__, **overrides})


def init(cfg, seed=0):
    variables = clip.CLIP(cfg).init(jax.random.key(seed), *clip.dummy_inputs(cfg))
    return nn.meta.unbox(variables)["params"]


# --------------------------------------------------------------------------- loss
def test_clip_loss_hand_computed():
    logits = jnp.array([[2.0, 0.0], [1.0, 3.0]])
    # Each image over the texts (rows): both correct pairs beat the other by 2.
    rows = math.log(1 + math.exp(-2))
    # Each text over the images (columns): by 1 for text 0, by 3 for text 1.
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    assert float(objectives.clip_loss(logits)) == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_clip_loss_symmetry():
    logits = jax.random.normal(jax.random.key(0), (6, 6)) * 3
    loss = objectives.clip_loss(logits)
    # Swapping the roles of images and texts, or relabelling the pairs, changes nothing.
    np.testing.assert_allclose(objectives.clip_loss(logits.T), loss, rtol=1e-6)
    perm = jnp.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_allclose(objectives.clip_loss(logits[perm][:, perm]), loss, rtol=1e-6)
    # Perfectly separated pairs cost nothing; uniform logits cost log(n).
    assert float(objectives.clip_loss(100 * jnp.eye(4))) < 1e-6
    assert float(objectives.clip_loss(jnp.zeros((4, 4)))) == pytest.approx(math.log(4))


# --------------------------------------------------------------------------- model
def test_embeddings_normalised_and_temperature_init():
    cfg = tiny()
    params = init(cfg)
    assert float(params["t"]) == pytest.approx(math.log(1 / 0.07))
    x, tokens = clip.dummy_inputs(cfg, batch=3)
    x = jax.random.normal(jax.random.key(1), x.shape)
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 1, cfg.text.vocab_size)
    i_e, t_e, logits = clip.CLIP(cfg).apply({"params": params}, x, tokens)
    assert i_e.shape == (3, cfg.embed_dim) and t_e.shape == (2, cfg.embed_dim)
    np.testing.assert_allclose(jnp.linalg.norm(i_e, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(t_e, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(logits, i_e @ t_e.T / 0.07, rtol=1e-5)


def test_temperature_clamp():
    cfg = tiny()
    params = init(cfg)
    model = clip.CLIP(cfg)
    scale = lambda t: model.apply({"params": {**params, "t": jnp.float32(t)}},  # noqa: E731
                                  method="logit_scale")
    assert float(scale(math.log(50.0))) == pytest.approx(50.0, rel=1e-6)
    assert float(scale(10.0)) == pytest.approx(100.0, rel=1e-6)  # exp(10) clipped to 100
    assert float(jax.grad(scale)(10.0)) == 0.0          # while clipped, t gets no gradient
    assert float(jax.grad(scale)(math.log(50.0))) == pytest.approx(50.0, rel=1e-5)
    x, tokens = clip.dummy_inputs(cfg, batch=2)
    _, _, logits = model.apply({"params": {**params, "t": jnp.float32(10.0)}}, x, tokens)
    assert float(jnp.abs(logits).max()) <= 100.0 + 1e-4


def test_weight_decay_covers_weights_not_gains_biases_or_temperature():
    """CLIP decays every weight but gains and biases (section 2.5): W_i, W_t and the class
    token too, as the preset's multipliers say."""
    from experiments.configs import clip as configs
    rules = configs.get_config("tiny").train.wd_mults
    mask = optim.wd_multipliers(init(tiny()), rules)
    assert mask["W_i"] and mask["W_t"] and not mask["t"]
    assert mask["image_encoder"]["class_embedding"] == 1.0
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert all(v for k, v in flat.items() if k != "t" and not k.endswith(("bias", "scale")))
    assert not any(v for k, v in flat.items() if k.endswith(("bias", "scale")))


def test_fixed_temperature_has_no_parameter():
    cfg = tiny(learn_temperature=False)
    params = init(cfg)
    assert "t" not in params
    scale = clip.CLIP(cfg).apply({"params": params}, method="logit_scale")
    assert float(scale) == pytest.approx(1 / 0.07, rel=1e-6)


def test_flops_per_pair_by_hand():
    # tiny: ViT 3 x 64 on 16 patches of 8x8x1 (+ class token), text 2 x 64 over 16 tokens;
    # a pre-norm block holds 12 w^2 + 13 w parameters (qkv, out, fc, proj, two LayerNorms)
    w, e, n = 64, 64, 128
    block = 12 * w * w + 13 * w
    vision = 6 * (3 * block * 17 + 8 * 8 * 1 * w * 16) + 12 * 3 * w * 17 ** 2
    text = 6 * 2 * block * 16 + 12 * 2 * w * 16 ** 2
    want = vision + text + 6 * 2 * w * e + 6 * n * e
    assert clip.flops_per_pair(clip.preset("tiny"), n) == want


def test_wrong_image_shape_raises():
    cfg = tiny()
    params = init(cfg)
    with pytest.raises(ValueError, match="expected images"):
        clip.CLIP(cfg).apply({"params": params}, jnp.zeros((2, 28, 28, 1)),
                             jnp.zeros((2, 16), jnp.int32))


def test_paper_presets():
    # Parameter counts of the released OpenAI models.
    for name, n in (("vit-b-32", 151_277_313), ("vit-b-16", 149_620_737),
                    ("vit-l-14", 427_616_513)):
        params = clip.abstract_params(clip.preset(name))
        assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == n, name
    cfg = clip.preset("vit-l-14")
    assert (cfg.vision.patch_size, cfg.vision.d_model, cfg.vision.n_layer, cfg.vision.n_head,
            cfg.embed_dim, cfg.text.n_ctx, cfg.text.vocab_size) == (
        14, 1024, 24, 16, 768, 77, 49408)


# --------------------------------------------------------------------------- sharded loss
SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from flax import linen as nn
    from models import clip
    from train import objectives, sharding

    cfg = clip.preset("tiny")
    model = clip.CLIP(cfg)
    boxed = model.init(jax.random.key(0), *clip.dummy_inputs(cfg))
    params = nn.meta.unbox(boxed)["params"]
    n = 16
    images = jax.random.normal(jax.random.key(1), (n, 32, 32, 1))
    tokens = jax.random.randint(jax.random.key(2), (n, 12), 1, cfg.text.vocab_size)

    def loss_fn(p, images, tokens):
        return objectives.clip_loss(model.apply({"params": p}, images, tokens)[2])

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    loss1, grads1 = value_and_grad(params, images, tokens)          # one device

    # Batch over data x fsdp (4 x 4 rows), parameters split over fsdp and tensor.
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=2)))
    p_sh = sharding.logical_shardings(boxed, mesh)["params"]
    b_sh = sharding.batch_sharding(mesh)
    images8, tokens8 = jax.device_put(images, b_sh), jax.device_put(tokens, b_sh)
    with mesh:
        loss8, grads8 = value_and_grad(jax.device_put(params, p_sh), images8, tokens8)
    # Contrasting each shard's 4 images only with its own 4 texts would be another loss.
    local = np.mean([float(loss_fn(params, images[i:i + 4], tokens[i:i + 4]))
                     for i in range(0, n, 4)])
    leaves = lambda f, *t: jax.tree.leaves(jax.tree.map(f, *t))
    print(json.dumps({
        "devices": len(jax.devices()), "loss1": float(loss1), "loss8": float(loss8),
        "local": float(local),
        "batch_rows_per_device": sorted({s.data.shape[0] for s in images8.addressable_shards}),
        "param_devices": len(grads8["W_i"].sharding.device_set),
        "max_grad_diff": max(leaves(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads1, grads8)),
        "max_grad": max(leaves(lambda g: float(jnp.max(jnp.abs(g))), grads1))}))
""")



def test_sharded_loss_matches_one_device():
    env = simulated_devices_env(8, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["batch_rows_per_device"] == [4] and r["param_devices"] == 8
    assert r["loss8"] == pytest.approx(r["loss1"], rel=1e-5)
    assert r["max_grad_diff"] <= 1e-5 * max(r["max_grad"], 1.0)
    assert abs(r["local"] - r["loss1"]) > 0.1  # the global contrast is a different objective


# --------------------------------------------------------------------------- evaluation
def test_prompt_ensembling():
    # Two classes, two prompts each; class 1's first prompt lies close to class 0.
    e = np.array([[[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]],
                  [[0.8, 0.0, 0.6], [0.0, 1.0, 0.0]]])
    w = clip_evals._normalize(e.mean(axis=1))   # the zeroshot evaluator's ensemble
    np.testing.assert_allclose(w[0], np.array([1.8, 0.6, 0.0]) / np.linalg.norm([1.8, 0.6, 0]))
    np.testing.assert_allclose(w[1], np.array([0.8, 1.0, 0.6]) / np.linalg.norm([0.8, 1.0, 0.6]))
    images = clip_evals._normalize(np.array([[0.9, 0.1, 0.0], [0.6, 0.8, 0.0]]))
    labels = np.array([0, 1])
    assert clip_evals.zeroshot_top1(images, e[:, 0], labels) == 0.5   # first prompt alone
    assert clip_evals.zeroshot_top1(images, w, labels) == 1.0         # ensemble


def test_linear_probe_on_device_matches_scikit_learn():
    """The warm-started L-BFGS path gives scikit-learn's LogisticRegression accuracies (the
    same objective, C sum(nll) + |W|^2 / 2 on standardised features) at every C."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))

    def split(n):
        y = rng.integers(3, size=n)
        return (centres[y] + rng.normal(size=(n, 8))).astype(np.float32), y

    sets = [split(300), split(100), split(200)]
    Cs = [1e-4, 1e-2, 1.0]
    val, test = clip_evals.probe_path(*[(jnp.asarray(x), jnp.asarray(y)) for x, y in sets],
                                      Cs, num_classes=3)
    (x, y), (xv, yv), (xt, yt) = sets
    mean, std = x.mean(0), x.std(0) + 1e-8
    for i, C in enumerate(Cs):
        clf = LogisticRegression(C=C, max_iter=1000).fit((x - mean) / std, y)
        assert abs(val[i] - clf.score((xv - mean) / std, yv)) <= 0.011, C
        assert abs(test[i] - clf.score((xt - mean) / std, yt)) <= 0.011, C
    assert val[0] < 0.6 < val[-1]    # the strongest regularisation underfits


# --------------------------------------------------------------------------- experiment
def test_experiment_end_to_end(tmp_path, tmp_path_factory):
    from experiments import clip as experiment
    from experiments.configs import clip as configs

    def tiny(steps):
        config = configs.get_config("tiny")
        config.train.steps, config.train.batch_size = steps, 16
        config.train.eval_every, config.train.log_every, config.train.eval_steps = 2, 2, 1
        config.train.warmup_steps = 2
        e = config.evals
        e.val_zeroshot.images, e.test_zeroshot.images = 40, 60
        e.test_probe.update(images=60, train_images=80, val_images=40, Cs=(0.1, 1.0))
        config.model.learn_temperature = False
        return config

    experiment.main(tiny(4), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all({"loss", "temperature", "image_to_text_top1"} <= r.keys()
                         for r in train)
    timed = [r for r in train if "examples_per_sec" in r]
    assert timed and all(0.0 < r["mfu"] < 1.0 for r in timed)
    assert train[-1]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)  # frozen t
    assert any("zeroshot_top1" in r for r in rows if r["split"] == "val")
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 1 and test[0]["step"] == 4
    for key in ("zeroshot_top1", "zeroshot_top1_single_prompt", "linear_probe_top1",
                "digits/zeroshot_top1", "digits/linear_probe_top1"):
        assert 0.0 <= test[0][key] <= 1.0, key
    assert "| heldout_pairs | 10 | 10.0% |" in (tmp_path / "results.md").read_text()
    # The trained run classifies an image folder zero-shot with its tokenizer and statistics.
    from experiments import zeroshot
    folder = digit_folder(tmp_path_factory.mktemp("digits"))
    r = zeroshot.zeroshot(tmp_path, str(folder), "digits", probe_shots=1)
    assert (r["images"], r["classes"], r["templates"], r["probe_images"]) == (6, 3, 6, 3)
    assert 0.0 <= r["top1"] <= r["top5"] == 1.0
    # The same command with more steps resumes the run (the tokenizer's end-of-text id, which
    # setup writes into the config, must not read as another model's settings).
    experiment.main(tiny(5), tmp_path)
    test = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in test if r["split"] == "test"] == [4, 5]
