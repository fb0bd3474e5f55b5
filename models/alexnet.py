"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, "ImageNet classification with deep
convolutional neural networks", section 3, figure 2).

Five convolutional and three fully connected layers, ReLU everywhere (section 3.1), local
response normalisation after the ReLU of conv1 and conv2 (section 3.3, models.conv.
local_response_norm with k = 2, n = 5, alpha = 1e-4, beta = 0.75), overlapping 3x3 max pooling
with stride 2 after the normalisations and after conv5 (section 3.4), dropout 0.5 in the first
two fully connected layers (section 4.2).

    paper (variant="paper"):   conv1 96 11x11/4 -> LRN -> pool -> conv2 256 5x5 -> LRN -> pool
                               -> conv3 384 3x3 -> conv4 384 3x3 -> conv5 256 3x3 -> pool
                               -> fc6 4096 -> fc7 4096 -> fc8 1000
    torchvision ("torchvision"): the "one weird trick" widths 64-192-384-256-256, no LRN, no
                               GPU split, conv1 padding 2: 61,100,840 parameters.

The paper splits conv2, conv4 and conv5 over its two GPUs ("kernels of the second, fourth, and
fifth convolutional layers are connected only to those kernel maps in the previous layer which
reside on the same GPU"): groups=2, as in the released Caffe model, 60,965,224 parameters. Its
arithmetic needs 227x227 inputs (55 = (227 - 11) / 4 + 1), not the 224 the text says. Both
variants pool the last feature maps adaptively to 6x6 (torchvision's), the identity at the
paper's resolution, so any input size works.

variant="small" is AlexNet's pattern for 32x32 inputs and CPU ablations: the paper's widths
divided by 4 (24-64-96-96-64 filters, fully connected 1024-1024), conv1 5x5/1 instead of
11x11/4, no GPU split, He-initialised convolutions and zero biases (the paper's N(0, 0.01) starts
too small for short runs), overlapping pools padded by 1 so that 32 -> 16 -> 8 -> 4 as with 2x2
pools, then fc6 on the 4x4x64 map: 2,343,530 parameters for 10 classes.

The ablations of the paper are fields: act ("relu" | "tanh", section 3.1 and figure 1), lrn
(section 3.3; None: the variant's own, on for "paper" and "small", off for "torchvision"),
overlap (section 3.4: 3x3 windows with stride 2, or False for non-overlapping 2x2 windows with
stride 2, which give the same map sizes) and dropout (section 4.2; 0 turns it off). None of them
changes the parameter count.
"""

from typing import Literal

from flax import linen as nn

from models.conv import (KAIMING_FAN_OUT, TORCH_LINEAR, activation, adaptive_avg_pool,
                         check_images, conv, flatten, local_response_norm, max_pool)

WIDTHS = {"paper": (96, 256, 384, 384, 256), "torchvision": (64, 192, 384, 256, 256),
          "small": (24, 64, 96, 96, 64)}
FC_WIDTH = {"paper": 4096, "torchvision": 4096, "small": 1024}


class AlexNet(nn.Module):
    num_classes: int = 1000
    variant: Literal["paper", "torchvision", "small"] = "torchvision"
    dropout: float = 0.5
    act: Literal["relu", "tanh"] = "relu"
    lrn: bool | None = None      # None: the variant's own (paper, small: on; torchvision: off)
    overlap: bool = True         # 3x3/2 pooling (section 3.4); False: 2x2/2

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "AlexNet")
        if self.variant not in WIDTHS:
            raise ValueError(f"AlexNet variant must be one of {sorted(WIDTHS)}, "
                             f"got {self.variant!r}")
        paper, small = self.variant == "paper", self.variant == "small"
        c1, c2, c3, c4, c5 = WIDTHS[self.variant]
        groups = 2 if paper else 1
        lrn = (self.variant != "torchvision") if self.lrn is None else self.lrn
        act = activation(self.act)
        # Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fully
        # connected layers (positive inputs to the ReLUs early on), 0 elsewhere. torchvision:
        # torch's default init.
        w = nn.initializers.normal(0.01) if paper else TORCH_LINEAR
        w_conv = KAIMING_FAN_OUT if small else w
        ones = nn.initializers.ones if paper else nn.initializers.zeros
        zeros = nn.initializers.zeros

        def conv_act(x, n_c, f, s, p, g, b, name):
            return act(conv(n_c, f, s, p, g, kernel_init=w_conv, bias_init=b, name=name)(x))

        def pool(x):
            return max_pool(x, 3, 2, p=1 if small else 0) if self.overlap else max_pool(x, 2, 2)

        conv1 = (5, 1, 2) if small else (11, 4, 0 if paper else 2)  # f, s, p
        x = conv_act(images, c1, *conv1, 1, zeros, "conv1")
        if lrn:
            x = local_response_norm(x)
        x = pool(x)
        x = conv_act(x, c2, 5, 1, 2, groups, ones, "conv2")
        if lrn:
            x = local_response_norm(x)
        x = pool(x)
        x = conv_act(x, c3, 3, 1, 1, 1, zeros, "conv3")
        x = conv_act(x, c4, 3, 1, 1, groups, ones, "conv4")
        x = conv_act(x, c5, 3, 1, 1, groups, ones, "conv5")
        x = pool(x)
        x = flatten(adaptive_avg_pool(x, 4 if small else 6))

        def fc(x, n, b, name):
            return nn.Dense(n, kernel_init=w, bias_init=b, name=name)(x)

        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = act(fc(x, FC_WIDTH[self.variant], ones, "fc6"))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = act(fc(x, FC_WIDTH[self.variant], ones, "fc7"))
        return fc(x, self.num_classes, zeros, "fc8")
