"""torchvision (and open_clip ResNet) state dicts -> our variables (used by
convnets.from_torchvision and convnets.from_open_clip).

Each family maps a torch module path ("layer2.0.downsample.0") to ours
(("conv3_1", "proj_conv")); the tensors then convert by kind:

    conv weight  [O, I/groups, H, W] -> params .../kernel  [H, W, I/groups, O]
    linear weight [O, I]             -> params .../kernel  [I, O]
    BN weight, bias                  -> params .../scale, .../bias
    BN running_mean, running_var     -> batch_stats .../mean, .../var

and the result must have exactly the names and shapes our module initialises.
"""

import re

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from models import vgg

CLASSIFIER = {"alexnet": "classifier.6", "vgg": "classifier.6", "resnet": "fc",
              "googlenet": "fc", "mobilenet_v2": "classifier.1", "efficientnet": "classifier.1",
              "open_clip_resnet": "attnpool.c_proj"}
# Linear layers fed by a flattened C x H x W map, with their H = W: torch flattens channels
# first, we flatten them last.
FLATTENED = {"alexnet": {("fc6",): 6}, "vgg": {("fc6",): 7},
             "googlenet": {("aux1", "fc1"): 4, ("aux2", "fc1"): 4}}


def numpy_tensors(state_dict) -> dict[str, np.ndarray]:
    """float32 numpy copies of a state dict's tensors (torch tensors or arrays), minus
    BatchNorm's num_batches_tracked counters."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        out[key] = np.asarray(value, np.float32)
    return out


def infer_settings(family: str, tensors: dict, name: str) -> dict:
    """Settings read off the state dict: num_classes, and googlenet's aux_logits."""
    key = CLASSIFIER[family] + ".weight"
    if key not in tensors:
        raise ValueError(f"state dict has no classifier tensor {key!r}: not a torchvision {name}")
    settings = {"num_classes": int(tensors[key].shape[0])}
    if family == "googlenet":
        settings["aux_logits"] = any(k.startswith(("aux1.", "aux2.")) for k in tensors)
    return settings


# ----------------------------------------------------------------------------------------------
# Module paths, one function per family: torch path -> our path (None: no counterpart)


def _alexnet(path: str, module, modules) -> tuple | None:
    return {"features.0": ("conv1",), "features.3": ("conv2",), "features.6": ("conv3",),
            "features.8": ("conv4",), "features.10": ("conv5",), "classifier.1": ("fc6",),
            "classifier.4": ("fc7",), "classifier.6": ("fc8",)}.get(path)


def _vgg(path: str, module, modules) -> tuple | None:
    """features: conv, [BN,] ReLU per convolution and one max pooling per "M"."""
    table = {"classifier.0": ("fc6",), "classifier.3": ("fc7",), "classifier.6": ("fc8",)}
    index = 0
    for layer in vgg.layer_names(module.config):
        if layer is None:
            index += 1
            continue
        table[f"features.{index}"] = (layer[0],)
        if module.batch_norm:
            table[f"features.{index + 1}"] = (layer[0].replace("conv", "bn"),)
        index += 3 if module.batch_norm else 2
    return table.get(path)


def _resnet(path: str, module, modules) -> tuple | None:
    if path in ("conv1", "bn1", "fc"):
        return (path,)
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)", path)
    if not m:
        return None
    layer = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}.get(m[3], m[3])
    return (f"conv{int(m[1]) + 1}_{int(m[2]) + 1}", layer)


def _open_clip_resnet(path: str, module, modules) -> tuple | None:
    """open_clip's ModifiedResNet: stem conv1-3/bn1-3, layerN.M blocks as torchvision's
    (downsample.-1 is the parameter-free average pooling), attnpool's projections."""
    if re.fullmatch(r"(conv|bn)[123]|attnpool(\.[qkvc]_proj)?", path):
        return tuple(path.split("."))
    return None if path == "fc" else _resnet(path, module, modules)


def _conv_bn(prefix: str, ours: tuple) -> dict[str, tuple]:
    """A torchvision Conv2dNormActivation / BasicConv2d: children conv, BN -> our ConvBN."""
    return {f"{prefix}0": (*ours, "conv"), f"{prefix}1": (*ours, "bn")}


GOOGLENET_BRANCHES = {"branch1": "conv_1x1", "branch2.0": "conv_3x3_reduce",
                      "branch2.1": "conv_3x3", "branch3.0": "conv_5x5_reduce",
                      "branch3.1": "conv_5x5", "branch4.1": "pool_proj"}


def _googlenet(path: str, module, modules) -> tuple | None:
    if path in ("fc", "aux1.fc1", "aux1.fc2", "aux2.fc1", "aux2.fc2"):
        return tuple(path.split("."))
    m = re.fullmatch(r"(conv[123]|aux[12]\.conv)\.(conv|bn)", path)
    if m:
        return (*m[1].split("."), m[2])
    m = re.fullmatch(r"(inception\d[a-e])\.(branch\d(?:\.\d)?)\.(conv|bn)", path)
    if m and m[2] in GOOGLENET_BRANCHES:
        return (m[1], GOOGLENET_BRANCHES[m[2]], m[3])
    return None


