"""ConvNet arithmetic and cost, each claim counted and measured.

    python -m experiments.conv_arithmetic                      # ratio table, GoogLeNet, the zoo
    python -m experiments.conv_arithmetic --model=resnet18 [--image_size=224 --depth=1]
    python -m experiments.conv_arithmetic --model=all --torch  # every model's layers, torch's
                                                              # count beside ours

1. Depthwise separable against a normal convolution (MobileNet, Howard et al. 2017, section
   3.1): n_c_prev -> n_c channels with f x f filters on an n x n map cost n^2 n_c f^2 n_c_prev
   multiply-adds; a depthwise f x f filter per input channel then a 1x1 mix cost
   n^2 n_c_prev f^2 + n^2 n_c_prev n_c, a ratio of 1/n_c + 1/f^2. Each pair is built from the
   zoo's conv layer and measured by XLA's cost analysis of the compiled program, over a grid of
   (f, n_c), beside the formula. The input is n + f - 1 wide with "valid" padding, so every tap
   falls on a real pixel (XLA does not count taps on zero padding).
2. GoogLeNet's 1x1 bottleneck (Szegedy et al. 2015, section 4): 28x28x192 -> 28x28x32 with
   5x5 "same" filters costs about 120M multiplies; through a 16-channel 1x1 bottleneck about
   12.4M. Counted from the layers' shapes (convnets.summarize), by XLA on the same layers
   ("same" padding: the taps on the border padding are not counted) and on an input padded
   beforehand ("valid": every tap counted, as the text does).
3. The zoo: every model's parameters and multiply-adds per image at its resolution, from
   convnets.summary (a row per layer with --model); with --torch, torch's FlopCounterMode on
   the torchvision model of the same name (on the meta device: shapes only) / 2 beside it.
"""

import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import linen as nn

from models import convnets
from models.conv import (conv_macs, depthwise_separable_cost_ratio,
                         depthwise_separable_macs)

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined only when it runs as a command: the experiments'
    modules share absl's global flags, so importing two that define --out would collide."""
    flags.DEFINE_string("model", "", "A zoo model to print layer by layer ('all': every one); "
                        "empty: the totals of every model.")
    flags.DEFINE_integer("image_size", 0, "Input side for --model (0: the model's resolution).")
    flags.DEFINE_integer("depth", 0, "Merge --model's rows by the first DEPTH parts of their names "
                         "(0: a row per layer).", lower_bound=0)
    flags.DEFINE_list("f", ["3", "5", "7"], "Filter sizes of the depthwise ratio grid.")
    flags.DEFINE_list("n_c", ["8", "32", "128", "512"], "Output channels of the ratio grid.")
    flags.DEFINE_integer("n_c_prev", 32, "Input channels of the ratio grid.", lower_bound=1)
    flags.DEFINE_integer("n", 14, "Output side of the ratio grid.", lower_bound=1)
    flags.DEFINE_bool("torch", False, "Also count the torchvision models' multiply-adds with "
                      "torch's FlopCounterMode.")


class Convs(nn.Module):
    """Convolutions in sequence, (n_c, f, groups) each, without activations: only their
    arithmetic matters here."""

    layers: tuple[tuple[int, int, int], ...]
    padding: str = "same"
    bias: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        # lax's own convolution, not the zoo's CPU kernels (models/kernels.py), which compute
        # the same sums by other programs: the operation's cost is what is measured here.
        for n_c, f, groups in self.layers:
            p = (f - 1) // 2 if self.padding == "same" else 0
            x = nn.Conv(n_c, (f, f), strides=(1, 1), padding=((p, p), (p, p)),
                        feature_group_count=groups, use_bias=self.bias)(x)
        return x


def images(side: int, channels: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)


def measured_macs(module: nn.Module, x: jax.ShapeDtypeStruct) -> float:
    """XLA's FLOPs of the compiled forward / 2."""
    variables = convnets.abstract_variables(module, x)
    return convnets.xla_flops(lambda v, x: module.apply(v, x), variables, x) / 2


# ----------------------------------------------------------------------------------------------
# 1. Depthwise separable against normal convolution


def depthwise_ratio(f: int, n_c: int, n_c_prev: int = 32, n: int = 14) -> dict:
    """The normal and the depthwise separable layer on an (n + f - 1)-wide input ("valid": an
    n x n output, no padding taps): their counted and XLA-measured multiply-adds, and the
    ratio beside 1/n_c + 1/f^2."""
    x = images(n + f - 1, n_c_prev)
    normal = Convs(((n_c, f, 1),), padding="valid", bias=False)
    separable = Convs(((n_c_prev, f, n_c_prev), (n_c, 1, 1)), padding="valid", bias=False)
    xla_normal, xla_separable = measured_macs(normal, x), measured_macs(separable, x)
    return dict(f=f, n_c=n_c, conv=conv_macs(n, f, n_c_prev, n_c),
                separable=depthwise_separable_macs(n, f, n_c_prev, n_c),
                xla_conv=xla_normal, xla_separable=xla_separable,
                measured=xla_separable / xla_normal,
                formula=depthwise_separable_cost_ratio(f, n_c))


