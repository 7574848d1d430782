"""Decode budget per GPU: ImageNet-like JPEGs to 224 x 224 training crops, images/s per core.

Every candidate turns the JPEGs of harness.bench.jpeg_world's shards into uint8
(3, 224, 224) crops with RandomResizedCrop(224, scale=(0.9, 1), bicubic), open_clip's
train transform for ViT-B/16, on one core (one process, one torch thread):

- the harness's training stream (tar reading, shuffle buffer, decode + crop, tokens,
  normalised batches of 256): what a training worker runs;
- bare loops over the decoded bytes in memory (no reading, no batching: ceilings):
  PIL decode + torchvision's crop (the reference for pixels), the fused JPEG crop of
  harness.data.jpeg with each decoder (PIL draft mode, simplejpeg, PyTurboJPEG), and
  torchvision's decode_jpeg + v2 resized_crop (harness.data.jpeg's default);
- pillow-simd, built from source in its own venv (``HARNESS_PILLOW_SIMD_PYTHON``,
  default /tmp/issue16-simd/bin/python): PIL decode + crop-resize in that interpreter.

The cores one GPU needs = its ViT-B/16 FLYP/CMA step rate (harness.bench.gpu_step's
analytic FLOPs at :data:`MFU` of the card's dense bf16 peak) / the stream's images/s per core.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from pathlib import Path

import open_clip
import torch
from torchvision import transforms as T

from harness.bench import gpu_step, jpeg_world
from harness.bench.common import BenchContext, interleaved
from harness.bench.pipeline import steady_rate
from harness.bench.table import Row, Section
from harness.data import jpeg
from harness.data.pipeline import class_prompt, train_pipeline
from harness.data.tario import read_samples
from harness.data.transforms import decode_image, to_uint8_chw
from harness.paths import cache_dir

MFU = 0.4  # what harness.bench.gpu_step's goal asks of the step
CARDS = {"A100": gpu_step.PEAK_BF16_TFLOPS["A100"], "H100": gpu_step.PEAK_BF16_TFLOPS["H100"]}
SIMD_PYTHON = os.environ.get("HARNESS_PILLOW_SIMD_PYTHON", "/tmp/issue16-simd/bin/python")
REFERENCE = "pil"


def train_crop() -> T.RandomResizedCrop:
    """open_clip's ViT-B/16 train crop: 224, scale (0.9, 1), bicubic."""
    return open_clip.image_transform(224, is_train=True).transforms[0]


def ceilings(crop: T.RandomResizedCrop) -> dict[str, callable]:
    """name -> (bytes -> uint8 (3, 224, 224)) for every in-process bare loop available here."""
    out = {"pil": lambda data: to_uint8_chw(crop(decode_image(data)))}
    for name in ("pil_draft", "simplejpeg", "turbojpeg"):
        if jpeg.decoder_available(name):
            out[name] = jpeg.FusedCrop(crop, name)
    out["torchvision"] = jpeg.FusedCrop(crop, "torchvision")
    return out


def loop_rate(fn, datas: list[bytes]) -> float:
    start = time.perf_counter()
    for data in datas:
        fn(data)
    return len(datas) / (time.perf_counter() - start)


def differences(candidates: dict, datas: list[bytes]) -> dict[str, dict[str, float]]:
    """Each candidate's |difference| from the reference (mean, 99.9th percentile, max; uint8
    levels) on the same crops: the torch RNG is reseeded per image for both."""
    out = {}
    for name, fn in candidates.items():
        diffs = []
        for i, data in enumerate(datas):
            torch.manual_seed(i)
            ref = candidates[REFERENCE](data)
            torch.manual_seed(i)
            diffs.append((fn(data).int() - ref.int()).abs().flatten())
        d = torch.cat(diffs).float()
        out[name] = {"mean_abs": d.mean().item(), "p999_abs": torch.quantile(d[::7], 0.999).item(),
                     "max_abs": d.max().item()}
    return out


SIMD_SCRIPT = r"""
import io, random, sys, tarfile, time, math, json
import PIL
from PIL import Image
datas = []
for url in sys.argv[2:]:
    with tarfile.open(url) as tar:
        datas += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
rng = random.Random(0)
def crop(image):  # torchvision's RandomResizedCrop draw, scale (0.9, 1), ratio (3/4, 4/3)
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(0.9, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return image.crop((left, top, left + cw, top + ch))
    return image
rates = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    for data in datas:
        crop(Image.open(io.BytesIO(data)).convert("RGB")).resize((224, 224), Image.BICUBIC).tobytes()
    rates.append(len(datas) / (time.perf_counter() - start))
rates.sort()
print(json.dumps({"rate": rates[len(rates) // 2], "version": PIL.__version__}))
"""


def simd_rate(shards: list[str], reps: int) -> tuple[float, str]:
    """pillow-simd's images/s in its own interpreter (NaN and why when it is not built)."""
    if not Path(SIMD_PYTHON).is_file():
        return float("nan"), f"not built ({SIMD_PYTHON} missing)"
    env = {"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([SIMD_PYTHON, "-c", SIMD_SCRIPT, str(reps), *shards], capture_output=True, text=True,
                          timeout=900, env=env)
    if done.returncode != 0:
        return float("nan"), f"failed: {done.stderr[-300:]}"
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["rate"], f"Pillow {result['version']}"


def stream_rate(shards: list[str], batch: int, n_batches: int) -> float:
    transform = open_clip.image_transform(224, is_train=True)
    # One class name for all: the stream's token cache then holds every prompt from the first batch on,
    # as it does for ImageNet's 1,000 prompts after warm-up (otherwise a short timed run tokenises them).
    caption = class_prompt(["thing"] * 1000, "a photo of a {}")
    stream = train_pipeline(shards, transform, caption, open_clip.get_tokenizer("ViT-B-16"), batch,
                            shuffle_buffer=batch)
    return steady_rate(iter(stream), n_batches)


