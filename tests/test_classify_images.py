"""ConvNets through the one trainer: digits, photograph crops, hub image folders, BatchNorm."""

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from data import images
from experiments import classify_images
from experiments.configs import convnets as configs
from conftest import simulated_devices_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(preset="resnet-digits", steps=3, batch_size=16, **train):
    """A preset cut down to seconds: ResNet-8 four channels wide, short evaluations."""
    config = configs.get_config(preset)
    config.train.update(steps=steps, batch_size=batch_size, log_every=1, eval_every=1000,
                        step_fractions=(), warmup_fraction=0.0, **train)
    for name in ("val", "val_loss"):
        config.evals[name].steps = 1
    if config.model.name == "resnet8":
        config.model.overrides = ml_collections.ConfigDict({"widths": (4, 8, 16)})
    return config


def rows(workdir, split):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_default_command_writes_test_top1(tmp_path):
    cmd = [sys.executable, "-m", "experiments.classify_images", f"--workdir={tmp_path}",
           "--config.train.steps=2", "--config.train.batch_size=8",
           "--config.train.step_fractions=()", "--config.train.warmup_fraction=0.0",
           "--config.evals.val.steps=1", "--config.evals.val_loss.steps=1",
           "--config.evals.test.steps=2", "--config.evals.test_loss.steps=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (test,) = rows(tmp_path, "test")
    assert test["step"] == 2 and 0.0 <= test["top1"] <= test["top5"] <= 1.0
    assert test["accuracy"] == pytest.approx(test["top1"])
    assert "test top-1" in out.stderr


def test_loss_falls_on_digits(tmp_path):
    config = tiny("lenet5", steps=30, batch_size=32)
    classify_images.fit(config, workdir=tmp_path, **classify_images.setup(config, tmp_path))
    losses = [r["loss"] for r in rows(tmp_path, "train")]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from experiments import classify_images
from experiments.configs.common import mesh_config
from train import sharding
from models import convnets

# Two SGD steps of ResNet-8 (BatchNorm in every block) on 16 digits, the batch sharded over
# n devices; the loss and running statistics must not depend on n.
model = convnets.create("resnet8", 10, widths=(4, 8, 16))
loss_fn = classify_images.classify_loss_fn(model)
rng = np.random.default_rng(0)
batch = {"images": rng.normal(size=(16, 32, 32, 1)).astype(np.float32),
         "labels": rng.integers(10, size=16).astype(np.int32)}
variables = model.init(jax.random.key(0), jnp.asarray(batch["images"][:1]))
params = variables["params"]
state0 = {k: v for k, v in variables.items() if k != "params"}

def step(params, state, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (_, state)), grads = grad_fn(params, state, batch, jax.random.key(1))
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), state, loss

out = {"devices": len(jax.devices())}
for n in (1, 8):
    mesh = sharding.make_mesh(mesh_config(data=n), jax.devices()[:n])
    rows = jax.device_put(batch, sharding.batch_sharding(mesh))
    assert len(rows["images"].sharding.device_set) == n
    p, s, losses = params, state0, []
    for _ in range(2):
        p, s, loss = jax.jit(step)(p, s, rows)
        losses.append(float(loss))
    out[n] = {"loss": losses, "stats": [np.asarray(x).ravel().tolist()
                                        for x in jax.tree.leaves(jax.device_get(s))]}
print(json.dumps(out))
"""


def test_batchnorm_statistics_span_the_global_batch():
    """Data-parallel over 8 devices, BatchNorm normalises with the statistics of the whole
    global batch (not each device's 2 rows), so losses and running averages match 1 device."""
    env = simulated_devices_env(8, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8
    one, eight = r["1"], r["8"]
    assert one["loss"][1] != one["loss"][0]
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-4)
    assert len(one["stats"]) == len(eight["stats"]) > 0
    for a, b in zip(one["stats"], eight["stats"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_photo_bands_are_disjoint():
    rng = np.random.default_rng(0)
    for shape in [(256, 384, 3), (300, 256, 3)]:       # landscape: bands along w; portrait: h
        covered = {}
        for split in images.SPLITS:
            axis, start, stop = images.band(shape, split, 32)
            cells = set()
            for _ in range(200):
                top, left = images.crop_box(shape, split, 32, rng)
                along = left if axis == "w" else top
                assert start <= along and along + 32 <= stop
                assert top + 32 <= shape[0] and left + 32 <= shape[1]
                cells.update(range(along, along + 32))
            covered[split] = cells
        assert not covered["train"] & covered["val"]
        assert not covered["train"] & covered["test"]
        assert not covered["val"] & covered["test"]
    with pytest.raises(ValueError, match="narrower than"):
        images.band((64, 100, 3), "val", 32)


def test_photo_task_and_training_crops():
    task = images.photo_classification(image_size=32, eval_crops=3)
    assert len(task.classes) >= 3 and task.channels == 3
    for split in ("val", "test"):
        a = task.splits[split]
        assert a["images"].shape == (3 * len(task.classes), 32, 32, 3)
        np.testing.assert_array_equal(np.bincount(a["labels"]), 3)
    batches = task.train_batches(8, seed=0, process_index=0, process_count=1)
    batch = next(batches)
    batches.close()
    assert batch["images"].shape == (8, 32, 32, 3) and batch["images"].dtype == np.float32
    assert set(batch["labels"]) <= set(range(len(task.classes)))
    # no training crop equals any test crop
    assert not any(np.allclose(x, y) for x in batch["images"] for y in task.splits["test"]["images"])


def test_hub_loader_on_a_local_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        for label, colour in (("blue", 2), ("red", 0)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (20, 28, 3), dtype=np.uint8)
                pixels[..., colour] = 230
                Image.fromarray(pixels).save(folder / f"{i}.png")
    task = images.hf_classification("imagefolder", image_size=16, data_dir=str(tmp_path))
    assert task.classes == ["blue", "red"]
    n = {s: len(a["labels"]) for s, a in task.splits.items()}
    assert n == {"train": 18, "val": 2, "test": 6}    # val carved from train, test its own
    test = task.splits["test"]
    assert test["images"].shape == (6, 16, 16, 3)
    red = test["images"][..., 0].mean(axis=(1, 2)) > test["images"][..., 2].mean(axis=(1, 2))
    np.testing.assert_array_equal(red, test["labels"] == 1)
    grey = images.hf_classification("imagefolder", image_size=16, channels=1,
                                    data_dir=str(tmp_path))
    assert grey.splits["train"]["images"].shape == (18, 16, 16, 1)
    with pytest.raises(ValueError, match="lacks column"):
        images.hf_classification("imagefolder", label_column="digit", data_dir=str(tmp_path))
