"""EfficientNet (Tan & Le 2019, "EfficientNet: rethinking model scaling for convolutional neural
networks", section 3-4, table 1).

Compound scaling (section 3.3, eq. 3): one coefficient phi scales depth, width and resolution
together,

    d = alpha^phi,  w = beta^phi,  r = gamma^phi,   alpha * beta^2 * gamma^2 ~= 2,

so FLOPs grow about 2^phi; a grid search on B0 gave alpha = 1.2, beta = 1.1, gamma = 1.15.
B1..B7 use the rounded (w, d, r) of PRESETS, the released models' table (with their dropout).
Each stage's layer count is rounded up (ceil(n d)) and each width to a multiple of 8
(make_divisible), as in torchvision.

The baseline B0 (table 1) is STAGES below: a 3x3/2 convolution of 32 filters, seven stages of
MBConv blocks, a 1x1 convolution to 1280, pooling and a linear classifier. MBConv (the
MobileNetV2 inverted residual with squeeze-and-excitation, section 4): 1x1 expand (ratio 6, none
for ratio 1) -> kxk depthwise -> SE (squeeze to a quarter of the block's input channels) ->
1x1 linear projection, SiLU (swish) activations, and the shortcut dropped per example with
stochastic depth, the rate rising linearly from 0 to 0.2 over the blocks. torchvision's
efficientnet_b0: 5,288,548 parameters. BatchNorm as torchvision: eps 1e-5, momentum 0.9 (torch
0.1) for B0..B4; eps 1e-3, momentum 0.99 (torch 0.01, the TensorFlow release's) for B5..B7.
"""

from flax import linen as nn

from models.conv import (ConvBN, SqueezeExcitation, StochasticDepth, adaptive_avg_pool,
                         check_images, flatten, make_divisible, round_depth)

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases of eq. 3

PRESETS = {  # width w, depth d, resolution r, dropout
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
}

STAGES = (  # table 1, stages 2-8: expand ratio, kernel, stride, input channels, channels, layers
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def compound_scaling(phi: float) -> tuple[float, float, float]:
    """(d, w, r) = (alpha^phi, beta^phi, gamma^phi) multipliers of depth, width, resolution."""
    return ALPHA ** phi, BETA ** phi, GAMMA ** phi


def scaled_stages(width_mult: float, depth_mult: float):
    """STAGES with widths made divisible by 8 and layer counts ceil(n d)."""
    return tuple((t, k, s, make_divisible(c_in * width_mult), make_divisible(c * width_mult),
                  round_depth(n, depth_mult)) for t, k, s, c_in, c, n in STAGES)


class MBConv(nn.Module):
    """1x1 expand + SiLU -> kxk depthwise /s + SiLU -> SE -> 1x1 linear projection (+ shortcut)."""

    n_c: int
    expand_ratio: float
    f: int
    s: int
    drop_rate: float = 0.0
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = x.shape[-1]
        bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
        hidden = make_divisible(k * self.expand_ratio)
        y = x
        if hidden != k:
            y = ConvBN(hidden, 1, padding=0, act="silu", name="expand", **bn)(y, train)
        y = ConvBN(hidden, self.f, self.s, groups=hidden, act="silu", name="depthwise",
                   **bn)(y, train)
        y = SqueezeExcitation(max(1, k // 4), act="silu", name="se")(y)
        y = ConvBN(self.n_c, 1, padding=0, act="identity", name="project", **bn)(y, train)
        if self.s == 1 and k == self.n_c:
            y = StochasticDepth(self.drop_rate)(y, train) + x
        return y


class EfficientNet(nn.Module):
    num_classes: int = 1000
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.2
    stochastic_depth_prob: float = 0.2
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    stem_stride: int = 2  # 1 keeps small (32x32) inputs from shrinking to 1x1

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "EfficientNet")
        bn = dict(bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
        stages = scaled_stages(self.width_mult, self.depth_mult)
        x = ConvBN(stages[0][3], 3, self.stem_stride, act="silu", name="stem", **bn)(images, train)
        total = sum(stage[-1] for stage in stages)
        block = 0
        for i, (t, k, s, _, c, n) in enumerate(stages):
            for j in range(n):
                rate = self.stochastic_depth_prob * block / total
                x = MBConv(c, t, k, s if j == 0 else 1, rate, name=f"stage{i + 2}_{j + 1}",
                           **bn)(x, train)
                block += 1
        x = ConvBN(4 * stages[-1][4], 1, padding=0, act="silu", name="head", **bn)(x, train)
        x = flatten(adaptive_avg_pool(x, 1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        # torchvision: U(-1/sqrt(classes), 1/sqrt(classes))
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
        return nn.Dense(self.num_classes, kernel_init=init, name="classifier")(x)