def step_rate(peak_tflops: float) -> float:
    """ViT-B/16 FLYP/CMA training images/s at :data:`MFU` of ``peak_tflops``."""
    per_image = 3 * gpu_step.forward_flops(open_clip.get_model_config("ViT-B-16"), 1)
    return MFU * peak_tflops * 1e12 / per_image


def run(ctx: BenchContext) -> Section:
    images, batch, n_batches, reps = ctx.pick((512, 64, 6, 3), (16, 8, 1, 1))
    root = ctx.world_root or cache_dir()
    shards = jpeg_world.generate(Path(root) / f"imagenet-like-jpeg-{images}", images, per_shard=128)
    facts = jpeg_world.stats(shards)
    datas = [s["jpg"] for url in shards for s in read_samples(url)]
    crop = train_crop()
    candidates = ceilings(crop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = interleaved({"stream": lambda: stream_rate(shards, batch, n_batches),
                             **{n: (lambda fn=fn: loop_rate(fn, datas)) for n, fn in candidates.items()}}, reps)
        diffs = differences(candidates, datas[: ctx.pick(64, 4)])
    finally:
        torch.set_num_threads(threads)
    rates["pillow-simd"], simd_note = simd_rate(shards, reps)
    return Section("decode", "8. decode budget per GPU", _rows(rates, diffs), _notes(facts, rates, diffs, simd_note))


LABELS = {"pil": "PIL decode + torchvision RandomResizedCrop (the pixel reference)",
          "pil_draft": "PIL draft-mode decode + fused crop (harness.data.jpeg)",
          "simplejpeg": "simplejpeg DCT-scaled decode + fused crop (harness.data.jpeg)",
          "turbojpeg": "PyTurboJPEG DCT-scaled decode + fused crop (harness.data.jpeg)",
          "torchvision": "torchvision decode_jpeg + v2 resized_crop (harness.data.jpeg's default)",
          "pillow-simd": "pillow-simd (AVX2, built from source) decode + crop + resize"}


def _rows(rates: dict[str, float], diffs: dict) -> list[Row]:
    ref = rates[REFERENCE]
    rows = []
    for name, rate in rates.items():
        if name == "stream":
            continue
        d = diffs.get(name)
        note = f"|diff| from PIL: mean {d['mean_abs']:.2f}, p99.9 {d['p999_abs']:.0f}" if d else ""
        rows.append(Row("decode", f"bare loop, 1 core: {LABELS[name]}", rate, "img/s", LABELS[REFERENCE],
                        ref, rate / ref, "", note))
    best = max((n for n in rates if n != "stream" and n in diffs), key=rates.get)
    rows.append(Row("decode", "harness train stream, 1 core (tar, shuffle, decode + crop, tokens, batches)",
                    rates["stream"], "img/s", f"fastest in-process bare loop ({best})", rates[best],
                    rates["stream"] / rates[best], ">= 0.8"))
    for card, peak in CARDS.items():
        need = step_rate(peak)
        rows.append(Row("decode", f"cores one {card} needs: ViT-B/16 step at MFU {MFU} ({need:,.0f} img/s) "
                        "/ the stream's img/s per core", need / rates["stream"], "cores", "", note="info"))
    return rows


def _notes(facts: dict, rates: dict, diffs: dict, simd_note: str) -> list[str]:
    measured = ", ".join(f"{n} mean {d['mean_abs']:.2f} / max {d['max_abs']:.0f}" for n, d in diffs.items())
    return [
        f"Images: {facts['images']} synthetic ImageNet-like JPEGs (harness.bench.jpeg_world): mean "
        f"{facts['width']:.0f} x {facts['height']:.0f} px, {facts['kbytes']:.0f} KB (p10 {facts['kbytes_p10']:.0f}, "
        f"p90 {facts['kbytes_p90']:.0f}), quality {facts['quality_min']}-{facts['quality_max']}, 4:2:0; "
        "ImageNet's: 469 x 387 mean (Chrabaszcz et al. 2017), ~110 KB mean (138 GiB / 1.28M train files), "
        "quality 90-96 assumed.",
        "Pixel differences are against PIL's full decode + torchvision's RandomResizedCrop with the same crop "
        f"(uint8 levels): {measured}. "
        f"The default path (harness.data.jpeg.DEFAULT = {jpeg.DEFAULT}) is the fastest within "
        f"harness.data.jpeg.TOLERANCE (mean {jpeg.TOLERANCE['mean_abs']}, max {jpeg.TOLERANCE['max_abs']}); "
        "the DCT-scaled decoders trade several levels of mean difference for their speed.",
        f"pillow-simd: {simd_note}; its loop draws crops with Python's RNG (same distribution), pixels not compared.",
        f"Cores per GPU: ViT-B/16 at {3 * gpu_step.forward_flops(open_clip.get_model_config('ViT-B-16'), 1) / 1e9:.0f} "
        f"GFLOP per image-text pair (forward + backward, harness.bench.gpu_step), MFU {MFU}, dense bf16 peaks "
        f"A100 {CARDS['A100']:.0f} / H100 {CARDS['H100']:.0f} TFLOP/s. A p4d.24xlarge gives 12 vCPUs per A100.",
        "Bound by the JPEG decode (entropy decoding + IDCT + colour conversion) and the bicubic resize of "
        "each crop, one image at a time in C; the stream adds tar reading, the shuffle buffer and batching.",
    ]
