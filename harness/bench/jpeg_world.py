"""ImageNet-like JPEGs for the decode benchmark: ImageNet's sizes, file sizes and JPEG qualities.

Decoding cost depends on the pixel count, the entropy-coded bytes and the chroma
subsampling, not on what the picture shows, so the images are synthetic: a 1/f^beta
noise field (natural images' amplitude spectrum falls roughly as 1/f) in luminance
plus weaker, smoother chroma, with beta drawn per image so that the file sizes spread
like ImageNet's. Figures matched (ILSVRC-2012 train, 1,281,167 images):

- size: mean 469 x 387 (Chrabaszcz, Loshchilov and Hutter 2017, "A Downsampled Variant
  of ImageNet", section 2); most images were taken from Flickr with the long side at
  500 px, so 500 x 375 (4:3) and 500 x 333 (3:2) dominate, with a tail of smaller and
  larger ones;
- file size: mean about 110 KB (the train tar is 138 GiB for 1,281,167 files: 116 KB);
- JPEG quality: 90 to 96, 4:2:0 chroma subsampling (an assumption from common
  estimates of Flickr's re-encoding, not measured on ImageNet here).

:func:`generate` writes the images as WebDataset shards (``jpg`` + ``cls``) once and
caches them; :func:`stats` measures what was written, and the benchmark reports it.
Used only by ``harness bench --only decode``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.shards import write_shards
from harness.data.tario import read_samples

TARGET = {"width": 469, "height": 387, "kbytes": 110, "quality": (90, 96)}
SPEC_VERSION = 1


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): mostly a 500 px long side at 4:3 or 3:2, some square, some other sizes."""
    kind = rng.random()
    if kind < 0.80:
        long, short = 500, int(rng.choice([375, 333, 500, 400, 281], p=[0.55, 0.25, 0.08, 0.07, 0.05]))
    else:  # the tail: smaller and larger uploads
        long = int(rng.integers(150, 700))
        short = int(long * rng.uniform(0.65, 0.85))
    return (long, short) if rng.random() < 0.87 else (short, long)


def _field(rng: np.random.Generator, height: int, width: int, beta: float) -> np.ndarray:
    """A zero-mean, unit-variance 2-D field with a 1/f^beta amplitude spectrum."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal(radius.shape) + 1j * rng.standard_normal(radius.shape)) / radius**beta
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(height, width))
    return field / (field.std() + 1e-12)


def make_image(rng: np.random.Generator) -> tuple[bytes, dict]:
    """One JPEG and its facts (width, height, quality, bytes)."""
    width, height = draw_size(rng)
    beta = rng.uniform(0.9, 1.4)
    luma = 128 + 48 * _field(rng, height, width, beta)
    # chroma at half resolution (what 4:2:0 keeps anyway), upsampled by repetition
    half = [24 * _field(rng, (height + 1) // 2, (width + 1) // 2, beta + 0.5) for _ in range(2)]
    chroma = [c.repeat(2, axis=0).repeat(2, axis=1)[:height, :width] for c in half]
    ycc = np.clip(np.stack([luma, 128 + chroma[0], 128 + chroma[1]], axis=-1), 0, 255).astype(np.uint8)
    quality = int(rng.integers(TARGET["quality"][0], TARGET["quality"][1] + 1))
    buf = io.BytesIO()
    Image.fromarray(ycc, "YCbCr").convert("RGB").save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    data = buf.getvalue()
    return data, {"width": width, "height": height, "quality": quality, "bytes": len(data)}


def generate(root: Path, images: int, per_shard: int = 128, seed: int = 0) -> list[str]:
    """Write ``images`` ImageNet-like JPEGs as shards under ``root`` (once; cached by count and
    seed) and return the shard paths."""
    root = Path(root)
    done = root / "spec.json"
    spec = {"version": SPEC_VERSION, "images": images, "per_shard": per_shard, "seed": seed}
    if done.is_file() and json.loads(done.read_text()) == spec:
        return sorted(str(p) for p in root.glob("jpeg-*.tar"))
    for old in root.glob("jpeg-*.tar"):
        old.unlink()
    rng = np.random.default_rng(seed)
    samples = ({"__key__": f"img{i:07d}", "jpg": make_image(rng)[0], "cls": i % 1000} for i in range(images))
    names = write_shards(samples, root, "jpeg", per_shard)
    done.write_text(json.dumps(spec))
    return [str(root / name) for name in names]


def stats(shards: list[str]) -> dict:
    """Mean width, height, kilobytes and the quality range of the images in ``shards``."""
    facts = []
    for url in shards:
        for sample in read_samples(url):
            image = Image.open(io.BytesIO(sample["jpg"]))
            facts.append((*image.size, len(sample["jpg"]), estimate_quality(image)))
    width, height, size, quality = (np.array(column) for column in zip(*facts))
    return {"images": len(facts), "width": float(width.mean()), "height": float(height.mean()),
            "kbytes": float(size.mean() / 1000), "kbytes_p10": float(np.percentile(size, 10) / 1000),
            "kbytes_p90": float(np.percentile(size, 90) / 1000),
            "quality_min": int(quality.min()), "quality_max": int(quality.max())}


def estimate_quality(image: Image.Image) -> int:
    """The IJG quality whose scaled luminance table matches the file's (what ``-quality`` was)."""
    table = np.array(image.quantization[0], dtype=float)
    base = np.array(_IJG_LUMA, dtype=float)
    best, err = 0, float("inf")
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        candidate = np.clip(np.floor((base * scale + 50) / 100), 1, 255)
        e = float(np.abs(np.sort(candidate) - np.sort(table)).sum())  # order-free: zigzag vs natural
        if e < err:
            best, err = q, e
    return best


_IJG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
