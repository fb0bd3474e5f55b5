"""What experiments.benchmark measures, one workload per experiment family (the config file's
EXPERIMENT): our jitted steps on fixed random inputs, and the same work in PyTorch for the peer
process.

A workload has phases, each timed on both sides: "train" (the trainer's own step from
train.trainer.build: forward, backward, optimiser update, the non-finite guard) and, where it
has one, "infer" (an eval-mode forward). It provides

    unit, units_per_step, flops          what a step is worth ({phase: units}, {phase: FLOPs
                                         per unit}); the first phase is the headline, its
                                         result keys unprefixed
    info(), describe(), note()           the settings, for the JSON line and the table
    ours(mesh) -> {phase: step}          compiled steps: step() runs one, .compile_s, .memory
    input_pipeline(mesh, batches)        the experiment's batching alone, put on the devices
    peer_spec(on_gpu, compiled)          the settings of the same work in PyTorch (JSON), which
                                         bench_peers.STEPS[workload] builds in the peer process

The config's bench.workload picks one by name where it is set ("decode": cached generation,
DecodeWorkload); otherwise the config file's EXPERIMENT does.
"""

import functools
import os
import pathlib
import tempfile
import time

import flax
import jax
import numpy as np

from data import augment, images
from data.iterators import ArrayBatches
from data.text import PackedWindows
from experiments import classify_images, pretrain_lm, translate
from models import convnets, gpt, transformer
from models import decode as decoding
from train import perf, sharding
from train.sharding import global_batch
from train.trainer import build


# ------------------------------------------------------------------------- shared pieces

class Workload:
    """Defaults: training and inference phases, an input pipeline, the units of each phase."""

    titles = {"train": "training step", "infer": "inference (eval-mode forward)"}
    has_input_pipeline = True
    steps_per_call = 0      # > 0: a timed call runs that many sequential steps (ms per step)
    bytes = {}              # {phase: least bytes a timed call moves} where memory bounds it

    def note(self) -> str:
        return ""


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

    def __init__(self, config, built, mesh, local_batch: dict):
        program = build(config, init_fn=built.init_fn, loss_fn=built.loss_fn, mesh=mesh)
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

