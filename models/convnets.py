"""The ConvNet zoo by name: create, count_params, flops, summary, default_resolution,
from_torchvision.

Every model maps float32 NHWC images to logits:

    logits = module.apply(variables, images, train=False)                   # [batch, classes]
    out, updates = module.apply(variables, images, train=True, mutable=["batch_stats"],
                                rngs={"dropout": key})

`variables` holds "params" and, for models with BatchNorm, "batch_stats" (running mean/var);
`updates["batch_stats"]` is the new running statistics after a training step. In training,
googlenet, googlenet_paper and googlenet_small (with aux_logits=True, the default) return
{"logits", "aux1", "aux2"} (inception.training_loss weighs them 1, 0.3, 0.3); every other model,
and every model in eval mode, returns the logits array. The input channel count is free
(1 for digits); count_params and flops assume 3 (1 for lenet5) unless told.

torchvision's names (alexnet, vgg11..vgg19 and *_bn, resnet18..resnet152, googlenet,
mobilenet_v2, efficientnet_b0..b7) are torchvision's architectures, number for number, and
from_torchvision imports their state dicts. The others follow the papers (lenet5, alexnet_paper,
googlenet_paper, the CIFAR ResNets resnet8..resnet110) or are CPU-sized variants for 32x32
inputs (alexnet_small, googlenet_small, mobilenet_v2_tiny, efficientnet_tiny). The papers'
ablations are fields of the modules (create(name, **overrides)): ResNet's shortcut ("A", "B",
"C", "none" for the plain network), AlexNet's act, lrn, overlap and dropout, GoogLeNet's
aux_logits and bottleneck, MobileNetV2's linear_bottleneck and residual.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import alexnet, clip_resnet, efficientnet, inception, lenet, mobilenet, resnet, vgg
from models.conv import BatchNorm, conv_macs
from models import torchvision_import


@dataclasses.dataclass(frozen=True)
class Entry:
    build: Callable[..., nn.Module]
    preset: dict[str, Any]
    resolution: int
    num_classes: int = 1000
    in_channels: int = 3
    family: str | None = None  # the torchvision family it imports from; None: no counterpart


# CLIP's modified ResNets (Radford et al. 2021, table 19): layers, width, embedding dimension,
# resolution; heads = 32 w / 64. clip-rn-tiny: CPU-sized, for 32x32 inputs (stem stride 1, so
# the final feature map is 2x2).
CLIP_RESNETS = {"clip-rn50": ((3, 4, 6, 3), 64, 1024, 224),
                "clip-rn101": ((3, 4, 23, 3), 64, 512, 224),
                "clip-rn50x4": ((4, 6, 10, 6), 80, 640, 288),
                "clip-rn50x16": ((6, 8, 18, 8), 96, 768, 384),
                "clip-rn50x64": ((3, 15, 36, 10), 128, 1024, 448)}


def _registry() -> dict[str, Entry]:
    r = {
        "lenet5": Entry(lenet.LeNet5, {}, 32, num_classes=10, in_channels=1),
        "alexnet": Entry(alexnet.AlexNet, dict(variant="torchvision"), 224, family="alexnet"),
        "alexnet_paper": Entry(alexnet.AlexNet, dict(variant="paper"), 227),
        "alexnet_small": Entry(alexnet.AlexNet, dict(variant="small"), 32, num_classes=10),
        "googlenet": Entry(inception.GoogLeNet, dict(variant="torchvision"), 224,
                           family="googlenet"),
        "googlenet_paper": Entry(inception.GoogLeNet, dict(variant="paper", dropout=0.4), 224),
        "googlenet_small": Entry(inception.GoogLeNet,
                                 dict(variant="small", width_mult=0.25, dropout=0.4), 32,
                                 num_classes=10),
        "mobilenet_v2": Entry(mobilenet.MobileNetV2, {}, 224, family="mobilenet_v2"),
        "mobilenet_v2_tiny": Entry(mobilenet.MobileNetV2, dict(width_mult=0.25, stem_stride=1),
                                   32, num_classes=10),
        "efficientnet_tiny": Entry(efficientnet.EfficientNet,
                                   dict(width_mult=0.25, depth_mult=0.5, stem_stride=1), 32,
                                   num_classes=10),
    }
    for depth, config in vgg.DEPTH_TO_CONFIG.items():
        r[f"vgg{depth}"] = Entry(vgg.VGG, dict(config=config), 224, family="vgg")
        r[f"vgg{depth}_bn"] = Entry(vgg.VGG, dict(config=config, batch_norm=True), 224,
                                    family="vgg")
    for depth, block, layers in [(18, "basic", (2, 2, 2, 2)), (34, "basic", (3, 4, 6, 3)),
                                 (50, "bottleneck", (3, 4, 6, 3)),
                                 (101, "bottleneck", (3, 4, 23, 3)),
                                 (152, "bottleneck", (3, 8, 36, 3))]:
        r[f"resnet{depth}"] = Entry(resnet.ResNet, dict(block=block, layers=layers), 224,
                                    family="resnet")
    for n in (1, 3, 5, 7, 9, 18):  # section 4.2: 6n + 2 layers on CIFAR-10
        r[f"resnet{6 * n + 2}"] = Entry(
            resnet.ResNet, dict(block="basic", layers=(n, n, n), widths=(16, 32, 64),
                                stem="cifar", shortcut="A"), 32, num_classes=10)
    for name, (layers, width, embed_dim, res) in CLIP_RESNETS.items():
        r[name] = Entry(clip_resnet.CLIPResNet, dict(layers=layers, width=width,
                                                     heads=width * 32 // 64), res,
                        num_classes=embed_dim)
    r["clip-rn-tiny"] = Entry(clip_resnet.CLIPResNet, dict(layers=(1, 1, 1, 1), width=8,
                                                          heads=4, stem_stride=1), 32,
                              num_classes=64)
    for b, (w, d, res, dropout) in efficientnet.PRESETS.items():
        bn = dict(bn_eps=1e-3, bn_momentum=0.99) if b in ("b5", "b6", "b7") else {}
        r[f"efficientnet_{b}"] = Entry(
            efficientnet.EfficientNet, dict(width_mult=w, depth_mult=d, dropout=dropout, **bn),
            res, family="efficientnet")
    return r


REGISTRY = _registry()


def names() -> list[str]:
    return sorted(REGISTRY)


def _entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {names()}")
    return REGISTRY[name]


def create(name: str, num_classes: int | None = None, **overrides) -> nn.Module:
    """The model `name` (its paper's or torchvision's preset), num_classes outputs (default: the
    preset's, 1000 for ImageNet models and 10 for lenet5 and the CIFAR/tiny ones), any field of
    the module overridden (dropout=0.0, width_mult=0.5, ...)."""
    entry = _entry(name)
    fields = {f.name for f in dataclasses.fields(entry.build)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{name} has no setting {unknown}; it has {sorted(fields)}")
    kwargs = {**entry.preset, **overrides,
              "num_classes": entry.num_classes if num_classes is None else num_classes}
    return entry.build(**kwargs)


def default_resolution(name: str) -> int:
    """The input side the model was designed for: 224 for ImageNet models, 227 for the paper's
    AlexNet, 32 for LeNet-5 and the CIFAR/tiny models, the EfficientNet table's r."""
    return _entry(name).resolution


def dummy_images(name: str, batch: int = 1, resolution: int | None = None,
                 in_channels: int | None = None) -> jax.ShapeDtypeStruct:
    """The shape of a batch of images at the model's default resolution and channels (3, or 1
    for lenet5)."""
    side = resolution or default_resolution(name)
    return jax.ShapeDtypeStruct((batch, side, side, in_channels or _entry(name).in_channels),
                                jnp.float32)


def abstract_variables(module: nn.Module, images: jax.ShapeDtypeStruct) -> dict:
    """The shapes of module.init's variables for these images, computed without allocating
    (traced with nested jits inlined: several times faster for the initialisers' many shapes)."""
    with jax.disable_jit():
        return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), images)


