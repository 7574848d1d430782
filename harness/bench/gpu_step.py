"""GPU step: the harness's FLYP/CMA training step on ViT-B/16, images/s and model-FLOPs utilisation.

One prepared script for a short GPU lease (well under 5 minutes: model build, a few
warm-up steps, at most ``max_seconds`` of timed steps)::

    python -m harness.bench.gpu_step                # ViT-B-16, batch 256, bf16 autocast, CMA lambda 0.1,
                                                    # then the GPU JPEG decode + crop (nvJPEG)
    python -m harness.bench.gpu_step --json out.json
    python -m harness.bench.gpu_step --no-decode    # the step alone

The step is harness.train.engine.train_step (the one every run uses) with CMALoss and the
harness's AdamW, on random init and random inputs already on the device: it measures
the model step alone, not the input pipeline. MFU = analytic model FLOPs per second
(:func:`forward_flops` x 3 for forward + backward) over the card's dense bf16 peak
(:data:`PEAK_BF16_TFLOPS`). Without a CUDA device the benchmark row is skipped.

The decode figure (:func:`measure_decode`): ImageNet-like JPEGs (harness.bench.jpeg_world)
decoded on the device by harness.data.gpu_decode (torchvision's nvJPEG decode_jpeg, then
RandomResizedCrop 224 bicubic per image), in batches of ``batch``, images/s; its pixels are
checked against the CPU path (harness.data.gpu_decode.TOLERANCE) on the first batch.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import open_clip
import torch

from harness import models  # noqa: F401  (models registers the harness's model configs)
from harness.train import engine
from harness.bench.common import BenchContext
from harness.bench.table import Row, Section
from harness.config import OptimConfig
from harness.losses import CMALoss

ARCH, BATCH, LAM = "ViT-B-16", 256, 0.1
# Dense bf16 tensor-core peaks, TFLOP/s, from the vendor's data sheets; the first name
# found in torch.cuda.get_device_name() wins, so "H100 PCIe" precedes "H100".
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def peak_flops(device_name: str) -> float:
    """The card's dense bf16 peak in FLOP/s; NaN for a card not in the table."""
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return tflops * 1e12
    return math.nan


def _tower(tokens: int, width: int, layers: int, mlp_ratio: float) -> float:
    # Per token and layer: q, k, v and out projections 8 w^2, MLP 4 r w^2 (two matmuls),
    # attention scores and weighted sum 4 n w; a matmul of m x k by k x n is 2 m k n FLOPs.
    return layers * tokens * (8 * width**2 + 4 * mlp_ratio * width**2 + 4 * tokens * width)


def forward_flops(cfg: dict, batch: int) -> float:
    """Matmul FLOPs of one forward pass of an open_clip CLIP config on ``batch`` image-text pairs,
    including the (batch x batch) similarity logits; norms, activations and softmax are not counted."""
    vision, text, embed = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    image = (_tower(patches + 1, vision["width"], vision["layers"], vision.get("mlp_ratio", 4.0))
             + 2 * patches * 3 * vision["patch_size"] ** 2 * vision["width"]  # patch embedding
             + 2 * vision["width"] * embed)  # projection of the pooled token
    words = (_tower(text["context_length"], text["width"], text["layers"], text.get("mlp_ratio", 4.0))
             + 2 * text["width"] * embed)
    return batch * (image + words) + 2 * batch * batch * embed


def measure(arch: str = ARCH, batch: int = BATCH, steps: int = 30, warmup: int = 5, device: str = "cuda",
            precision: str = "bf16", max_seconds: float = 60.0) -> dict:
    """Time ``steps`` training steps (fewer if ``max_seconds`` runs out) after ``warmup`` steps."""
    torch.manual_seed(0)
    dev = torch.device(device)
    cfg = open_clip.get_model_config(arch)
    model = open_clip.create_model(arch, pretrained=None, output_dict=True).to(dev)
    size, context = cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]
    data = [(torch.randn(batch, 3, size, size, device=dev),
             torch.randint(1, cfg["text_cfg"]["vocab_size"], (batch, context), device=dev))]
    optimizer = engine.make_optimizer(model, OptimConfig(lr=1e-5))
    scheduler = engine.warmup_cosine(optimizer, 0, warmup + steps)
    loss = CMALoss(LAM)

    def step():
        engine.train_step(model, data, loss, optimizer, scheduler, dev, precision)  # ends in .item(): synchronised

    for _ in range(warmup):
        step()
    done, start = 0, time.perf_counter()
    while done < steps and time.perf_counter() - start < max_seconds:
        step()
        done += 1
    elapsed = time.perf_counter() - start
    flops_per_s = 3 * forward_flops(cfg, batch) * done / elapsed
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    peak = peak_flops(name)
    return {"arch": arch, "batch": batch, "steps": done, "precision": precision, "device": name,
            "images_per_s": batch * done / elapsed, "tflops": flops_per_s / 1e12, "peak_tflops": peak / 1e12,
            "mfu": flops_per_s / peak, "seconds_per_step": elapsed / done}


