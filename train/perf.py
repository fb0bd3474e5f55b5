"""Peak FLOP/s of the devices, for MFU = achieved model FLOP/s / peak."""

import functools
import time

import jax
import jax.numpy as jnp

# Datasheet dense bf16 rates (no sparsity), FLOP/s per device.
DATASHEET_BF16 = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def measure_matmul_flops(sizes=(1024,), repeats: int = 10) -> float:
    """Dense float32 matmul rate of the host CPU (all its cores): the best over square sizes
    and repeats, i.e. the hardware's limit as XLA reaches it."""
    cpu = jax.devices("cpu")[0]
    f = jax.jit(lambda x: x @ x)
    rate = 0.0
    for n in sizes:
        a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
        f(a).block_until_ready()
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            rate = max(rate, 2 * n ** 3 / (time.perf_counter() - t))
    return rate


@functools.cache
def measured_matmul_flops() -> float:
    """measure_matmul_flops, once per process (the trainer's MFU)."""
    return measure_matmul_flops()


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
