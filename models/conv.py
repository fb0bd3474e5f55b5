"""Convolution basics shared by the ConvNet zoo, named after the arithmetic they implement.

An f x f convolution with padding p and stride s maps an n x n input to

    n_out = floor((n + 2p - f) / s) + 1                       (conv_output_size)

"valid" is p = 0; "same" is p = (f - 1) / 2 (odd f), which keeps n at stride 1. Padding here is
explicit and symmetric, as in torchvision: Flax's padding="SAME" is TensorFlow's rule, which pads
more on the bottom/right when the total is odd (every stride-2 layer on an even input), so it
would shift every window by one pixel against torchvision's weights.

A layer with n_c filters of f x f x n_c_prev has f*f*n_c_prev*n_c weights + n_c biases
(conv_params) and costs n_out * n_out * n_c * f*f*n_c_prev multiply-adds (conv_macs). Images and
activations are NHWC throughout.

What deep learning calls convolution is cross-correlation: the filter slides over the image
unflipped, y[i, j] = sum_{u, v} x[s i + u, s j + v] k[u, v] (cross_correlate). The classic edge
filters below are written for it.
"""

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from models.kernels import conv_1x1_as_matmul, max_pool_as_shifts

Padding = int | Literal["same", "valid"]

# torchvision's conv init (kaiming_normal_, mode="fan_out", gain sqrt(2)); untruncated normal.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default init (kaiming_uniform_ with a = sqrt(5)): U(+-1/sqrt(fan_in)).
TORCH_LINEAR = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,   # MobileNetV2: min(max(0, x), 6)
    "silu": jax.nn.silu,     # EfficientNet's swish: x * sigmoid(x)
    "tanh": jnp.tanh,        # LeNet-5
    "lecun_tanh": lambda x: 1.7159 * jnp.tanh(2.0 * x / 3.0),  # LeNet-5 appendix A: A tanh(S a)
    "identity": lambda x: x, # MobileNetV2's linear bottleneck, EfficientNet's projection
}


def activation(name: str) -> Callable:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------------------------
# Arithmetic


def conv_output_size(n: int, f: int, p: int = 0, s: int = 1) -> int:
    """floor((n + 2p - f) / s) + 1: the output size of an f x f, stride s, padding p layer."""
    return (n + 2 * p - f) // s + 1


def same_padding(f: int) -> int:
    """p = (f - 1) / 2: the padding that keeps n_out = n at stride 1 (f odd)."""
    if f % 2 == 0:
        raise ValueError(f"'same' padding needs an odd filter size, got f = {f}")
    return (f - 1) // 2


def valid_padding(f: int) -> int:
    """p = 0: every output sees only real pixels; n_out = n - f + 1 at stride 1."""
    return 0


def padding_of(padding: Padding, f: int) -> int:
    if padding == "same":
        return same_padding(f)
    if padding == "valid":
        return valid_padding(f)
    if isinstance(padding, int) and padding >= 0:
        return padding
    raise ValueError(f"padding must be 'same', 'valid' or an int >= 0, got {padding!r}")


def conv_params(f: int, n_c_prev: int, n_c: int, bias: bool = True) -> int:
    """f*f*n_c_prev*n_c weights (+ n_c biases): one f x f x n_c_prev filter per output channel."""
    return f * f * n_c_prev * n_c + (n_c if bias else 0)


def depthwise_separable_params(f: int, n_c_prev: int, n_c: int) -> int:
    """A depthwise f x f filter per input channel, then a 1x1 pointwise mix (no biases):
    f*f*n_c_prev + n_c_prev*n_c, against f*f*n_c_prev*n_c for the full convolution."""
    return f * f * n_c_prev + n_c_prev * n_c


