"""Edge filters on a photograph, and a filter learned back from the Sobel response.

    python -m experiments.edges [--out=docs/figures/edges.png --photo=camera --steps=2000 \
        --seeds=1]

1. The vertical, horizontal, Sobel and Scharr 3x3 filters (models.conv.EDGE_FILTERS) slid over
   a grey photograph shipped with scikit-image ("camera", the 512x512 cameraman, by default) as
   cross-correlation, through the zoo's own convolution layer; the four responses (and the
   Sobel gradient magnitude) saved as one figure.
2. One 3x3 filter, initialised at random, trained by backpropagation (Adam) to reproduce the
   Sobel response of the same photograph, y = x * w, loss = mean (y - x * SOBEL)^2: the
   least-squares problem has the Sobel filter as its unique minimum, and gradient descent finds
   it. Prints the learned filter, its largest absolute error against Sobel, and the time taken.

The loss's Hessian is 2 E[p p^T] over the photograph's 3x3 patches p, and a photograph is
smooth: neighbouring pixels nearly agree, so the patches' mean direction carries most of the
energy and the high-frequency ones little (condition number about 6,000 on the cameraman in
[0, 1]). Gradient descent crawls along those weak directions, so the photograph is standardised
(zero mean, unit variance: the usual input normalisation, which leaves the Sobel target's shape
unchanged since its weights sum to 0) and average-pooled by --pool, which brings the condition
number below 1,000 and makes each step cheap. The program prints both condition numbers. Even
so Adam's path depends on the initialisation: --seeds=N trains from N of them and prints each
one's error.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from data.images import grey_photo
from models.conv import EDGE_FILTERS, SOBEL, avg_pool, conv, cross_correlate

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags, defined only when it runs as a command: the experiments'
    modules share absl's global flags, so importing two that define --out would collide."""
    flags.DEFINE_string("out", "docs/figures/edges.png", "Where to save the figure (PNG).")
    flags.DEFINE_string("photo", "camera", "A scikit-image photograph, in grey levels.")
    flags.DEFINE_integer("pool", 8, "Average-pool the photograph by this factor for training.",
                         lower_bound=1)
    flags.DEFINE_integer("steps", 2000, "Adam steps of the learned filter.", lower_bound=1)
    flags.DEFINE_float("lr", 0.3, "Adam's peak learning rate (cosine decay to 0).")
    flags.DEFINE_integer("seeds", 1, "Train from this many initialisations (seeds 0, 1, ...).",
                         lower_bound=1)

SHOWN = ("vertical", "horizontal", "sobel", "scharr")


def as_images(photo: np.ndarray) -> jnp.ndarray:
    """uint8 [H, W] -> float32 [1, H, W, 1] in [0, 1]."""
    return jnp.asarray(photo, jnp.float32)[None, :, :, None] / 255.0


def standardize(images):
    """(x - mean) / std over the whole image."""
    return (images - images.mean()) / images.std()


def condition_number(images, f: int = 3) -> float:
    """max / min eigenvalue of E[p p^T] over the f x f patches p of [1, H, W, 1] images: the
    condition number of the least-squares loss of one f x f filter on them."""
    x = np.asarray(images[0, :, :, 0], np.float64)
    h, w = x.shape
    patches = np.stack([x[u:h - f + 1 + u, v:w - f + 1 + v].ravel()
                        for u in range(f) for v in range(f)], axis=1)
    eig = np.linalg.eigvalsh(patches.T @ patches)
    return float(eig[-1] / eig[0])


def edge_responses(images, names=SHOWN) -> dict[str, np.ndarray]:
    """Each named filter's "valid" response to [1, H, W, 1] images: [H - 2, W - 2] each."""
    y = cross_correlate(images, np.stack([EDGE_FILTERS[n] for n in names]))
    return {n: np.asarray(y[0, :, :, i]) for i, n in enumerate(names)}


