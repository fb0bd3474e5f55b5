"""The variants the ConvNet papers' ablations compare, and the cluttered digit task: each switch
changes the architecture as the paper describes and nothing else (parameter counts), and every
variant trains (a forward and backward pass)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax.traverse_util import flatten_dict

from data import clutter
from models import convnets, inception, mobilenet, resnet
from test_convnets import _compiled, _random_variables

IMAGES = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)


def _params(name, **overrides) -> dict:
    """{path: shape} of the model's parameters at 32x32, 10 classes."""
    variables = convnets.abstract_variables(convnets.create(name, 10, **overrides), IMAGES)
    return {k: v.shape for k, v in flatten_dict(variables["params"]).items()}


def _count(shapes: dict) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


# ----------------------------------------------------------------------------------------------
# ResNet: plain networks and shortcut options


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet32", "resnet56"])
def test_plain_resnet_is_the_residual_one_minus_its_shortcuts(name):
    a, plain = _params(name, shortcut="A"), _params(name, shortcut="none")
    b, c = _params(name, shortcut="B"), _params(name, shortcut="C")
    assert plain == a                      # option A's shortcuts have no parameters
    projections = {k: v for k, v in b.items() if k[1].startswith("proj_")}
    assert {k[0] for k in projections} == {"conv3_1", "conv4_1"}   # where the shape changes
    assert {k: v for k, v in b.items() if k not in projections} == a
    # W_s: a 1x1 convolution without bias and a BatchNorm, 16 -> 32 and 32 -> 64 channels
    assert _count(projections) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    n = (int(name[len("resnet"):]) - 2) // 6
    assert len({k[0] for k in c if k[1].startswith("proj_")}) == 3 * n   # C: every block


def test_plain_block_has_no_shortcut():
    """With F's last BatchNorm scaled to 0 (F(x) = 0), a residual block passes relu(x) on and a
    plain one gives zeros."""
    x = np.abs(np.random.default_rng(0).standard_normal((2, 4, 4, 16))).astype(np.float32)
    outs = {}
    for shortcut in ("A", "none"):
        block = resnet.ResidualBlock(16, shortcut=shortcut)
        variables = _random_variables(block, x)
        variables["params"]["bn2"]["scale"] = np.zeros(16, np.float32)
        variables["params"]["bn2"]["bias"] = np.zeros(16, np.float32)
        outs[shortcut] = np.asarray(block.apply(variables, x))
    np.testing.assert_allclose(outs["A"], x, atol=1e-6)
    np.testing.assert_array_equal(outs["none"], 0.0)


def test_resnet_refuses_bad_shortcut_settings():
    with pytest.raises(ValueError, match="shortcut must be one of"):
        jax.eval_shape(lambda x: convnets.create("resnet8", shortcut="D").init(
            jax.random.key(0), x), IMAGES)
    with pytest.raises(ValueError, match="zero_init_residual needs shortcuts"):
        jax.eval_shape(lambda x: convnets.create(
            "resnet8", shortcut="none", zero_init_residual=True).init(jax.random.key(0), x),
            IMAGES)


# ----------------------------------------------------------------------------------------------
# AlexNet: activation, LRN, overlapping pooling, dropout


def test_alexnet_switches_keep_the_parameters():
    small = _params("alexnet_small")
    assert _count(small) == 2_343_530
    for overrides in (dict(act="tanh"), dict(lrn=False), dict(overlap=False), dict(dropout=0.0),
                      dict(act="tanh", lrn=False, overlap=False)):
        assert _params("alexnet_small", **overrides) == small
    # The full networks at their resolution: 2x2/2 pools give the same 55 -> 27 -> 13 -> 6.
    for name in ("alexnet", "alexnet_paper"):
        counts = {convnets.count_params(name, **o)
                  for o in ({}, dict(act="tanh", lrn=True, overlap=False), dict(lrn=False))}
        assert len(counts) == 1