def conv_macs(n_out: int | tuple[int, int], f: int, n_c_prev: int, n_c: int,
              groups: int = 1) -> int:
    """n_out x n_out positions x n_c filters x f*f*n_c_prev/groups multiply-adds each (taps on
    the zero padding included, as the papers count)."""
    h, w = (n_out, n_out) if isinstance(n_out, int) else n_out
    if n_c_prev % groups or n_c % groups:
        raise ValueError(f"groups = {groups} must divide both channel counts, got "
                         f"{n_c_prev} -> {n_c}")
    return h * w * n_c * f * f * (n_c_prev // groups)


def depthwise_separable_macs(n_out: int | tuple[int, int], f: int, n_c_prev: int,
                             n_c: int) -> int:
    """Depthwise f x f (one filter per input channel) + pointwise 1x1 to n_c channels:
    n_out^2 * f*f*n_c_prev + n_out^2 * n_c_prev*n_c."""
    return (conv_macs(n_out, f, n_c_prev, n_c_prev, groups=n_c_prev)
            + conv_macs(n_out, 1, n_c_prev, n_c))


def depthwise_separable_cost_ratio(f: int, n_c: int) -> float:
    """depthwise_separable_macs / conv_macs = 1/n_c + 1/f^2 (MobileNet, Howard et al. 2017,
    section 3.1), whatever n_c_prev and n_out: about 8-9x cheaper for 3x3 filters."""
    return 1.0 / n_c + 1.0 / f ** 2


def pool_output_size(n: int, f: int, p: int = 0, s: int = 1, ceil_mode: bool = False) -> int:
    """torch's pooling size: conv_output_size, or with ceil_mode the ceiling of (n + 2p - f) / s,
    less one if that last window would start inside the right padding only."""
    if not ceil_mode:
        return conv_output_size(n, f, p, s)
    out = -(-(n + 2 * p - f) // s) + 1
    if (out - 1) * s >= n + p:
        out -= 1
    return out


# ----------------------------------------------------------------------------------------------
# Convolutions


class Conv2d(nn.Conv):
    """nn.Conv that refuses an input too small for it (Flax would return an empty array)."""

    def __call__(self, inputs):
        y = super().__call__(inputs)
        if 0 in y.shape[1:3]:
            raise ValueError(f"convolution {self.name!r} ({self.kernel_size} filter, stride "
                             f"{self.strides}, padding {self.padding}) gets a "
                             f"{inputs.shape[1]}x{inputs.shape[2]} input: too small")
        return y


def conv(n_c: int, f: int, s: int = 1, padding: Padding = "same", groups: int = 1,
         bias: bool = True, kernel_init=KAIMING_FAN_OUT, bias_init=nn.initializers.zeros,
         name: str | None = None, dtype=None) -> Conv2d:
    """n_c filters of f x f, stride s, symmetric padding; `groups` splits the input channels
    (groups = n_c_prev is a depthwise convolution). `dtype`: the compute dtype (None: that of
    the input and the float32 parameters)."""
    p = padding_of(padding, f)
    return Conv2d(n_c, (f, f), strides=(s, s), padding=((p, p), (p, p)),
                  feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
                  bias_init=bias_init, name=name, dtype=dtype,
                  conv_general_dilated=conv_1x1_as_matmul)


def pointwise_conv(n_c: int, s: int = 1, bias: bool = True, name: str | None = None) -> Conv2d:
    """1x1 convolution: a per-pixel linear map over channels (a bottleneck when n_c < n_c_prev)."""
    return conv(n_c, 1, s, padding=0, bias=bias, name=name)


def depthwise_conv(n_c: int, f: int = 3, s: int = 1, bias: bool = True,
                   name: str | None = None) -> Conv2d:
    """One f x f filter per channel (groups = channels = n_c): spatial filtering, no mixing."""
    return conv(n_c, f, s, padding="same", groups=n_c, bias=bias, name=name)


def cross_correlate(images, kernels, s: int = 1, padding: Padding = "valid"):
    """Each of k fixed 2-D filters [k, f, f] slid over one-channel images [batch, H, W, 1],
    unflipped, through the zoo's own convolution: -> [batch, H', W', k]."""
    kernels = jnp.asarray(kernels, jnp.float32)
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
        raise ValueError(f"expected square filters [k, f, f], got shape {kernels.shape}")
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"expected one-channel images [batch, H, W, 1], got shape "
                         f"{tuple(images.shape)}")
    k, f, _ = kernels.shape
    hwio = jnp.transpose(kernels, (1, 2, 0))[:, :, None, :]             # [f, f, 1, k]
    layer = conv(k, f, s, padding, bias=False)
    return layer.apply({"params": {"kernel": hwio}}, images)


# ----------------------------------------------------------------------------------------------
# Edge filters, as cross-correlation kernels: a vertical-edge filter responds positively where
# the image is brighter on the left of the window than on its right, negatively for dark to
# bright, and not at all on flat regions (its weights sum to 0). The horizontal ones are their
# transposes (bright above, dark below).

VERTICAL_EDGE = np.array([[1, 0, -1],
                          [1, 0, -1],
                          [1, 0, -1]], np.float32)
HORIZONTAL_EDGE = VERTICAL_EDGE.T
# Sobel & Feldman (1968): a central difference smoothed by (1, 2, 1) across it, the centre row
# weighted more, so it is less sensitive to noise.
SOBEL = np.array([[1, 0, -1],
                  [2, 0, -2],
                  [1, 0, -1]], np.float32)
# Scharr (2000): weights (3, 10, 3) chosen so the gradient's direction errs least over rotations.
SCHARR = np.array([[3, 0, -3],
                   [10, 0, -10],
                   [3, 0, -3]], np.float32)
EDGE_FILTERS = {"vertical": VERTICAL_EDGE, "horizontal": HORIZONTAL_EDGE,
                "sobel": SOBEL, "sobel_horizontal": SOBEL.T,
                "scharr": SCHARR, "scharr_horizontal": SCHARR.T}


def edge_filter(name: str) -> np.ndarray:
    """A copy of one of EDGE_FILTERS, by name."""
    if name not in EDGE_FILTERS:
        raise ValueError(f"unknown edge filter {name!r}; choose from {sorted(EDGE_FILTERS)}")
    return EDGE_FILTERS[name].copy()


# ----------------------------------------------------------------------------------------------
# Pooling


def _check_pool(x, out, f, s, p, kind):
    if min(out) <= 0:
        raise ValueError(f"{kind} pooling ({f}x{f}, stride {s}, padding {p}) gets a "
                         f"{x.shape[1]}x{x.shape[2]} input: too small")


def _pool_pads(x, f, s, p, ceil_mode, kind):
    """(before, after) padding per spatial axis; ceil_mode extends the bottom/right edge so that
    the last, partial window exists."""
    out = [pool_output_size(n, f, p, s, ceil_mode) for n in x.shape[1:3]]
    _check_pool(x, out, f, s, p, kind)
    return [(p, max(p, (o - 1) * s + f - n - p)) for n, o in zip(x.shape[1:3], out)]


def max_pool(x, f: int, s: int | None = None, p: int = 0, ceil_mode: bool = False):
    """Max over f x f windows, stride s (default f); padding counts as -inf, as in torch."""
    s = s or f
    if p > f // 2:
        raise ValueError(f"padding {p} exceeds half the {f}x{f} window (torch refuses it too)")
    pads = _pool_pads(x, f, s, p, ceil_mode, "max")
    if jax.default_backend() == "cpu":
        return max_pool_as_shifts(x, f, s, tuple(map(tuple, pads)))
    return nn.max_pool(x, (f, f), (s, s), padding=pads)


def avg_pool(x, f: int, s: int | None = None, p: int = 0, ceil_mode: bool = False,
             count_include_pad: bool = True):
    """Mean over f x f windows, stride s (default f). Each window is divided by the number of
    cells it covers, as torch counts them: padding included (count_include_pad) or not, the
    ceil_mode overhang beyond the padding never."""
    s = s or f
    pads = _pool_pads(x, f, s, p, ceil_mode, "average")
    window, strides = (1, f, f, 1), (1, s, s, 1)
    full = [(0, 0), *pads, (0, 0)]
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, full)
    counted = np.ones(x.shape[1:3], np.float32)
    counted = np.pad(counted, [(p, p)] * 2, constant_values=1.0 if count_include_pad else 0.0)
    counted = np.pad(counted, [(0, after - p) for _, after in pads])
    counts = jax.lax.reduce_window(jnp.asarray(counted), 0.0, jax.lax.add, (f, f), (s, s),
                                   "VALID")
    return total / counts[None, :, :, None].astype(x.dtype)


