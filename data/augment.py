"""Image augmentation as one string of ops, as big_vision writes preprocessing:

    parse("flip_lr|random_crop(32, pad=4)|pca_color(0.1)", mean=..., std=...)

Ops (arguments as in a Python call; defaults after `=`):

    flip_lr(p=0.5)                      mirror left-right with probability p
    random_crop(size, pad=0)            pad `pad` zero pixels each side, then a random size x size
                                        window (CIFAR's pad-4-and-crop; pad 0: a plain crop)
    inception_crop(size=0, min_area=0.08, max_area=1.0, min_ratio=0.75, max_ratio=4/3)
                                        a window of random area fraction and aspect ratio,
                                        resized (bilinear, antialiased) to size x size (0: the
                                        input's size), Szegedy et al. 2015
    rotate(degrees=15)                  rotation by an angle uniform in [-degrees, degrees]
    shear(degrees=10)                   horizontal shear by an angle uniform in [-degrees, degrees]
    elastic(alpha=34, sigma=4)          local warping (Simard et al. 2003): a uniform random
                                        displacement field smoothed by a Gaussian of `sigma`
                                        pixels, scaled by `alpha` pixels
    color_jitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
                                        + delta, x factor about the mean, saturation x factor,
                                        hue + delta (turns), each uniform in [-v, v] / [1-v, 1+v]
    channel_shift(delta=0.1)            each channel + its own uniform shift in [-delta, delta]
    pca_color(sigma=0.1)                AlexNet (Krizhevsky et al. 2012): every pixel +
                                        sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, sigma), with
                                        (lambda_i, p_i) the eigenpairs of the training set's RGB
                                        covariance (`pixel_eigen`)

Evaluation views (parse_eval; deterministic, on whole batches, numpy or traced by jit):

    center_crop(size=0)                 the central size x size window (0, or no smaller than
                                        the image: the image as it is)
    ten_crop(size)                      AlexNet's ten patches: four corners and centre, and
                                        their mirror images (Krizhevsky et al. 2012, 4.1)

Every op works in pixel space, float [H, W, C] in [0, 1]: the pipeline maps normalised images
x to pixels x * std + mean, applies the ops, and normalises back. Geometric ops fill with black
(pixel 0) and interpolate linearly; colour ops clip to [0, 1], so values stay in range.

Randomness: example i of a batch draws from its own key, fold_in(key(seed), epoch, i, stream)
(the iterator's `rngs`, data/iterators.py, name seed, epoch, examples and stream), so a batch is
a pure function of (seed, epoch, example) and a resumed run sees the same images. Draws and ops
run over the batch as one jitted, vmapped JAX program on the host CPU, inside the iterator's
prefetch thread, in the shadow of the training step. Consecutive resampling ops (random_crop,
rotate, shear, elastic) are composed: each output pixel's position is carried back through all
of them and the input is read once, so a chain interpolates once and costs one op. dm-pix does
flips and colour; resampling uses jax.scipy's map_coordinates and the elastic field's smoothing
two matmuls, because dm-pix's interpolation and blur, vmapped on a CPU, were 35x and 60x slower.
"""

from __future__ import annotations

import abc
import ast
import cmath
import inspect
import math
from collections.abc import Callable, Sequence

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

OPS: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        OPS[name] = cls
        cls.name = name
        return cls
    return wrap


def _positive(op: str, **values) -> None:
    for k, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{op}: {k} must be a number >= 0, got {v!r}")


