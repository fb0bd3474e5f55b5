"""Speed of the training step of a GPT preset, and of the same model in PyTorch.

    python -m experiments.benchmark --config=experiments/configs/gpt.py:bench-cpu [--peer]

Measures the trainer's own jitted step (train.trainer.build: sharded state, AdamW with clipping,
the non-finite guard) on a fixed batch: compile time, the median step time over many steps after
warm-up, tokens/s, MFU, memory; then the input pipeline alone (PackedWindows over a memory-mapped
token file, put on the devices), to show whether loading can keep up. With --peer it starts
transformers' GPT2LMHeadModel with the same dimensions, batch, context and AdamW in a second
process and alternates rounds of steps between the two, so both see the same machine load.

MFU = model FLOP/s / peak, with model FLOPs per token = 6 N + 12 L d_attn T (Kaplan et al.;
PaLM appendix B): N = non-embedding parameters plus the tied output projection V d (a matmul per
token all the same), the second term the attention scores and weighted sum over a context of T,
causal masking not discounted. Peak: on a CPU the best measured dense float32 matmul rate of all
its cores (square sizes 1024-2048, best of many runs, through XLA and, with --peer, through
PyTorch's BLAS too; the higher); on a known accelerator its datasheet dense bf16 rate. Step
times are wall-clock medians; "cpu" is the process CPU time per step over the cores, what the
step would take if nothing else ran. Both processes run with the host allocator kept warm
(train.perf.keep_host_memory). The last line printed is one JSON object.
"""

import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from data.text import PackedWindows
from experiments import launch
from experiments.pretrain_lm import lm_loss_fn, model_config
from models import gpt
from train import perf, sharding
from train.trainer import build, global_batch, validate

flags.DEFINE_bool("peer", False, "Also run transformers' GPT2LMHeadModel (PyTorch) and compare.")
flags.DEFINE_bool("peer_compile", False, "With --peer, also a torch.compile'd peer.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds (ours, then each peer).", lower_bound=1)
flags.DEFINE_integer("steps", 4, "Timed steps per round and side.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.", lower_bound=1)
flags.DEFINE_integer("input_batches", 200, "Batches for the input-pipeline measurement.",
                     lower_bound=1)
flags.DEFINE_string("profile_dir", "", "If set, also trace 3 of our steps there with "
                    "jax.profiler (TensorBoard / XProf format), after the timed rounds.")
FLAGS = flags.FLAGS


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measured_peak() -> float:
    """Best dense float32 matmul rate over sizes and repeats; a fresh measurement each call."""
    return perf.measure_matmul_flops(sizes=(1024, 1536, 2048), repeats=12)


# ------------------------------------------------------------------------- our training step

@dataclasses.dataclass
class Ours:
    step: object          # compiled train step
    state: object
    batch: dict
    compile_s: float
    memory: dict
    times: list = dataclasses.field(default_factory=list)
    cpu: list = dataclasses.field(default_factory=list)

    def run(self, n: int, record: bool = True):
        for _ in range(n):
            c0, t0 = cpu_seconds(), time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(metrics)
            if record:
                self.times.append(time.perf_counter() - t0)
                self.cpu.append(cpu_seconds() - c0)
        return float(metrics["loss"])


def setup_ours(config, cfg: gpt.GPTConfig, mesh) -> Ours:
    model = gpt.GPT(cfg)
    seq_len = config.data.seq_len
    program = build(config, init_fn=lambda rng: model.init(rng, jnp.zeros((1, seq_len),
                                                                          jnp.int32)),
                    loss_fn=lm_loss_fn(model), mesh=mesh)
    local = config.train.batch_size // jax.process_count()
    tokens = np.random.default_rng(jax.process_index()).integers(
        0, cfg.vocab_size, (local, seq_len + 1)).astype(np.int32)
    with jax.set_mesh(mesh):
        state = program.init(jax.random.key(config.seed))
        batch = global_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]},
                             program.batch_sharding)
        t0 = time.perf_counter()
        compiled = program.train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    analysis = compiled.memory_analysis()
    memory = {}
    if analysis is not None:
        memory = {"step_arguments_bytes": int(analysis.argument_size_in_bytes),
                  "step_temp_bytes": int(analysis.temp_size_in_bytes),
                  "step_output_bytes": int(analysis.output_size_in_bytes)}
    return Ours(compiled, state, batch, compile_s, memory)