def init(name: str, rng, num_classes: int | None = None, resolution: int | None = None,
         in_channels: int | None = None, **overrides) -> tuple[nn.Module, dict]:
    """(module, variables) of a freshly initialised model."""
    module = create(name, num_classes, **overrides)
    x = jnp.zeros(dummy_images(name, 1, resolution, in_channels).shape, jnp.float32)
    return module, module.init(rng, x, train=False)


def count_params(name: str, num_classes: int | None = None, in_channels: int | None = None,
                 resolution: int | None = None, **overrides) -> int:
    """Number of trainable parameters (BatchNorm's running statistics excluded, as torch counts
    them), from shapes only."""
    module = create(name, num_classes, **overrides)
    shapes = abstract_variables(module, dummy_images(name, 1, resolution, in_channels))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def flops(name: str, resolution: int | None = None, num_classes: int | None = None,
          in_channels: int | None = None, **overrides) -> float:
    """Forward FLOPs of one image in eval mode, as XLA's cost analysis counts them: 2 per
    multiply-add of convolutions and matmuls (taps that fall on zero padding are not counted),
    plus one per element of BatchNorm, activations and pooling. About twice the multiply-add
    count that torchvision lists as "GFLOPS" (resnet50: 4.09 GMACs, here 7.9e9)."""
    module = create(name, num_classes, **overrides)
    images = dummy_images(name, 1, resolution, in_channels)
    variables = abstract_variables(module, images)
    return xla_flops(lambda v, x: module.apply(v, x, train=False), variables, images,
                     compiled=False)


