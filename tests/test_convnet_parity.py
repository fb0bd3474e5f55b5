"""The ConvNet zoo against torchvision: imported random weights give torchvision's logits, the
layers give torch's numbers, parameter counts agree, BatchNorm trains its statistics as torch's."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

from models import conv, convnets, torchvision_import  # noqa: E402

NUM_CLASSES = 7
TV = torchvision.models


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every bias and BatchNorm statistic off its init (zeros and ones hide mix-ups) while
    keeping activations of order one, and switch to eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
    return model.eval()


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def _nhwc(x: np.ndarray):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _assert_close(ours, theirs, tol=1e-4):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert err < tol, f"max error {err:.2e} of the largest |value|"


def _compiled(fn, *args):
    """fn jitted for these arguments with LLVM's optimisations off: each model runs once here,
    and compiling would dominate."""
    return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def _check_logits(name, model, sizes, **overrides):
    """Eval-mode logits of the imported model against torchvision's, and parameter counts."""
    module, variables = convnets.from_torchvision(name, model.state_dict(), **overrides)
    assert module.num_classes == NUM_CLASSES
    for size in sizes:
        x = _images(size)
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        forward = _compiled(lambda v, x: module.apply(v, x, train=False), variables, _nhwc(x))
        _assert_close(forward(variables, _nhwc(x)), reference)
    n_torch = sum(p.numel() for p in model.parameters())
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == n_torch
    return module, variables


def test_alexnet_logits():
    model = _randomize(TV.alexnet(num_classes=NUM_CLASSES))
    # 63: the last feature map is 1x1, pooled up to 6x6; 255: 7x7, pooled down over
    # overlapping bins.
    _check_logits("alexnet", model, [63, 255])


@pytest.fixture(scope="module")
def vgg16():
    return _randomize(TV.vgg16(num_classes=NUM_CLASSES))


def test_vgg16_logits(vgg16):
    _check_logits("vgg16", vgg16, [45])


def test_vgg_bn_import_maps_every_tensor():
    """vgg*_bn interleave BatchNorm in `features`; shapes from torch's meta device (no memory)."""
    with torch.device("meta"):
        state = TV.vgg11_bn(num_classes=NUM_CLASSES).state_dict()
    state = {k: np.zeros(v.shape, np.float32) for k, v in state.items()}
    module, variables = convnets.from_torchvision("vgg11_bn", state)
    assert module.batch_norm and set(variables["batch_stats"]) == {
        f"bn{i}" for i in ("1_1", "2_1", "3_1", "3_2", "4_1", "4_2", "5_1", "5_2")}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_logits(name):
    _check_logits(name, _randomize(getattr(TV, name)(num_classes=NUM_CLASSES)), [45])


def test_googlenet_logits():
    model = _randomize(TV.googlenet(num_classes=NUM_CLASSES, aux_logits=False,
                                    init_weights=True))
    module, _ = _check_logits("googlenet", model, [45])
    assert not module.aux_logits


def test_mobilenet_v2_logits():
    _check_logits("mobilenet_v2", _randomize(TV.mobilenet_v2(num_classes=NUM_CLASSES)), [45])


def test_efficientnet_b0_logits():
    _check_logits("efficientnet_b0",
                  _randomize(TV.efficientnet_b0(num_classes=NUM_CLASSES)), [45])


@pytest.mark.parametrize("name", ["efficientnet_b5"])
def test_efficientnet_batchnorm_settings(name):
    """B5..B7: torchvision's eps 1e-3 and momentum 0.01 (ours 0.99)."""
    with torch.device("meta"):
        model = getattr(TV, name)()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    module = convnets.create(name)
    assert (module.bn_eps, 1 - module.bn_momentum) == pytest.approx((bn.eps, bn.momentum))


# ----------------------------------------------------------------------------------------------
# Training mode: BatchNorm statistics, auxiliary heads


def _assert_same_statistics(name, module, ours, model):
    """Our batch_stats after a step against torch's running statistics, mapped by the importer."""
    tensors = torchvision_import.numpy_tensors(model.state_dict())
    family = convnets.REGISTRY[name].family
    theirs = torchvision_import.convert(family, module, tensors, ours, name)["batch_stats"]
    theirs, ours = flatten_dict(theirs), flatten_dict(ours["batch_stats"])
    assert set(ours) == set(theirs)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-5, err_msg=str(key))


def test_batchnorm_train_step_matches_torch():
    """One training forward: batch statistics normalise, running_var takes the unbiased
    variance, with torch momentum 0.1 = our 0.9."""
    x = np.random.default_rng(0).standard_normal((3, 5, 4, 6)).astype(np.float32) * 2 + 1
    bn = torch.nn.BatchNorm2d(6, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    variables = {"params": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()},
                 "batch_stats": {"mean": bn.running_mean.numpy().copy(),
                                 "var": bn.running_var.numpy().copy()}}
    with torch.no_grad():
        reference = bn.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    y, updates = conv.BatchNorm(momentum=0.9).apply(variables, x, train=True,
                                                    mutable=["batch_stats"])
    np.testing.assert_allclose(y, reference.numpy(), atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], bn.running_mean.numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], bn.running_var.numpy(),
                               rtol=1e-6, atol=1e-6)


