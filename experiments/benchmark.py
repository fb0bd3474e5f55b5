"""Speed of our jitted steps, and of the same work in PyTorch.

    python -m experiments.benchmark --config=experiments/configs/gpt.py:bench-cpu [--peer]
    python -m experiments.benchmark --config=experiments/configs/convnets.py:bench-cpu [--peer]

The config file's EXPERIMENT picks the workload (experiments/bench_workloads.py): the GPT
training step (pretrain_lm), or a ConvNet's training step and eval-mode forward
(classify_images). Each step runs on a fixed random batch: compile time, the median step time
over many steps after warm-up, units (tokens, images) per second, MFU, memory; then the
experiment's input pipeline alone, put on the devices, to show whether loading can keep up.
With --peer the same model, batch and optimiser run in PyTorch in a second process, and the
two alternate rounds of steps, phase by phase, so both see the same machine load; the ratio
is ours / theirs in units per second, also round by round (its spread is the machine's noise).

MFU = model FLOP/s / peak; the workload states its FLOPs per unit. Peak: on a CPU the best
measured dense float32 matmul rate of all its cores (square sizes 1024-2048, best of many runs,
through XLA and, with --peer, through PyTorch's BLAS too; the higher); on a known accelerator
its datasheet dense bf16 rate. Step times are wall-clock medians; "cpu" is the process CPU time
per step over the cores, what the step would take if nothing else ran. Both processes run with
the host allocator kept warm (train.perf.keep_host_memory). The last line printed is one JSON
object: for the training step `<unit>s_per_sec`, `mfu`, `step_s`, `compile_s`, and with a peer
`peer_<unit>s_per_sec`, `ratio`, `ratio_rounds`; the inference phase the same keys with
`infer_` after any `peer_` (`infer_images_per_sec`, `peer_infer_images_per_sec`, `infer_ratio`).
Memory: `max_rss_bytes` (the process's lifetime peak, compiling included) and `step_rss_bytes`
(resident right after the timed steps; both sides trim the host allocator after compiling and
warming up, so it is what the steps hold), each also with `peer_`.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import launch, sweep
from experiments.bench_peers import max_rss_bytes, rss_bytes, timed
from experiments.bench_workloads import WORKLOADS
from train import perf, sharding
from train.trainer import validate

flags.DEFINE_bool("peer", False, "Also run the same model in PyTorch and compare.")
flags.DEFINE_bool("peer_compile", False, "With --peer, also a torch.compile'd peer.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds (ours, then each peer).", lower_bound=1)
flags.DEFINE_integer("steps", 4, "Timed steps per round, phase and side.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.", lower_bound=1)
flags.DEFINE_integer("input_batches", 200, "Batches for the input-pipeline measurement.",
                     lower_bound=1)
flags.DEFINE_integer("peak_repeats", 12, "Runs of each matmul size when measuring a CPU's "
                     "peak (the best counts).", lower_bound=1)
flags.DEFINE_string("profile_dir", "", "If set, also trace 3 of our steps of each phase there "
                    "with jax.profiler (TensorBoard / XProf format), after the timed rounds.")
FLAGS = flags.FLAGS
DEFAULT_CONFIG = "gpt.py:bench-cpu"


PEAK_SIZES = (1024, 1536, 2048)


def measured_peak() -> float:
    """Best dense float32 matmul rate over sizes and repeats; a fresh measurement each call."""
    return perf.measure_matmul_flops(sizes=PEAK_SIZES, repeats=FLAGS.peak_repeats)


def prefix(phase: str, headline: str = "train") -> str:
    """Result keys of the headline phase (a workload's first) go unprefixed."""
    return "" if phase == headline else f"{phase}_"


class Side:
    """One side of the comparison: its step times by phase, under result keys `key`_..."""

    def __init__(self, name: str, key: str, phases):
        self.name, self.key, self.headline = name, key, phases[0]
        self.times = {p: [] for p in phases}
        self.cpu = {p: [] for p in phases}

    def result_key(self, phase: str, name: str) -> str:
        return f"{self.key + '_' if self.key else ''}{prefix(phase, self.headline)}{name}"


class Ours(Side):
    """Our compiled steps, by phase."""

    def __init__(self, steps: dict):
        super().__init__("flaxpapers (JAX)", "", list(steps))
        self.steps = steps

    def run(self, phase: str, n: int, record: bool = True):
        step = lambda: jax.block_until_ready(self.steps[phase]())  # noqa: E731
        return timed(step, n, *((self.times[phase], self.cpu[phase]) if record else ([], [])))


class Peer(Side):
    """The same work in PyTorch, in a bench_peers worker process."""

    def __init__(self, spec: dict, phases):
        compiled = spec["compile"]
        super().__init__("pytorch+compile" if compiled else "pytorch",
                         "peer_compile" if compiled else "peer", phases)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from experiments.bench_peers import worker; worker()"],
            cwd=pathlib.Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        self.ready = self._ask(json.dumps(spec))
        self.step_rss_bytes = 0

    def _ask(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"the {self.name} peer stopped (exit {self.proc.wait()})")
        return json.loads(out)

    def run(self, phase: str, n: int, record: bool = True):
        r = self._ask(f"run {phase} {n}")
        if record:
            self.times[phase] += r["times"]
            self.cpu[phase] += r["cpu"]
            self.step_rss_bytes = r["rss_bytes"]

    def trim(self) -> None:
        self._ask("trim")

    def close(self) -> int:
        try:
            return self._ask("quit")["max_rss_bytes"]
        finally:
            self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------- report

def summary(times, cpu, units_per_step, flops_per_unit, peak, workers, unit,
            steps_per_call=0, bytes_per_step=0.0, bandwidth=0.0) -> dict:
    """steps_per_call > 0 (decoding: tokens per row): also the milliseconds per step.
    bytes_per_step and bandwidth > 0: the memory traffic a step needs at the least, as a share
    of the measured bandwidth (`bandwidth_use`)."""
    step = float(np.median(times))
    out = {"step_s": step, f"{unit}s_per_sec": units_per_step / step,
           "step_cpu_s": float(np.median(cpu)) / workers}
    if steps_per_call:
        out[f"ms_per_{unit}"] = step / steps_per_call * 1e3
    if peak:
        out["mfu"] = out[f"{unit}s_per_sec"] * flops_per_unit / peak
    if bytes_per_step and bandwidth:
        out["bandwidth_use"] = bytes_per_step / step / bandwidth
    return out


def rounds_of(times: list) -> list:
    """Step times split into the alternating rounds they were measured in."""
    return [times[i:i + FLAGS.steps] for i in range(0, len(times), FLAGS.steps)]


def workload_of(config_file: str, config=None):
    """The config's bench.workload where it sets one (e.g. "decode"), else the workload of the
    config file's EXPERIMENT (its training step)."""
    path, _ = sweep.split_config_spec(config_file)
    chosen = config.get("bench", {}).get("workload") if config is not None else None
    if chosen:
        if chosen not in WORKLOADS:
            raise ValueError(f"config.bench.workload is {chosen!r}; there are workloads for "
                             f"{sorted(WORKLOADS)}")
        return chosen, WORKLOADS[chosen]
    name = sweep.experiment_of(sweep.config_module(path), path)
    if name not in WORKLOADS:
        raise ValueError(f"{path}: no benchmark workload for EXPERIMENT {name!r}; there are "
                         f"workloads for {sorted(WORKLOADS)}")
    return name, WORKLOADS[name]


def main(config, workdir):
    del workdir
    if FLAGS.peer:
        # The PyTorch peer shares the accelerator: JAX (not yet started) takes half its memory
        # rather than the default 75%.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    name, workload_class = workload_of(launch.config_file_argument(sys.argv)
                                       or str(launch.CONFIGS / DEFAULT_CONFIG), config)
    work = workload_class(config)
    mesh = sharding.make_mesh(config.mesh)
    validate(config, mesh)
    devices = mesh.devices.flatten().tolist()
    on_cpu = devices[0].platform == "cpu"
    workers = len(os.sched_getaffinity(0)) if on_cpu else 1
    peak = measured_peak() if on_cpu else perf.peak_flops(devices)
    bandwidth = perf.measure_memory_bandwidth(device=devices[0])
    # What this accelerator's matmuls really reach, beside the datasheet peak MFU divides by.
    matmul = (perf.measure_matmul_flops((4096, 8192), 10, devices[0], jnp.bfloat16)
              if not on_cpu else None)

    ours = Ours(work.ours(mesh))
    warm = {phase: ours.run(phase, FLAGS.warmup, record=False) for phase in work.phases}
    peers = []
    if FLAGS.peer and jax.process_count() > 1:
        print("--peer runs in single-process benchmarks only; skipped", file=sys.stderr)
    elif FLAGS.peer:
        for compiled in [False] + [True] * FLAGS.peer_compile:
            spec = work.peer_spec(on_gpu=devices[0].platform == "gpu", compiled=compiled)
            peers.append(Peer({**spec, "workload": name, "peak_sizes": PEAK_SIZES,
                               "peak_repeats": FLAGS.peak_repeats}, work.phases))
        for p in peers:
            for phase in work.phases:
                p.run(phase, FLAGS.warmup, record=False)
    # Both sides hand compilation's and start-up's freed memory back before the timed steps,
    # so that step_rss_bytes is what the steps hold, not what building them once took.
    perf.trim_host_memory()
    for p in peers:
        p.trim()
    for _ in range(FLAGS.rounds):
        for phase in work.phases:
            ours.run(phase, FLAGS.steps)
            for p in peers:
                p.run(phase, FLAGS.steps)
    step_rss = rss_bytes()
    if FLAGS.profile_dir:
        with jax.profiler.trace(FLAGS.profile_dir):
            for phase in work.phases:
                ours.run(phase, 3, record=False)
    source = "datasheet"
    if on_cpu:
        peak = xla_peak = max(peak, measured_peak())   # the best rate seen, before or after
        # The hardware's limit is the best rate either library reaches.
        peak = max([xla_peak] + [p.ready["matmul_flops"] for p in peers])
        source = "xla" if peak == xla_peak else "pytorch"

    head = work.phases[0]
    result = {**work.info(), "devices": f"{len(devices)} x {devices[0].device_kind}",
              "mesh": dict(mesh.shape), "processes": jax.process_count(), "peak_flops": peak,
              "peak_source": source, "memory_bandwidth": bandwidth}
    if "train" in work.phases:
        result["first_loss"] = float(warm["train"]["loss"])
    for phase in work.phases:
        step = ours.steps[phase]
        result.update({prefix(phase, head) + k: v for k, v in
                       {"compile_s": step.compile_s, **step.memory}.items()})
    rows = phase_rows(work, ours, result, peak, workers)
    rows[head][0][1]["max_rss_bytes"] = result["max_rss_bytes"] = max_rss_bytes()
    rows[head][0][1]["step_rss_bytes"] = result["step_rss_bytes"] = step_rss
    if matmul:
        result["matmul_bf16_flops"] = matmul
        result["mfu_of_measured_matmul"] = (result[f"{work.unit}s_per_sec"]
                                            * work.flops[head] / matmul)
    if (device_peak := device_peak_memory()) is not None:
        result["device_peak_bytes"] = device_peak
    if work.has_input_pipeline:
        result.update(work.input_pipeline(mesh, FLAGS.input_batches))
        result[f"input_{work.unit}s_per_sec"] = (work.units_per_step[head]
                                                 / result["input_batch_ms"] * 1e3)
        result["input_share_of_step"] = result["input_batch_ms"] / 1e3 / result["step_s"]
    for p in peers:
        result.update({f"{p.key}_{k}": v for k, v in p.ready["info"].items()})
        for phase, row in phase_rows(work, p, result, peak, workers).items():
            rows[phase] += row
            compare(work, ours, p, phase, result)
        rows[head][-1][1]["step_rss_bytes"] = result[f"{p.key}_step_rss_bytes"] = p.step_rss_bytes
        rows[head][-1][1]["max_rss_bytes"] = result[f"{p.key}_max_rss_bytes"] = p.close()
    result["load_average"] = os.getloadavg()[0]
    if jax.process_index() == 0:
        print_table(work, rows, result, workers, peers)
        print(json.dumps(result))