class Op(abc.ABC):
    """One op: `shape_after` checks that it fits an input [H, W, C] and gives its output shape,
    `draw` an example's parameters from its key (traced by jax), `apply` the op to one pixel
    image with them."""

    name = ""

    def shape_after(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return shape

    @abc.abstractmethod
    def draw(self, key: jax.Array, shape) -> jax.Array:
        """This example's parameters, for an input of `shape`."""

    @abc.abstractmethod
    def apply(self, image, params):
        """The op on one pixel image [H, W, C] with this example's parameters."""


class Resample(Op):
    """An op that moves pixels: out(y) = in(where(y)), read bilinearly, black outside."""

    @abc.abstractmethod
    def where(self, rows, cols, shape, params, grid: bool):
        """The input positions (rows, cols) that output positions (rows, cols) read, in pixels
        from the top left; `shape` is the input's; grid: the positions are the output's
        pixels (not moved by a later op)."""

    def apply(self, image, params):
        return resample(image, [self], [params], [image.shape, self.shape_after(image.shape)])


def resample(image, ops, params, shapes):
    """Consecutive resampling ops as one: every output position is carried back through each
    op to the input and the input read once (one interpolation, not one per op). A position that
    leaves an intermediate image is black, as it would be had each op been applied in turn."""
    rows, cols = _pixels(shapes[-1])
    inside = True
    for k in reversed(range(len(ops))):
        rows, cols = ops[k].where(rows, cols, shapes[k], params[k], grid=k == len(ops) - 1)
        if k:    # landed in an intermediate image: its black border must stay black
            h, w = shapes[k][:2]
            eps = 1e-3
            inside = inside & (rows > -eps) & (rows < h - 1 + eps) & (cols > -eps) & (
                cols < w - 1 + eps)
    out = _sample(image, rows, cols)
    return out if inside is True else jnp.where(inside[..., None], out, 0.0)


# --------------------------------------------------------------------------- geometry
@register("flip_lr")
class FlipLR(Op):
    def __init__(self, p: float = 0.5):
        _positive("flip_lr", p=p)
        if p > 1:
            raise ValueError(f"flip_lr: p must be in [0, 1], got {p}")
        self.p = p

    def draw(self, key, shape):
        return jax.random.bernoulli(key, float(self.p), (1,)).astype(jnp.float32)

    def apply(self, image, params):
        return jnp.where(params[0] > 0, dm_pix.flip_left_right(image), image)


@register("random_crop")
class RandomCrop(Resample):
    def __init__(self, size: int, pad: int = 0):
        if not isinstance(size, int) or size < 1 or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"random_crop: size must be an int >= 1 and pad an int >= 0, got "
                             f"size={size!r}, pad={pad!r}")
        self.size, self.pad = size, pad

    def shape_after(self, shape):
        h, w, c = shape
        if self.size > min(h, w) + 2 * self.pad:
            raise ValueError(f"random_crop({self.size}, pad={self.pad}) does not fit {h}x{w} "
                             f"images padded to {h + 2 * self.pad}x{w + 2 * self.pad}")
        return self.size, self.size, c

    def draw(self, key, shape):
        """(top, left) of the window in the padded image."""
        h, w, _ = shape
        return jax.random.randint(key, (2,), 0, jnp.asarray(
            [h + 2 * self.pad - self.size + 1, w + 2 * self.pad - self.size + 1]))

    def where(self, rows, cols, shape, params, grid):
        return rows + (params[0] - self.pad), cols + (params[1] - self.pad)


@register("inception_crop")
class InceptionCrop(Op):
    def __init__(self, size: int = 0, min_area: float = 0.08, max_area: float = 1.0,
                 min_ratio: float = 0.75, max_ratio: float = 4 / 3):
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"inception_crop: size must be an int >= 0, got {size!r}")
        if not 0 < min_area <= max_area <= 1 or not 0 < min_ratio <= max_ratio:
            raise ValueError(f"inception_crop: need 0 < min_area <= max_area <= 1 and "
                             f"0 < min_ratio <= max_ratio, got area ({min_area}, {max_area}), "
                             f"ratio ({min_ratio}, {max_ratio})")
        self.size, self.area, self.ratio = size, (min_area, max_area), (min_ratio, max_ratio)

    def shape_after(self, shape):
        h, w, c = shape
        return (self.size or h, self.size or w, c)

    def draw(self, key, shape):
        """(top, left, height, width) of the window: the first of ten tries at a random area
        and log-uniform aspect ratio that fits, else the whole image."""
        h, w, _ = shape
        k_area, k_ratio, k_place = jax.random.split(key, 3)
        area = h * w * jax.random.uniform(k_area, (10,), minval=self.area[0],
                                          maxval=self.area[1])
        aspect = jnp.exp(jax.random.uniform(k_ratio, (10,), minval=math.log(self.ratio[0]),
                                            maxval=math.log(self.ratio[1])))
        cw, ch = jnp.round(jnp.sqrt(area * aspect)), jnp.round(jnp.sqrt(area / aspect))
        fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = jnp.argmax(fits)
        ch, cw = (jnp.where(fits.any(), ch[first], h), jnp.where(fits.any(), cw[first], w))
        top, left = jnp.floor(jax.random.uniform(k_place, (2,)) * jnp.stack(
            [h - ch + 1, w - cw + 1]))
        return jnp.stack([top, left, ch, cw])

    def apply(self, image, params):
        out = self.shape_after(image.shape)
        scale = jnp.asarray(out[:2], jnp.float32) / params[2:]
        return jax.image.scale_and_translate(image, out, (0, 1), scale, -params[:2] * scale,
                                             method="linear", antialias=True)


