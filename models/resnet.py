"""ResNet (He, Zhang, Ren & Sun 2016, "Deep residual learning for image recognition").

A residual block learns F and adds its input back (eq. 1 and 2, figure 2):

    y = F(x, {W_i}) + x          when shapes agree (identity shortcut)
    y = F(x, {W_i}) + W_s x      when they change  (projection shortcut, option B)

then ReLU. F is two 3x3 convolutions (basic block, figure 5 left) or 1x1 -> 3x3 -> 1x1 with a
4x wider output (bottleneck, figure 5 right), each convolution followed by BatchNorm (section
3.4). Table 1: a 7x7/2 convolution (conv1) and a 3x3/2 max pooling, four stages conv2_x ..
conv5_x of 64, 128, 256, 512 filters (x4 at the output of a bottleneck), the first block of
conv3_x .. conv5_x halving the resolution, global average pooling, a fully connected layer.

    resnet18: basic (2, 2, 2, 2)       resnet50:  bottleneck (3, 4, 6, 3)
    resnet34: basic (3, 4, 6, 3)       resnet101: bottleneck (3, 4, 23, 3)
                                       resnet152: bottleneck (3, 8, 36, 3)

As torchvision (its "v1.5"), a bottleneck downsamples in its 3x3 convolution, not the first 1x1,
and projection shortcuts are 1x1 convolutions + BatchNorm: resnet18 11,689,512 parameters,
resnet50 25,557,032. zero_init_residual starts the last BN scale of every block at 0, so each
block begins as the identity (Goyal et al. 2017). `dtype` is the compute dtype of the
convolutions and the classifier ("bfloat16" for mixed precision); parameters and BatchNorm's
statistics stay float32.

The CIFAR-10 networks of section 4.2 (stem="cifar", 6n+2 layers: a 3x3 convolution of 16
filters, three stages of n basic blocks with 16, 32, 64 filters, no max pooling) use the
parameter-free shortcut of option A, the identity with the resolution subsampled and the new
channels zero-padded: resnet20 has 0.27M parameters as in table 6.

Shortcut options (section 3.3, table 3): "A" zero-pads where the shape changes, "B" projects
there (W_s, a 1x1 convolution + BatchNorm), "C" projects on every block; "none" removes every
shortcut, giving the plain networks of figures 4 and 6 (y = relu(F(x))): exactly the residual
network's stacked layers, so plain and option-A residual networks have the same parameters and
option B adds only its projections.
"""

from typing import Literal

import jax.numpy as jnp
from flax import linen as nn

from models.conv import (TORCH_LINEAR, BatchNorm, adaptive_avg_pool, check_images, conv,
                         flatten, max_pool)

EXPANSION = {"basic": 1, "bottleneck": 4}
SHORTCUTS = ("A", "B", "C", "none")


def zero_pad_shortcut(x, n_c: int, s: int):
    """Option A: the identity on every s-th pixel, zeros for the n_c - n_c_prev new channels."""
    x = x[:, ::s, ::s, :]
    return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, n_c - x.shape[-1])])


class ResidualBlock(nn.Module):
    """y = relu(F(x) + shortcut(x)); F basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4)."""

    planes: int
    s: int = 1
    kind: Literal["basic", "bottleneck"] = "basic"
    shortcut: Literal["A", "B", "C", "none"] = "B"
    zero_init_residual: bool = False
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        n_out = self.planes * EXPANSION[self.kind]
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        if self.kind == "basic":
            fs, strides, widths = (3, 3), (self.s, 1), (self.planes, n_out)
        else:
            fs, strides, widths = (1, 3, 1), (1, self.s, 1), (self.planes, self.planes, n_out)
        y = x
        for i, (f, s, n_c) in enumerate(zip(fs, strides, widths), start=1):
            last = i == len(fs)
            y = conv(n_c, f, s, padding="same", bias=False, name=f"conv{i}",
                     dtype=self.dtype)(y)
            y = BatchNorm(scale_init=last_scale if last else nn.initializers.ones,
                          name=f"bn{i}")(y, train)
            if not last:
                y = nn.relu(y)
        if self.shortcut == "none":  # a plain block: the same layers, no shortcut
            return nn.relu(y)
        if self.shortcut != "C" and self.s == 1 and x.shape[-1] == n_out:
            identity = x
        elif self.shortcut == "A":
            identity = zero_pad_shortcut(x, n_out, self.s)
        else:  # W_s x: a 1x1 projection with the block's stride (B: where shapes change; C: all)
            identity = conv(n_out, 1, self.s, padding=0, bias=False, name="proj_conv",
                            dtype=self.dtype)(x)
            identity = BatchNorm(name="proj_bn")(identity, train)
        return nn.relu(y + identity)


class ResNet(nn.Module):
    num_classes: int = 1000
    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    shortcut: Literal["A", "B", "C", "none"] = "B"   # "none": the plain network
    zero_init_residual: bool = False
    dtype: str = "float32"       # compute dtype: float32 | bfloat16

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "ResNet")
        if self.block not in EXPANSION:
            raise ValueError(f"ResNet block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.layers) != len(self.widths):
            raise ValueError(f"ResNet needs one width per stage: layers {self.layers}, widths "
                             f"{self.widths}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"ResNet shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.zero_init_residual and self.shortcut == "none":
            raise ValueError("zero_init_residual needs shortcuts: a plain network would start "
                             "with every block's output at zero")
        if self.stem == "imagenet":  # conv1: 7x7/2, then 3x3/2 max pooling
            x = conv(self.widths[0], 7, 2, padding=3, bias=False, name="conv1",
                     dtype=self.dtype)(images)
            x = nn.relu(BatchNorm(name="bn1")(x, train))
            x = max_pool(x, 3, 2, p=1)
        elif self.stem == "cifar":   # section 4.2: one 3x3 convolution, full resolution
            x = conv(self.widths[0], 3, 1, padding=1, bias=False, name="conv1",
                     dtype=self.dtype)(images)
            x = nn.relu(BatchNorm(name="bn1")(x, train))
        else:
            raise ValueError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}")
        for stage, (n_blocks, planes) in enumerate(zip(self.layers, self.widths)):
            for j in range(n_blocks):
                s = 2 if stage > 0 and j == 0 else 1
                x = ResidualBlock(planes, s, self.block, self.shortcut, self.zero_init_residual,
                                  self.dtype, name=f"conv{stage + 2}_{j + 1}")(x, train)
        x = flatten(adaptive_avg_pool(x, 1))
        return nn.Dense(self.num_classes, kernel_init=TORCH_LINEAR, dtype=self.dtype,
                        name="fc")(x)