class GPTWorkload(Workload):
    """pretrain_lm: the GPT step on one batch of token windows; the peer is transformers'
    GPT2LMHeadModel of the same dimensions. FLOPs per token: 6 N + 12 L d_attn T
    (models.gpt.flops_per_token)."""

    unit, phases = "token", ("train",)

    def __init__(self, config):
        self.config, self.built = config, pretrain_lm.build(config)
        self.cfg = self.built.cfg
        self.seq_len, self.batch = config.data.seq_len, config.train.batch_size
        self.units_per_step = {"train": self.batch * self.seq_len}
        self.flops = {"train": self.built.flops}

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batch": self.batch,
                "seq_len": self.seq_len, "dtype": self.cfg.dtype,
                "flops_per_token": self.flops["train"]}

    def describe(self) -> str:
        return (f"batch {self.batch} x {self.seq_len} tokens, {self.cfg.dtype}; "
                f"{self.flops['train'] / 1e6:.1f} MFLOP/token")

    def ours(self, mesh) -> dict:
        local = self.batch // jax.process_count()
        tokens = np.random.default_rng(jax.process_index()).integers(
            0, self.cfg.vocab_size, (local, self.seq_len + 1)).astype(np.int32)
        return {"train": TrainStep(self.config, self.built, mesh,
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

class ConvNetWorkload(Workload):
    """classify_images: the step of experiments.classify_images (its classify_loss_fn, BatchNorm
    on the batch's statistics with the running averages in model_state, the config's optimiser)
    on one batch of random images, and the eval-mode forward. The peer is torchvision's model of
    the same name. FLOPs per image: XLA's count of the eval-mode forward
    (classify_images.build), training 3x that.
    Images have the data source's channels (1 for the digits, else 3); the input pipeline runs
    config.data.augment's ops, so its time per batch says whether augmenting keeps up."""

    unit, phases = "image", ("train", "infer")

    def __init__(self, config):
        self.config, self.built = config, classify_images.build(config)
        self.model = self.built.model
        self.num_classes = classify_images.default_classes(config)
        self.size, self.batch = config.data.image_size, config.train.batch_size
        self.channels = classify_images.default_channels(config)
        self.dtype = getattr(self.model, "dtype", "float32")
        self.units_per_step = {"train": self.batch, "infer": self.batch}
        self.flops = {"train": self.built.flops, "infer": self.built.infer_flops}

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batch": self.batch,
                "resolution": self.size, "dtype": self.dtype,
                "flops_per_image": self.flops["train"],
                "infer_flops_per_image": self.flops["infer"]}

    def describe(self) -> str:
        augment = self.config.data.augment
        return (f"{self.config.model.name}, batch {self.batch} x {self.size}x{self.size}x"
                f"{self.channels} images, {self.num_classes} classes, {self.dtype}; "
                f"{self.flops['infer'] / 1e9:.2f} GFLOP/image forward, 3x that in training"
                + (f"; input augmented by {augment!r}" if augment else ""))

    def images(self, n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {"images": rng.standard_normal((n, self.size, self.size, self.channels),
                                              np.float32),
                "labels": rng.integers(0, self.num_classes, n).astype(np.int32)}

    def ours(self, mesh) -> dict:
        train = TrainStep(self.config, self.built, mesh,
                          self.images(self.batch // jax.process_count(), jax.process_index()))

        def predict(params, model_state, images):
            return self.built.predict_fn(params, model_state, {"images": images})
        return {"train": train, "infer": InferStep(train, predict, "images")}

    def input_batches(self) -> ArrayBatches:
        """ArrayBatches over images held in memory, as classify_images batches its splits,
        through the config's augmentation ops (each example's own draws, then one jitted run),
        without a prefetch thread: what one batch costs."""
        examples = self.images(4 * self.batch, 0)
        data = ArrayBatches(examples, self.batch, seed=0, prefetch=0,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
        mean, std = ((images.MNIST_MEAN, images.MNIST_STD) if self.channels == 1
                     else (images.IMAGENET_MEAN, images.IMAGENET_STD))
        pixels = lambda: np.clip(examples["images"] * std + mean, 0, 1)  # noqa: E731
        return augment.augment_batches(data, augment.parse(self.config.data.augment, mean=mean,
                                                           std=std, train_pixels=pixels))

    def input_pipeline(self, mesh, batches: int) -> dict:
        return {"input_batch_ms": time_batches(self.input_batches(), mesh, batches) * 1e3}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        m = self.config.model
        if convnets.REGISTRY[m.name].family is None:
            raise ValueError(f"--peer needs a model torchvision has; {m.name} has no "
                             f"counterpart there")
        if self.channels != 3:
            raise ValueError(f"--peer builds torchvision's {m.name} for RGB images; data.source "
                             f"{self.config.data.source!r} has {self.channels} channel(s)")
        other = sorted(set(m.overrides.to_dict()) - {"dtype"})
        if other:
            raise ValueError(f"--peer builds torchvision's {m.name} as it is; the overrides "
                             f"{other} would make the two models differ")
        # channels_last: cuDNN's fast layout (torch's default NCHW costs transposes there).
        return dict(train_spec(self.config, on_gpu, compiled, self.dtype), model=m.name,
                    num_classes=self.num_classes, size=self.size, channels_last=on_gpu)


# ------------------------------------------------------------------- GPT cached decoding

def batch_phases(bench, title: str, **lengths) -> tuple[tuple, tuple, dict]:
    """A decoding workload's phases, one per batch size in bench.batches: (batches, phases
    "batch<n>", titles); the batch sizes and `lengths` must be positive, the sizes distinct."""
    batches = tuple(int(n) for n in bench.batches)
    if not batches or min(batches) < 1 or min(lengths.values()) < 1:
        named = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise ValueError(f"config.bench: batches {bench.batches}, {named} must all be positive")
    phases = tuple(f"batch{n}" for n in batches)
    if len(set(phases)) != len(phases):
        raise ValueError(f"config.bench.batches {bench.batches} repeats a batch size")
    return batches, phases, {p: f"{title}, batch {n}" for p, n in zip(phases, batches)}


class GenerateCall:
    """One whole models.gpt.generate_batch call (prefill, then the cached decoding loop inside
    jit, tokens back on the host) on fixed prompts. The first call compiles: compile_s is its
    time, one run included."""

    def __init__(self, cfg, params, prompts: list, new_tokens: int):
        self.cfg, self.params, self.prompts, self.new_tokens = cfg, params, prompts, new_tokens
        t0 = time.perf_counter()
        rows = self()
        self.compile_s, self.memory = time.perf_counter() - t0, {}
        # Greedy without stop tokens: every row runs all the steps (what the rates count).
        if [len(r) for r in rows] != [new_tokens] * len(prompts):
            raise RuntimeError(f"generate_batch returned rows of {[len(r) for r in rows]} "
                               f"tokens, not {new_tokens} each")

    def __call__(self):
        return gpt.generate_batch(self.cfg, self.params, self.prompts, self.new_tokens,
                                  jax.random.key(0), temperature=0.0)


class DecodeWorkload(Workload):
    """bench.workload = "decode": greedy cached generation with models.gpt.generate_batch, a
    phase per batch size in bench.batches (the first is the headline), every row continuing
    the same bench.prompt_len random prompt tokens by bench.new_tokens tokens. The peer is
    transformers' GPT2LMHeadModel.generate (greedy, use_cache) on the same prompts. The two
    sides' weights are independent random inits, so their tokens are not compared here
    (tests/test_generate.py checks them against transformers on shared weights).

    Tokens/s counts generated tokens (batch x new_tokens) per second of a whole call, prefill
    included. FLOPs per generated token: models.gpt.decode_flops_per_token."""

    unit = "token"
    has_input_pipeline = False

    def __init__(self, config):
        # no training windows: the model alone (pretrain_lm.build checks data.seq_len too)
        self.config, self.cfg, b = config, pretrain_lm.model_config(config), config.bench
        self.prompt_len, self.new_tokens = b.prompt_len, b.new_tokens
        self.batches, self.phases, self.titles = batch_phases(
            b, "generate", prompt_len=b.prompt_len, new_tokens=b.new_tokens)
        gpt.check_context(self.cfg, self.prompt_len, self.new_tokens)
        self.steps_per_call = self.new_tokens
        self.units_per_step = {p: n * self.new_tokens for p, n in zip(self.phases, self.batches)}
        per_token = gpt.decode_flops_per_token(self.cfg, self.prompt_len, self.new_tokens)
        self.flops = {p: per_token for p in self.phases}
        # Each decoding step reads every weight once and each row's cached keys and values.
        self.bytes = {p: self.new_tokens * gpt.decode_bytes_per_step(
                          self.cfg, n, self.prompt_len, self.new_tokens)
                      for p, n in zip(self.phases, self.batches)}
        self.prompts = np.random.default_rng(0).integers(
            0, self.cfg.vocab_size, (max(self.batches), self.prompt_len)).tolist()

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batches": list(self.batches),
                "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
                "dtype": self.cfg.dtype, "flops_per_token": self.flops[self.phases[0]],
                "greedy": True}

    def describe(self) -> str:
        return (f"greedy generation, {self.prompt_len}-token prompt + {self.new_tokens} new "
                f"tokens per row, {self.cfg.dtype}; {self.flops[self.phases[0]] / 1e6:.1f} "
                f"MFLOP/generated token (2N + attention)")

    def note(self) -> str:
        return ("tokens/s: generated tokens (batch x new tokens) per second of a whole generate "
                "call, prefill included; ms/token: a call's time per new token. Random weights "
                "on each side: the two sides' tokens are not compared here.")

    def ours(self, mesh) -> dict:
        del mesh    # one device: generate_batch runs where JAX puts it
        params = gpt.GPT(self.cfg).init(jax.random.key(self.config.seed),
                                        np.zeros((1, self.prompt_len), np.int32))["params"]
        return {p: GenerateCall(self.cfg, params, self.prompts[:n], self.new_tokens)
                for p, n in zip(self.phases, self.batches)}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        if compiled:
            raise ValueError("the decode workload has no torch.compile peer; drop --peer_compile")
        c = self.cfg
        return dict(threads=len(os.sched_getaffinity(0)), compile=False,
                    device="cuda" if on_gpu else "cpu", dtype=c.dtype, vocab_size=c.vocab_size,
                    n_ctx=c.n_ctx, n_layer=c.n_layer, n_head=c.n_head, d_model=c.d_model,
                    d_ff=c.ffn_dim, ln_eps=c.ln_eps, prompts=self.prompts,
                    batches=dict(zip(self.phases, self.batches)), new_tokens=self.new_tokens)


# ----------------------------------------------------------- the Transformer (translation)

def translation_batch(cfg: transformer.TransformerConfig, batch: int, src_len: int,
                      tgt_len: int, seed: int) -> dict:
    """Random sentence pairs without padding (tokens 1 .. vocab - 1, pad_id 0 excluded); the
    decoder's input is the target shifted right behind pad_id, Marian's decoder start token."""
    if cfg.pad_id != 0:
        raise ValueError(f"the benchmark's random pairs assume pad_id 0, not {cfg.pad_id}")
    rng = np.random.default_rng(seed)
    src = rng.integers(1, cfg.vocab_size, (batch, src_len)).astype(np.int32)
    tgt = rng.integers(1, cfg.vocab_size, (batch, tgt_len)).astype(np.int32)
    tgt_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt,
            "weights": np.ones((batch, tgt_len), np.float32), "index": np.arange(batch, dtype=np.int32)}


class TranslationWorkload(Workload):
    """translate: the Transformer's training step (label-smoothed cross-entropy, the config's
    Adam) on one batch of random sentence pairs of bench.src_len and bench.tgt_len tokens; the
    peer is transformers' MarianMTModel configured as the paper's Transformer (post-norm, ReLU,
    embeddings shared and scaled by sqrt(d_model), sinusoidal positions) of the same sizes.
    Tokens are target tokens (the positions the loss counts); FLOPs per target token:
    models.transformer.flops_per_token."""

    unit, phases = "token", ("train",)
    has_input_pipeline = False

    def __init__(self, config):
        b = config.bench
        self.config, self.built = config, translate.build(config, b.src_len, b.tgt_len)
        self.cfg = self.built.cfg
        self.batch, self.src_len, self.tgt_len = config.train.batch_size, b.src_len, b.tgt_len
        if max(self.src_len, self.tgt_len) > self.cfg.max_len or min(self.src_len,
                                                                      self.tgt_len) < 1:
            raise ValueError(f"config.bench: src_len {self.src_len} and tgt_len {self.tgt_len} "
                             f"must be between 1 and the model's max_len {self.cfg.max_len}")
        self.units_per_step = {"train": self.batch * self.tgt_len}
        self.flops = {"train": self.built.flops}

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batch": self.batch,
                "src_len": self.src_len, "tgt_len": self.tgt_len, "dtype": self.cfg.dtype,
                "label_smoothing": self.config.label_smoothing,
                "flops_per_token": self.flops["train"]}

    def describe(self) -> str:
        c = self.cfg
        return (f"Transformer {c.n_layer}+{c.n_layer} layers x {c.d_model}, vocab "
                f"{c.vocab_size}; batch {self.batch} x ({self.src_len} source + {self.tgt_len} "
                f"target tokens), {c.dtype}; {self.flops['train'] / 1e6:.1f} MFLOP/target token")

    def ours(self, mesh) -> dict:
        local = self.batch // jax.process_count()
        batch = translation_batch(self.cfg, local, self.src_len, self.tgt_len,
                                  jax.process_index())
        return {"train": TrainStep(self.config, self.built, mesh, batch)}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        spec = train_spec(self.config, on_gpu, compiled, self.cfg.dtype)
        t = self.config.train
        if t.schedule == "noam":   # the peer's constant rate: the peak, at the end of warmup
            spec["train"]["lr"] = t.lr * t.noam_width ** -0.5 * max(t.warmup_steps, 1) ** -0.5
        return dict(spec, **marian_spec(self.cfg), label_smoothing=self.config.label_smoothing,
                    src_len=self.src_len, tgt_len=self.tgt_len)


def marian_spec(cfg: transformer.TransformerConfig) -> dict:
    """What bench_peers needs to build the MarianMTModel twin of cfg."""
    if (cfg.norm, cfg.act, cfg.positions, cfg.scale_embedding) != ("post", "relu",
                                                                    "sinusoidal", True):
        raise ValueError("the Marian peer is the paper's Transformer (post-norm, relu, "
                         "sinusoidal positions, scaled embeddings); this config differs")
    return dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer,
                n_head=cfg.n_head, d_ff=cfg.d_ff, max_len=cfg.max_len, pad_id=cfg.pad_id)


@functools.partial(jax.jit, static_argnames=("cfg", "new_tokens"))
def greedy_all_steps(cfg, params, src_tokens, new_tokens: int):
    """transformer.greedy_decode's loop without a stop token: every row runs all new_tokens
    steps (the encoder, the BOS prefill, then new_tokens - 1 cached decoder steps)."""
    logits, cache, step = transformer.prefill(cfg, params, src_tokens, new_tokens, cfg.pad_id,
                                              eos_id=-1)
    return decoding.sample(logits, cache, step, num_steps=new_tokens, pad_id=cfg.pad_id)[0]


def translate_all_steps(cfg, params, src_tokens, new_tokens: int, beam_size: int = 1,
                        alpha: float = 0.6):
    """Greedy decoding, or transformer.beam_search, without a stop token (eos -1): every row
    runs all new_tokens steps, as the peer's generate with min_new_tokens = max_new_tokens."""
    if beam_size == 1:
        return greedy_all_steps(cfg, params, src_tokens, new_tokens)
    return transformer.beam_search(cfg, params, src_tokens, beam_size, alpha,
                                   max_len=new_tokens, bos_id=cfg.pad_id, eos_id=-1)


class TranslateCall:
    """One translation of fixed sources (greedy or beam search), tokens back on the host; the
    first call compiles (compile_s includes one run)."""

    def __init__(self, cfg, params, src: np.ndarray, new_tokens: int, beam_size: int = 1,
                 alpha: float = 0.6):
        self.cfg, self.params, self.src, self.new_tokens = cfg, params, src, new_tokens
        self.beam_size, self.alpha = beam_size, alpha
        t0 = time.perf_counter()
        tokens = self()
        self.compile_s, self.memory = time.perf_counter() - t0, {}
        if tokens.shape != (len(src), new_tokens):
            raise RuntimeError(f"decoding returned {tokens.shape} tokens")

    def __call__(self):
        return np.asarray(translate_all_steps(self.cfg, self.params, self.src, self.new_tokens,
                                              self.beam_size, self.alpha))


class TranslationDecodeWorkload(Workload):
    """bench.workload = "translate_decode": decoding with the key/value cache, greedy or (with
    bench.beam_size > 1) beam search with GNMT's length penalty bench.alpha, a phase per batch
    size in bench.batches, each row translating a random source of bench.src_len tokens into
    exactly bench.new_tokens tokens. The peer is MarianMTModel.generate (num_beams =
    beam_size, use_cache, min_new_tokens = max_new_tokens). Random weights on each side: the
    tokens are not compared here (tests/test_transformer.py compares them on shared weights).

    Tokens/s: output tokens per second of a whole call (batch x new_tokens), the encoder and
    prefill included. FLOPs per output token: models.transformer.decode_flops_per_token (the
    decoder's forward for each of the beam_size hypotheses)."""

    unit = "token"
    has_input_pipeline = False

    def __init__(self, config):
        self.config, self.built, b = config, translate.build(config), config.bench
        self.cfg = self.built.cfg
        self.src_len, self.new_tokens = b.src_len, b.new_tokens
        self.beam_size, self.alpha = int(b.get("beam_size", 1)), float(b.get("alpha", 0.6))
        self.search = "greedy" if self.beam_size == 1 else f"beam-{self.beam_size}"
        if self.beam_size < 1:
            raise ValueError(f"config.bench.beam_size must be >= 1, got {self.beam_size}")
        self.batches, self.phases, self.titles = batch_phases(
            b, f"{self.search} translation", src_len=b.src_len, new_tokens=b.new_tokens)
        if max(b.src_len, b.new_tokens) > self.cfg.max_len:
            raise ValueError(f"config.bench: src_len {b.src_len} and new_tokens "
                             f"{b.new_tokens} must fit the model's max_len {self.cfg.max_len}")
        self.steps_per_call = self.new_tokens
        self.units_per_step = {p: n * self.new_tokens for p, n in zip(self.phases, self.batches)}
        per_token = transformer.decode_flops_per_token(self.cfg, self.src_len, self.new_tokens,
                                                       self.beam_size)
        self.flops = {p: per_token for p in self.phases}
        self.src = translation_batch(self.cfg, max(self.batches), self.src_len, 1, 0)["src"]

    def info(self) -> dict:
        return {"config": self.config.model.to_dict(), "batches": list(self.batches),
                "src_len": self.src_len, "new_tokens": self.new_tokens, "dtype": self.cfg.dtype,
                "flops_per_token": self.flops[self.phases[0]], "greedy": self.beam_size == 1,
                "beam_size": self.beam_size, "alpha": self.alpha}

    def describe(self) -> str:
        return (f"{self.search} translation, {self.src_len}-token source -> "
                f"{self.new_tokens} tokens per row, {self.cfg.dtype}; "
                f"{self.flops[self.phases[0]] / 1e6:.1f} MFLOP/output token (decoder forward"
                f"{', every hypothesis' if self.beam_size > 1 else ''})")

    def note(self) -> str:
        return ("tokens/s: generated tokens (batch x new tokens) per second of a whole call, "
                "encoder and prefill included; ms/token: a call's time per new token. Random "
                "weights on each side: the two sides' tokens are not compared here.")

    def ours(self, mesh) -> dict:
        del mesh    # one device
        params = flax.core.meta.unbox(
            self.built.init_fn(jax.random.key(self.config.seed))["params"])
        return {p: TranslateCall(self.cfg, params, self.src[:n], self.new_tokens,
                                 self.beam_size, self.alpha)
                for p, n in zip(self.phases, self.batches)}

    def peer_spec(self, on_gpu: bool, compiled: bool) -> dict:
        if compiled:
            raise ValueError("the decode workload has no torch.compile peer; drop --peer_compile")
        if self.cfg.dtype != "float32":
            raise ValueError(f"the decode peer runs in float32; ours is {self.cfg.dtype}")
        return dict(threads=len(os.sched_getaffinity(0)), compile=False,
                    device="cuda" if on_gpu else "cpu", dtype=self.cfg.dtype,
                    **marian_spec(self.cfg), src=self.src.tolist(),
                    batches=dict(zip(self.phases, self.batches)), new_tokens=self.new_tokens,
                    beam_size=self.beam_size, alpha=self.alpha)


WORKLOADS = {"pretrain_lm": GPTWorkload, "classify_images": ConvNetWorkload,
             "decode": DecodeWorkload, "translate": TranslationWorkload,
             "translate_decode": TranslationDecodeWorkload}