@pytest.mark.parametrize("overlap", [True, False])
def test_small_alexnet_map_sizes(overlap):
    """32 -> 16 -> 8 -> 4 with 3x3/2 (padded) or 2x2/2 pools, fc6 on the 4x4x64 map."""
    layers = {l.name: l for l in convnets.summary("alexnet_small", overlap=overlap).layers}
    assert layers["conv1"].output_shape == (32, 32, 24)
    assert layers["conv2"].input_shape == (16, 16, 24)
    assert layers["conv3"].input_shape == (8, 8, 64)
    assert layers["fc6"].input_shape == (4 * 4 * 64,)


def test_alexnet_switches_change_the_function():
    """Same parameters, different outputs for tanh, no LRN, non-overlapping pools; dropout 0 makes
    training deterministic (no BatchNorm: then training and inference agree)."""
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    base = convnets.create("alexnet_small", dropout=0.0)
    variables = _random_variables(base, x)
    y = np.asarray(base.apply(variables, x))
    for overrides in (dict(act="tanh"), dict(lrn=False), dict(overlap=False)):
        other = convnets.create("alexnet_small", dropout=0.0, **overrides)
        assert not np.allclose(other.apply(variables, x), y, atol=1e-4), overrides
    train = base.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_allclose(train, y, rtol=1e-6)
    dropped = convnets.create("alexnet_small", dropout=0.5).apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(dropped, y)


# ----------------------------------------------------------------------------------------------
# GoogLeNet: auxiliary classifiers and 1x1 bottlenecks


def test_googlenet_small_aux_and_bottleneck_parameters():
    full = _params("googlenet_small")
    no_aux = _params("googlenet_small", aux_logits=False)
    assert _count(full) == 655_190 and _count(no_aux) == 378_946
    assert no_aux == {k: v for k, v in full.items() if k[0] not in ("aux1", "aux2")}
    # Quarter widths: the auxiliary heads' 1x1 conv of 32 on a 4x4 map, fc 512 -> 256 -> 10.
    assert full[("aux1", "fc1", "kernel")] == (4 * 4 * 32, 256)
    naive = _params("googlenet_small", bottleneck=False)
    assert not any(k[1].endswith("_reduce") for k in naive if k[0].startswith("inception"))
    for module in inception.INCEPTION:
        block = f"inception{module}"
        c_in = full[(block, "conv_1x1", "conv", "kernel")][2]
        # Without the reduction the 3x3 and 5x5 filter the module's whole input ...
        assert naive[(block, "conv_3x3", "conv", "kernel")][2] == c_in
        assert naive[(block, "conv_5x5", "conv", "kernel")][:3] == (5, 5, c_in)
        # ... and the output widths stay table 1's (the next module's input is unchanged).
        assert naive[(block, "conv_1x1", "conv", "kernel")] == \
            full[(block, "conv_1x1", "conv", "kernel")]
    assert _count(naive) > 2 * _count(full)


def test_googlenet_bottleneck_switch_on_the_full_network():
    assert convnets.count_params("googlenet", bottleneck=False, aux_logits=False) > \
        convnets.count_params("googlenet", aux_logits=False) == 6_624_904


def test_googlenet_small_runs_its_stages_at_16_8_4():
    layers = {l.name: l for l in convnets.summary("googlenet_small").layers}
    assert layers["inception3a/conv_1x1/conv"].input_shape == (16, 16, 48)
    assert layers["inception4a/conv_1x1/conv"].input_shape[:2] == (8, 8)
    assert layers["inception5a/conv_1x1/conv"].input_shape[:2] == (4, 4)
    assert layers["fc"].input_shape == (256,)   # 5b: (384 + 384 + 128 + 128) / 4


@pytest.mark.parametrize("aux", [True, False])
def test_googlenet_small_training_outputs(aux):
    module = convnets.create("googlenet_small", aux_logits=aux)

    def train_out(x):
        variables = module.init(jax.random.key(0), x)
        return module.apply(variables, x, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(1)})[0]

    with jax.disable_jit():
        out = jax.eval_shape(train_out, IMAGES)
    if aux:
        assert {k: v.shape for k, v in out.items()} == {"logits": (2, 10), "aux1": (2, 10),
                                                         "aux2": (2, 10)}
    else:
        assert out.shape == (2, 10)