def print_ratio_table(fs, n_cs, n_c_prev: int, n: int):
    print(f"Depthwise separable / normal convolution, {n_c_prev} -> n_c channels, {n}x{n} output "
          f"(multiply-adds; XLA: cost analysis of the compiled layers, FLOPs / 2)\n")
    print("| f | n_c | normal (XLA) | separable (XLA) | measured ratio | 1/n_c + 1/f^2 |")
    print("|---|---|---|---|---|---|")
    for f in fs:
        for n_c in n_cs:
            r = depthwise_ratio(f, n_c, n_c_prev, n)
            counted = r["separable"] / r["conv"]
            if abs(counted - r["formula"]) > 1e-12:
                raise AssertionError(f"counted ratio {counted} != formula {r['formula']}")
            print(f"| {f} | {n_c} | {r['xla_conv']:,.0f} | {r['xla_separable']:,.0f} | "
                  f"{r['measured']:.4f} | {r['formula']:.4f} |")


# ----------------------------------------------------------------------------------------------
# 2. GoogLeNet's bottleneck


DIRECT = ((32, 5, 1),)                       # 192 -> 32, 5x5
BOTTLENECK = ((16, 1, 1), (32, 5, 1))        # 192 -> 16, 1x1; 16 -> 32, 5x5


def googlenet_bottleneck(n: int = 28, n_c_prev: int = 192) -> dict:
    """{"direct", "bottleneck"}: each path's counted multiply-adds and parameters (with
    biases), and XLA's multiply-adds with "same" padding and on an input padded beforehand."""
    out = {}
    x = images(n, n_c_prev)
    for name, layers in (("direct", DIRECT), ("bottleneck", BOTTLENECK)):
        s = convnets.summarize(Convs(layers), x, name)
        # XLA measures the layers without biases (it would count their adds). Padded
        # beforehand: the 1x1 layers see no padding; the last, f x f one runs "valid" on the
        # map padded by f // 2, so every tap the text counts is a real multiply-add.
        *first, (n_c, f, groups) = layers
        c_last = first[-1][0] if first else n_c_prev
        last = Convs(((n_c, f, groups),), padding="valid", bias=False)
        xla_valid = ((measured_macs(Convs(tuple(first), bias=False), x) if first else 0.0)
                     + measured_macs(last, images(n + 2 * (f // 2), c_last)))
        out[name] = dict(macs=s.macs, params=s.params, output=s.output_shape,
                         layers=[(l.kind, l.output_shape, l.macs) for l in s.layers],
                         xla_same=measured_macs(Convs(layers, bias=False), x),
                         xla_valid=xla_valid)
    return out


def print_googlenet(n: int = 28, n_c_prev: int = 192):
    r = googlenet_bottleneck(n, n_c_prev)
    print(f"\nGoogLeNet's 1x1 bottleneck: {n}x{n}x{n_c_prev} -> {n}x{n}x32, 5x5 'same' "
          f"(multiply-adds)\n")
    print("| path | layers | counted | XLA, input padded beforehand | XLA, 'same' padding | "
          "parameters |")
    print("|---|---|---|---|---|---|")
    for name, v in r.items():
        layers = " + ".join(f"{kind} ({m:,})" for kind, _, m in v["layers"])
        print(f"| {name} | {layers} | {v['macs']:,} | {v['xla_valid']:,.0f} | "
              f"{v['xla_same']:,.0f} | {v['params']:,} |")
    d, b = r["direct"]["macs"], r["bottleneck"]["macs"]
    print(f"\nbottleneck / direct: {b / d:.4f} ({d / b:.1f}x fewer multiply-adds)")


# ----------------------------------------------------------------------------------------------
# 3. The zoo


def torch_macs(name: str, image_size: int) -> float:
    """torch's FlopCounterMode on torchvision's `name` in eval mode, on the meta device (shapes
    only): its FLOPs / 2 (it counts 2 per multiply-add of convolutions and matmuls)."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = dict(aux_logits=False, init_weights=False) if name == "googlenet" else {}
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(**kwargs).eval()
        x = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2


def natural_order(name: str) -> str:
    """resnet8 < resnet18 < resnet101."""
    return re.sub(r"\d+", lambda m: f"{int(m.group()):04d}", name)


def print_zoo(with_torch: bool):
    print("\nThe zoo: parameters and multiply-adds of one image at the model's resolution "
          "(convnets.summary)" + ("; torch: FlopCounterMode / 2 on torchvision's model" if
                                  with_torch else "") + "\n")
    head = "| model | resolution | parameters | multiply-adds | GMACs |"
    print(head + (" torch | equal |" if with_torch else ""))
    print("|---" * (head.count("|") - 1 + (2 if with_torch else 0)) + "|")
    for name in sorted(convnets.names(), key=natural_order):
        side = convnets.default_resolution(name)
        s = convnets.summary(name)
        line = f"| {name} | {side} | {s.params:,} | {s.macs:,} | {s.macs / 1e9:.4g} |"
        if with_torch:
            if convnets.REGISTRY[name].family:
                ref = torch_macs(name, side)
                line += f" {ref:,.0f} | {'yes' if ref == s.macs else 'NO'} |"
            else:
                line += " | |"
        print(line)


def main(argv):
    del argv
    start = time.perf_counter()
    if FLAGS.model:
        names = sorted(convnets.names(), key=natural_order)
        for name in names if FLAGS.model == "all" else [FLAGS.model]:
            s = convnets.summary(name, FLAGS.image_size or None)
            print(convnets.format_summary(s, FLAGS.depth))
            if FLAGS.torch and convnets.REGISTRY[name].family:
                ref = torch_macs(name, s.input_shape[0])
                print(f"torch FlopCounterMode / 2: {ref:,.0f} "
                      f"({'equal' if ref == s.macs else 'DIFFERENT'})")
            print()
    else:
        print_ratio_table([int(f) for f in FLAGS.f], [int(c) for c in FLAGS.n_c],
                          FLAGS.n_c_prev, FLAGS.n)
        print_googlenet()
        print_zoo(FLAGS.torch)
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