def _sample(image, rows, cols):
    """image read at fractional (rows, cols) [H', W'], bilinear, black outside. jax's own
    map_coordinates: under vmap on a CPU it rotated 64 32x32 RGB images in 6 ms, where dm-pix's
    affine_transform (a gather per corner) took 215 ms."""
    return jnp.stack([map_coordinates(image[..., k], [rows, cols], order=1, mode="constant",
                                      cval=0.0) for k in range(image.shape[-1])], axis=-1)


def _pixels(shape):
    """Row and column of every pixel [H, W]."""
    return jnp.meshgrid(jnp.arange(shape[0], dtype=jnp.float32),
                        jnp.arange(shape[1], dtype=jnp.float32), indexing="ij")


def _affine(rows, cols, shape, m):
    """Positions m y, y measured from the centre of an image of `shape`."""
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    y, x = rows - cy, cols - cx
    return m[0][0] * y + m[0][1] * x + cy, m[1][0] * y + m[1][1] * x + cx


@register("rotate")
class Rotate(Resample):
    def __init__(self, degrees: float = 15):
        _positive("rotate", degrees=degrees)
        self.degrees = degrees

    def draw(self, key, shape):
        return jnp.deg2rad(jax.random.uniform(key, (1,), minval=-self.degrees,
                                              maxval=self.degrees))

    def where(self, rows, cols, shape, params, grid):
        c, s = jnp.cos(params[0]), jnp.sin(params[0])
        return _affine(rows, cols, shape, ((c, s), (-s, c)))


@register("shear")
class Shear(Resample):
    def __init__(self, degrees: float = 10):
        _positive("shear", degrees=degrees)
        if degrees >= 90:
            raise ValueError(f"shear: degrees must be below 90, got {degrees}")
        self.degrees = degrees

    def draw(self, key, shape):
        return jnp.tan(jnp.deg2rad(jax.random.uniform(key, (1,), minval=-self.degrees,
                                                      maxval=self.degrees)))

    def where(self, rows, cols, shape, params, grid):
        # column read = column + tan(angle) * (row - centre): rows slide sideways
        return _affine(rows, cols, shape, ((1.0, 0.0), (params[0], 1.0)))


@register("elastic")
class Elastic(Resample):
    def __init__(self, alpha: float = 34, sigma: float = 4):
        _positive("elastic", alpha=alpha, sigma=sigma)
        if sigma <= 0:
            raise ValueError(f"elastic: sigma must be > 0, got {sigma}")
        self.alpha, self.sigma = float(alpha), float(sigma)

    def draw(self, key, shape):
        return jax.random.uniform(key, (*shape[:2], 2), minval=-1.0, maxval=1.0)  # raw field

    def where(self, rows, cols, shape, noise, grid):
        # Simard et al.: displacements uniform in [-1, 1], smoothed by a Gaussian, times alpha;
        # defined at pixels, read bilinearly between them where a later op moved the grid
        h, w = shape[:2]
        kh, kw = gaussian_matrix(h, self.sigma), gaussian_matrix(w, self.sigma)
        shift = self.alpha * jnp.einsum("ij,jkc,lk->ilc", kh, noise, kw)
        if grid:
            return rows + shift[..., 0], cols + shift[..., 1]
        dy, dx = (map_coordinates(shift[..., k], [rows, cols], order=1, mode="nearest")
                  for k in range(2))
        return rows + dy, cols + dx


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n]: K @ v is v blurred by a Gaussian of `sigma` cut at 3 sigma, zero outside (the
    same as dm_pix.gaussian_blur's convolution with SAME padding). Two small matmuls blur a
    field: under vmap on a CPU 60x faster than dm-pix's depthwise convolution."""
    radius = math.ceil(3 * sigma)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    d = np.subtract.outer(np.arange(n), np.arange(n))
    k = np.where(np.abs(d) <= radius, np.exp(-d.astype(np.float64) ** 2 / (2 * sigma**2)), 0)
    return (k / taps.sum()).astype(np.float32)


# --------------------------------------------------------------------------- colour
@register("color_jitter")
class ColorJitter(Op):
    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1):
        _positive("color_jitter", brightness=brightness, contrast=contrast,
                  saturation=saturation, hue=hue)
        if contrast > 1 or saturation > 1 or hue > 0.5:
            raise ValueError(f"color_jitter: contrast and saturation must be <= 1 and hue <= "
                             f"0.5, got {contrast}, {saturation}, {hue}")
        self.b, self.c, self.s, self.h = brightness, contrast, saturation, hue

    def shape_after(self, shape):
        if shape[-1] != 3 and (self.s or self.h):
            raise ValueError(f"color_jitter: saturation and hue need RGB images, got "
                             f"{shape[-1]} channel(s); set saturation=0, hue=0")
        return shape

    def draw(self, key, shape):
        """brightness delta, contrast factor, saturation factor, hue delta."""
        return jax.random.uniform(key, (4,), minval=jnp.asarray([-self.b, 1 - self.c, 1 - self.s,
                                                                 -self.h]),
                                  maxval=jnp.asarray([self.b, 1 + self.c, 1 + self.s, self.h]))

    def apply(self, image, params):
        x = jnp.clip(dm_pix.adjust_brightness(image, params[0]), 0, 1)
        x = jnp.clip(dm_pix.adjust_contrast(x, params[1]), 0, 1)
        if self.s:
            x = jnp.clip(dm_pix.adjust_saturation(x, params[2]), 0, 1)
        if self.h:
            x = jnp.clip(dm_pix.adjust_hue(x, params[3]), 0, 1)
        return x