def _adaptive_matrix(n: int, out: int) -> np.ndarray:
    """[out, n] averaging weights: bin i covers [floor(i n / out), ceil((i + 1) n / out)), torch's
    bins, which overlap when n does not divide evenly and repeat pixels when out > n."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x, out: int | tuple[int, int]):
    """Average pooling to a fixed out x out grid whatever the input size (torch's
    AdaptiveAvgPool2d); (1, 1) is global average pooling."""
    out_h, out_w = (out, out) if isinstance(out, int) else out
    n_h, n_w = x.shape[1:3]
    if (out_h, out_w) == (1, 1):
        return x.mean(axis=(1, 2), keepdims=True)
    a_h = jnp.asarray(_adaptive_matrix(n_h, out_h), x.dtype)
    a_w = jnp.asarray(_adaptive_matrix(n_w, out_w), x.dtype)
    return jnp.einsum("ih,jw,nhwc->nijc", a_h, a_w, x, precision=jax.lax.Precision.HIGHEST)


def flatten(x):
    return x.reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# Normalisation


def local_response_norm(x, n: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75):
    """AlexNet section 3.3, across channels:

        b^i = a^i / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} (a^j)^2)^beta

    with the paper's k = 2, n = 5, alpha = 1e-4, beta = 0.75. torch's local_response_norm divides
    its alpha by n, so it is this with alpha_torch = n * alpha (5e-4)."""
    sq = jnp.square(x)
    window_sum = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, n), (1, 1, 1, 1),
                                       [(0, 0), (0, 0), (0, 0), (n // 2, (n - 1) // 2)])
    return x / (k + alpha * window_sum) ** beta


class BatchNorm(nn.Module):
    """Batch normalisation (Ioffe & Szegedy 2015) with torch's running statistics.

        y = (x - mu_B) / sqrt(var_B + eps) * gamma + beta          (train: batch statistics)
        y = (x - mean) / sqrt(var + eps) * gamma + beta            (eval: running statistics)
        mean <- momentum * mean + (1 - momentum) * mu_B
        var  <- momentum * var  + (1 - momentum) * var_B * m / (m - 1)

    over the m = batch * height * width values of each channel. The running variance is the
    unbiased one (torch's; flax.linen.BatchNorm keeps the biased one), so imported
    torchvision statistics and ours evolve alike. `momentum` follows Flax: it is the weight of
    the old value, 1 - torch's momentum (torch 0.1 -> 0.9). Parameters scale/bias, statistics
    mean/var in the `batch_stats` collection, as flax.linen.BatchNorm names them."""

    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = x.shape[-1]
        gamma = self.param("scale", self.scale_init, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            m = x.size // c
            if m < 2:
                raise ValueError(f"BatchNorm {self.name!r} in training needs more than one value "
                                 f"per channel, got input shape {x.shape}")
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean = x32.mean(axes)
            var = jnp.square(x32 - mean).mean(axes)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = (self.momentum * ra_var.value
                                + (1 - self.momentum) * var * (m / (m - 1)))
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x.astype(jnp.float32) - mean) * (jax.lax.rsqrt(var + self.epsilon) * gamma) + beta
        return y.astype(x.dtype)


class ConvBN(nn.Module):
    """conv -> BatchNorm -> activation (torchvision's Conv2dNormActivation, BasicConv2d).

    Submodules `conv` and `bn`. With bn=False the convolution keeps its bias and there is no
    normalisation (the layers of the papers before batch normalisation)."""

    n_c: int
    f: int
    s: int = 1
    padding: Padding = "same"
    groups: int = 1
    act: str = "relu"
    bn: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_scale_init: Callable = nn.initializers.ones
    kernel_init: Callable = KAIMING_FAN_OUT

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.n_c, self.f, self.s, self.padding, self.groups, bias=not self.bn,
                 kernel_init=self.kernel_init, name="conv")(x)
        if self.bn:
            x = BatchNorm(self.bn_momentum, self.bn_eps, self.bn_scale_init, name="bn")(x, train)
        return activation(self.act)(x)


class DepthwiseSeparableConv(nn.Module):
    """MobileNet (Howard et al. 2017, figure 3): a depthwise f x f convolution, BN, ReLU, then a
    1x1 pointwise convolution to n_c channels, BN, ReLU. Costs depthwise_separable_params
    weights instead of conv_params(f, n_c_prev, n_c)."""

    n_c: int
    f: int = 3
    s: int = 1
    act: str = "relu"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = ConvBN(x.shape[-1], self.f, self.s, groups=x.shape[-1], act=self.act,
                   name="depthwise")(x, train)
        return ConvBN(self.n_c, 1, padding=0, act=self.act, name="pointwise")(x, train)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018, eq. 2-4): z = global average of each channel,
    s = sigmoid(W2 act(W1 z)), output x * s. W1, W2 are 1x1 convolutions `fc1`, `fc2` with
    biases, as torchvision has them."""

    squeeze_channels: int
    act: str = "silu"

    @nn.compact
    def __call__(self, x):
        z = x.mean(axis=(1, 2), keepdims=True)                               # squeeze
        z = activation(self.act)(pointwise_conv(self.squeeze_channels, name="fc1")(z))
        s = jax.nn.sigmoid(pointwise_conv(x.shape[-1], name="fc2")(z))       # excitation
        return x * s


class StochasticDepth(nn.Module):
    """Stochastic depth (Huang et al. 2016), torchvision's "row" mode: in training each
    example's residual branch is kept with probability 1 - rate and scaled by 1 / (1 - rate);
    at inference it is the identity. Draws from the `dropout` rng."""

    rate: float

    @nn.compact
    def __call__(self, x, train: bool = False):
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1], got {self.rate}")
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape).astype(x.dtype)
        return x * mask / keep if keep > 0 else x * mask


def check_images(images, model: str):
    if images.ndim != 4:
        raise ValueError(f"{model} expects images [batch, height, width, channels] (NHWC), got "
                         f"shape {tuple(images.shape)}")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count v to the nearest multiple of `divisor` (at least min_value), but never
    more than 10% below v: the rounding of MobileNet's and EfficientNet's width multipliers (the
    TensorFlow releases, kept by torchvision)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def round_depth(n: int, depth_mult: float) -> int:
    """Layers of a scaled stage: ceil(n * d)."""
    return int(math.ceil(n * depth_mult))