def device_peak_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def input_pipeline(config, mesh, batches: int) -> dict:
    """Time PackedWindows batches from a memory-mapped token file, put on the devices."""
    seq_len, batch = config.data.seq_len, config.train.batch_size
    n_tokens = max(4_000_000, 2 * batch * (seq_len + 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "tokens.npy"
        vocab = min(config.model.vocab_size, np.iinfo(np.uint16).max + 1)
        np.save(path, np.random.default_rng(0).integers(0, vocab, n_tokens).astype(np.uint16))
        tokens = np.load(path, mmap_mode="r")
        # prefetch=0: the pipeline's own cost, not what a read-ahead thread hides of it.
        data = PackedWindows(tokens, seq_len, batch, seed=0, process_index=jax.process_index(),
                             process_count=jax.process_count(), prefetch=0)
        put = sharding.batch_sharding(mesh)
        jax.block_until_ready(global_batch(next(data), put))
        t0 = time.perf_counter()
        for _ in range(batches):
            jax.block_until_ready(global_batch(next(data), put))
        per_batch = (time.perf_counter() - t0) / batches
    return {"input_batch_ms": per_batch * 1e3,
            "input_tokens_per_sec": batch * seq_len / per_batch}


# ------------------------------------------------------------------------------- the peer

def peer_spec(config, cfg: gpt.GPTConfig, compiled: bool, on_gpu: bool) -> dict:
    t = config.train
    return dict(vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx, n_layer=cfg.n_layer,
                n_head=cfg.n_head, d_model=cfg.d_model, d_ff=cfg.ffn_dim, ln_eps=cfg.ln_eps,
                batch=t.batch_size, seq_len=config.data.seq_len, lr=t.lr, b1=t.b1, b2=t.b2,
                eps=t.eps, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                threads=len(os.sched_getaffinity(0)), compile=compiled,
                device="cuda" if on_gpu else "cpu", dtype=cfg.dtype)


def peer_worker():
    """The PyTorch side, in its own process: GPT2LMHeadModel in training mode, AdamW with weight
    decay on the weight matrices only (as ours), gradient clipping, all cores. On a GPU: float32
    parameters with bfloat16 autocast when ours computes in bfloat16, transformers' default
    scaled_dot_product_attention (flash attention) and the fused AdamW. Reads commands
    ("run N", "quit") on stdin, answers one JSON line each. The peer gets the same host
    allocator settings as ours (keep_host_memory, before torch starts its threads): without
    them both sides slow down alike, and the comparison is of the frameworks, not of malloc."""
    perf.keep_host_memory()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=spec["vocab_size"], n_positions=spec["n_ctx"], n_embd=spec["d_model"],
        n_layer=spec["n_layer"], n_head=spec["n_head"], n_inner=spec["d_ff"],
        activation_function="gelu_new", layer_norm_epsilon=spec["ln_eps"], resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    device = torch.device(spec["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"ours runs on a GPU but this torch {torch.__version__} sees none: "
                           "the GPU peer needs a CUDA build of torch")
    model = GPT2LMHeadModel(config).to(device).train()
    decay = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=spec["lr"],
                            betas=(spec["b1"], spec["b2"]), eps=spec["eps"],
                            fused=device.type == "cuda")
    forward = torch.compile(model) if spec["compile"] else model
    tokens = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"] + 1),
                           device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    half = spec["dtype"] == "bfloat16"
    seen = {}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=half):
            logits = forward(input_ids=inputs).logits
        seen["logits_dtype"] = str(logits.dtype).removeprefix("torch.")
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        if spec["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    step()
    print(json.dumps({"ready": True, "first_step_s": time.perf_counter() - t0,
                      "attention": model.config._attn_implementation, **seen,
                      "matmul_flops": torch_matmul_flops() if device.type == "cpu" else 0.0}),
          flush=True)
    for line in sys.stdin:
        if line.startswith("run"):
            times, cpu, loss = [], [], None
            for _ in range(int(line.split()[1])):
                c0, t0 = cpu_seconds(), time.perf_counter()
                loss = step()
                times.append(time.perf_counter() - t0)
                cpu.append(cpu_seconds() - c0)
            print(json.dumps({"times": times, "cpu": cpu, "loss": loss}), flush=True)
        else:
            print(json.dumps({"max_rss_bytes": max_rss_bytes()}), flush=True)
            return


def torch_matmul_flops(sizes=(1024, 1536, 2048), repeats: int = 12) -> float:
    """measure_matmul_flops's twin for PyTorch (its own BLAS), on the same square sizes."""
    import torch
    rate = 0.0
    for n in sizes:
        a = torch.ones(n, n)
        a @ a
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            rate = max(rate, 2 * n ** 3 / (time.perf_counter() - t))
    return rate


class Peer:
    def __init__(self, spec: dict):
        self.key = "peer_compile" if spec["compile"] else "peer"
        self.name = "pytorch+compile" if spec["compile"] else "pytorch"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from experiments.benchmark import peer_worker; peer_worker()"],
            cwd=pathlib.Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.times, self.cpu = [], []
        self.info = self._ask(json.dumps(spec))

    def _ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"the {self.name} peer stopped (exit {self.proc.wait()})")
        return json.loads(out)

    def run(self, n: int):
        r = self._ask(f"run {n}")
        self.times += r["times"]
        self.cpu += r["cpu"]

    def close(self) -> int:
        try:
            return self._ask("quit")["max_rss_bytes"]
        finally:
            self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------- report

def summary(times, cpu, tokens_per_step, flops_per_token, peak, workers) -> dict:
    step = float(np.median(times))
    out = {"step_s": step, "tokens_per_sec": tokens_per_step / step,
           "step_cpu_s": float(np.median(cpu)) / workers}
    if peak:
        out["mfu"] = out["tokens_per_sec"] * flops_per_token / peak
    return out


def rounds_of(times: list) -> list:
    """Step times split into the alternating rounds they were measured in."""
    return [times[i:i + FLAGS.steps] for i in range(0, len(times), FLAGS.steps)]


def main(config, workdir):
    del workdir
    if FLAGS.peer:
        # The PyTorch peer shares the accelerator: JAX (not yet started) takes half its memory
        # rather than the default 75%.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    cfg = model_config(config)
    mesh = sharding.make_mesh(config.mesh)
    validate(config, mesh)
    seq_len, batch = config.data.seq_len, config.train.batch_size
    tokens_per_step = batch * seq_len
    flops_per_token = gpt.flops_per_token(cfg, seq_len)
    devices = mesh.devices.flatten().tolist()
    on_cpu = devices[0].platform == "cpu"
    workers = len(os.sched_getaffinity(0)) if on_cpu else 1
    on_gpu = devices[0].platform == "gpu"
    peak = measured_peak() if on_cpu else perf.peak_flops(devices)
    # What this accelerator's matmuls really reach, beside the datasheet peak MFU divides by.
    matmul = (perf.measure_matmul_flops((4096, 8192), 10, devices[0], jnp.bfloat16)
              if not on_cpu else None)

    ours = setup_ours(config, cfg, mesh)
    loss0 = ours.run(FLAGS.warmup, record=False)
    peers = []
    if FLAGS.peer and jax.process_count() > 1:
        print("--peer runs in single-process benchmarks only; skipped", file=sys.stderr)
    elif FLAGS.peer:
        peers.append(Peer(peer_spec(config, cfg, compiled=False, on_gpu=on_gpu)))
        if FLAGS.peer_compile:
            peers.append(Peer(peer_spec(config, cfg, compiled=True, on_gpu=on_gpu)))
        for p in peers:     # warm-up
            p.run(FLAGS.warmup)
            p.times, p.cpu = [], []
    for _ in range(FLAGS.rounds):
        ours.run(FLAGS.steps)
        for p in peers:
            p.run(FLAGS.steps)
    if FLAGS.profile_dir:
        with jax.profiler.trace(FLAGS.profile_dir):
            ours.run(3, record=False)
    source = "datasheet"
    if on_cpu:
        peak = xla_peak = max(peak, measured_peak())   # the best rate seen, before or after
        # The hardware's limit is the best rate either library reaches.
        peak = max([xla_peak] + [p.info["matmul_flops"] for p in peers])
        source = "xla" if peak == xla_peak else "pytorch"

    result = {"config": config.model.to_dict(), "batch": batch, "seq_len": seq_len,
              "dtype": cfg.dtype, "devices": f"{len(devices)} x {devices[0].device_kind}",
              "mesh": dict(mesh.shape), "processes": jax.process_count(),
              "flops_per_token": flops_per_token, "peak_flops": peak, "peak_source": source,
              "compile_s": ours.compile_s, "first_loss": loss0}
    result.update(summary(ours.times, ours.cpu, tokens_per_step, flops_per_token, peak, workers))
    if matmul:
        result["matmul_bf16_flops"] = matmul
        result["mfu_of_measured_matmul"] = result["tokens_per_sec"] * flops_per_token / matmul
    result.update(ours.memory)
    result["max_rss_bytes"] = max_rss_bytes()
    if (device_peak := device_peak_memory()) is not None:
        result["device_peak_bytes"] = device_peak
    result.update(input_pipeline(config, mesh, FLAGS.input_batches))
    result["input_share_of_step"] = result["input_batch_ms"] / 1e3 / result["step_s"]
    rows = [("flaxpapers (JAX)", result)]
    for p in peers:
        r = summary(p.times, p.cpu, tokens_per_step, flops_per_token, peak, workers)
        r["max_rss_bytes"] = p.close()
        r["attention"], r["logits_dtype"] = p.info["attention"], p.info["logits_dtype"]
        result.update({f"{p.key}_{k}": v for k, v in r.items()})
        result["ratio" + p.key[4:]] = result["tokens_per_sec"] / r["tokens_per_sec"]
        # The same ratio round by round: its spread is this machine's noise.
        result["ratio" + p.key[4:] + "_rounds"] = [
            float(np.median(theirs) / np.median(mine))
            for mine, theirs in zip(rounds_of(ours.times), rounds_of(p.times))]
        rows.append((p.name, r))
    result["load_average"] = os.getloadavg()[0]
    if jax.process_index() == 0:
        print_table(rows, result, workers)
        print(json.dumps(result))


def print_table(rows, result, workers):
    print(f"\n{result['devices']}, {workers} cores; batch {result['batch']} x "
          f"{result['seq_len']} tokens, {result['dtype']}; peak {result['peak_flops'] / 1e9:.0f} "
          f"GFLOP/s ({result['peak_source']}); {result['flops_per_token'] / 1e6:.1f} MFLOP/token; "
          f"load avg {result['load_average']:.1f}")
    if "matmul_bf16_flops" in result:
        print(f"measured bf16 matmul {result['matmul_bf16_flops'] / 1e12:.0f} TFLOP/s: ours at "
              f"{result['mfu_of_measured_matmul']:.1%} of it")
    print(f"{'':18s} {'step (ms)':>9s} {'cpu (ms)':>8s} {'tokens/s':>9s} {'MFU':>6s} "
          f"{'RSS (MB)':>9s}")
    for name, r in rows:
        print(f"{name:18s} {r['step_s'] * 1e3:9.1f} {r['step_cpu_s'] * 1e3:8.1f} "
              f"{r['tokens_per_sec']:9.0f} {r.get('mfu', float('nan')):6.1%} "
              f"{r['max_rss_bytes'] / 2**20:9.0f}")
    print(f"compile {result['compile_s']:.1f} s; input pipeline {result['input_batch_ms']:.2f} ms "
          f"per batch ({result['input_share_of_step']:.2%} of a step)")
    if "device_peak_bytes" in result:
        print(f"device memory peak {result['device_peak_bytes'] / 2**30:.1f} GiB")
    for key, peer in (("ratio", "pytorch"), ("ratio_compile", "pytorch+compile")):
        if key in result:
            spread = result[key + "_rounds"]
            print(f"ours / {peer}: {result[key]:.2f}x tokens/s (rounds {min(spread):.2f}-"
                  f"{max(spread):.2f}x)")


if __name__ == "__main__":
    launch.run(main, "gpt.py:bench-cpu", workdir_required=False)
