"""harness bench: every benchmark runs at smoke size through the CLI and writes its table.

No timing threshold is asserted here: the figures of a smoke run on a shared CI
machine mean nothing; only the table's shape, the verdict logic and the markdown do.
"""

import importlib
import math
import re

import open_clip
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import cli
from harness.bench import common, decode, evaluate_cache, evaluation, gpu_step, memory, metrics, pipeline, recording, run, table, training


@pytest.fixture
def bench_world(world, monkeypatch):
    """Point the bench's smoke world at the session's small world (same spec) instead of generating another."""
    (world.parent / "synthetic-bench-smoke").unlink(missing_ok=True)
    (world.parent / "synthetic-bench-smoke").symlink_to(world, target_is_directory=True)
    return world


def _bench(tmp_path, names: list[str]) -> pd.DataFrame:
    argv = ["bench", "--smoke", "--out", str(tmp_path)] + [a for name in names for a in ("--only", name)]
    assert cli.main(argv) == 0
    df = pd.read_parquet(tmp_path / "bench.parquet")
    assert tuple(df.columns) == table.COLUMNS
    assert set(df["bench"]) == set(names)
    text = (tmp_path / "bench.md").read_text()
    assert "torch " + torch.__version__ in text and "CPUs" in text  # the machine is stated
    titles = re.findall(r"^### (\d+\. .+?) \(", text, re.M)  # one numbered section per benchmark run
    assert len(titles) == len(names) and all(f"| {title} |" in text for title in titles)
    for row in df.itertuples():
        assert row.figure and row.unit is not None
        if row.goal and not pd.isna(row.met):  # a verdict is exactly the goal applied to the ratio
            assert row.met == table.goal_met(row.ratio, row.goal)
    return df


@pytest.mark.slow
def test_bench_smoke_every_benchmark_but_ray(tmp_path, bench_world):
    names = [n for n in run.BENCHMARKS if n != "ray"]
    df = _bench(tmp_path, names)
    assert len(df[df.bench == "pipeline"]) == 6 and len(df[df.bench == "eval"]) == 3
    # pillow-simd is an optional ceiling built by hand (harness/bench/decode.py): NaN, and the section
    # says why, on a machine without it (a fresh CI machine); every other figure is measured.
    simd = df["figure"].str.contains("pillow-simd")
    assert (df[(df.bench != "gpu") & ~simd]["value"] > 0).all()
    text = (tmp_path / "bench.md").read_text()
    assert all(v > 0 or (math.isnan(v) and "pillow-simd: not built" in text) for v in df[simd]["value"])
    decode = df[df.bench == "decode"]
    assert {"img/s", "cores"} <= set(decode["unit"]) and len(decode[decode.unit == "cores"]) == 2
    if not torch.cuda.is_available():
        for gpu in df[df.bench == "gpu"].itertuples():
            assert gpu.note == "skipped: no CUDA device" and pd.isna(gpu.met) and math.isnan(gpu.value)
    metrics_row = df[df.bench == "metrics"].iloc[0]
    assert metrics_row.note.startswith("values equal")
    warm = df[df.bench == "evaluate"].iloc[0]  # the second evaluation of the same weights reads the cache only
    assert "encoded nothing" in warm.note and warm.ratio > 1 and evaluate_cache.REALISTIC not in warm.figure


@pytest.mark.slow
def test_bench_smoke_ray(tmp_path, bench_world):
    df = _bench(tmp_path, ["ray"])
    assert list(df["unit"]) == ["samples/s", "s"] and (df["value"] > 0).all()