@register("channel_shift")
class ChannelShift(Op):
    def __init__(self, delta: float = 0.1):
        _positive("channel_shift", delta=delta)
        self.delta = delta

    def draw(self, key, shape):
        return jax.random.uniform(key, (shape[-1],), minval=-self.delta, maxval=self.delta)

    def apply(self, image, params):
        return jnp.clip(image + params, 0, 1)


@register("pca_color")
class PCAColor(Op):
    def __init__(self, sigma: float = 0.1):
        _positive("pca_color", sigma=sigma)
        self.sigma = sigma
        self.eigvals = self.eigvecs = None    # set by fit(): the training set's eigenpairs

    def fit(self, pixels: np.ndarray) -> None:
        self.eigvals, self.eigvecs = (a.astype(np.float32) for a in pixel_eigen(pixels))

    def shape_after(self, shape):
        if shape[-1] != len(self.eigvals):
            raise ValueError(f"pca_color: eigenpairs of {len(self.eigvals)} channels, images "
                             f"have {shape[-1]}")
        return shape

    def draw(self, key, shape):
        return self.sigma * jax.random.normal(key, (len(self.eigvals),))

    def apply(self, image, alpha):
        shift = jnp.asarray(self.eigvecs) @ (alpha * jnp.asarray(self.eigvals))  # sum_i a_i l_i p_i
        return jnp.clip(image + shift, 0, 1)