# ----------------------------------------------------------------------------------------------
# MobileNetV2: linear bottlenecks and where the shortcut joins


def test_mobilenet_v2_variants_keep_the_parameters():
    tiny = _params("mobilenet_v2_tiny")
    assert _count(tiny) == 250_922
    for overrides in (dict(linear_bottleneck=False), dict(residual="classic"),
                      dict(residual="none")):
        assert _params("mobilenet_v2_tiny", **overrides) == tiny
    with pytest.raises(ValueError, match="residual must be one of"):
        jax.eval_shape(lambda x: convnets.create("mobilenet_v2_tiny", residual="dense").init(
            jax.random.key(0), x), IMAGES)


def _block_outputs(**fields):
    block = mobilenet.InvertedResidual(8, 1, 6, **fields)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
    wide = rng.standard_normal((2, 4, 4, 48)).astype(np.float32)
    variables = _random_variables(block, x)
    return block, variables, x, wide


def test_linear_bottleneck_switch():
    """The projection is linear (negative outputs) unless linear_bottleneck=False (ReLU6)."""
    block, variables, x, _ = _block_outputs(residual="none")
    y, _ = block.apply(variables, x)
    assert (np.asarray(y) < 0).any()
    block = mobilenet.InvertedResidual(8, 1, 6, linear_bottleneck=False, residual="none")
    y, _ = block.apply(variables, x)
    assert np.asarray(y).min() >= 0 and np.asarray(y).max() <= 6


def test_residual_joins_bottlenecks_or_expansions():
    block, variables, x, wide = _block_outputs(residual="none")
    y_none, e_none = block.apply(variables, x)
    y_inv, e_inv = mobilenet.InvertedResidual(8, 1, 6, residual="inverted").apply(variables, x)
    np.testing.assert_allclose(y_inv, y_none + x, rtol=1e-5, atol=1e-5)   # bottleneck to bottleneck
    np.testing.assert_allclose(e_inv, e_none)
    classic = mobilenet.InvertedResidual(8, 1, 6, residual="classic")
    y_cls, e_cls = classic.apply(variables, x, wide=wide)
    np.testing.assert_allclose(e_cls, e_none + wide, rtol=1e-5, atol=1e-5)  # expansion to expansion
    assert not np.allclose(y_cls, y_none + x)


def test_classic_shortcuts_in_table_2():
    """Ten shortcuts between expanded maps, as many as the inverted residuals, each half a
    block later: into the expansions of these blocks."""
    joined = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, mobilenet.InvertedResidual) and len(args) > 2 \
                and args[2] is not None and args[2].shape == out[1].shape:
            joined.append(int(context.module.name[len("block"):]))
        return out

    module = convnets.create("mobilenet_v2", residual="classic")
    with jax.disable_jit(), nn.intercept_methods(record):
        jax.eval_shape(lambda x: module.init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    assert joined == [4, 6, 7, 9, 10, 11, 13, 14, 16, 17]


# ----------------------------------------------------------------------------------------------
# Every variant trains


@pytest.mark.parametrize("name,overrides", [
    ("resnet8", dict(shortcut="none")),
    ("resnet8", dict(shortcut="C")),
    ("alexnet_small", dict(act="tanh", lrn=False, overlap=False)),
    ("googlenet_small", dict(bottleneck=False)),
    ("mobilenet_v2_tiny", dict(residual="classic", linear_bottleneck=False)),
])
def test_forward_and_backward(name, overrides):
    module = convnets.create(name, **overrides)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    y = jnp.asarray([0, 1, 2, 3])
    variables = _random_variables(module, x)

    def loss(params):
        out, _ = module.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        xent = lambda z: -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1).mean()
        return inception.training_loss(out, xent)

    value, grads = _compiled(jax.value_and_grad(loss), variables["params"])(variables["params"])
    assert np.isfinite(value)
    norms = {k: float(jnp.abs(g).sum()) for k, g in flatten_dict(grads).items()}
    assert all(np.isfinite(v) for v in norms.values())
    assert norms[next(k for k in norms if k[-1] == "kernel")] > 0   # reaches the first layer