def xla_flops(fn: Callable, *args, compiled: bool = True) -> float:
    """FLOPs of fn(*args) (arrays or ShapeDtypeStructs) by XLA's cost analysis: 2 per
    multiply-add of a convolution or matmul, taps on zero padding not counted. compiled=False
    analyses the program before XLA's optimisations (no compilation: faster on big models)."""
    lowered = jax.jit(fn).lower(*args)
    cost = (lowered.compile() if compiled else lowered).cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


# ----------------------------------------------------------------------------------------------
# Model summary: a row per layer with parameters, as torchinfo and Keras print them.


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution, fully connected layer or BatchNorm of a forward pass. f, s, p, groups:
    a convolution's filter size, stride, padding and groups (None otherwise). macs: the
    multiply-adds of one image (conv_macs for a convolution, inputs x outputs for a fully
    connected layer, 0 for BatchNorm)."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    f: int | None = None
    s: int | None = None
    p: int | None = None
    groups: int | None = None


@dataclasses.dataclass(frozen=True)
class Summary:
    """The layers of one eval-mode forward pass of a batch of one image. params is every
    trainable parameter of the model (count_params); layers not run in eval mode (GoogLeNet's
    auxiliary classifiers) have no row, so the rows can sum to less."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    params: int

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def layer_params(self) -> int:
        return sum(layer.params for layer in self.layers)


def _layer(module: nn.Module, x, y) -> Layer:
    name = "/".join(module.scope.path)
    params = sum(v.size for v in jax.tree.leaves(module.variables.get("params", {})))
    shapes = dict(input_shape=tuple(x.shape[1:]), output_shape=tuple(y.shape[1:]), params=params)
    if isinstance(module, nn.Conv):
        f, f_w = module.kernel_size
        (s, _), ((p, _), _), groups = module.strides, module.padding, module.feature_group_count
        if f != f_w or not isinstance(module.padding, (tuple, list)):
            raise ValueError(f"{name}: the summary counts square, explicitly padded filters")
        c_in, c_out = x.shape[-1], y.shape[-1]
        macs = conv_macs(tuple(y.shape[1:3]), f, c_in, c_out, groups)
        kind = "depthwise" if groups == c_in == c_out and groups > 1 else "conv"
        kind += f" {f}x{f}/{s}" + (f" p{p}" if p else "")
        return Layer(name, kind, **shapes, macs=macs, f=f, s=s, p=p, groups=groups)
    if isinstance(module, nn.Dense):
        macs = (y.size // y.shape[0]) * x.shape[-1]
        return Layer(name, "dense", **shapes, macs=macs)
    return Layer(name, "batchnorm", **shapes, macs=0)


def summarize(module: nn.Module, images: jax.ShapeDtypeStruct, name: str = "") -> Summary:
    """The Summary of any Flax module whose layers are nn.Conv, nn.Dense and BatchNorm, traced
    from shapes alone (module.apply(variables, images, train=False))."""
    rows: list[Layer] = []

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        m = context.module
        if context.method_name == "__call__" and isinstance(
                m, (nn.Conv, nn.Dense, BatchNorm)):
            layer = _layer(m, args[0], y)
            if rows and rows[-1].name == layer.name:   # Conv2d's call of nn.Conv's
                rows.pop()
            rows.append(layer)
        return y

    variables = abstract_variables(module, images)
    with jax.disable_jit(), nn.intercept_methods(record):
        out = jax.eval_shape(lambda v, x: module.apply(v, x, train=False), variables, images)
    params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    return Summary(name or type(module).__name__, tuple(images.shape[1:]),
                   tuple(out.shape[1:]), tuple(rows), params)


def summary(name: str, image_size: int | None = None, num_classes: int | None = None,
            in_channels: int | None = None, **overrides) -> Summary:
    """The layer-by-layer Summary of zoo model `name` on one image_size x image_size image
    (default: the model's resolution)."""
    module = create(name, num_classes, **overrides)
    return summarize(module, dummy_images(name, 1, image_size, in_channels), name)


def _si(n: float) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.3f} M"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def group_layers(layers: tuple[Layer, ...], depth: int) -> list[Layer]:
    """Rows merged by the first `depth` parts of their names (conv2_1/conv1 -> conv2_1 at depth
    1): parameters and multiply-adds summed, the shapes of the group's first input and last
    output, the operation what it holds ("2 conv, 2 bn")."""
    groups: dict[str, list[Layer]] = {}
    for layer in layers:
        groups.setdefault("/".join(layer.name.split("/")[:depth]), []).append(layer)
    return [rows[0] if len(rows) == 1 else
            Layer(key, _kinds(rows), rows[0].input_shape, rows[-1].output_shape,
                  sum(r.params for r in rows), sum(r.macs for r in rows))
            for key, rows in groups.items()]


