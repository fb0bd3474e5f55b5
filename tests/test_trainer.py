"""The trainer's contracts: schedule values, exact resume, signals, the non-finite guard,
configuration errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from experiments.configs import common, gpt as gpt_configs
from train import optim
from train.logging import read_metrics
from train.trainer import NonFiniteError, fit

ROOT = pathlib.Path(__file__).resolve().parents[1]


def noam(step, d=512, warmup=4000):
    return d ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def schedule_of(**train):
    return optim.make_schedule(common.train_config(**train))


def test_noam_schedule_values():
    """Vaswani et al. eq. (3), the width from train.noam_width."""
    schedule = schedule_of(schedule="noam", lr=1.0, warmup_steps=4000, noam_width=512)
    for step in (1, 100, 3999, 4000, 4001, 10_000, 100_000):   # optax counts from 0
        assert np.isclose(float(schedule(step - 1)), noam(step), rtol=1e-6)
    assert np.isclose(float(schedule(3999)), 512 ** -0.5 * 4000 ** -0.5, rtol=1e-6)  # the peak
    with pytest.raises(ValueError, match="noam_width"):
        schedule_of(schedule="noam", lr=1.0)


def test_warmup_cosine_values():
    schedule = schedule_of(schedule="cosine", lr=1e-3, warmup_steps=10, steps=110,
                           min_lr_ratio=0.1)
    assert float(schedule(0)) == 0.0
    assert np.isclose(float(schedule(5)), 5e-4)
    assert np.isclose(float(schedule(10)), 1e-3)
    assert np.isclose(float(schedule(60)), 1e-4 + 0.5 * 9e-4)   # half way down the cosine
    assert np.isclose(float(schedule(110)), 1e-4)


def test_step_linear_and_rsqrt_schedules():
    step = schedule_of(schedule="step", lr=0.1, warmup_steps=0, steps=100,
                       step_boundaries=(30, 60), step_factor=0.1)
    assert [round(float(step(s)), 6) for s in (0, 29, 30, 59, 60, 99)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    linear = schedule_of(schedule="linear", lr=1.0, warmup_steps=0, steps=11, min_lr_ratio=0.0)
    assert np.isclose(float(linear(5)), 1 - 5 / 11, rtol=1e-6)
    rsqrt = schedule_of(schedule="rsqrt", lr=2.0, warmup_steps=4)
    assert np.allclose([float(rsqrt(s)) for s in (0, 3, 15)], [0.5, 2.0, 2.0 * (4 / 16) ** 0.5])
    with pytest.raises(ValueError, match="step_boundaries"):
        schedule_of(schedule="step", lr=0.1, warmup_steps=10, step_boundaries=(5,))


def test_decay_multipliers_by_shape_then_regex():
    params = {"h_0": {"attn": {"qkv": {"kernel": np.zeros((4, 2, 3, 2)),
                                       "bias": np.zeros((2, 3, 2))}},
                      "ln_1": {"scale": np.zeros(4)}},
              "wte": {"embedding": np.zeros((9, 4))}, "class_embedding": np.zeros(4),
              "t": np.zeros(())}
    got = optim.wd_multipliers(params, ((".*class_embedding", 1.0), ("wte/.*", 0.5)))
    assert got == {"h_0": {"attn": {"qkv": {"kernel": 1.0, "bias": 0.0}}, "ln_1": {"scale": 0.0}},
                   "wte": {"embedding": 0.5}, "class_embedding": 1.0, "t": 0.0}
    trainable, frozen = optim.split_frozen(params, "wte/.*|h_0/ln_1/.*")
    assert set(optim.flat(frozen)) == {"wte/embedding", "h_0/ln_1/scale"}
    assert optim.merge(trainable, frozen).keys() == params.keys()


# ------------------------------------------------------------------ a small in-process problem

class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x)[..., 0]


class Batches:
    """y = x . w* + noise; batch i is poisoned (x * inf) when i is in `poison`."""

    def __init__(self, batch=8, poison=()):
        self.i, self.batch, self.poison = 0, batch, set(poison)

    def __next__(self):
        rng = np.random.default_rng(self.i)
        x = rng.normal(size=(self.batch, 4)).astype(np.float32)
        y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
        if self.i in self.poison:
            x = x * np.inf
        self.i += 1
        return {"x": x, "y": y}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def linear_config(**train):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict({"kind": "linear"})
    config.train = common.train_config(**{
        **dict(steps=30, batch_size=8, lr=0.1, schedule="constant", warmup_steps=0,
               weight_decay=0.0, log_every=1, eval_every=1000, ckpt_every=1000), **train})
    config.mesh = common.mesh_config()
    return config


def linear_task():
    model = Linear()
    def loss_fn(params, state, batch, rng):
        err = model.apply({"params": params}, batch["x"]) - batch["y"]
        return jnp.mean(err ** 2), ({}, state)
    init = lambda rng: model.init(rng, jnp.zeros((1, 4)))  # noqa: E731
    return init, loss_fn


def test_loss_falls_and_nonfinite_updates_are_skipped(tmp_path):
    init, loss_fn = linear_task()
    state = fit(linear_config(), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
                train_data=Batches(poison={3, 7}))
    rows = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]
    assert int(state.nonfinite_total) == 2
    assert rows[-1]["nonfinite_skipped"] == 2
    assert rows[3]["loss"] is None and rows[4]["nonfinite_run"] == 0  # step 4 = batch 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_many_nonfinite_in_a_row_stop_the_run(tmp_path):
    init, loss_fn = linear_task()
    with pytest.raises(NonFiniteError, match="in a row"):
        fit(linear_config(max_nonfinite=3), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
            train_data=Batches(poison=range(5, 100)))


@pytest.mark.parametrize("change,message", [
    (dict(batch_size=10, grad_accum=3), "not divisible by train.grad_accum"),
    (dict(steps=-1), "train.steps must be >= 0"),
    (dict(max_nonfinite=0), "train.max_nonfinite must be positive"),
])
def test_impossible_train_values(tmp_path, change, message):
    init, loss_fn = linear_task()
    with pytest.raises(ValueError, match=message):
        fit(linear_config(**change), init_fn=init, loss_fn=loss_fn, workdir=tmp_path,
            train_data=Batches())


def test_mesh_that_does_not_divide_the_devices(tmp_path):
    init, loss_fn = linear_task()
    config = linear_config()
    config.mesh.data = 3
    with pytest.raises(ValueError, match="does not divide"):
        fit(config, init_fn=init, loss_fn=loss_fn, workdir=tmp_path, train_data=Batches())


# ------------------------------------------------------------- the real experiment, as users run it

def corpus_flags(tmp_path) -> list[str]:
    """A tiny GPT on a few standard-library files, so each run takes seconds."""
    from data import sources
    root = sources.stdlib_root()   # explicit splits: a hash split of so few files may leave one empty
    files = f"train={root}/[a-b]*.py,val={root}/c[a-m]*.py,test={root}/c[n-z]*.py"
    return [f"--config.data.source=files", f"--config.data.files={files}",
            "--config.data.vocab_size=512", f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.seq_len=32", "--config.model.vocab_size=512",
            "--config.model.n_layer=2", "--config.model.d_model=64", "--config.model.n_head=2",
            "--config.train.batch_size=8", "--config.train.log_every=1",
            "--config.train.eval_steps=2", "--config.sample.num_tokens=4"]


def pretrain(workdir, *flags, wait=True):
    cmd = [sys.executable, "-m", "experiments.pretrain_lm", f"--workdir={workdir}", *flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def wait_for_checkpoint(workdir, step, proc, timeout=300):
    ckpt = pathlib.Path(workdir) / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not (ckpt.exists() and (ckpt / "_CHECKPOINT_METADATA").exists()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.01)


def test_sigkill_resume_is_bit_exact_and_sigterm_saves(tmp_path):
    flags = corpus_flags(tmp_path) + ["--config.train.steps=60", "--config.train.ckpt_every=20",
                                      "--config.train.eval_every=40"]
    full = pretrain(tmp_path / "full", *flags)
    assert full.returncode == 0, full.stdout + full.stderr
    assert "--- sample ---" in full.stdout
    want = train_losses(tmp_path / "full")
    assert sorted(want) == list(range(1, 61))
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["train"]["steps"] == 60 and config["model"]["n_layer"] == 2

    # SIGKILL once the step-20 checkpoint is on disk, then run the same command again.
    proc = pretrain(tmp_path / "killed", *flags, wait=False)
    wait_for_checkpoint(tmp_path / "killed", 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # SIGTERM during the resumed run: a checkpoint is written and the process exits cleanly.
    proc = pretrain(tmp_path / "killed", *flags, wait=False)
    wait_for_checkpoint(tmp_path / "killed", 40, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    if "SIGTERM at step" in out:   # (unless the run had already finished)
        assert "checkpoint saved" in out
    again = pretrain(tmp_path / "killed", *flags)
    assert again.returncode == 0, again.stdout + again.stderr
    got = train_losses(tmp_path / "killed")
    assert got == want   # every logged loss equal to the last bit


def test_config_errors_before_compiling(tmp_path):
    for flag, message in [("--config.train.no_such_key=1", "no_such_key"),
                          ("--config.train.steps=many", "steps"),
                          ("--config.data.seq_len=4096", "longer than the model's context")]:
        result = pretrain(tmp_path / "bad", flag)
        assert result.returncode != 0
        assert message in result.stderr + result.stdout, result.stderr[-2000:]
        assert not (tmp_path / "bad" / "checkpoints").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    flags = corpus_flags(tmp_path) + ["--config.train.steps=2", "--config.train.ckpt_every=2"]
    assert pretrain(tmp_path / "run", *flags).returncode == 0
    before = sorted((tmp_path / "run" / "checkpoints").iterdir())
    other = pretrain(tmp_path / "run", *flags, "--config.model.n_layer=3",
                     "--config.train.steps=4")
    assert other.returncode != 0
    assert "another run" in other.stderr and "model.n_layer" in other.stderr
    assert sorted((tmp_path / "run" / "checkpoints").iterdir()) == before  # nothing lost


def test_cpu_compile_options_change_speed_not_results(monkeypatch):
    """train.perf.compiler_options: valid for this jaxlib (on an AVX-512 host: oneDNN matmuls,
    512-bit vectors), an option the compiler does not know is dropped rather than failing the
    run, and a GPT step compiled with the options gives the losses of one compiled without."""
    from experiments.pretrain_lm import lm_loss_fn
    from models import gpt
    from train import perf, sharding, trainer

    config = gpt_configs.get_config("tiny")
    config.model.update(vocab_size=128, n_ctx=16, n_layer=2, n_head=2, d_model=32)
    mesh = sharding.make_mesh(config.mesh)
    if perf._cpu_has("avx512f"):
        assert perf.compiler_options("cpu") == dict(perf.CPU_OPTIONS)
    assert perf.compiler_options("gpu") == {}
    assert perf._if_accepted((("xla_cpu_no_such_option", 1),)) == {}

    model = gpt.GPT(gpt.GPTConfig(**config.model.to_dict()))
    tokens = np.random.default_rng(0).integers(0, 128, (config.train.batch_size, 17))

    def losses():
        program = trainer.build(config, init_fn=lambda rng: model.init(
            rng, jnp.zeros((1, 16), jnp.int32)), loss_fn=lm_loss_fn(model), mesh=mesh)
        with jax.set_mesh(mesh):
            state = program.init(jax.random.key(0))
            batch = sharding.global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                                         program.batch_sharding)
            out = []
            for _ in range(3):
                state, metrics = program.train_step(state, batch)
                out.append(float(metrics["loss"]))
        return out

    with_options = losses()
    monkeypatch.setattr(trainer, "compiler_options", lambda platform: {})
    np.testing.assert_allclose(with_options, losses(), rtol=1e-5)
    assert with_options[-1] < with_options[0]


def test_cpu_compile_options_survive_a_scaled_matmul():
    """A matmul fed by a broadcast multiply (LayerNorm's scale at inference) under the CPU
    options: oneDNN's fused-dot mode dies on it with an illegal instruction, so it runs in a
    subprocess, and must give numpy's value."""
    code = """
import numpy as np, jax, jax.numpy as jnp
from train import perf
r = np.random.default_rng(0)
x, g, w = r.standard_normal((272, 64)), r.standard_normal(64), r.standard_normal((64, 32))
f = jax.jit(lambda x, g, w: (x * g) @ w, compiler_options=perf.compiler_options("cpu"))
got = f(*(jnp.asarray(a, jnp.float32) for a in (x, g, w)))
np.testing.assert_allclose(got, (x * g) @ w, rtol=1e-4, atol=1e-4)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
