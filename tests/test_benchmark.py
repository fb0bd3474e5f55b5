"""The benchmark runs end to end (numbers are not checked: speed is measured, never tested)."""

import json
import os
import subprocess
import sys

import pytest
from test_trainer import ROOT

SMALL = ["--config.model.n_layer=1", "--config.model.d_model=64", "--config.model.n_head=2",
         "--config.model.vocab_size=512", "--config.model.n_ctx=32", "--config.data.seq_len=32",
         "--config.train.batch_size=4", "--rounds=1", "--steps=1", "--warmup=1",
         "--input_batches=5"]


def benchmark(preset, *flags):
    out = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                          f"--config=experiments/configs/gpt.py:{preset}", *SMALL, *flags],
                         cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_benchmark_against_pytorch():
    r = benchmark("bench-cpu", "--peer", "--rounds=2")
    for key in ("tokens_per_sec", "mfu", "compile_s", "step_s", "peak_flops", "input_batch_ms",
                "peer_tokens_per_sec", "ratio"):
        assert r[key] > 0, key
    assert r["ratio"] == r["tokens_per_sec"] / r["peer_tokens_per_sec"]
    assert len(r["ratio_rounds"]) == 2 and min(r["ratio_rounds"]) > 0
    assert r["peer_logits_dtype"] == "float32"


def test_gpu_preset_runs_on_cpu():
    r = benchmark("bench-gpu")
    assert r["dtype"] == "bfloat16" and r["tokens_per_sec"] > 0 and "peer_tokens_per_sec" not in r


def test_bfloat16_peer_runs_under_autocast():
    """The peer follows our compute dtype (bfloat16 autocast), here on the CPU."""
    r = benchmark("bench-gpu", "--peer")
    assert r["dtype"] == "bfloat16" and r["peer_logits_dtype"] == "bfloat16"
    assert r["peer_tokens_per_sec"] > 0 and r["ratio"] > 0


FAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from train import perf
    assert perf.keep_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def touch_and_free(size):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
touch_and_free(256 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free(256 << 20)                   # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_host_allocator_keeps_freed_memory():
    """After keep_host_memory a freed 256 MB buffer is reused without faulting its pages in again
    (glibc otherwise unmaps it on free, and each step pays for zeroing fresh pages)."""
    run = lambda mode: int(subprocess.run(  # noqa: E731
        [sys.executable, "-c", FAULTS, mode], cwd=ROOT, check=True, capture_output=True,
        text=True).stdout)
    pages = (256 << 20) // 4096
    assert run("default") > pages / 2
    assert run("keep") < pages / 20