def phase_rows(work, side: Side, result: dict, peak, workers: int) -> dict:
    """Each phase's summary of one side, into `result` under its keys; {phase: [(name, row)]}."""
    rows = {}
    for phase in work.phases:
        r = summary(side.times[phase], side.cpu[phase], work.units_per_step[phase],
                    work.flops[phase], peak, workers, work.unit, work.steps_per_call,
                    work.bytes.get(phase, 0.0), result.get("memory_bandwidth", 0.0))
        result.update({side.result_key(phase, k): v for k, v in r.items()})
        rows[phase] = [(side.name, r)]
    return rows


def ratio_key(phase: str, peer: Peer) -> str:
    """ratio (train), infer_ratio, ratio_compile (the torch.compile'd peer), ..."""
    return f"{prefix(phase, peer.headline)}ratio{peer.key.removeprefix('peer')}"


def compare(work, ours: Ours, peer: Peer, phase: str, result: dict) -> None:
    """ratio = ours / the peer in units per second, over all steps and round by round (the
    spread of the latter is the machine's noise)."""
    rate, key = f"{work.unit}s_per_sec", ratio_key(phase, peer)
    result[key] = result[ours.result_key(phase, rate)] / result[peer.result_key(phase, rate)]
    result[key + "_rounds"] = [
        float(np.median(theirs) / np.median(mine))
        for mine, theirs in zip(rounds_of(ours.times[phase]), rounds_of(peer.times[phase]))]


