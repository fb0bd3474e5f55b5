"""VGG (Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image
recognition", section 2, table 1).

Stacks of 3x3 convolutions (stride 1, "same" padding) with ReLU, 2x2 max pooling with stride 2
between stacks, then fc6 4096 -> fc7 4096 -> fc8 1000 with dropout 0.5 after fc6 and fc7
(section 3.1). Two 3x3 layers see a 5x5 field and three a 7x7 one, with fewer parameters
(3 (3^2 C^2) = 27 C^2 against 7^2 C^2 = 49 C^2) and more non-linearities (section 2.3).

Table 1 (channels per convolution, "M" a max pooling):
    A (VGG-11), B (VGG-13), D (VGG-16), E (VGG-19)  -> CONFIGS below.

batch_norm=True adds BatchNorm after each convolution (torchvision's vgg*_bn, not in the
paper). Layers are named conv{stack}_{i} (conv3_2: the second layer of the third stack). As in
torchvision, the last feature maps are pooled adaptively to 7x7, the identity at 224x224;
vgg16 has 138,357,544 parameters.
"""

from flax import linen as nn

from models.conv import (KAIMING_FAN_OUT, BatchNorm, adaptive_avg_pool, check_images, conv,
                         flatten, max_pool)

CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}
DEPTH_TO_CONFIG = {11: "A", 13: "B", 16: "D", 19: "E"}


def layer_names(config: str):
    """(name, channels) of each convolution and None for each pooling, in order."""
    stack, i = 1, 0
    for v in CONFIGS[config]:
        if v == "M":
            yield None
            stack, i = stack + 1, 0
        else:
            i += 1
            yield f"conv{stack}_{i}", v


class VGG(nn.Module):
    num_classes: int = 1000
    config: str = "D"
    batch_norm: bool = False
    dropout: float = 0.5

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "VGG")
        if self.config not in CONFIGS:
            raise ValueError(f"VGG config must be one of {sorted(CONFIGS)}, got {self.config!r}")
        x = images
        for layer in layer_names(self.config):
            if layer is None:
                x = max_pool(x, 2, 2)
                continue
            name, n_c = layer
            x = conv(n_c, 3, padding="same", kernel_init=KAIMING_FAN_OUT, name=name)(x)
            if self.batch_norm:
                x = BatchNorm(name=name.replace("conv", "bn"))(x, train)
            x = nn.relu(x)
        x = flatten(adaptive_avg_pool(x, 7))
        fc_init = nn.initializers.normal(0.01)
        for name in ("fc6", "fc7"):
            x = nn.relu(nn.Dense(4096, kernel_init=fc_init, name=name)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=fc_init, name="fc8")(x)
