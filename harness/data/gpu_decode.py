"""Decode and augment JPEGs with torchvision's tensor ops: nvJPEG on a CUDA device, libjpeg on the CPU.

``decode_crop_batch(datas, crop, device)`` decodes a batch of JPEG byte strings with
``torchvision.io.decode_jpeg`` (batched on CUDA, where it uses nvJPEG), draws each
image's RandomResizedCrop box exactly as torchvision does (``get_params`` on the
image's size, the same torch RNG draws as the CPU path), and resizes each box with
``torchvision.transforms.v2.functional.resized_crop`` (bicubic, antialiased) on the
device, returning one uint8 (B, 3, h, w) tensor there. Normalising is the caller's
(harness.data.transforms.BatchNormalize works on any device).

The same function on ``device="cpu"`` is the "torchvision decode_jpeg + v2" ceiling of
the decode benchmark, and the reference the CUDA path is tested against
(tests/test_gpu_decode.py; :data:`TOLERANCE` against PIL's decode and resize).
"""

from __future__ import annotations

import io
from typing import Sequence

import torch
from PIL import Image
from torchvision import io as tvio
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

# Against torchvision's RandomResizedCrop on PIL's full decode (uint8 levels): libjpeg vs
# nvJPEG IDCT and upsampling, and tensor vs PIL bicubic, each differ by a level or two.
TOLERANCE = {"mean_abs": 2.5, "p999_abs": 48}


def crop_boxes(datas: Sequence[bytes], crop) -> list[tuple[int, int, int, int]]:
    """Each image's (top, left, height, width), drawn from the torch RNG as torchvision draws them
    (``get_params`` reads only the size of the lazily opened image: no decoding)."""
    return [T.RandomResizedCrop.get_params(Image.open(io.BytesIO(data)), crop.scale, crop.ratio) for data in datas]


def decode_crop_batch(datas: Sequence[bytes], crop, device: str | torch.device = "cuda") -> torch.Tensor:
    """uint8 (B, 3, h, w) on ``device``: each JPEG decoded there, cropped and resized by ``crop``
    (a torchvision RandomResizedCrop; its interpolation, antialias on)."""
    device = torch.device(device)
    boxes = crop_boxes(datas, crop)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    if device.type == "cuda":
        images = tvio.decode_jpeg(encoded, mode=tvio.ImageReadMode.RGB, device=device)
    else:
        images = [tvio.decode_jpeg(e, mode=tvio.ImageReadMode.RGB) for e in encoded]
    size = list(crop.size)
    out = torch.empty((len(datas), 3, *size), dtype=torch.uint8, device=device)
    for k, (image, (top, left, h, w)) in enumerate(zip(images, boxes)):
        out[k] = F.resized_crop(image, top, left, h, w, size, interpolation=crop.interpolation, antialias=True)
    return out


def cuda_decode_available() -> tuple[bool, str]:
    """(True, "") when nvJPEG decoding can run here, else (False, why not)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""