def test_bench_rejects_unknown_names(tmp_path, capsys):
    assert cli.main(["bench", "--only", "pipeline", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "bench.parquet").exists()


@pytest.mark.parametrize("ratio,goal,met", [(0.95, ">= 0.9", True), (0.9, ">= 0.9", True), (0.89, ">= 0.9", False),
                                            (1.1, "<= 1.1", True), (1.2, "<= 1.1", False),
                                            (math.nan, ">= 0.5", None), (math.inf, "<= 1.1", None)])
def test_goal_met(ratio, goal, met):
    assert table.goal_met(ratio, goal) is met


def test_goal_met_rejects_other_operators():
    with pytest.raises(ValueError, match="goal"):
        table.goal_met(1.0, "> 1")


def test_row_takes_its_verdict_from_the_goal():
    assert table.Row("x", "f", 1.0, "s", ratio=2.0, goal=">= 1").met is True
    assert table.Row("x", "f", 1.0, "s", ratio=2.0).met is None
    assert table.Row("x", "f", math.nan, "", goal=">= 0.4").met is None  # skipped


def test_interleaved_alternates_and_takes_the_median():
    calls, values = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([10.0, 30.0, 20.0])}

    def candidate(name):
        def call():
            calls.append(name)
            return next(values[name])
        return call

    assert common.interleaved({"a": candidate("a"), "b": candidate("b")}, reps=3) == {"a": 2.0, "b": 20.0}
    assert calls == ["a", "b"] * 3


def test_forward_flops_match_torch_flop_counter():
    # torch's FlopCounterMode counts every matmul and convolution but (on CPU) not the fused
    # attention kernel, so the analytic count minus its attention term must match it exactly.
    cfg = open_clip.get_model_config(common.ARCH)
    batch = 3
    model = open_clip.create_model(common.ARCH, pretrained=None, output_dict=True)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    images = torch.randn(batch, 3, vision["image_size"], vision["image_size"])
    tokens = torch.randint(1, 100, (batch, text["context_length"]))
    with FlopCounterMode(display=False) as counter:
        out = model(images, tokens)
        out["image_features"] @ out["text_features"].T
    n_image = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    attention = 4 * batch * (n_image**2 * vision["width"] * vision["layers"]
                             + text["context_length"] ** 2 * text["width"] * text["layers"])
    assert gpu_step.forward_flops(cfg, batch) - attention == counter.get_total_flops()


def test_forward_flops_of_vit_b_16():
    # open_clip's own profile of ViT-B-16 lists 41.09 GFLOPs per image-text pair.
    assert gpu_step.forward_flops(open_clip.get_model_config("ViT-B-16"), 1) == pytest.approx(41.09e9, rel=1e-3)


def test_gpu_step_runs_on_cpu():
    # The GPU script's step, on the CPU model for a step: proves the code path without a GPU.
    result = gpu_step.measure(common.ARCH, batch=4, steps=1, warmup=1, device="cpu", precision="fp32")
    assert result["steps"] == 1 and result["images_per_s"] > 0 and math.isnan(result["mfu"])


def test_gpu_decode_timing_runs_on_cpu(tmp_path):
    result = gpu_step.measure_decode(batch=4, images=8, device="cpu", max_seconds=0.1, root=str(tmp_path))
    assert result["decode_images_per_s"] > 0 and result["decode_max_abs_vs_cpu"] == 0


def test_peak_flops_by_device_name():
    assert gpu_step.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_step.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_step.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert math.isnan(gpu_step.peak_flops("some other card"))


def test_every_registered_benchmark_is_a_module_with_run():
    for name, path in run.BENCHMARKS.items():
        assert callable(importlib.import_module(path).run), name
    assert run.select([]) == list(run.BENCHMARKS)


def test_recording_writes_each_run_once_per_table_and_legacy_rewrites(tmp_path):
    samples = recording.sample_frame({"a": 3, "b": 2})
    assert len(samples) == 5 * len(recording.SCORES)
    times = recording.record_times(recording.results.upsert, tmp_path / "new", samples, 3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert len(recording.results.read(tmp_path / "new", recording.results.SAMPLES)) == 3 * len(samples)
    recording.record_times(recording.legacy_upsert, tmp_path / "old", samples, 3)
    assert len(pd.read_parquet(tmp_path / "old" / "sample_scores.parquet")) == 3 * len(samples)


def test_the_vit_b_16_step_rate_at_the_stated_mfu():
    # 0.4 x 312 TFLOP/s over 3 x 41.09 GFLOP per pair: about 1,012 images/s on an A100.
    assert decode.step_rate(312.0) == pytest.approx(0.4 * 312e12 / (3 * 41.09e9), rel=1e-3)