def test_googlenet_with_aux_heads_in_eval_and_training():
    """aux1/aux2 in the state dict: eval gives the main logits; training returns the three
    heads as torch's GoogLeNetOutputs and moves the running statistics as torch does. Also
    torchvision's input transform (which its pretrained weights use)."""
    model = _randomize(TV.googlenet(num_classes=NUM_CLASSES, aux_logits=True,
                                    transform_input=True, dropout=0.0, dropout_aux=0.0,
                                    init_weights=True))
    module, variables = _check_logits("googlenet", model, [67], transform_input=True,
                                      dropout=0.0, aux_dropout=0.0)
    assert module.aux_logits
    x = _images(67)  # 2x2 maps at the end: batch statistics over 8 values, not 2
    with torch.no_grad():
        logits, aux2, aux1 = model.train()(torch.from_numpy(x))
    step = _compiled(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"],
                                               rngs={"dropout": jax.random.key(0)}),
                     variables, _nhwc(x))
    out, updates = step(variables, _nhwc(x))
    assert set(out) == {"logits", "aux1", "aux2"}
    _assert_close(out["logits"], logits.numpy())
    _assert_close(out["aux1"], aux1.numpy())
    _assert_close(out["aux2"], aux2.numpy())
    _assert_same_statistics("googlenet", module, {**variables, **updates}, model)


# ----------------------------------------------------------------------------------------------
# Import errors


def test_import_refuses_another_architecture():
    state = TV.resnet18(num_classes=NUM_CLASSES).state_dict()
    with pytest.raises(ValueError, match=r"does not fit torchvision's resnet34: \d+ missing"):
        convnets.from_torchvision("resnet34", state)
    with pytest.raises(ValueError, match="no classifier tensor 'classifier.1.weight'"):
        convnets.from_torchvision("mobilenet_v2", state)


def test_import_names_unexpected_and_misshaped_tensors():
    state = TV.resnet18(num_classes=NUM_CLASSES).state_dict()
    state["layer9.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 unexpected: \['layer9.extra.weight'\]"):
        convnets.from_torchvision("resnet18", state)
    state = TV.resnet18(num_classes=NUM_CLASSES).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(ValueError, match=r"mis-shaped: .*layer1.0.conv1.weight"):
        convnets.from_torchvision("resnet18", state)
    del state["layer1.0.conv1.weight"], state["fc.bias"]
    with pytest.raises(ValueError, match=r"2 missing: \['params/conv2_1/conv1/kernel', "
                                         r"'params/fc/bias'\]"):
        convnets.from_torchvision("resnet18", state)


# ----------------------------------------------------------------------------------------------
# Layers against torch


def test_local_response_norm_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 11, 3, 4)).astype(np.float32) * 10
    for n in (5, 4):
        ours = conv.local_response_norm(_nhwc(x), n=n, k=2.0, alpha=1e-4, beta=0.75)
        theirs = F.local_response_norm(torch.from_numpy(x), size=n, alpha=n * 1e-4, beta=0.75,
                                       k=2.0)
        np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("n,out", [(1, 6), (3, 6), (5, 3), (7, 6), (10, 4), (13, 7), (14, 4),
                                   (6, 6), (2, 5)])
def test_adaptive_avg_pool_matches_torch(n, out):
    x = np.random.default_rng(n).standard_normal((2, 3, n, n + 1)).astype(np.float32)
    ours = conv.adaptive_avg_pool(_nhwc(x), (out, out + 1))
    theirs = F.adaptive_avg_pool2d(torch.from_numpy(x), (out, out + 1))
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,f,s,p,ceil", [(7, 3, 2, 0, True), (8, 3, 2, 0, True),
                                          (9, 3, 2, 1, True), (6, 2, 2, 1, True),
                                          (5, 3, 1, 1, True), (10, 3, 2, 1, False),
                                          (11, 2, 2, 0, True), (4, 3, 3, 1, True)])
def test_pooling_matches_torch(n, f, s, p, ceil):
    x = np.random.default_rng(n).standard_normal((2, 3, n, n)).astype(np.float32)
    t = torch.from_numpy(x)
    ours = conv.max_pool(_nhwc(x), f, s, p, ceil_mode=ceil)
    theirs = F.max_pool2d(t, f, s, p, ceil_mode=ceil)
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy())
    for include in (True, False):
        ours = conv.avg_pool(_nhwc(x), f, s, p, ceil_mode=ceil, count_include_pad=include)
        theirs = F.avg_pool2d(t, f, s, p, ceil_mode=ceil, count_include_pad=include)
        np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-5,
                                   atol=1e-6)
        assert conv.pool_output_size(n, f, p, s, ceil) == theirs.shape[-1]


def test_stride2_padding_is_symmetric_like_torch():
    """Flax's "SAME" pads TensorFlow's way (more at the end); ours pads as torch does."""
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
    theirs = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1)
    layer = conv.conv(4, 3, 2, padding="same", bias=False)
    ours = layer.apply({"params": {"kernel": w.transpose(2, 3, 1, 0)}}, _nhwc(x))
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    tf_same = layer.clone(padding="SAME").apply({"params": {"kernel": w.transpose(2, 3, 1, 0)}},
                                                _nhwc(x))
    assert not np.allclose(tf_same, theirs.permute(0, 2, 3, 1).numpy(), atol=1e-3)