def pixel_eigen(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns p_i) of the covariance of the colour
    channels over all pixels [..., C]: AlexNet's PCA over the training set's RGB values."""
    x = np.asarray(pixels, np.float64).reshape(-1, np.shape(pixels)[-1])
    if len(x) < 2:
        raise ValueError(f"pixel_eigen needs at least 2 pixels, got {len(x)}")
    vals, vecs = np.linalg.eigh(np.atleast_2d(np.cov(x, rowvar=False)))
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0, None), vecs[:, order]


# --------------------------------------------------------------------------- evaluation views
# Deterministic ops on whole batches, for evaluation: views(images [n, H, W, C]) -> the views
# [k, n, h, w, C] a model scores (k 1: one view, k 10: AlexNet's patches), as numpy or, under
# jit, as jax arrays. Written in the same op language: parse_eval("center_crop(32)").
def center_crop(images, size: int = 0):
    """The central size x size window of NHWC images (as they are when no larger, or size 0)."""
    h, w = images.shape[1:3]
    size = size or max(h, w)
    top, left = max(h - size, 0) // 2, max(w - size, 0) // 2
    return images[:, top:top + min(h, size), left:left + min(w, size)]


def ten_crop(images, size: int):
    """AlexNet's test-time patches (Krizhevsky et al. 2012, section 4.1): the four corner
    patches and the centre one, size x size, then the same five mirrored horizontally.
    NHWC images [n, H, W, C] -> [10, n, size, size, C], in the order top-left, top-right,
    bottom-left, bottom-right, centre, and their mirrors."""
    h, w = images.shape[1:3]
    if not 0 < size <= min(h, w):
        raise ValueError(f"ten_crop: crop size {size} does not fit {h}x{w} images")
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
               ((h - size) // 2, (w - size) // 2)]
    five = [images[:, t:t + size, left:left + size] for t, left in corners]
    return jnp.stack(five + [p[:, :, ::-1] for p in five])


# name -> (views of a batch [k, n, ...], k)
EVAL_OPS: dict[str, tuple[Callable, int]] = {
    "center_crop": (lambda x, size=0: center_crop(x, size)[None], 1),
    "ten_crop": (ten_crop, 10)}


def parse_eval(spec: str) -> Callable:
    """views(images [n, H, W, C]) -> [k, n, h, w, C] of an evaluation spec ("op|op(args)";
    "" = the images as they are, k 1): each op maps every view so far to its own views.
    views.count is k."""
    ops = []
    for part in (p.strip() for p in spec.split("|")) if spec.strip() else ():
        name, args, kwargs = _call(part)
        if name not in EVAL_OPS:
            raise ValueError(f"unknown evaluation op {name!r} in {spec!r}; choose from "
                             f"{', '.join(sorted(EVAL_OPS))}")
        op, count = EVAL_OPS[name]
        try:
            inspect.signature(op).bind(None, *args, **kwargs)
        except TypeError as e:
            raise ValueError(f"evaluation op {part!r}: {e}") from None
        if not all(isinstance(v, int) and v >= 0 for v in [*args, *kwargs.values()]):
            raise ValueError(f"evaluation op {part!r}: sizes must be ints >= 0")
        ops.append((op, args, kwargs, count))

    def views(images):
        x = images[None]
        for op, args, kwargs, _ in ops:
            k, n = x.shape[:2]
            y = op(x.reshape(k * n, *x.shape[2:]), *args, **kwargs)     # [k', k n, ...]
            x = y.reshape(y.shape[0] * k, n, *y.shape[2:])
        return x
    views.count = math.prod(count for *_, count in ops)
    return views


# --------------------------------------------------------------------------- the pipeline
class Pipeline:
    """The ops of a spec, applied in order to batches of normalised images [n, H, W, C], example
    j with the key of rngs's example j (data/iterators.ExampleRngs): `pipeline(images, rngs)`."""

    def __init__(self, spec: str, ops: Sequence[Op], mean=(0.0,), std=(1.0,)):
        self.spec, self.ops = spec, list(ops)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self._compiled: dict[tuple, Callable] = {}

    def __bool__(self) -> bool:
        return bool(self.ops)

    def shapes(self, shape) -> list[tuple[int, int, int]]:
        """The shape each op receives, then the output's."""
        if len(shape) != 3 or len(self.mean) not in (1, shape[-1]):
            raise ValueError(f"augmentation expects images [n, H, W, C] with "
                             f"{len(self.mean)} channel(s), got [n, {', '.join(map(str, shape))}]")
        out = [tuple(shape)]
        for op in self.ops:
            out.append(tuple(op.shape_after(out[-1])))
        return out

    def draw(self, shape, rngs) -> list[np.ndarray]:
        """Every op's parameters for every example [n, ...], as __call__ draws them."""
        return [np.asarray(p) for p in self._run(tuple(shape), rngs, "draw")()]

    def __call__(self, images: np.ndarray, rngs) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"augmentation expects images [n, H, W, C], got shape {images.shape}")
        if len(rngs) != len(images):
            raise ValueError(f"{len(images)} images but {len(rngs)} generators")
        if not self.ops:
            return images
        return np.asarray(self._run(images.shape[1:], rngs, "apply")(images))

    def _run(self, shape: tuple, rngs, what: str) -> Callable:
        """The jitted draw ("draw") or draw-and-apply ("apply") over rngs's examples."""
        key = (shape, tuple(rngs.streams), what)
        if key not in self._compiled:
            self._compiled[key] = self._compile(shape, tuple(rngs.streams), what)
        cpu = jax.local_devices(backend="cpu")[0]   # host work, whatever the accelerator
        ids = jax.device_put(np.asarray([rngs.seed, rngs.epoch], np.uint32), cpu)
        examples = jax.device_put(np.asarray(rngs.indices, np.uint32), cpu)
        run = self._compiled[key]
        return lambda *images: run(*jax.device_put(images, cpu), ids, examples)

    def _compile(self, shape: tuple, streams: tuple, what: str) -> Callable:
        mean, std, shapes = self.mean, self.std, self.shapes(shape)

        def draw(ids, example):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(ids[0]), ids[1]), example)
            for s in streams:
                key = jax.random.fold_in(key, s)
            keys = jax.random.split(key, len(self.ops))
            return [op.draw(k, s) for op, k, s in zip(self.ops, keys, shapes)]

        def apply(image, ids, example):
            params, x, k = draw(ids, example), image * std + mean, 0
            while k < len(self.ops):
                if isinstance(self.ops[k], Resample):   # a chain of them, read once
                    end = k
                    while end < len(self.ops) and isinstance(self.ops[end], Resample):
                        end += 1
                    x = resample(x, self.ops[k:end], params[k:end], shapes[k:end + 1])
                    k = end
                else:
                    x, k = self.ops[k].apply(x, params[k]), k + 1
            return (x - mean) / std

        if what == "draw":
            return jax.jit(jax.vmap(draw, in_axes=(None, 0)))
        return jax.jit(jax.vmap(apply, in_axes=(0, None, 0)))

    def __repr__(self) -> str:
        return f"Pipeline({self.spec!r})"


