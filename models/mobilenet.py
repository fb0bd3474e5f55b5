"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen 2018, "MobileNetV2: inverted residuals and
linear bottlenecks", section 3-4, tables 1-2).

The inverted residual block (table 1, figure 3b) expands a thin k-channel input t times with a
1x1 convolution + ReLU6, filters it with a 3x3 depthwise convolution (stride s) + ReLU6, and
projects it back to k' channels with a 1x1 convolution and no activation: the linear bottleneck
(section 3.2, ReLU would destroy information in the low-dimensional space). The shortcut joins
the thin bottlenecks, when s = 1 and k = k'.

Table 2 (t expansion, c output channels, n repeats, s stride of the first repeat) is SETTING
below, between a 3x3/2 convolution of 32 filters and a 1x1 convolution to 1280, global average
pooling and a linear classifier (with dropout 0.2, torchvision's). The width multiplier alpha
scales every layer's channels (section 6.1), rounded to a multiple of 8 by make_divisible; the
last layer never shrinks below 1280. torchvision's mobilenet_v2: 3,504,872 parameters.

The ablations of figure 6 are fields, none of which changes the parameter count:
linear_bottleneck=False puts ReLU6 after the projection too (figure 6a). residual (figure 6b):
"inverted", the shortcut between bottlenecks; "classic", between expansions; "none".

"classic" is our reading of figure 6b's "shortcut between expansions", which the paper does not
spell out: the network's layers and their order stay the same, and the shortcut moves from the
thin ends of a block to its wide, expanded layer. Each block's expanded map (after the 1x1
expansion and its ReLU6, the input of the depthwise convolution; the block's input when t = 1)
is added to the next block's expanded map when their shapes agree, i.e. when the depthwise
convolution in between has stride 1 and both expansions have the same width. Read from one
expanded map to the next this is figure 3a's classical residual block, wide -> narrow -> wide
(depthwise, linear projection, expansion). The sum comes after the ReLU6, so the identity path
stays free of nonlinearities as the inverted residual's. In table 2's network this gives ten
shortcuts, as many as the inverted residuals, each half a block later.
"""

from typing import Literal

from flax import linen as nn

from models.conv import (ConvBN, adaptive_avg_pool, check_images, flatten, make_divisible)

RESIDUALS = ("inverted", "classic", "none")
SETTING = (  # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (t k) + ReLU6 -> 3x3 depthwise /s + ReLU6 -> 1x1 linear projection (k').

    Returns (output, expanded map): the latter is the depthwise convolution's input, to which
    `wide` (the previous block's expanded map, residual="classic") has been added."""

    n_c: int
    s: int
    t: int
    linear_bottleneck: bool = True
    residual: Literal["inverted", "classic", "none"] = "inverted"

    @nn.compact
    def __call__(self, x, train: bool = False, wide=None):
        k = x.shape[-1]
        hidden = int(round(k * self.t))
        expanded = x
        if self.t != 1:
            expanded = ConvBN(hidden, 1, padding=0, act="relu6", name="expand")(x, train)
        if wide is not None and wide.shape == expanded.shape:
            expanded = expanded + wide
        y = ConvBN(hidden, 3, self.s, groups=hidden, act="relu6", name="depthwise")(expanded,
                                                                                  train)
        y = ConvBN(self.n_c, 1, padding=0, act="identity" if self.linear_bottleneck else "relu6",
                   name="project")(y, train)
        if self.residual == "inverted" and self.s == 1 and k == self.n_c:
            y = x + y
        return y, expanded


class MobileNetV2(nn.Module):
    num_classes: int = 1000
    width_mult: float = 1.0
    round_nearest: int = 8
    dropout: float = 0.2
    setting: tuple[tuple[int, int, int, int], ...] = SETTING
    stem_stride: int = 2  # 1 keeps small (32x32) inputs from shrinking to 1x1
    linear_bottleneck: bool = True   # False: ReLU6 after the projection (figure 6a)
    residual: Literal["inverted", "classic", "none"] = "inverted"   # figure 6b

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "MobileNetV2")
        if self.residual not in RESIDUALS:
            raise ValueError(f"MobileNetV2 residual must be one of {RESIDUALS}, got "
                             f"{self.residual!r}")
        width = lambda c: make_divisible(c * self.width_mult, self.round_nearest)
        x = ConvBN(width(32), 3, self.stem_stride, act="relu6", name="stem")(images, train)
        block, wide = 0, None   # wide: the last expanded map, if a stride-1 depthwise follows
        for t, c, n, s in self.setting:
            for i in range(n):
                block += 1
                stride = s if i == 0 else 1
                x, expanded = InvertedResidual(width(c), stride, t, self.linear_bottleneck,
                                               self.residual, name=f"block{block}")(x, train,
                                                                                    wide)
                wide = expanded if self.residual == "classic" and stride == 1 else None
        last = make_divisible(1280 * max(1.0, self.width_mult), self.round_nearest)
        x = ConvBN(last, 1, padding=0, act="relu6", name="head")(x, train)
        x = flatten(adaptive_avg_pool(x, 1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        name="classifier")(x)
