"""The platform every experiment stands on: optimisers and freezing from the config, init_from,
evaluators on any mesh and any number of processes."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from experiments.configs import common
from test_multihost import free_port
from test_trainer import ROOT
from train import optim
from train.logging import read_metrics
from train.trainer import fit
from conftest import simulated_devices_env

X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)


class Net(nn.Module):
    """body (Dense) -> bn (BatchNorm) -> head (Dense)."""
    width: int = 4
    outputs: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(self.width, name="body")(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5, name="bn")(h)
        return nn.Dense(self.outputs, name="head")(nn.relu(h))


class Fixed:
    """The same batch every step."""

    def __next__(self):
        return {"x": X, "y": Y}

    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def config_of(**train):
    config = common.base_config()
    config.model = ml_collections.ConfigDict({"width": 4})
    config.train = common.train_config(**{**dict(
        steps=4, batch_size=8, lr=0.1, schedule="constant", warmup_steps=0, weight_decay=0.0,
        grad_clip=0.0, log_every=1, eval_every=1000, ckpt_every=1000), **train})
    return config


def task(model):
    def loss_fn(params, state, batch, rng):
        out, new = model.apply({"params": params, **state}, batch["x"], train=rng is not None,
                               mutable=["batch_stats"] if rng is not None else [])
        loss = jnp.mean((out[..., 0] - batch["y"]) ** 2)
        return loss, ({}, new if rng is not None else state)
    return dict(init_fn=lambda rng: model.init(rng, jnp.zeros((1, 3))), loss_fn=loss_fn,
                train_data=Fixed())


def test_frozen_parameters_and_their_statistics_stay_bitwise_and_hold_no_state(tmp_path):
    model = Net()
    fresh = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 3))))
    state = fit(config_of(freeze="body/.*|bn/.*", optimizer="adam", b2=0.98), workdir=tmp_path,
                **task(model))
    params = jax.device_get(state.params)
    for name in ("body", "bn"):
        for k, v in optim.flat(fresh["params"][name]).items():
            np.testing.assert_array_equal(optim.flat(params[name])[k], v)
    for k, v in optim.flat(fresh["batch_stats"]).items():   # the running statistics too
        np.testing.assert_array_equal(optim.flat(jax.device_get(state.model_state))[
            f"batch_stats/{k}"], v)
    assert not np.array_equal(params["head"]["kernel"], fresh["params"]["head"]["kernel"])
    # Adam's two moments for the head's kernel [4, 1] and bias [1] only: 2 * 5 values.
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert sum(int(np.size(x)) for x in moments) == 2 * 5


def test_unfrozen_batchnorm_statistics_move(tmp_path):
    model = Net()
    fresh = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 3))))
    state = fit(config_of(freeze="body/.*"), workdir=tmp_path, **task(model))
    assert not np.array_equal(jax.device_get(state.model_state)["batch_stats"]["bn"]["mean"],
                              fresh["batch_stats"]["bn"]["mean"])


def test_freeze_that_matches_nothing_or_everything_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="matches no parameter"):
        fit(config_of(freeze="wte/.*"), workdir=tmp_path / "a", **task(Net()))
    with pytest.raises(ValueError, match="matches every parameter"):
        fit(config_of(freeze=".*"), workdir=tmp_path / "b", **task(Net()))
    assert not (tmp_path / "a").exists()


class Affine(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(1, name="head")(x)


def affine_run(tmp_path, **train):
    model = Affine()
    return fit(config_of(**train), workdir=tmp_path, **task(model)), model


def numpy_grad(w, b):
    err = X @ w + b - Y
    return 2 * X.T @ err / len(X), 2 * err.mean()


def test_sgd_with_momentum_and_step_decay_matches_the_formula(tmp_path):
    """torch's SGD: v = mu v + g + wd p; p -= lr v, with lr divided by 10 after step 2."""
    state, model = affine_run(tmp_path, optimizer="sgd", momentum=0.9, nesterov=False,
                              weight_decay=0.01, schedule="step", step_boundaries=(2,),
                              step_factor=0.1)
    p = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]["head"])
    w, b = p["kernel"][:, 0].astype(np.float64), float(p["bias"][0])
    vw, vb = np.zeros(3), 0.0
    for step in range(4):
        gw, gb = numpy_grad(w, b)
        vw, vb = 0.9 * vw + gw + 0.01 * w, 0.9 * vb + gb   # biases are not decayed
        lr = 0.1 if step < 2 else 0.01
        w, b = w - lr * vw, b - lr * vb
    got = jax.device_get(state.params["head"])
    np.testing.assert_allclose(got["kernel"][:, 0], w, rtol=1e-5)
    np.testing.assert_allclose(got["bias"][0], b, rtol=1e-5)
    lrs = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_adam_with_the_noam_schedule_matches_the_formula(tmp_path):
    """The Transformer's Adam (0.9, 0.98, 1e-9) on lr = d^-0.5 min(s^-0.5, s w^-1.5)."""
    d, warmup = 16, 2
    state, model = affine_run(tmp_path, optimizer="adam", b1=0.9, b2=0.98, eps=1e-9,
                              schedule="noam", lr=1.0, warmup_steps=warmup, noam_width=d)
    p = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]["head"])
    theta = np.concatenate([p["kernel"][:, 0], p["bias"]]).astype(np.float64)
    m, v = np.zeros(4), np.zeros(4)
    for s in range(1, 5):
        g = np.concatenate(numpy_grad(theta[:3], theta[3]), axis=None)
        m, v = 0.9 * m + 0.1 * g, 0.98 * v + 0.02 * g ** 2
        m_hat, v_hat = m / (1 - 0.9 ** s), v / (1 - 0.98 ** s)
        lr = d ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)
        theta -= lr * m_hat / (np.sqrt(v_hat) + 1e-9)
    got = jax.device_get(state.params["head"])
    np.testing.assert_allclose(np.concatenate([got["kernel"][:, 0], got["bias"]]), theta,
                               rtol=1e-5)