def _call(part: str) -> tuple[str, list, dict]:
    """'name(1, b=2)' or 'name' -> (name, args, kwargs), arguments Python literals."""
    try:
        node = ast.parse(part, mode="eval").body
    except SyntaxError:
        raise ValueError(f"augmentation op {part!r} is not of the form name or "
                         f"name(arg, key=value)") from None
    if isinstance(node, ast.Name):
        return node.id, [], {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"augmentation op {part!r} is not of the form name or "
                         f"name(arg, key=value)")
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise ValueError(f"augmentation op {part!r}: arguments must be literal numbers") from None
    if None in kwargs:
        raise ValueError(f"augmentation op {part!r}: ** arguments are not allowed")
    if not all(_finite(v) for v in [*args, *kwargs.values()]):
        raise ValueError(f"augmentation op {part!r}: arguments must be finite numbers "
                         f"(1e400 reads as infinity)")
    return node.func.id, args, kwargs


def _finite(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return not isinstance(value, (float, complex)) or cmath.isfinite(value)


def parse(spec: str, *, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,),
          train_pixels: np.ndarray | Callable[[], np.ndarray] | None = None) -> Pipeline:
    """The pipeline of `spec` ("op|op(args)|..."; "" = none). `mean`/`std`: the normalisation
    of the images it will get (pixel = x * std + mean). `train_pixels`: the training images'
    pixels [..., C] in [0, 1] (or a function giving them), read only if pca_color is used."""
    ops = []
    for part in (p.strip() for p in spec.split("|")) if spec.strip() else ():
        if not part:
            raise ValueError(f"augmentation {spec!r} has an empty op between '|'")
        name, args, kwargs = _call(part)
        if name not in OPS:
            raise ValueError(f"unknown augmentation op {name!r} in {spec!r}; choose from "
                             f"{', '.join(sorted(OPS))}")
        signature = inspect.signature(OPS[name])
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ValueError(f"augmentation op {part!r}: {e}; expected {name}{signature}") from None
        ops.append(OPS[name](*args, **kwargs))
        if isinstance(ops[-1], PCAColor):
            if train_pixels is None:
                raise ValueError("pca_color needs the training set's RGB covariance: pass "
                                 "parse(..., train_pixels=...)")
            ops[-1].fit(train_pixels() if callable(train_pixels) else train_pixels)
    return Pipeline(spec, ops, mean, std)


def augment_batches(batches, pipeline: Pipeline, key: str = "images"):
    """Has the iterator `batches` (data/iterators.py) apply `pipeline` to `key` of every batch
    it builds, example j's parameters drawn from its own augmentation stream (rngs.stream(1));
    returns it. An empty pipeline leaves it as it was."""
    if pipeline:
        batches.transform = lambda batch, rngs: {**batch,
                                                 key: pipeline(batch[key], rngs.stream(1))}
    return batches
