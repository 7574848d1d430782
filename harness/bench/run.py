"""Run the benchmarks, print the table, write ``bench.parquet`` and ``bench.md``.

Each benchmark is a module with ``run(ctx) -> Section``, registered in :data:`BENCHMARKS`
(name -> module path) and imported only when it runs, so ``--only metrics`` does not
import Ray.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from pathlib import Path

import torch

from harness.bench import table
from harness.bench.common import BenchContext

BENCHMARKS = {  # name -> module with run(ctx) -> Section, in the order
    "pipeline": "harness.bench.pipeline",
    "ray": "harness.bench.training",
    "eval": "harness.bench.evaluation",
    "metrics": "harness.bench.metrics",
    "memory": "harness.bench.memory",
    "gpu": "harness.bench.gpu_step",
    "recording": "harness.bench.recording",
    "decode": "harness.bench.decode",
    "evaluate": "harness.bench.evaluate_cache",
}


class UnknownBenchmarkError(ValueError):
    """An unknown ``--only`` name; the message lists the valid ones."""


def select(only: list[str]) -> list[str]:
    """The benchmark names to run, in registry order (all when ``only`` is empty)."""
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise UnknownBenchmarkError(f"unknown benchmark(s) {', '.join(unknown)}; valid names: "
                                    f"{', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if not only or name in only]


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, Python {platform.python_version()}, {gpu}")


def header(ctx: BenchContext, total_s: float) -> str:
    size = "smoke sizes (CI check, figures not meaningful)" if ctx.smoke else (
        "full sizes (--full)" if ctx.full else "default sizes (scaled down for 2 CPU cores; --full for the issue's)")
    return (f"## Benchmarks (`harness bench`)\n\nMachine: {machine()}. Sizes: {size}. "
            f"Total {total_s:.0f} s.\n\nEach figure is measured against a comparison run in the same process "
            "and session (interleaved where it matters); `ratio` is ours over the comparison for speed "
            "(higher is better) and large over small for memory (lower is better).")


def run(out: Path, only: list[str] = (), smoke: bool = False, full: bool = False, log=print) -> list[table.Section]:
    """Run the selected benchmarks; write ``out/bench.parquet`` and ``out/bench.md``; return the sections."""
    names = select(list(only))
    ctx = BenchContext(scratch=out / "scratch", smoke=smoke, full=full, log=log)
    sections, started = [], time.perf_counter()
    for name in names:
        log(f"bench {name} ...")
        start = time.perf_counter()
        section = importlib.import_module(BENCHMARKS[name]).run(ctx)
        sections.append(table.Section(section.name, section.title, section.rows, section.notes,
                                      time.perf_counter() - start))
        log(f"bench {name}: {sections[-1].seconds:.0f} s")
    text = table.markdown(sections, header(ctx, time.perf_counter() - started))
    table.write_parquet(table.frame(sections), out / "bench.parquet")
    table.write_markdown(text, out / "bench.md")
    return sections
