"""What experiments.benchmark measures, one workload per experiment family (the config file's
EXPERIMENT): our jitted steps on fixed random inputs, and the same work in PyTorch for the peer
process.

A workload has phases, each timed on both sides: "train" (the trainer's own step from
train.trainer.build: forward, backward, optimiser update, the non-finite guard) and, where it
has one, "infer" (an eval-mode forward). It provides

    unit, units_per_step, flops          what a step is worth ({phase: FLOPs per unit})
    info(), describe()                   the settings, for the JSON line and the table's header
    ours(mesh) -> {phase: step}          compiled steps: step() runs one, .compile_s, .memory
    input_pipeline(mesh, batches)        the experiment's batching alone, put on the devices
    peer_spec(on_gpu, compiled)          the settings of the same work in PyTorch (JSON), which
                                         bench_peers.STEPS[EXPERIMENT] builds in the peer process
"""

import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from data.iterators import ArrayBatches
from data.text import PackedWindows
from experiments.classify_images import build_model, classify_loss_fn
from experiments.pretrain_lm import lm_loss_fn, model_config
from models import convnets, gpt
from train import perf, sharding
from train.trainer import build, global_batch


# ------------------------------------------------------------------------- shared pieces

def compiled_memory(compiled) -> dict:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    return {"step_arguments_bytes": int(analysis.argument_size_in_bytes),
            "step_temp_bytes": int(analysis.temp_size_in_bytes),
            "step_output_bytes": int(analysis.output_size_in_bytes)}


class TrainStep:
    """The trainer's jitted step on one fixed batch (this process's rows), the state carried
    from step to step as in training."""

    def __init__(self, config, init_fn, loss_fn, mesh, local_batch: dict):
        program = build(config, init_fn=init_fn, loss_fn=loss_fn, mesh=mesh)
        with jax.set_mesh(mesh):
            self.state = program.init(jax.random.key(config.seed))
            self.batch = global_batch(local_batch, program.batch_sharding)
            t0 = time.perf_counter()
            self.step = program.train_step.lower(self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - t0
        self.memory = compiled_memory(self.step)

    def __call__(self):
        self.state, metrics = self.step(self.state, self.batch)
        return metrics


class InferStep:
    """predict(params, model_state, inputs) jitted as the trainer compiles, on the training
    step's current parameters and batch."""

    def __init__(self, train: TrainStep, predict, key: str):
        self.train, self.key = train, key
        options = perf.compiler_options(jax.devices()[0].platform)
        s = train.state
        t0 = time.perf_counter()
        self.step = jax.jit(predict, compiler_options=options).lower(
            s.params, s.model_state, train.batch[key]).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = compiled_memory(self.step)

    def __call__(self):
        s = self.train.state
        return self.step(s.params, s.model_state, self.train.batch[self.key])


def time_batches(data, mesh, batches: int) -> float:
    """Seconds per batch of an iterator, each put on the devices."""
    put = sharding.batch_sharding(mesh)
    jax.block_until_ready(global_batch(next(data), put))
    t0 = time.perf_counter()
    for _ in range(batches):
        jax.block_until_ready(global_batch(next(data), put))
    return (time.perf_counter() - t0) / batches


def train_spec(config, on_gpu: bool, compiled: bool, dtype: str) -> dict:
    t = config.train
    return dict(train={k: t[k] for k in ("optimizer", "lr", "b1", "b2", "eps", "momentum",
                                          "nesterov", "weight_decay", "grad_clip")},
                batch=t.batch_size, threads=len(os.sched_getaffinity(0)), compile=compiled,
                device="cuda" if on_gpu else "cpu", dtype=dtype)


# ---------------------------------------------------------------------------- GPT (LM)

class GPTWorkload:
    """pretrain_lm: the GPT step on one batch of token windows; the peer is transformers'
    GPT2LMHeadModel of the same dimensions. FLOPs per token: 6 N + 12 L d_attn T
    (models.gpt.flops_per_token)."""

    unit, phases = "token", ("train",)

    def __init__(self, config):
        self.config, self.cfg = config, model_config(config)
        self.seq_len, self.batch = config.data.seq_len, config.train.batch_size
        self.units_per_step = self.batch * self.seq_len
        self.flops = {"train": gpt.flops_per_token(self.cfg, self.seq_len)}

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batch": self.batch,
                "seq_len": self.seq_len, "dtype": self.cfg.dtype,
                "flops_per_token": self.flops["train"]}

    def describe(self) -> str:
        return (f"batch {self.batch} x {self.seq_len} tokens, {self.cfg.dtype}; "
                f"{self.flops['train'] / 1e6:.1f} MFLOP/token")

    def ours(self, mesh) -> dict:
        model = gpt.GPT(self.cfg)
        local = self.batch // jax.process_count()
        tokens = np.random.default_rng(jax.process_index()).integers(
            0, self.cfg.vocab_size, (local, self.seq_len + 1)).astype(np.int32)
        init = lambda rng: model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))  # noqa
        return {"train": TrainStep(self.config, init, lm_loss_fn(model), mesh,
                                   {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})}

    def input_pipeline(self, mesh, batches: int) -> dict:
        """PackedWindows batches from a memory-mapped token file."""
        n_tokens = max(4_000_000, 2 * self.batch * (self.seq_len + 1))
        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "tokens.npy"
            vocab = min(self.cfg.vocab_size, np.iinfo(np.uint16).max + 1)
            np.save(path, np.random.default_rng(0).integers(0, vocab, n_tokens).astype(np.uint16))
            # prefetch=0: the pipeline's own cost, not what a read-ahead thread hides of it.
            data = PackedWindows(np.load(path, mmap_mode="r"), self.seq_len, self.batch, seed=0,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), prefetch=0)
            return {"input_batch_ms": time_batches(data, mesh, batches) * 1e3}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        c = self.cfg
        return dict(train_spec(self.config, on_gpu, compiled, c.dtype), vocab_size=c.vocab_size,
                    n_ctx=c.n_ctx, n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model,
                    d_ff=c.ffn_dim, ln_eps=c.ln_eps, seq_len=self.seq_len)