# ----------------------------------------------------------------------------------------------
# The cluttered digit task


@pytest.fixture(scope="module")
def task():
    return clutter.cluttered_digits(n_train=64, n_eval=32, seed=3)


def test_clutter_splits_shapes_and_labels(task):
    _, classes = clutter._digits()
    for split, n in (("train", 64), ("val", 32), ("test", 32)):
        d = task[split]
        assert d["images"].shape == (n, 32, 32, 3) and d["images"].dtype == np.float32
        assert 0.0 <= d["images"].min() and d["images"].max() <= 1.0
        assert d["labels"].dtype == np.int32 and d["sources"].shape == (n, 2)
        np.testing.assert_array_equal(d["labels"], classes[d["sources"]].max(axis=1))
    sources = {s: set(task[s]["sources"].ravel()) for s in clutter.SPLITS}
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]


def test_clutter_is_deterministic_and_seeded(task):
    again = clutter.scenes("val", 32, seed=3)
    for key in ("images", "labels", "sources"):
        np.testing.assert_array_equal(again[key], task["val"][key])
    other = clutter.scenes("val", 32, seed=4)
    assert not np.array_equal(other["images"], task["val"]["images"])


def test_clutter_label_rules():
    _, classes = clutter._digits()
    d = clutter.scenes("train", 400, digits=3, label="sum", clutter=2)
    np.testing.assert_array_equal(d["labels"], classes[d["sources"]].sum(axis=1) % 10)
    d = clutter.scenes("train", 400, digits=1, clutter=0)
    np.testing.assert_array_equal(d["labels"], classes[d["sources"][:, 0]])
    counts = np.bincount(clutter.scenes("test", 1000)["labels"], minlength=10)
    assert counts.min() > 60   # "max" draws its labels uniformly: about 100 each
    for bad, match in ((dict(digits=4), "digits must be"), (dict(label="min"), "label must be"),
                       (dict(clutter=-1), "clutter and n")):
        with pytest.raises(ValueError, match=match):
            clutter.scenes("train", 2, **bad)
    with pytest.raises(ValueError, match="split must be"):
        clutter.scenes("dev", 2)


# ----------------------------------------------------------------------------------------------
# The claims sweeps: presets, named sweeps, the clutter source, the report


CLAIM_SWEEPS = {"plain-vs-residual": "claims-resnet", "relu-vs-tanh": "claims-alexnet",
                "alexnet-tricks": "claims-alexnet", "googlenet-aux": "claims-googlenet",
                "mobilenet-bottleneck": "claims-mobilenet",
                "efficientnet-search": "claims-efficientnet",
                "efficientnet-scaling": "claims-efficientnet"}


@pytest.mark.parametrize("name", sorted(CLAIM_SWEEPS))
def test_claim_sweeps_expand_to_distinct_valid_configs(name, tmp_path):
    """Every run of the sweep parses on its preset (switches declared there), 3 seeds each,
    and no two runs share a config."""
    from experiments import sweep
    from experiments.configs import convnets as presets
    plan = sweep.plan(["sweep", f"--config=experiments/configs/convnets.py:{CLAIM_SWEEPS[name]}",
                       f"--name={name}", f"--workdir={tmp_path}"])
    spec = presets.SWEEPS[name]
    settings = np.prod([len(v) for k, v in spec.items() if k not in
                        ("seeds", "metric", "overrides", "before")])
    assert len(plan.runs) == 3 * settings
    assert {r.values["seed"] for r in plan.runs} == {"0", "1", "2"}


def test_plain_vs_residual_varies_only_depth_and_shortcut(tmp_path):
    from experiments import sweep
    plan = sweep.plan(["sweep", "--config=experiments/configs/convnets.py:claims-resnet",
                       "--name=plain-vs-residual", f"--workdir={tmp_path}"])
    shortcuts = {r.requested["model"]["overrides"]["shortcut"] for r in plan.runs}
    assert shortcuts == {"none", "A", "B"}
    assert {r.requested["model"]["name"] for r in plan.runs} == {"resnet8", "resnet20",
                                                                  "resnet32"}
    first = plan.runs[0].requested
    for run in plan.runs:   # nothing else differs: data, optimiser, evaluators
        assert {k: v for k, v in run.requested.items() if k not in ("model", "seed")} == \
            {k: v for k, v in first.items() if k not in ("model", "seed")}


