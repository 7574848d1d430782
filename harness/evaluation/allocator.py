"""Keep glibc's heap from growing with the number of batches a process streams.

glibc serves allocations above its mmap threshold with mmap and returns them on free, but
after the first large free it raises that threshold (up to 32 MiB on 64-bit), so later
batch-sized tensors (a few MiB) come from the heap instead. Small tensors kept between
batches (embeddings, keys) then pin the heap's top and it cannot shrink: peak memory of a
streaming evaluation grows with the data although the live data does not
(reports/bench.md, "memory vs data size"). Fixing the threshold turns the dynamic raise off.
Set HARNESS_MALLOC_DEFAULTS=1 to keep glibc's defaults (the benchmark's comparison does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Map every allocation of at least ``threshold`` bytes (glibc only; once per process).

    Returns whether the allocator took the setting; False off glibc (macOS, musl), where the
    call is not available and the heap behaves differently anyway.
    """
    if os.environ.get("HARNESS_MALLOC_DEFAULTS") == "1":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