def measure_decode(batch: int = BATCH, images: int = 512, device: str = "cuda", max_seconds: float = 60.0,
                   root: str | None = None) -> dict:
    """GPU JPEG decode + crop images/s over ImageNet-like JPEGs, and its largest |difference|
    from the CPU path on one batch (uint8 levels)."""
    from pathlib import Path

    from harness.bench import decode, jpeg_world
    from harness.data import gpu_decode
    from harness.data.tario import read_samples
    from harness.paths import cache_dir

    shards = jpeg_world.generate(Path(root or cache_dir()) / f"imagenet-like-jpeg-{images}", images)
    datas = [sample["jpg"] for url in shards for sample in read_samples(url)]
    crop = decode.train_crop()
    batches = [datas[i:i + batch] for i in range(0, len(datas), batch)]
    torch.manual_seed(0)
    first = gpu_decode.decode_crop_batch(batches[0], crop, device)
    torch.manual_seed(0)
    cpu = gpu_decode.decode_crop_batch(batches[0], crop, "cpu")
    d = (first.cpu().int() - cpu.int()).abs().float()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < max_seconds and done < 4 * len(datas):
        for chunk in batches:
            out = gpu_decode.decode_crop_batch(chunk, crop, device)
            done += len(chunk)
        if out.is_cuda:
            torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"decode_images_per_s": done / elapsed, "decode_mean_abs_vs_cpu": d.mean().item(),
            "decode_max_abs_vs_cpu": d.max().item(), "decode_batch": batch}


def _row(result: dict | None) -> Row:
    figure = f"{ARCH} FLYP/CMA training step, random init, bf16 autocast, batch {BATCH}: MFU"
    if result is None:
        return Row("gpu", figure, math.nan, "", "the card's dense bf16 peak", goal=">= 0.4",
                   note="skipped: no CUDA device")
    return Row("gpu", figure, result["tflops"], "TFLOP/s", f"{result['device']} dense bf16 peak",
               result["peak_tflops"], result["mfu"], ">= 0.4", note=f"{result['images_per_s']:.0f} images/s")


def run(ctx: BenchContext) -> Section:
    how = ("Run it alone on a GPU machine with `python -m harness.bench.gpu_step` (one script, under "
           "5 minutes), or `harness bench --only gpu`.")
    if not torch.cuda.is_available():
        return Section("gpu", "6. GPU step", [_row(None), _decode_row(None)],
                       [f"Skipped: no CUDA device on this machine. {how}"])
    result = measure(steps=ctx.pick(30, 3), warmup=ctx.pick(5, 1))
    result.update(measure_decode(images=ctx.pick(512, 16), max_seconds=ctx.pick(30, 2)))
    notes = [f"{result['images_per_s']:.0f} images/s, {result['seconds_per_step'] * 1e3:.0f} ms per step over "
             f"{result['steps']} steps on {result['device']}; {3 * forward_flops(open_clip.get_model_config(ARCH), 1) / 1e9:.0f} "
             "GFLOP per image-text pair (forward + backward, analytic). Random inputs on the device: the input "
             f"pipeline is not part of this figure. {how}"]
    notes.append(f"GPU JPEG decode + crop (nvJPEG, harness.data.gpu_decode): {result['decode_images_per_s']:.0f} "
                 f"images/s against the step's {result['images_per_s']:.0f}; |difference| from the CPU path mean "
                 f"{result['decode_mean_abs_vs_cpu']:.2f}, max {result['decode_max_abs_vs_cpu']:.0f} levels.")
    return Section("gpu", "6. GPU step", [_row(result), _decode_row(result)], notes)


def _decode_row(result: dict | None) -> Row:
    figure = "GPU JPEG decode + RandomResizedCrop 224 (nvJPEG), ImageNet-like JPEGs, vs the training step's rate"
    if result is None:
        return Row("gpu", figure, math.nan, "img/s", "the ViT-B/16 step's images/s", goal=">= 1.0",
                   note="skipped: no CUDA device")
    return Row("gpu", figure, result["decode_images_per_s"], "img/s", "the ViT-B/16 step's images/s",
               result["images_per_s"], result["decode_images_per_s"] / result["images_per_s"], ">= 1.0")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=ARCH)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--no-decode", action="store_true", help="skip the GPU JPEG decode timing")
    args = parser.parse_args(argv)
    result = measure(args.arch, args.batch, args.steps, args.warmup, args.device)
    if not args.no_decode:
        result.update(measure_decode(args.batch, device=args.device))
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