def test_efficientnet_search_points_cost_about_twice_the_base():
    """alpha beta^2 gamma^2 ~ 2 for each candidate, and XLA's count of the scaled model, after
    rounding layers and widths, lands at 1.85-2.15x the base's FLOPs (the comparison is between
    models of nearly equal cost)."""
    from experiments.configs import convnets as presets
    base = presets.EFFICIENTNET_BASE

    def flops(d, w, r):
        return convnets.flops("efficientnet_tiny", round(base["resolution"] * r), 11, 3,
                              width_mult=base["width"] * w, depth_mult=base["depth"] * d,
                              stem_stride=1)
    f0 = flops(1, 1, 1)
    for a, b, g in presets.EFFICIENTNET_SEARCH:
        assert 1.85 <= a * b * b * g * g <= 2.1
        assert 1.85 <= flops(a, b, g) / f0 <= 2.15


def test_efficientnet_single_scalings_match_the_compound_flops():
    """Figure 8's comparison at equal cost: at each phi, depth, width and resolution alone
    land within 20% of the compound model's FLOPs, and the cost grows with phi."""
    from experiments.configs import convnets as presets
    points = {p["label"]: p for p in presets.efficientnet_scaling()}

    def flops(p):
        return convnets.flops("efficientnet_tiny", p["data.image_size"], 11, 3,
                              width_mult=p["model.overrides.width_mult"],
                              depth_mult=p["model.overrides.depth_mult"], stem_stride=1)
    costs = []
    for phi in (1, 2, 3):
        compound = flops(points[f"compound phi={phi}"])
        costs.append(compound)
        for single in ("depth", "width", "resolution"):
            assert abs(flops(points[f"{single} phi={phi}"]) / compound - 1) < 0.2
    assert flops(points["base"]) < costs[0] < costs[1] < costs[2]


def test_clutter_is_a_classify_images_source():
    from experiments import classify_images
    from experiments.configs import convnets as presets
    config = presets.get_config("resnet-digits")
    config.data.source, config.data.scenes, config.data.eval_scenes = "clutter", 40, 20
    task = classify_images.load_data(config)
    assert task.splits["train"]["images"].shape == (40, 32, 32, 3)
    assert task.splits["test"]["images"].shape == (20, 32, 32, 3)
    assert classify_images.default_channels(config) == 3
    assert classify_images.default_classes(config) == 10
    # the same scenes as data/clutter.py renders, normalised
    raw = clutter.scenes("test", 20, seed=0, split_seed=0)
    mean, std = np.asarray(task.mean), np.asarray(task.std)
    np.testing.assert_allclose(task.splits["test"]["images"] * std + mean, raw["images"],
                               atol=1e-5)
    np.testing.assert_array_equal(task.splits["test"]["labels"], raw["labels"])


def test_trainset_split_is_accepted_and_train_is_not():
    import ml_collections
    from train.evaluators import base
    ok = ml_collections.ConfigDict({"evals": {"t": {"type": "accuracy", "split": "trainset"}}})
    base.validate(ok)
    bad = ml_collections.ConfigDict({"evals": {"t": {"type": "accuracy", "split": "train"}}})
    with pytest.raises(ValueError, match="split must be one of"):
        base.validate(bad)


def test_claims_report_curves_and_steps_to_target(tmp_path):
    from experiments import convnet_figures as figures
    assert figures.steps_to({10: 0.6, 20: 0.3, 30: 0.25, 40: 0.1}) == 30
    assert figures.steps_to({10: 0.6, 20: 0.3}) is None
    assert figures.mean_curve([{10: 0.5, 20: 0.2}, {10: 0.3, 20: 0.0, 30: 0.0}]) == \
        pytest.approx({10: 0.4, 20: 0.1})
