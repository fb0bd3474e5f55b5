"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
recognition", section II.B, figure 2).

    INPUT 32x32x1 -> C1: 6 @ 28x28 (5x5 conv) -> S2: 6 @ 14x14 (2x2 subsampling)
    -> C3: 16 @ 10x10 (5x5 conv) -> S4: 16 @ 5x5 -> C5: 120 @ 1x1 (5x5 conv)
    -> F6: 84 -> OUTPUT: 10

Every layer but the output is squashed by tanh (the paper's f(a) = A tanh(S a), A = 1.7159,
S = 2/3, is act="lecun_tanh"). Simplifications, as in most modern reproductions: S2/S4 are plain
average pooling (the paper's have a trainable coefficient and bias per map), C3 connects to all
six S2 maps (the paper's table I connects each to a subset), and the output is a linear layer
instead of Euclidean RBF units. With these, 61,706 parameters. Digits 28x28 are padded to 32x32,
as the paper does with MNIST.

Weights start as LeCun-normal (variance 1 / fan-in, LeCun et al. 1998b "Efficient BackProp");
paper_init=True draws them as appendix C does, uniform in +-2.4 / fan-in, which shrinks the
signal layer by layer and trains slowly without the paper's per-parameter learning rates.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from models.conv import activation, avg_pool, check_images, conv, flatten


def paper_uniform_init(key, shape, dtype=jnp.float32):
    """Appendix C: weights uniform in (-2.4 / F_i, 2.4 / F_i), F_i the unit's fan-in."""
    fan_in = 1
    for d in shape[:-1]:
        fan_in *= d
    return jax.random.uniform(key, shape, dtype, -2.4 / fan_in, 2.4 / fan_in)


class LeNet5(nn.Module):
    num_classes: int = 10
    act: str = "tanh"
    paper_init: bool = False

    @nn.compact
    def __call__(self, images, train: bool = False):
        check_images(images, "LeNet-5")
        if min(images.shape[1:3]) < 32:
            raise ValueError(f"LeNet-5 needs at least 32x32 inputs (the paper pads 28x28 digits "
                             f"to 32x32), got {images.shape[1]}x{images.shape[2]}")
        f = activation(self.act)
        init = dict(kernel_init=paper_uniform_init if self.paper_init
                    else nn.initializers.lecun_normal())
        x = f(conv(6, 5, padding="valid", name="C1", **init)(images))
        x = avg_pool(x, 2)                                                    # S2
        x = f(conv(16, 5, padding="valid", name="C3", **init)(x))
        x = avg_pool(x, 2)                                                    # S4
        x = f(conv(120, 5, padding="valid", name="C5", **init)(x))
        x = flatten(x)
        x = f(nn.Dense(84, name="F6", **init)(x))
        return nn.Dense(self.num_classes, name="OUTPUT", **init)(x)