def device_peak_memory() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def print_table(work, rows: dict, result: dict, workers: int, peers: list[Peer]):
    rate = f"{work.unit}s/s"
    print(f"\n{result['devices']}, {workers} cores; {work.describe()}; peak "
          f"{result['peak_flops'] / 1e9:.0f} GFLOP/s ({result['peak_source']}), memory "
          f"{result['memory_bandwidth'] / 1e9:.1f} GB/s; load avg "
          f"{result['load_average']:.1f}")
    if "matmul_bf16_flops" in result:
        print(f"measured bf16 matmul {result['matmul_bf16_flops'] / 1e12:.0f} TFLOP/s: ours at "
              f"{result['mfu_of_measured_matmul']:.1%} of it")
    head, per_step = work.phases[0], f"ms/{work.unit}"
    for phase in work.phases:
        title = work.titles[phase]
        bw = bool(work.bytes)
        print(f"{title + ':':30s} {'step (ms)':>9s} {'cpu (ms)':>8s} {rate:>9s} {'MFU':>6s} "
              + (f"{'BW':>6s} " if bw else "")
              + (f"{per_step:>9s} " if work.steps_per_call else "")
              + f"{'MB peak':>8s} {'MB step':>8s}")
        for name, r in rows[phase]:
            rss = (f" {r['max_rss_bytes'] / 2**20:8.0f} {r['step_rss_bytes'] / 2**20:8.0f}"
                   if "max_rss_bytes" in r else "")
            latency = f" {r[f'ms_per_{work.unit}']:9.2f}" if work.steps_per_call else ""
            use = f" {r.get('bandwidth_use', float('nan')):6.1%}" if bw else ""
            print(f"  {name:28s} {r['step_s'] * 1e3:9.1f} {r['step_cpu_s'] * 1e3:8.1f} "
                  f"{r[f'{work.unit}s_per_sec']:9.1f} {r.get('mfu', float('nan')):6.1%}"
                  f"{use}{latency}{rss}")
    compiles = ", ".join(f"{phase} {result[prefix(phase, head) + 'compile_s']:.1f} s"
                         for phase in work.phases)
    if work.has_input_pipeline:
        print(f"compile: {compiles}; input pipeline {result['input_batch_ms']:.2f} ms per "
              f"batch ({result['input_share_of_step']:.2%} of a training step)")
    else:
        print(f"compile: {compiles}")
    if note := work.note():
        print(note)
    if "device_peak_bytes" in result:
        print(f"device memory peak {result['device_peak_bytes'] / 2**30:.1f} GiB")
    for peer in peers:
        for phase in work.phases:
            key = ratio_key(phase, peer)
            spread = result[key + "_rounds"]
            print(f"ours / {peer.name}, {phase}: {result[key]:.2f}x {rate} (rounds "
                  f"{min(spread):.2f}-{max(spread):.2f}x)")


if __name__ == "__main__":
    launch.run(main, DEFAULT_CONFIG, workdir_required=False)
