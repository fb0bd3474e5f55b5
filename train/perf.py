"""Peak FLOP/s of the devices, for MFU = achieved model FLOP/s / peak; the host allocator; XLA
options for host-CPU steps."""

import functools
import time
import warnings

import jax
import jax.numpy as jnp

from train.hostmem import keep_host_memory, trim_host_memory  # noqa: F401  (the benchmark peers call them here)

# Datasheet dense bf16 rates (no sparsity), FLOP/s per device.
DATASHEET_BF16 = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


# XLA options for steps compiled for an AVX-512 host CPU (jaxlib 0.10), each measured by an
# in-process A/B of the bench-cpu training step on a 2-core AVX-512 Xeon; results change by
# float rounding only:
CPU_OPTIONS = (
    # Each matmul on its own through oneDNN instead of YNNPACK/Eigen: oneDNN runs the weight
    # gradients (transposed left operand, which YNNPACK leaves to Eigen) 10-20% faster, and
    # spreads attention's small batched matmuls over all cores where YNNPACK used one (about
    # 2x). The step about 2% faster. Individual dots only: the DOT fusion type, which also pulls
    # neighbouring elementwise ops into oneDNN, was faster still (3.2-3.4%) but dies with an
    # illegal instruction on a matmul fed by a broadcast multiply, e.g. LayerNorm's scale at
    # inference (tests/test_trainer.py runs that case).
    ("xla_cpu_use_onednn", True),
    ("xla_cpu_experimental_onednn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),
    # LLVM's 512-bit vectors (it prefers 256 by default) in the kernels XLA emits itself:
    # LayerNorm, GELU, softmax, cross-entropy, AdamW. 1.0-1.4% faster.
    ("xla_cpu_prefer_vector_width", 512),
)


def compiler_options(platform: str) -> dict:
    """XLA compile options for programs on `platform`: CPU_OPTIONS on an AVX-512 CPU (where
    they were measured), none elsewhere."""
    if platform != "cpu" or not _cpu_has("avx512f"):
        return {}
    # A program with oneDNN calls cannot be serialised into JAX's persistent compilation cache
    # (gpt1_transfer turns it on): JAX then warns at every compile, and the program is simply
    # compiled again next time. Nothing is wrong, so the warning would only bury the output.
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache "
                            "entry.*onednn", category=UserWarning)
    return _if_accepted(CPU_OPTIONS)


@functools.cache
def _if_accepted(options: tuple) -> dict:
    """The options as a dict if this jaxlib's CPU compiler takes them, else {}: a renamed XLA
    option costs the speed-up, not the run."""
    x = jax.device_put(jnp.ones((8, 8)), jax.devices("cpu")[0])
    try:
        jax.jit(lambda x: jnp.tanh(x @ x), compiler_options=dict(options)).lower(x).compile()
    except jax.errors.JaxRuntimeError:
        return {}
    return dict(options)


@functools.cache
def _cpu_has(flag: str) -> bool:
    """Whether the host CPU reports `flag` in /proc/cpuinfo (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def measure_matmul_flops(sizes=(1024,), repeats: int = 10, device=None,
                         dtype=jnp.float32) -> float:
    """Dense matmul rate of one device (by default the host CPU, all its cores): the best over
    square sizes and repeats, i.e. the hardware's limit as XLA reaches it. Random operands: a
    GPU multiplies zeros faster than data."""
    device = device or jax.devices("cpu")[0]
    f = _matmul(device.platform)
    rate = 0.0
    for n in sizes:
        a = jax.device_put(jax.random.normal(jax.random.key(n), (n, n), dtype), device)
        f(a).block_until_ready()
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            rate = max(rate, 2 * n ** 3 / (time.perf_counter() - t))
    return rate


def measure_memory_bandwidth(nbytes: int = 256 << 20, repeats: int = 10, device=None) -> float:
    """Memory bandwidth of one device (by default the host CPU, all its cores) in bytes/s: the
    best over repeats of y = x * c on a float32 array of `nbytes`, which reads and writes each
    byte once (2 nbytes of traffic) and computes next to nothing; the array is far larger than
    the caches. The physical limit of steps that compute little per byte: decoding one token,
    which reads every weight, and BatchNorm."""
    device = device or jax.devices("cpu")[0]
    x = jax.device_put(jnp.ones((nbytes // 4,), jnp.float32), device)
    f = _scale(device.platform)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


@functools.cache
def _scale(platform: str):
    del platform    # one kept executable per platform, as _matmul
    return jax.jit(lambda x: x * 1.0001)


@functools.cache
def _matmul(platform: str):
    """The probe's jitted x @ x, kept (with its executables) for the life of the process.

    With CPU_OPTIONS each dot runs in a oneDNN thunk that borrows a runtime from a pool the
    executable owns and returns it only after the result is marked ready. Freeing an executable
    just after running it could destroy that pool while a runtime was still out, and XLA
    aborted the process (`available_.size() == num_created_` in object_pool.h; 16 of 50 starts
    that measured the peak 5 times). Kept executables are never freed while one runs."""
    return jax.jit(lambda x: x @ x, compiler_options=compiler_options(platform))


@functools.cache
def measured_matmul_flops() -> float:
    """measure_matmul_flops, once per process (the trainer's MFU)."""
    return measure_matmul_flops()


def mfu(model_flops_per_sec: float, peak: float) -> dict:
    """{"mfu": achieved / peak}, never above 1. A CPU's peak is measured (once, at the start of
    the run), and other work on the host can make that measurement low; a rate above it says
    so with "mfu_over_peak" (1.0) instead of an MFU above 100%."""
    ratio = model_flops_per_sec / peak
    return {"mfu": 1.0, "mfu_over_peak": 1.0} if ratio > 1.0 else {"mfu": ratio}


def peak_flops(devices=None) -> float | None:
    """Peak of all `devices` together; None when the accelerator is unknown."""
    devices = jax.devices() if devices is None else devices
    kind = devices[0].platform
    if kind == "cpu":
        return measured_matmul_flops()  # simulated CPU devices share the same cores
    for name, rate in DATASHEET_BF16.items():
        if name.lower() in devices[0].device_kind.lower():
            return rate * len(devices)
    return None