def _kinds(rows: list[Layer]) -> str:
    """"2 conv, 2 bn": what a group of rows holds."""
    counts = {"conv": sum(r.f is not None for r in rows),
              "dense": sum(r.kind == "dense" for r in rows),
              "bn": sum(r.kind == "batchnorm" for r in rows)}
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)


def format_summary(summary: Summary, depth: int = 0) -> str:
    """A text table: layer, operation, input and output shape (H x W x C, or features),
    parameters, multiply-adds; then the totals. depth > 0 merges rows as group_layers."""
    layers = group_layers(summary.layers, depth) if depth > 0 else list(summary.layers)
    header = ("layer", "operation", "input", "output", "params", "mult-adds")
    rows = [header] + [(l.name, l.kind, _shape(l.input_shape), _shape(l.output_shape),
                        f"{l.params:,}", f"{l.macs:,}") for l in layers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">", ">"]
    lines = ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    unused = summary.params - summary.layer_params
    lines += ["-" * len(lines[0]),
              f"{summary.name}: input {_shape(summary.input_shape)} -> output "
              f"{_shape(summary.output_shape)}; {summary.params:,} parameters"
              + (f" ({unused:,} in layers unused at inference)" if unused else "")
              + f"; {summary.macs:,} multiply-adds ({_si(summary.macs)}) per image"]
    return "\n".join(lines)


def from_open_clip(name: str, state_dict, **overrides) -> tuple[nn.Module, dict]:
    """(module, variables) of a CLIP ResNet (clip-rn50, ..., or any with `overrides` of layers,
    width, heads, stem_stride) from the state dict of open_clip's ModifiedResNet, or of a whole
    open_clip CLIP model (its "visual." tensors). The output width comes from attnpool.c_proj,
    the input channels from conv1, the resolution from the positional embedding; as in
    from_torchvision every tensor must fit."""
    entry = _entry(name)
    if entry.build is not clip_resnet.CLIPResNet:
        raise ValueError(f"{name} is not a CLIP ResNet; choose from "
                         f"{[n for n in names() if REGISTRY[n].build is clip_resnet.CLIPResNet]}")
    if any(k.startswith("visual.") for k in state_dict):
        state_dict = {k[len("visual."):]: v for k, v in state_dict.items()
                      if k.startswith("visual.")}
    tensors = torchvision_import.numpy_tensors(state_dict)
    settings = torchvision_import.infer_settings("open_clip_resnet", tensors, name)
    module = create(name, **{**settings, **overrides})
    grid = math.isqrt(len(tensors["attnpool.positional_embedding"]) - 1)
    side = grid * 16 * module.stem_stride
    expected = abstract_variables(module, dummy_images(name, 1, side,
                                                       tensors["conv1.weight"].shape[1]))
    return module, torchvision_import.convert("open_clip_resnet", module, tensors, expected,
                                              name)


def from_torchvision(name: str, state_dict, **overrides) -> tuple[nn.Module, dict]:
    """(module, variables) from a torchvision state dict of the same architecture.

    Torch OIHW kernels become Flax HWIO, Linear weights are transposed (and, after a spatial
    flatten, reordered from torch's C,H,W to our H,W,C), BatchNorm weight/bias/running_mean/
    running_var become params scale/bias and batch_stats mean/var. num_classes comes from the
    classifier's shape; googlenet gets aux_logits when aux1/aux2 are in the state dict. Every
    tensor must be used (num_batches_tracked aside): a missing, unexpected or mis-shaped tensor
    is an error that names it. Pretrained torchvision googlenet weights expect
    transform_input=True (pass it as an override)."""
    entry = _entry(name)
    if entry.family is None:
        raise ValueError(f"{name} has no torchvision counterpart; importable: "
                         f"{[n for n in names() if REGISTRY[n].family]}")
    tensors = torchvision_import.numpy_tensors(state_dict)
    inferred = torchvision_import.infer_settings(entry.family, tensors, name)
    module = create(name, **{**inferred, **overrides})
    expected = abstract_variables(module, dummy_images(name, 1, 224))
    return module, torchvision_import.convert(entry.family, module, tensors, expected, name)