# ------------------------------------------------------------------------------ ConvNets

class ConvNetWorkload:
    """classify_images: the step of experiments.classify_images (its classify_loss_fn, BatchNorm
    on the batch's statistics with the running averages in model_state, the config's optimiser)
    on one batch of random images, and the eval-mode forward. The peer is torchvision's model of
    the same name. FLOPs per image: XLA's count of the eval-mode forward
    (models.convnets.flops), training 3x that (the backward costs about twice the forward)."""

    unit, phases = "image", ("train", "infer")

    def __init__(self, config):
        self.config, m = config, config.model
        self.num_classes = m.num_classes or 1000
        self.model = build_model(config, self.num_classes)
        self.size, self.batch = config.data.image_size, config.train.batch_size
        self.dtype = getattr(self.model, "dtype", "float32")
        self.units_per_step = self.batch
        forward = convnets.flops(m.name, self.size, self.num_classes, 3, **m.overrides.to_dict())
        self.flops = {"train": 3 * forward, "infer": forward}

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batch": self.batch,
                "resolution": self.size, "dtype": self.dtype,
                "flops_per_image": self.flops["train"],
                "infer_flops_per_image": self.flops["infer"]}

    def describe(self) -> str:
        return (f"{self.config.model.name}, batch {self.batch} x {self.size}x{self.size} "
                f"images, {self.num_classes} classes, {self.dtype}; "
                f"{self.flops['infer'] / 1e9:.2f} GFLOP/image forward, 3x that in training")

    def images(self, n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {"images": rng.standard_normal((n, self.size, self.size, 3), np.float32),
                "labels": rng.integers(0, self.num_classes, n).astype(np.int32)}

    def ours(self, mesh) -> dict:
        model = self.model
        example = jnp.zeros((1, self.size, self.size, 3), jnp.float32)
        init = lambda rng: model.init(rng, example, train=False)  # noqa: E731
        train = TrainStep(self.config, init, classify_loss_fn(model), mesh,
                          self.images(self.batch // jax.process_count(), jax.process_index()))

        def predict(params, model_state, images):
            return model.apply({"params": params, **model_state}, images, train=False)
        return {"train": train, "infer": InferStep(train, predict, "images")}

    def input_pipeline(self, mesh, batches: int) -> dict:
        """ArrayBatches over images held in memory, as classify_images batches its splits."""
        data = ArrayBatches(self.images(4 * self.batch, 0), self.batch, seed=0, prefetch=0,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
        return {"input_batch_ms": time_batches(data, mesh, batches) * 1e3}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        m = self.config.model
        if convnets.REGISTRY[m.name].family is None:
            raise ValueError(f"--peer needs a model torchvision has; {m.name} has no "
                             f"counterpart there")
        other = sorted(set(m.overrides.to_dict()) - {"dtype"})
        if other:
            raise ValueError(f"--peer builds torchvision's {m.name} as it is; the overrides "
                             f"{other} would make the two models differ")
        # channels_last: cuDNN's fast layout (torch's default NCHW costs transposes there).
        return dict(train_spec(self.config, on_gpu, compiled, self.dtype), model=m.name,
                    num_classes=self.num_classes, size=self.size, channels_last=on_gpu)


WORKLOADS = {"pretrain_lm": GPTWorkload, "classify_images": ConvNetWorkload}
