"""The ConvNet zoo on its own terms: conv arithmetic, the papers' parameter counts and tables,
output shapes of every registered model, and what changes between training and inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax.traverse_util import flatten_dict

from models import conv, convnets, efficientnet, inception

# Parameters at each model's default input (1000 classes unless the model is a 10-class one):
# torchvision's published counts for its names, the papers' for the others.
PARAMS = {
    "lenet5": 61_706,                # 1 input channel, fully connected C3, 10 outputs
    "alexnet": 61_100_840,
    "alexnet_paper": 60_965_224,     # the two-GPU grouping of conv2, conv4, conv5
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "googlenet": 13_004_888,         # with the auxiliary heads; 6,624,904 without
    "mobilenet_v2": 3_504_872,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784, "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}
# He et al. table 6 (CIFAR-10, option A shortcuts), in millions, as the paper rounds them.
CIFAR_RESNET_MILLIONS = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66,
                         "resnet56": 0.85, "resnet110": 1.7}


def _abstract_forward(module, images, train=False):
    """(eval outputs, variables) of init, or (eval outputs, training outputs, variables) of init
    and a training apply: shapes only."""
    def run(x):
        out, variables = module.init_with_output(jax.random.key(0), x, train=False)
        if not train:
            return out, variables
        train_out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.key(1)})
        return out, train_out, variables
    with jax.disable_jit():
        return jax.eval_shape(run, images)


# ----------------------------------------------------------------------------------------------
# Arithmetic


def test_conv_output_size():
    assert conv.conv_output_size(227, 11, 0, 4) == 55    # AlexNet conv1
    assert conv.conv_output_size(6, 3) == 4              # valid: n - f + 1
    assert conv.conv_output_size(8, 3, 0, 2) == 3        # floor((8 - 3) / 2) + 1
    assert conv.conv_output_size(7, 3, 1, 2) == 4
    assert conv.pool_output_size(112, 3, 0, 2, ceil_mode=True) == 56   # GoogLeNet, table 1
    assert conv.pool_output_size(112, 3, 0, 2) == 55
    for f in (1, 3, 5, 7):
        assert conv.conv_output_size(13, f, conv.same_padding(f)) == 13
        assert conv.conv_output_size(13, f, conv.valid_padding(f)) == 13 - f + 1
    with pytest.raises(ValueError, match="odd filter size"):
        conv.same_padding(4)
    with pytest.raises(ValueError, match="padding must be"):
        conv.conv(4, 3, padding="full")


@pytest.mark.parametrize("n,f,s,padding", [(9, 3, 2, "same"), (10, 5, 1, "valid"),
                                           (11, 7, 2, 3), (8, 1, 2, "same")])
def test_conv_layer_follows_the_arithmetic(n, f, s, padding):
    layer = conv.conv(5, f, s, padding)
    x = jax.ShapeDtypeStruct((1, n, n + 1, 3), jnp.float32)
    y, variables = jax.eval_shape(lambda x: layer.init_with_output(jax.random.key(0), x), x)
    p = conv.padding_of(padding, f)
    assert y.shape == (1, conv.conv_output_size(n, f, p, s),
                       conv.conv_output_size(n + 1, f, p, s), 5)
    counted = sum(v.size for v in jax.tree.leaves(variables))
    assert counted == conv.conv_params(f, 3, 5) == f * f * 3 * 5 + 5


def assert_same_outputs_and_gradients(f, reference, variables, x, g):
    """f and reference agree on (variables, x), and so do their vector-Jacobian products with g."""
    @jax.jit
    def outputs_and_gradients(variables, x, g):
        return [(h(variables, x), jax.vjp(h, variables, x)[1](g)) for h in (f, reference)]

    actual, expected = outputs_and_gradients(variables, x, g)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s", [1, 2])
def test_pointwise_conv_runs_as_a_matmul_with_the_convolutions_values(s):
    """A 1x1 layer is a dot_general (XLA:CPU's kernel gradient of a convolution is ten times
    slower), with the convolution's outputs and both gradients."""
    layer = conv.pointwise_conv(5, s)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 7, 6), np.float32)
    variables = {"params": {"kernel": rng.standard_normal((1, 1, 6, 5), np.float32),
                            "bias": rng.standard_normal(5, np.float32)}}
    g = rng.standard_normal((2, 4, 4, 5) if s == 2 else (2, 7, 7, 5), np.float32)

    def reference(variables, x):
        p = variables["params"]
        return jax.lax.conv_general_dilated(x, p["kernel"], (s, s), [(0, 0), (0, 0)],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    assert_same_outputs_and_gradients(layer.apply, reference, variables, x, g)
    primitives = str(jax.make_jaxpr(jax.grad(lambda v: layer.apply(v, x).sum()))(variables))
    assert "dot_general" in primitives and "conv_general_dilated" not in primitives


@pytest.mark.parametrize("f,s", [(3, 1), (3, 2), (5, 2)])
def test_depthwise_conv_runs_as_shifted_sums_with_the_convolutions_values(f, s):
    """On a CPU a depthwise layer is f*f strided slices times their taps (XLA:CPU's grouped
    convolution is several times slower), with the convolution's outputs and both gradients,
    on an odd-sized input whose last window is cut by the stride."""
    layer = conv.depthwise_conv(6, f, s, bias=False)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 8, 6), np.float32)
    variables = {"params": {"kernel": rng.standard_normal((f, f, 1, 6), np.float32)}}
    y_shape = jax.eval_shape(layer.apply, variables, x).shape
    g = rng.standard_normal(y_shape, np.float32)
    p = conv.padding_of("same", f)

    def reference(variables, x):
        return jax.lax.conv_general_dilated(x, variables["params"]["kernel"], (s, s),
                                            [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=6)

    assert_same_outputs_and_gradients(layer.apply, reference, variables, x, g)
    primitives = str(jax.make_jaxpr(jax.grad(lambda v: layer.apply(v, x).sum()))(variables))
    assert "conv_general_dilated" not in primitives


@pytest.mark.parametrize("n,f,s,p,ceil", [(9, 3, 2, 1, False), (8, 3, 2, 0, True),
                                          (7, 2, 2, 1, True), (6, 3, 1, 1, False),
                                          (11, 2, 2, 0, True)])
def test_max_pool_runs_as_shifts_with_lax_values_and_gradients(n, f, s, p, ceil):
    """On a CPU max pooling is the maximum of f*f strided views, whose gradient goes to each
    window's first maximum as lax's select-and-scatter sends it: checked on ReLU outputs, whose
    zeros tie in many windows, on an odd-sized input whose last window the stride cuts."""
    rng = np.random.default_rng(n)
    x = np.maximum(rng.standard_normal((2, n, n + 2, 3), np.float32), 0.0)
    pads = tuple(map(tuple, conv._pool_pads(x, f, s, p, ceil, "max")))
    y_shape = jax.eval_shape(lambda _, x: conv.max_pool(x, f, s, p, ceil), {}, x).shape
    g = rng.standard_normal(y_shape, np.float32)
    assert_same_outputs_and_gradients(
        lambda _, x: conv.max_pool(x, f, s, p, ceil),
        lambda _, x: nn.max_pool(x, (f, f), (s, s), padding=pads), {}, x, g)
    primitives = str(jax.make_jaxpr(jax.grad(lambda x: conv.max_pool(x, f, s, p, ceil).sum()))(x))
    assert "reduce_window" not in primitives and "select_and_scatter" not in primitives


def test_depthwise_separable_params():
    layer = conv.DepthwiseSeparableConv(32, f=3)
    variables = jax.eval_shape(lambda x: layer.init(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32))
    kernels = [v for path, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
               if path[-1].key == "kernel"]
    assert [k.shape for k in kernels] == [(3, 3, 1, 16), (1, 1, 16, 32)]
    assert sum(k.size for k in kernels) == conv.depthwise_separable_params(3, 16, 32)
    assert conv.depthwise_separable_params(3, 16, 32) < conv.conv_params(3, 16, 32, bias=False)
    depthwise = jax.eval_shape(lambda x: conv.depthwise_conv(16, 5).init(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32))
    assert depthwise["params"]["kernel"].shape == (5, 5, 1, 16)   # f*f*n_c + n_c parameters


def test_too_small_inputs_are_named():
    with pytest.raises(ValueError, match="too small"):
        _abstract_forward(convnets.create("alexnet"), jax.ShapeDtypeStruct((1, 40, 40, 3),
                                                                           jnp.float32))
    with pytest.raises(ValueError, match="at least 32x32"):
        _abstract_forward(convnets.create("lenet5"), jax.ShapeDtypeStruct((1, 28, 28, 1),
                                                                          jnp.float32))
    with pytest.raises(ValueError, match="3x3 input: too small"):
        conv.conv(4, 5, padding="valid").init(jax.random.key(0), jnp.zeros((1, 3, 3, 2)))
    with pytest.raises(ValueError, match="NHWC"):
        convnets.create("resnet8").init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_adaptive_pool_bins():
    """Bin i covers [floor(i n / out), ceil((i + 1) n / out)): overlapping, or repeating pixels
    when out > n."""
    x = jnp.arange(5.0).reshape(1, 5, 1, 1)
    y = conv.adaptive_avg_pool(jnp.broadcast_to(x, (1, 5, 2, 1)), (3, 1))
    np.testing.assert_allclose(y[0, :, 0, 0], [0.5, 2.0, 3.5])   # [0, 2), [1, 4), [3, 5)
    x = jnp.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    y = conv.adaptive_avg_pool(x, (3, 1))
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, 2.0, 3.0])   # [0, 1), [0, 2), [1, 2)


