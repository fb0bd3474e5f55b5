"""A figure of augmentation ops (data/augment.py) on the offline digits and photograph crops.

    python -m experiments.augment_figure --out=docs/figures/augment.png

Each row one training example, each column one op string (the last column the sweep's whole
pipeline for that task, experiments/configs/convnets.py), drawn with the example's own
generator as training draws it.
"""

import numpy as np
from absl import app, flags

from data import augment, images
from data.iterators import ExampleRngs
from experiments.configs import convnets

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined only when it runs as a command: the experiments'
    modules share absl's global flags, so importing two that define --out would collide."""
    flags.DEFINE_string("out", "docs/figures/augment.png", "Where to write the PNG.")
    flags.DEFINE_integer("examples", 2, "Examples of each task.")

DIGIT_OPS = ("random_crop(32, pad=4)", "rotate(20)", "shear(20)", "elastic(34, 4)",
             convnets.DIGIT_AUGMENT)
PHOTO_OPS = ("flip_lr", "inception_crop(min_area=0.25)", "color_jitter", "pca_color(1.0)",
             convnets.PHOTO_AUGMENT)


def rows(task, specs, n: int, seed: int = 1):
    """[n, 1 + len(specs)] pixel images: n training examples spread over the training set, as
    they are, then through each spec."""
    train = task.splits["train"]["images"]
    train = train[((np.arange(n) + 0.5) * len(train) / n).astype(int)]
    pixels = train * np.float32(task.std) + np.float32(task.mean)
    rngs = ExampleRngs(seed, 0, np.arange(n)).stream(1)
    out = [pixels]
    for spec in specs:
        pipeline = augment.parse(spec, train_pixels=task.train_pixels)
        out.append(pipeline(pixels, rngs))
    return np.stack(out, axis=1)


def main(argv):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = FLAGS.examples
    groups = [(rows(images.digit_classification(), DIGIT_OPS, n), ("digit",) + DIGIT_OPS),
              (rows(images.photo_classification(), PHOTO_OPS, n),
               ("photo crop",) + PHOTO_OPS)]
    cols = 1 + len(DIGIT_OPS)
    fig, axes = plt.subplots(2 * n, cols, figsize=(2.1 * cols, 2.6 * 2 * n))
    for g, (grid, titles) in enumerate(groups):
        for i in range(n):
            for j in range(cols):
                ax = axes[g * n + i, j]
                im = np.clip(grid[i, j], 0, 1)
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if i == 0:
                    ax.set_title(titles[j].replace("|", "|\n"), fontsize=7)
    fig.tight_layout()
    fig.savefig(FLAGS.out, dpi=110)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