# ------------------------------------------------------------------------------- init_from

def test_init_from_loads_a_subset_and_names_what_does_not_fit(tmp_path):
    source, _ = (fit(config_of(steps=3), workdir=tmp_path / "src", **task(Net())), None)
    src = jax.device_get(source.params)
    # A new head (3 outputs) keeps its fresh initialisation; body and bn come from the source
    # and stay frozen (BatchNorm's statistics too): transfer learning.
    config = config_of(steps=1, freeze="body/.*|bn/.*")
    config.init_from, config.init_from_regex = str(tmp_path / "src"), "(?!head/).*"
    state = fit(config, workdir=tmp_path / "dst", **task(Net(outputs=3)))
    got = jax.device_get(state.params)
    np.testing.assert_array_equal(got["body"]["kernel"], src["body"]["kernel"])
    np.testing.assert_array_equal(
        jax.device_get(state.model_state)["batch_stats"]["bn"]["var"],
        jax.device_get(source.model_state)["batch_stats"]["bn"]["var"])
    assert got["head"]["kernel"].shape == (4, 3)
    # Everything, into a wider body: every misfit is named, and nothing is written.
    config = config_of(steps=1)
    config.init_from = str(tmp_path / "src")
    with pytest.raises(ValueError) as e:
        fit(config, workdir=tmp_path / "bad", **task(Net(width=5, outputs=3)))
    for text in ("mis-shaped body/kernel", "mis-shaped head/kernel", "batch_stats/bn/mean"):
        assert text in str(e.value)
    assert not (tmp_path / "bad" / "checkpoints").exists()


# ------------------------------------------------------------------------------- evaluators

EVAL_WORKER = r"""
import os, sys, json
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn
if len(sys.argv) > 2:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
from experiments.configs import common
from train import evaluators, sharding
from train.trainer import build

config = common.base_config()
config.train = common.train_config(batch_size=8, eval_steps=0)
config.evals.val = common.eval_spec(type="accuracy", split="val", topk=(1, 3))
model = nn.Dense(5)
rng = np.random.default_rng(1)
x, labels = rng.normal(size=(37, 6)).astype(np.float32), rng.integers(0, 5, 37)
p, P = jax.process_index(), jax.process_count()

def batches():   # ordered, the last batch padded with weight 0, this process's rows
    for start in range(0, 37, 8):
        rows = np.resize(np.arange(start, min(start + 8, 37)), 8)
        w = (np.arange(8) < 37 - start).astype(np.float32)
        mine = slice(p * 8 // P, (p + 1) * 8 // P)
        yield {"x": x[rows[mine]], "labels": labels[rows[mine]], "weights": w[mine]}

mesh = sharding.make_mesh(config.mesh)
program = build(config, init_fn=lambda r: model.init(r, jnp.zeros((1, 6))),
                loss_fn=lambda params, s, b, r: (0.0, ({}, s)), mesh=mesh)
with jax.set_mesh(mesh):
    state = program.init(jax.random.key(0))
    suite = evaluators.build(config, evaluators.Context(
        program=program, data={"val": batches},
        predict_fn=lambda params, s, b: model.apply({"params": params}, b["x"])))
    out = suite.run(state, 0)["val"]
logits = np.asarray(model.apply({"params": jax.device_get(state.params)}, x))
ref = float(np.mean(np.argmax(logits, -1) == labels))
print(json.dumps(dict(out, devices=jax.device_count(), reference=ref)))
"""


def eval_worker(devices, *dist):
    env = simulated_devices_env(devices)
    return subprocess.Popen([sys.executable, "-c", EVAL_WORKER, *dist], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_accuracy_is_the_same_on_one_and_eight_devices_and_two_processes():
    one, eight = result(eval_worker(1)), result(eval_worker(8))
    port = free_port()
    two = [eval_worker(2, f"127.0.0.1:{port}", "2", str(i)) for i in range(2)]
    two = [result(p) for p in two]
    assert one["devices"] == 1 and eight["devices"] == 8 and two[0]["devices"] == 4
    assert one["accuracy"] == one["reference"]          # padding rows count for nothing
    for r in (eight, *two):
        assert (r["accuracy"], r["top1"], r["top3"]) == (one["accuracy"], one["top1"],
                                                         one["top3"])
    assert one["top3"] >= one["top1"]


def test_zero_steps_evaluates_the_init_from_weights(tmp_path):
    """train.steps=0: the evaluators measure the weights init_from loaded (e.g. CLIP's zero-shot
    and linear probe of another run's or an imported model), and nothing trains."""
    source = fit(config_of(steps=3), workdir=tmp_path / "src", **task(Net()))
    config = config_of(steps=0)
    config.init_from = str(tmp_path / "src")
    config.evals.test = common.eval_spec(type="loss", split="test", every=0)
    state = fit(config, workdir=tmp_path / "eval", data={"test": lambda: iter([{"x": X, "y": Y}])},
                **task(Net()))
    np.testing.assert_array_equal(jax.device_get(state.params["head"]["kernel"]),
                                  jax.device_get(source.params["head"]["kernel"]))
    rows = read_metrics(tmp_path / "eval")
    assert [(r["step"], r["split"]) for r in rows] == [(0, "test")] and rows[0]["loss"] > 0
    assert (tmp_path / "eval" / "checkpoints" / "0").is_dir()