def test_local_response_norm_is_the_papers_sum():
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 9)).astype(np.float32) * 20
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    expected = np.empty_like(x)
    for i in range(9):
        window = x[..., max(0, i - n // 2):min(8, i + n // 2) + 1]
        expected[..., i] = x[..., i] / (k + alpha * (window ** 2).sum(-1)) ** beta
    np.testing.assert_allclose(conv.local_response_norm(jnp.asarray(x)), expected, rtol=1e-5)


def test_batchnorm_keeps_the_unbiased_running_variance():
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 5)).astype(np.float32) * 3 + 1
    bn = conv.BatchNorm(momentum=0.9)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    flat = x.reshape(-1, 5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1),
                               rtol=1e-5)
    np.testing.assert_allclose(y.reshape(-1, 5), (flat - flat.mean(0)) / np.sqrt(
        flat.var(0) + 1e-5), atol=1e-4)
    np.testing.assert_allclose(bn.apply(variables, x), x / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_make_divisible_rounds_as_the_releases():
    assert conv.make_divisible(32 * 0.25) == 8
    assert conv.make_divisible(10) == 16        # 8 would lose more than 10%
    assert conv.make_divisible(32 * 1.2) == 40  # B3's stem
    assert conv.make_divisible(1280) == 1280
    assert conv.round_depth(3, 3.1) == 10


# ----------------------------------------------------------------------------------------------
# The zoo


def _small_input(name: str) -> int:
    if name.startswith("alexnet"):
        return 67
    if name == "googlenet_paper":
        return 79  # its 5x5/3 auxiliary pooling needs 5x5 maps at inception 4a
    return 32 if convnets.default_resolution(name) == 32 else 33


@pytest.mark.parametrize("name", convnets.names())
def test_every_model_gives_logits_and_the_papers_parameter_count(name):
    module = convnets.create(name)
    images = convnets.dummy_images(name, batch=2, resolution=_small_input(name))
    logits, variables = _abstract_forward(module, images)
    assert logits.shape == (2, module.num_classes)
    n = sum(v.size for v in jax.tree.leaves(variables["params"]))
    if name in PARAMS:
        assert n == PARAMS[name]
    if name in CIFAR_RESNET_MILLIONS:
        assert round(n / 1e6, 2 if n < 1e6 else 1) == CIFAR_RESNET_MILLIONS[name]


def test_count_params_and_registry_errors():
    assert convnets.count_params("googlenet", aux_logits=False) == 6_624_904
    assert convnets.count_params("resnet18", num_classes=10) == 11_689_512 - 513 * 990
    assert convnets.count_params("resnet8", in_channels=1) == \
        convnets.count_params("resnet8") - 3 * 3 * 2 * 16
    with pytest.raises(ValueError, match="unknown model 'resnet17'"):
        convnets.create("resnet17")
    with pytest.raises(ValueError, match=r"resnet18 has no setting \['width_mult'\]"):
        convnets.create("resnet18", width_mult=0.5)
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        convnets.from_torchvision("lenet5", {})
    assert convnets.default_resolution("efficientnet_b7") == 600
    assert convnets.default_resolution("lenet5") == 32


def test_flops_count_multiply_adds_twice():
    """LeNet-5's multiply-adds by hand: C1 28*28*6*25, C3 10*10*16*150, C5 120*400, F6 120*84,
    output 84*10; XLA adds the biases, tanh and pooling on top."""
    macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 120 * 84 + 84 * 10
    assert 2 * macs <= convnets.flops("lenet5") <= 1.05 * 2 * macs
    # torchvision lists resnet50 at 4.089 GMACs ("GFLOPS"); XLA skips taps on the padding.
    assert convnets.flops("resnet50") == pytest.approx(2 * 4.089e9, rel=0.05)


def test_efficientnet_compound_scaling():
    assert 1.9 < efficientnet.ALPHA * efficientnet.BETA ** 2 * efficientnet.GAMMA ** 2 < 2.1
    d, w, r = efficientnet.compound_scaling(2)
    assert (d, w, r) == pytest.approx((1.44, 1.21, 1.3225))
    assert efficientnet.PRESETS == {
        "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
        "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
        "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5)}
    b7 = efficientnet.scaled_stages(2.0, 3.1)
    assert [stage[-1] for stage in b7] == [4, 7, 7, 10, 10, 13, 4]   # ceil(n * 3.1)
    assert [stage[4] for stage in b7] == [32, 48, 80, 160, 224, 384, 640]
    assert efficientnet.scaled_stages(1.2, 1.4)[0][3] == 40          # B3's stem: 38.4 -> 40
    for b, (w, d, res, dropout) in efficientnet.PRESETS.items():
        module = convnets.create(f"efficientnet_{b}")
        assert (module.width_mult, module.depth_mult, module.dropout) == (w, d, dropout)
        assert convnets.default_resolution(f"efficientnet_{b}") == res
        assert module.bn_eps == (1e-3 if b in ("b5", "b6", "b7") else 1e-5)


# ----------------------------------------------------------------------------------------------
# Training against inference


def test_stochastic_depth_drops_whole_examples_in_training_only():
    x = jnp.ones((2000, 2, 2, 3))
    layer = conv.StochasticDepth(0.25)
    np.testing.assert_array_equal(layer.apply({}, x), x)
    y = layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    per_example = np.asarray(y).reshape(2000, -1)
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.75], rtol=1e-6)
    assert (per_example == per_example[:, :1]).all()                 # "row" mode
    assert abs((per_example[:, 0] == 0).mean() - 0.25) < 0.04


