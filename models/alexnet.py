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
"""

from typing import Literal

from flax import linen as nn

from models.conv import (TORCH_LINEAR, adaptive_avg_pool, check_images, conv, flatten,
                         local_response_norm, max_pool)

WIDTHS = {"paper": (96, 256, 384, 384, 256), "torchvision": (64, 192, 384, 256, 256)}


class AlexNet(nn.Module):
    num_classes: int = 1000
    variant: Literal["paper", "torchvision"] = "torchvision"
    dropout: float = 0.5

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "AlexNet")
        if self.variant not in WIDTHS:
            raise ValueError(f"AlexNet variant must be 'paper' or 'torchvision', "
                             f"got {self.variant!r}")
        paper = self.variant == "paper"
        c1, c2, c3, c4, c5 = WIDTHS[self.variant]
        groups = 2 if paper else 1
        # Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fully
        # connected layers (positive inputs to the ReLUs early on), 0 elsewhere. torchvision:
        # torch's default init.
        w = nn.initializers.normal(0.01) if paper else TORCH_LINEAR
        ones = nn.initializers.ones if paper else nn.initializers.zeros
        zeros = nn.initializers.zeros

        def conv_relu(x, n_c, f, s, p, g, b, name):
            return nn.relu(conv(n_c, f, s, p, g, kernel_init=w, bias_init=b, name=name)(x))

        x = conv_relu(images, c1, 11, 4, 0 if paper else 2, 1, zeros, "conv1")
        if paper:
            x = local_response_norm(x)
        x = max_pool(x, 3, 2)
        x = conv_relu(x, c2, 5, 1, 2, groups, ones, "conv2")
        if paper:
            x = local_response_norm(x)
        x = max_pool(x, 3, 2)
        x = conv_relu(x, c3, 3, 1, 1, 1, zeros, "conv3")
        x = conv_relu(x, c4, 3, 1, 1, groups, ones, "conv4")
        x = conv_relu(x, c5, 3, 1, 1, groups, ones, "conv5")
        x = max_pool(x, 3, 2)
        x = flatten(adaptive_avg_pool(x, 6))

        def fc(x, n, b, name):
            return nn.Dense(n, kernel_init=w, bias_init=b, name=name)(x)

        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(fc(x, 4096, ones, "fc6"))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.relu(fc(x, 4096, ones, "fc7"))
        return fc(x, self.num_classes, zeros, "fc8")
