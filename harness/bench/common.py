"""What every benchmark shares: its context, side-by-side timing, and peak memory in a fresh process.

Machines here are noisy, so figures are ratios of measurements taken in the same
run, interleaved (A, B, A, B, ...) and summarised by the median. Peak memory is
measured in a child process per measurement, so one figure cannot inherit
another's high-water mark.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.data import synthetic
from harness.paths import cache_dir

ARCH = "tiny-vit-32"  # the harness's CPU model (harness/model_configs); random init is enough to time it


@dataclass(frozen=True)
class BenchContext:
    """Where a benchmark reads and writes, and how big it runs.

    ``smoke`` shrinks every problem to seconds (CI); figures are then only a check that
    the benchmark runs. ``full`` runs the issue's full-size problems where a default run
    scales them down.
    """

    scratch: Path
    smoke: bool = False
    full: bool = False
    log: Callable[[str], None] = print
    world_root: Path | None = None
    """Where the synthetic world lives (default: under $HARNESS_CACHE)."""

    def world(self) -> Path:
        """The benchmark's synthetic world (generated once, cached): the demo's size, or
        the test size for a smoke run."""
        spec = synthetic.small_spec() if self.smoke else synthetic.WorldSpec()
        root = self.world_root or cache_dir() / ("synthetic-bench-smoke" if self.smoke else "synthetic-bench")
        synthetic.generate(root, spec)
        return root

    def pick(self, full, smoke):
        """``smoke`` in a smoke run, else ``full``."""
        return smoke if self.smoke else full


def interleaved(candidates: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Run each candidate once per round, ``reps`` rounds, in turn; the median of each.

    A candidate returns its own figure (e.g. images/s measured over its steady state).
    """
    values: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(reps):
        for name, run in candidates.items():
            values[name].append(float(run()))
    return {name: statistics.median(v) for name, v in values.items()}


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- memory -------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name} (not Linux?)")


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) since start or the last :func:`reset_peak`, MiB."""
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Restart the VmHWM high-water mark at the current RSS (Linux >= 4.0: clear_refs 5), so a
    phase's peak excludes the setup before it."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def in_child(function: str, kwargs: dict, timeout: float = 600, env: dict[str, str] | None = None) -> dict:
    """Call ``module:function(**kwargs)`` in a fresh Python process (``env`` added to its
    environment) and return its dict, with ``peak_rss_mib`` (the whole child's VmHWM) added.

    The function must return a JSON-serialisable dict; ``kwargs`` must be JSON too.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "harness.bench.common", function, json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {function} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main(function: str, kwargs_json: str) -> None:
    import logging

    logging.disable(logging.WARNING)  # open_clip announces every random-init model
    module, name = function.split(":")
    result = getattr(importlib.import_module(module), name)(**json.loads(kwargs_json))
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