def _compiled(fn, *args):
    """fn jitted for these arguments with LLVM's optimisations off (compiling dominates here)."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def _random_variables(module, images, seed=0):
    """Variables of the module's shapes: He-normal kernels, unit BN scales and statistics, zero
    biases (no compiled init: random number generation is slow to compile)."""
    rng = np.random.default_rng(seed)

    def fill(path, shape):
        leaf = path[-1].key
        if leaf == "kernel":
            fan_in = np.prod(shape.shape[:-1])
            return (rng.standard_normal(shape.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
        return np.full(shape.shape, 1.0 if leaf in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, convnets.abstract_variables(module, images))


@pytest.fixture(scope="module")
def tiny_efficientnet():
    module = convnets.create("efficientnet_tiny", dropout=0.5, stochastic_depth_prob=0.5)
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    return module, _random_variables(module, x), x


def test_dropout_and_stochastic_depth_only_in_training(tiny_efficientnet):
    module, variables, x = tiny_efficientnet
    # Inference draws nothing at random (it needs no "dropout" rng); training does.
    jax.eval_shape(lambda v: module.apply(v, x), variables)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"]),
                       variables)
    step = _compiled(lambda v, k: module.apply(v, x, train=True, mutable=["batch_stats"],
                                               rngs={"dropout": k}), variables, jax.random.key(0))
    (logits1, updates), (logits2, _) = step(variables, jax.random.key(1)), step(
        variables, jax.random.key(2))
    assert not np.allclose(logits1, logits2)
    # The step's batch_stats: every running variance moves (the means of layers fed by a
    # normalised map stay at 0).
    before = flatten_dict(variables["batch_stats"])
    after = flatten_dict(updates["batch_stats"])
    assert set(before) == set(after) and before
    assert all(not np.allclose(before[k], after[k]) for k in before if k[-1] == "var")


def test_mbconv_drops_its_residual_branch_per_example():
    block = efficientnet.MBConv(8, expand_ratio=6, f=3, s=1, drop_rate=0.5)
    x = np.random.default_rng(0).standard_normal((64, 4, 4, 8)).astype(np.float32)
    variables = _random_variables(block, x)
    step = _compiled(lambda v, k: block.apply(v, x, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": k})[0], variables,
                     jax.random.key(1))
    branch = np.asarray(step(variables, jax.random.key(1)) - x).reshape(64, -1)
    dropped = (branch == 0).all(axis=1)
    assert 0.25 < dropped.mean() < 0.75 and (np.abs(branch[~dropped]).max(axis=1) > 0).all()
    # At inference every example keeps its branch.
    branch = np.asarray(_compiled(lambda v: block.apply(v, x), variables)(variables) - x)
    assert (np.abs(branch.reshape(64, -1)).max(axis=1) > 0).all()


def test_googlenet_auxiliary_outputs_only_in_training():
    images = jax.ShapeDtypeStruct((2, 45, 45, 3), jnp.float32)
    module = convnets.create("googlenet", num_classes=5)
    logits, out, variables = _abstract_forward(module, images, train=True)
    assert logits.shape == (2, 5)
    assert {"aux1", "aux2"} <= set(variables["params"])          # built even by an eval init
    assert {k: v.shape for k, v in out.items()} == {"logits": (2, 5), "aux1": (2, 5),
                                                     "aux2": (2, 5)}
    outputs = {"logits": jnp.array(1.0), "aux1": jnp.array(10.0), "aux2": jnp.array(100.0)}
    assert inception.training_loss(outputs, lambda z: z) == pytest.approx(1 + 0.3 * 110)
    assert inception.training_loss(jnp.array(2.0), lambda z: z) == 2.0
