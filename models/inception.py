"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions", section 4-5,
table 1, figures 2b and 3).

An inception module (figure 2b) runs four branches on the same input and concatenates their
channels: a 1x1 convolution; a 1x1 "reduce" then a 3x3; a 1x1 reduce then a 5x5; a 3x3 max
pooling (stride 1) then a 1x1 "pool proj". The 1x1 reductions are the bottlenecks that keep the
3x3 and 5x5 filters affordable. Table 1 gives each module's widths, in INCEPTION below:
(#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).

    conv1 7x7/2 -> maxpool 3x3/2 -> [LRN] -> conv2 1x1 -> conv3 3x3 -> [LRN] -> maxpool 3x3/2
    -> 3a 3b -> maxpool 3x3/2 -> 4a (aux1) 4b 4c 4d (aux2) 4e -> maxpool -> 5a 5b
    -> global average pool -> dropout -> linear

Auxiliary classifiers on 4a and 4d (section 5) add 0.3 x their losses to the total loss in
training and are discarded at inference: average pooling to 4x4, a 1x1 convolution of 128
filters, fc 1024 + ReLU, dropout 0.7, a linear layer. In training (train=True, aux_logits=True)
the model returns {"logits": main, "aux1": on 4a, "aux2": on 4d}; otherwise the main logits
alone. training_loss() combines them.

variant="torchvision" is torchvision's googlenet: BatchNorm (eps 1e-3) after every convolution
and no LRN, the "5x5" branch a 3x3 convolution, the last pooling 2x2/2, the auxiliary pooling
adaptive (4x4), dropout 0.2: 6,624,904 parameters without the auxiliary heads, 13,004,888 with.
variant="paper" has no BatchNorm (convolutions with biases), 5x5 filters, LRN (the paper gives
no constants; the released Caffe model's local_size 5, alpha 1e-4 averaged over the window,
beta 0.75, k 1), 3x3/2 pooling, 5x5/3 auxiliary pooling, dropout 0.4. Pooling rounds up
(ceil_mode) as in Caffe, so 224 -> 112 -> 56 -> 28 -> 14 -> 7 as in table 1.

transform_input re-normalises images from torchvision's ImageNet mean/std to the [-1, 1] scale
that the imported pretrained torchvision weights expect (torchvision sets it when it loads them).

Ablations: bottleneck=False drops the 1x1 reductions before the 3x3 and 5x5 convolutions, which
then filter the module's input directly as in the naive module of figure 2a; the pool projection
stays, so every module keeps table 1's output width (the naive module's pooling branch passes
its input's channels through, and the widths would grow from module to module: the blow-up
section 4 describes). aux_logits=False removes the auxiliary classifiers. width_mult scales every
width (table 1's, the stem's, the auxiliary heads' 128 and 1024).

variant="small" is GoogLeNet for 32x32 inputs on CPUs: the stem becomes conv1 3x3/1, conv2 1x1,
conv3 3x3 and one 3x3/2 max pooling (32 -> 16), so that 3a-3b run at 16x16, 4a-4e at 8x8 and
5a-5b at 4x4 (table 1's 28, 14, 7); BatchNorm after every convolution as torchvision's, true 5x5
filters, 3x3/2 pools. googlenet_small is it at width_mult 0.25 (table 1's widths are multiples of
4, so every width is exactly a quarter) with the paper's dropout 0.4.
"""

import functools
from typing import Callable, Literal

import jax.numpy as jnp
from flax import linen as nn

from models.conv import (ConvBN, adaptive_avg_pool, avg_pool, check_images, flatten,
                         local_response_norm, max_pool)

AUX_LOSS_WEIGHT = 0.3
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
TORCH_INIT = nn.initializers.normal(0.01)  # torchvision: trunc_normal_(std=0.01, a=-2, b=2)
XAVIER = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # Caffe's "xavier" filler


def training_loss(outputs, loss_fn: Callable):
    """Section 5: loss(main) + 0.3 * (loss(aux1) + loss(aux2)) on train-mode outputs (plain
    logits when the model has no auxiliary heads); loss_fn maps logits to a scalar."""
    if not isinstance(outputs, dict):
        return loss_fn(outputs)
    return loss_fn(outputs["logits"]) + AUX_LOSS_WEIGHT * (
        loss_fn(outputs["aux1"]) + loss_fn(outputs["aux2"]))


def _conv_bn(variant: str) -> Callable[..., ConvBN]:
    if variant != "paper":
        return functools.partial(ConvBN, bn=True, bn_eps=1e-3, kernel_init=TORCH_INIT)
    return functools.partial(ConvBN, bn=False, kernel_init=XAVIER)


class Inception(nn.Module):
    """Figure 2b: [1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1], concatenated;
    bottleneck=False: the 3x3 and 5x5 without their 1x1 reductions (figure 2a's branches)."""

    widths: tuple[int, int, int, int, int, int]
    variant: str = "torchvision"
    bottleneck: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        c1, c3_reduce, c3, c5_reduce, c5, pool_proj = self.widths
        cb = _conv_bn(self.variant)
        f5 = 3 if self.variant == "torchvision" else 5
        b1 = cb(c1, 1, name="conv_1x1")(x, train)
        b2 = cb(c3_reduce, 1, name="conv_3x3_reduce")(x, train) if self.bottleneck else x
        b2 = cb(c3, 3, name="conv_3x3")(b2, train)
        b3 = cb(c5_reduce, 1, name="conv_5x5_reduce")(x, train) if self.bottleneck else x
        b3 = cb(c5, f5, name="conv_5x5")(b3, train)
        b4 = max_pool(x, 3, 1, p=1, ceil_mode=True)
        b4 = cb(pool_proj, 1, name="pool_proj")(b4, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxClassifier(nn.Module):
    """Section 5: pool to 4x4 -> 1x1 conv 128 + ReLU -> fc 1024 + ReLU -> dropout -> linear."""

    num_classes: int
    variant: str = "torchvision"
    dropout: float = 0.7
    widths: tuple[int, int] = (128, 1024)    # the 1x1 convolution's, the hidden fc's

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.variant != "paper":
            x = adaptive_avg_pool(x, 4)
            init = TORCH_INIT
        else:
            x = avg_pool(x, 5, 3)
            init = XAVIER
        x = flatten(_conv_bn(self.variant)(self.widths[0], 1, name="conv")(x, train))
        x = nn.relu(nn.Dense(self.widths[1], kernel_init=init, name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=init, name="fc2")(x)


class GoogLeNet(nn.Module):
    num_classes: int = 1000
    variant: Literal["paper", "torchvision", "small"] = "torchvision"
    aux_logits: bool = True
    dropout: float = 0.2
    aux_dropout: float = 0.7
    transform_input: bool = False
    bottleneck: bool = True      # False: no 1x1 reductions before the 3x3 and 5x5 (figure 2a)
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "GoogLeNet")
        if self.variant not in ("paper", "torchvision", "small"):
            raise ValueError(f"GoogLeNet variant must be 'paper', 'torchvision' or 'small', "
                             f"got {self.variant!r}")
        paper, small = self.variant == "paper", self.variant == "small"
        x = self._transform(images) if self.transform_input else images
        cb = _conv_bn(self.variant)
        # LRN as Caffe computes it: alpha / n over the window, k = 1 (see the module docstring).
        lrn = functools.partial(local_response_norm, n=5, k=1.0, alpha=1e-4 / 5, beta=0.75)
        w = self._width

        if small:  # 32x32: a 3x3/1 conv1 and no pooling before conv2
            x = cb(w(64), 3, name="conv1")(x, train)
        else:
            x = cb(w(64), 7, 2, padding=3, name="conv1")(x, train)
            x = max_pool(x, 3, 2, ceil_mode=True)
        if paper:
            x = lrn(x)
        x = cb(w(64), 1, name="conv2")(x, train)
        x = cb(w(192), 3, name="conv3")(x, train)
        if paper:
            x = lrn(x)
        x = max_pool(x, 3, 2, ceil_mode=True)

        def inception(x, name):
            widths = tuple(w(c) for c in INCEPTION[name])
            return Inception(widths, self.variant, self.bottleneck,
                             name=f"inception{name}")(x, train)

        x = inception(inception(x, "3a"), "3b")
        x = max_pool(x, 3, 2, ceil_mode=True)
        x = inception(x, "4a")
        # Built at init whatever `train` is, so that eval-initialised variables can train.
        with_aux = self.aux_logits and (train or self.is_initializing())
        aux_widths = (w(128), w(1024))
        aux = AuxClassifier(self.num_classes, self.variant, self.aux_dropout, aux_widths,
                            name="aux1")
        aux1 = aux(x, train) if with_aux else None
        x = inception(inception(inception(x, "4b"), "4c"), "4d")
        aux = AuxClassifier(self.num_classes, self.variant, self.aux_dropout, aux_widths,
                            name="aux2")
        aux2 = aux(x, train) if with_aux else None
        x = inception(x, "4e")
        last_pool = 2 if self.variant == "torchvision" else 3
        x = max_pool(x, last_pool, 2, ceil_mode=True)
        x = inception(inception(x, "5a"), "5b")

        x = flatten(adaptive_avg_pool(x, 1))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=TORCH_INIT if not paper else XAVIER,
                          name="fc")(x)
        if train and self.aux_logits:
            return {"logits": logits, "aux1": aux1, "aux2": aux2}
        return logits

    def _width(self, c: int) -> int:
        return max(1, round(c * self.width_mult))

    @staticmethod
    def _transform(x):
        """(x * std + mean - 0.5) / 0.5 per RGB channel: ImageNet-normalised -> [-1, 1]."""
        mean = jnp.array([0.485, 0.456, 0.406], x.dtype)
        std = jnp.array([0.229, 0.224, 0.225], x.dtype)
        return x * (std / 0.5) + (mean - 0.5) / 0.5