def learn_filter(images, target_kernel: np.ndarray = SOBEL, steps: int = 2000, lr: float = 0.3,
                 seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Train one f x f filter (no bias) so that its response to `images` matches that of
    target_kernel, by Adam on the mean squared error: -> (learned [f, f], loss per step)."""
    f = target_kernel.shape[0]
    target = cross_correlate(images, target_kernel[None])
    layer = conv(1, f, padding="valid", bias=False, kernel_init=jax.nn.initializers.normal(1.0))
    params = layer.init(jax.random.key(seed), images)["params"]
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))
    opt_state = opt.init(params)

    def loss_fn(params):
        return jnp.mean(jnp.square(layer.apply({"params": params}, images) - target))

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return np.asarray(params["kernel"][:, :, 0, 0]), losses


def save_figure(photo: np.ndarray, responses: dict[str, np.ndarray], path: str, title: str):
    """The photograph, each response on a diverging scale (red: bright to dark, left to right or
    top to bottom; blue: dark to bright) and the Sobel gradient magnitude."""
    import pathlib

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
    axes = axes.ravel()
    axes[0].imshow(photo, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(title)
    for ax, (name, y) in zip(axes[1:5], responses.items()):
        lim = float(np.percentile(np.abs(y), 99.5))  # a few strong edges would wash out the rest
        ax.imshow(y, cmap="RdBu_r", vmin=-lim, vmax=lim)
        rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in EDGE_FILTERS[name])
        ax.set_title(f"{name}  [{rows}]", fontsize=10)
    g_y = edge_responses(as_images(photo), ("sobel_horizontal",))["sobel_horizontal"]
    magnitude = np.hypot(responses["sobel"], g_y)
    axes[5].imshow(magnitude, cmap="gray_r", vmin=0, vmax=float(np.percentile(magnitude, 99.5)))
    axes[5].set_title("Sobel magnitude sqrt(Gx^2 + Gy^2)", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv):
    del argv
    photo = grey_photo(FLAGS.photo)
    images = as_images(photo)
    start = time.perf_counter()
    responses = edge_responses(images)
    save_figure(photo, responses, FLAGS.out,
                f"{FLAGS.photo} ({photo.shape[0]}x{photo.shape[1]}, grey)")
    print(f"edge responses of {FLAGS.photo} {photo.shape[0]}x{photo.shape[1]} -> "
          f"{FLAGS.out} ({time.perf_counter() - start:.1f} s)")
    for name, y in responses.items():
        print(f"  {name:<10} response {y.shape[0]}x{y.shape[1]}, range [{y.min():+.3f}, "
              f"{y.max():+.3f}]")

    train = standardize(avg_pool(images, FLAGS.pool) if FLAGS.pool > 1 else images)
    print(f"\ncondition number of the 3x3 least squares: {condition_number(images):,.0f} on the "
          f"photograph in [0, 1], {condition_number(train):,.0f} standardised and pooled to "
          f"{train.shape[1]}x{train.shape[2]}")
    for seed in range(FLAGS.seeds):
        start = time.perf_counter()
        learned, losses = learn_filter(train, SOBEL, FLAGS.steps, FLAGS.lr, seed)
        seconds = time.perf_counter() - start
        error = np.abs(learned - SOBEL).max()
        if seed:
            print(f"seed {seed}: max |learned - Sobel| = {error:.2e} ({seconds:.1f} s)")
            continue
        print(f"one 3x3 filter trained to reproduce the Sobel response ({FLAGS.steps} Adam "
              f"steps, lr {FLAGS.lr} cosine, on {train.shape[1]}x{train.shape[2]}, seed 0, "
              f"{seconds:.1f} s): loss {losses[0]:.3e} -> {losses[-1]:.3e}")
        print("learned filter:")
        for row in learned:
            print("  " + " ".join(f"{v:+9.5f}" for v in row))
        print(f"max |learned - Sobel| = {error:.2e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