def _mobilenet_v2(path: str, module, modules) -> tuple | None:
    """features.0 stem, features.1..n the inverted residuals, features.n+1 head."""
    n_blocks = len({k[0] for k in modules if k[0].startswith("block")})
    table = {"classifier.1": ("classifier",), **_conv_bn("features.0.", ("stem",)),
             **_conv_bn(f"features.{n_blocks + 1}.", ("head",))}
    m = re.fullmatch(r"features\.(\d+)\.conv\.(.*)", path)
    if m:  # InvertedResidual.conv: [expand,] depthwise (Conv-BN-ReLU6), then a bare conv, BN
        block = f"block{m[1]}"
        layers = (["expand"] if (block, "expand", "conv") in modules else []) + ["depthwise"]
        for i, layer in enumerate(layers):
            table.update(_conv_bn(f"{i}.", (block, layer)))
        table[f"{len(layers)}"] = (block, "project", "conv")
        table[f"{len(layers) + 1}"] = (block, "project", "bn")
        return table.get(m[2])
    return table.get(path)


def _efficientnet(path: str, module, modules) -> tuple | None:
    """features.0 stem, features.1..7 the MBConv stages, features.8 head."""
    n_stages = len({k[0].split("_")[0] for k in modules if k[0].startswith("stage")})
    table = {"classifier.1": ("classifier",), **_conv_bn("features.0.", ("stem",)),
             **_conv_bn(f"features.{n_stages + 1}.", ("head",))}
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(.*)", path)
    if m:  # MBConv.block: [expand,] depthwise, SE (fc1, fc2), projection
        block = f"stage{int(m[1]) + 1}_{int(m[2]) + 1}"
        layers = (["expand"] if (block, "expand", "conv") in modules else []) + [
            "depthwise", "se", "project"]
        for i, layer in enumerate(layers):
            if layer == "se":
                table.update({f"{i}.fc1": (block, "se", "fc1"), f"{i}.fc2": (block, "se", "fc2")})
            else:
                table.update(_conv_bn(f"{i}.", (block, layer)))
        return table.get(m[3])
    return table.get(path)


FAMILIES = {"alexnet": _alexnet, "vgg": _vgg, "resnet": _resnet, "googlenet": _googlenet,
            "mobilenet_v2": _mobilenet_v2, "efficientnet": _efficientnet,
            "open_clip_resnet": _open_clip_resnet}


# ----------------------------------------------------------------------------------------------
# Tensors


def _convert(kind: str, value: np.ndarray, grid: int | None):
    """(collection, leaf name, array) for a torch tensor of the given name."""
    if kind == "running_mean":
        return "batch_stats", "mean", value
    if kind == "running_var":
        return "batch_stats", "var", value
    if kind == "bias":
        return "params", "bias", value
    if kind == "positional_embedding":                       # CLIP's attention pooling
        return "params", "positional_embedding", value
    if kind != "weight":
        return None
    if value.ndim == 1:                                      # BatchNorm gamma
        return "params", "scale", value
    if value.ndim == 4:                                      # OIHW -> HWIO
        return "params", "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and grid and value.shape[1] % grid**2 == 0:  # [O, CHW] -> [HWC, O]
        out = value.shape[0]
        chw = value.reshape(out, -1, grid, grid)
        return "params", "kernel", chw.transpose(2, 3, 1, 0).reshape(-1, out)
    if value.ndim == 2:                                      # Linear [O, I] -> [I, O]
        return "params", "kernel", value.T
    return None


def convert(family: str, module, tensors: dict[str, np.ndarray], expected: dict,
            name: str) -> dict:
    """Our variables from `tensors`, checked against `expected` (the module's abstract
    variables): every tensor used, every variable filled, every shape equal."""
    want = flatten_dict(expected)
    modules = {k[1:-1] for k in want}  # our module paths, inside the collections
    to_ours = FAMILIES[family]
    flat, unexpected, misshaped = {}, [], {}
    for key, value in tensors.items():
        path, _, kind = key.rpartition(".")
        ours = to_ours(path, module, modules)
        converted = ours and _convert(kind, value, FLATTENED.get(family, {}).get(ours))
        target = converted and (converted[0], *ours, converted[1])
        if not converted or target not in want:
            unexpected.append(key)
        elif converted[2].shape != want[target].shape:
            misshaped[target] = (f"{key} {tuple(value.shape)} for {'/'.join(target)} "
                                 f"{tuple(want[target].shape)}")
        else:
            # A copy: torch updates its tensors in place, and these may share its memory.
            flat[target] = np.array(converted[2], order="C", copy=True)
    missing = sorted("/".join(k) for k in set(want) - set(flat) - set(misshaped))
    if missing or unexpected or misshaped:
        parts = [f"{len(missing)} missing: {missing[:5]}" if missing else "",
                 f"{len(unexpected)} unexpected: {sorted(unexpected)[:5]}" if unexpected else "",
                 f"{len(misshaped)} mis-shaped: {sorted(misshaped.values())[:5]}"
                 if misshaped else ""]
        raise ValueError(f"state dict does not fit torchvision's {name}: "
                         + "; ".join(p for p in parts if p))
    return unflatten_dict(flat)
