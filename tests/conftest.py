import os
import sys
import pathlib

import numpy as np

# Tests run on the CPU, deterministically, whatever machine they are on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A small test spends most of its time in XLA:CPU's compiler, not in the program it compiles:
# without LLVM's optimisation passes and with the older elemental fusion emitters, a tiny GPT's
# training step compiles about 4x faster. Neither changes the arithmetic (no fast-math either
# way); the speed of the compiled code is the benchmarks' business, not the tests'.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def simulated_devices_env(n: int, **env) -> dict:
    """The environment of a subprocess that sees n CPU devices, with the tests' XLA flags."""
    return dict(os.environ, JAX_PLATFORMS="cpu", **env,
                XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={n}")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core, at most 4 (each holds JAX, torch and its compiled programs)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 4))


def digit_folder(path: pathlib.Path, classes=(0, 1, 2), per_class: int = 2) -> pathlib.Path:
    """An image folder of MNIST digits (28x28 grey PNGs), one subfolder per digit named as a
    word: the zero-shot command's input for a model trained on digit scenes."""
    from PIL import Image
    from data import images
    pixels, labels = images.mnist_digits()
    for d in classes:
        folder = path / images.WORDS[d]
        folder.mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(np.flatnonzero(labels == d)[:per_class]):
            Image.fromarray(pixels[k]).save(folder / f"{i}.png")
    return path
