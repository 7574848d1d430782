"""Image decoding and a batched fast path for open_clip's image transforms.

open_clip's transforms end in ``MaybeConvertMode("RGB"), MaybeToTensor(), Normalize``.
Run per sample on small images, the last two cost as much as decoding: each is a
handful of tiny tensor ops with a fixed overhead per call. :func:`split` cuts such a
transform in two: the geometric part plus a uint8 conversion per sample, and the
float conversion + normalisation once per stacked batch. Every element goes through
the same float32 operations in the same order (``x / 255``, ``- mean``, ``/ std``),
so the batches are bit-identical to stacking the per-sample outputs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from harness.data import jpeg


def decode_image(data: bytes) -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG, WebP, ...).

    The same pixels as webdataset's ``decode("pil")`` (which loads, then converts to
    RGB twice): an image that is already RGB is returned without copies.
    """
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def to_uint8_chw(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 tensor of an RGB PIL image (torchvision's to_tensor, before its ``/ 255``)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


@dataclass(frozen=True)
class BatchNormalize:
    """uint8 (B, 3, H, W) -> float32 ``(x / 255 - mean) / std``, contiguous (B, 3, H, W)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = batch.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        mean = torch.as_tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return out.sub_(mean).div_(std)


@dataclass(frozen=True)
class SplitTransform:
    """``batch(torch.stack([sample(image) for image in images]))`` equals
    ``torch.stack([transform(image) for image in images])`` for RGB PIL images.

    ``jpeg``, when set, does ``sample(decode_image(data))`` straight from JPEG bytes (the
    decode fused with the crop, harness.data.jpeg), within harness.data.jpeg.TOLERANCE."""

    sample: Callable[[Image.Image], torch.Tensor]
    batch: Callable[[torch.Tensor], torch.Tensor]
    jpeg: Callable[[bytes], torch.Tensor] | None = None

    def encoded(self, data: bytes) -> torch.Tensor:
        """The per-sample part of the transform, from encoded image bytes."""
        if self.jpeg is not None and jpeg.is_jpeg(data):
            return self.jpeg(data)
        return self.sample(decode_image(data))


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _is_to_tensor(step) -> bool:
    # open_clip's MaybeToTensor subclasses ToTensor and only adds a pass-through for tensors.
    return isinstance(step, T.ToTensor)


def _is_rgb_convert(step) -> bool:
    return type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB"


def split(transform: Callable, fuse_jpeg: bool = True) -> SplitTransform:
    """The batched fast path of ``transform`` when it is a Compose ending in open_clip's
    [convert to RGB, ToTensor, Normalize] and float32 is the default dtype; otherwise
    ``transform`` per sample and nothing per batch. When the geometric part is one
    RandomResizedCrop (open_clip's train transform) and ``fuse_jpeg``, JPEG bytes take
    the fused decode + crop of harness.data.jpeg."""
    steps = list(getattr(transform, "transforms", []))
    fits = (len(steps) >= 3 and _is_rgb_convert(steps[-3]) and _is_to_tensor(steps[-2])
            and isinstance(steps[-1], T.Normalize) and not steps[-1].inplace
            and torch.get_default_dtype() == torch.float32)
    if not fits:
        return SplitTransform(transform, _identity)
    norm = steps[-1]
    if any(float(v) == 0 for v in torch.as_tensor(norm.std, dtype=torch.float32)):
        return SplitTransform(transform, _identity)  # let Normalize raise its own error
    # Normalize casts mean and std to the image dtype; so does BatchNormalize (exactly).
    mean = tuple(float(m) for m in torch.as_tensor(norm.mean, dtype=torch.float32))
    std = tuple(float(s) for s in torch.as_tensor(norm.std, dtype=torch.float32))
    geometric = T.Compose(steps[:-3])

    def sample(image: Image.Image) -> torch.Tensor:
        image = geometric(image)
        return to_uint8_chw(image if image.mode == "RGB" else image.convert("RGB"))

    fused = None
    if fuse_jpeg and len(steps) == 4 and jpeg.fusable(steps[0]):
        fused = jpeg.FusedCrop(steps[0])
    return SplitTransform(sample, BatchNormalize(mean, std), fused)
