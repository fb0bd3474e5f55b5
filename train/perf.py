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


@functools.cache
def measured_matmul_flops(n: int = 1024, repeats: int = 10) -> float:
    """Dense float32 matmul rate of the host CPU (all its cores), measured once per process."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), cpu)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


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
