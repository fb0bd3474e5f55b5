"""The host allocator's settings, applied when `train` is imported: in a module of their own,
without jax, so that jax-free readers under train/ (train/metrics.py) import nothing heavy."""

import ctypes
import platform


def keep_host_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    XLA:CPU allocates every buffer of a step (the logits alone are 64 MB at batch 8 x 256 with
    a 8192 vocabulary) from whichever malloc arena its worker thread holds. Allocations above
    a thread arena's 64 MB heap are mmap'ed and unmapped on free, so each step page-faults all
    of them in again: a quarter of the logits matmul's time went to zeroing fresh pages. One
    arena (brk heap, no mmap, no trimming) keeps the pages mapped; the resident set stays at
    the step's peak. Must run before JAX starts its thread pool (importing `train` does it).
    Returns whether the settings were applied (glibc only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8
    return all(libc.mallopt(option, value) == 1 for option, value in (
        (m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_top_pad, 64 << 20)))


def trim_host_memory() -> bool:
    """Give the memory that compiling freed back to the kernel (glibc's malloc_trim), once the
    steps' programs are built: keep_host_memory never trims, so without this the resident set
    stays at compilation's peak for the life of the process. Freed pages of the heap's middle
    are released too; the step's own buffers fault back in once and then stay. Returns whether
    anything was released (False off glibc)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).malloc_trim(0))
