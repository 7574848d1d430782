"""The fixed mmap threshold: a batch-sized block is mapped, not carved from the heap."""

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, sys
    from harness.evaluation import allocator
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "fixed":
        assert allocator.fix_mmap_threshold()
    big = libc.malloc(16 << 20)   # mapped; freeing it raises glibc's dynamic threshold to 16 MiB
    libc.free(big)
    block = libc.malloc(3 << 20)  # one batch of 256 images at 224 px in uint8
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *rest = line.split()
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= block < hi:
                print("heap" if line.rstrip().endswith("[heap]") else "mapped")
                break
""")


def _where(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_fixed_threshold_maps_batch_sized_blocks_the_default_does_not():
    assert _where("default") == "heap"  # the growth the fix exists for
    assert _where("fixed") == "mapped"
