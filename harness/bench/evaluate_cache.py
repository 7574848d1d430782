"""`harness evaluate` of the same weights twice: cold (an empty embedding cache) against warm.

Each candidate is the whole evaluation of a checkpoint as `harness evaluate --weights FILE`
runs it (harness.orchestration.evaluate_weights: config, data check, model build, weights digest, the test
and validation sets encoded or read back from the shared cache, every score and metric, the
run's Parquet rows), in this process, into a fresh ``--out`` each time. Cold runs get an empty
cache directory each; warm runs reuse the one the first cold run filled, so they encode nothing.
Pairs are interleaved (cold, warm, cold, warm) and the medians compared.

Two encoders: a ViT-B-32 at 224 px (random weights: the encode is what a real CLIP model
costs, whatever its weights) on the small synthetic world, where the encode is most of a cold
evaluation, as at ImageNet scale; and the harness's tiny CPU model, where the fixed costs are.
One more figure times the whole command warm in a fresh Python process, to show what
surrounds the evaluation (interpreter and imports, the report and the MLflow run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from harness import models
from harness.bench.common import ARCH, BenchContext, interleaved
from harness.bench.table import Row, Section
from harness.data import synthetic
from harness.paths import cache_dir

REALISTIC = "ViT-B-32"
SCORES = "mcm,neglabel,msp,energy,knn"


@contextmanager
def _embedding_cache(root: Path):
    """Point the shared embedding cache at ``root`` (what ``--cache`` does) for the block."""
    before = os.environ.get("HARNESS_EMBED_CACHE")
    os.environ["HARNESS_EMBED_CACHE"] = str(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HARNESS_EMBED_CACHE", None)
        else:
            os.environ["HARNESS_EMBED_CACHE"] = before


def _overrides(world: Path) -> list[str]:
    return ["name=bench-evaluate", "data.source=shards", f"data.root={world}", "eval.batch_size=64",
            f"eval.scores=[{SCORES}]"]


class _Evaluations:
    """Numbered evaluations of one checkpoint: each into its own --out, cold ones into their own cache."""

    def __init__(self, scratch: Path, world: Path, arch: str, weights: Path):
        self.scratch, self.world, self.arch, self.weights = scratch, world, arch, weights
        self.count, self.warm_cache, self.lines = 0, None, []

    def _once(self, cache: Path) -> float:
        from harness.orchestration import evaluate_weights

        self.count += 1
        started = time.perf_counter()
        with _embedding_cache(cache):
            source = evaluate_weights.resolve(str(self.weights), self.arch, _overrides(self.world))
            evaluate_weights.evaluate(source, self.scratch / f"out{self.count}", log=self.lines.append)
        return time.perf_counter() - started

    def cold(self) -> float:
        cache = self.scratch / f"cache{self.count}"
        self.warm_cache = self.warm_cache or cache  # the first cold run's cache serves every warm run
        return self._once(cache)

    def warm(self) -> float:
        return self._once(self.warm_cache)

    def cache_line(self) -> str:
        return next((line.split(": ", 1)[-1] for line in reversed(self.lines) if "embedding cache" in line), "")


def _pair(ctx: BenchContext, world: Path, arch: str, reps: int) -> tuple[dict[str, float], str, int]:
    scratch = ctx.scratch / f"evaluate-{arch}"
    scratch.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = models.save_weights(models.build(arch, None).model, scratch / "weights.pt")
    runs = _Evaluations(scratch, world, arch, weights)
    times = interleaved({"cold": runs.cold, "warm": runs.warm}, reps)
    images = sum(synthetic_counts(world).values())
    return times, runs.cache_line(), images


def synthetic_counts(world: Path) -> dict[str, int]:
    """Images per set an evaluation reads (the test sets, then validation's ID and OoD sets)."""
    from harness.data.shards import read_manifest

    names = ("id_test", "near_ood", "far_ood", "id_val", "ood_val")
    return {name: read_manifest(world / name).num_samples for name in names}


def _command_warm(world: Path, arch: str, weights: Path, cache: Path, out: Path) -> tuple[float, str]:
    """The whole `harness evaluate` command in a fresh interpreter, against a filled cache."""
    command = [sys.executable, "-m", "harness.cli", "evaluate", "--weights", str(weights), "--arch", arch,
               "--cache", str(cache), "--out", str(out)]
    for override in _overrides(world):
        command += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"harness evaluate exited {done.returncode}: {done.stderr[-2000:]}")
    stages = [line.removeprefix("==> ").replace(str(weights), weights.name) for line in done.stdout.splitlines()
              if line.startswith("==> ") and not line.endswith("...")]
    return wall, "; ".join(stages)


def run(ctx: BenchContext) -> Section:
    small = ctx.world_root or cache_dir() / "synthetic-bench-smoke"  # the small world, whatever the size
    synthetic.generate(small, synthetic.small_spec())
    rows, notes = [], []
    encoders = [(ARCH, ctx.pick(3, 1))] + ([] if ctx.smoke else [(REALISTIC, 2)])
    for arch, reps in encoders:
        times, line, images = _pair(ctx, small, arch, reps)
        realistic = arch == REALISTIC
        rows.append(Row("evaluate", f"`harness evaluate` again, same weights ({arch}, {images:,} images): warm",
                        times["warm"], "s", "the first evaluation (an empty cache: encodes every set)",
                        times["cold"], times["cold"] / times["warm"], ">= 10" if realistic else "",
                        note=line))
    if not ctx.smoke:
        scratch = ctx.scratch / f"evaluate-{ARCH}"
        wall, stages = _command_warm(small, ARCH, scratch / "weights.pt", scratch / "cache0", scratch / "command")
        rows.append(Row("evaluate", f"the whole command warm, fresh process ({ARCH})", wall, "s",
                        note=f"stages: {stages}"))
        notes.append(f"The whole warm command took {wall:.1f} s in a fresh interpreter: {stages}. What is not "
                     "a stage is the interpreter and its imports (torch, open_clip, pandas, MLflow). These costs "
                     "do not grow with the data; the encode they are compared with does.")
    notes.append(f"Scores {SCORES}, eval.batch_size 64, the small synthetic world "
                 f"({', '.join(f'{k} {v:,}' for k, v in synthetic_counts(small).items())}). "
                 "Warm runs read every set's features and the text side back from the cache "
                 "(harness.evaluation.embed_cache, keyed by the weights' digest) and encode nothing; what remains is the "
                 "model build, the digest, scoring and the Parquet rows.")
    if not ctx.smoke:
        notes.append(f"{REALISTIC} stands for a real CLIP encoder (224 px, 88 M image-tower parameters; random "
                     "weights cost the same to run). At ImageNet scale the cold side grows with the images "
                     "(50,000 for ImageNet val alone) and the warm side barely moves, so the ratio only widens.")
    return Section("evaluate", "9. `harness evaluate` and the shared embedding cache", rows, notes)
