"""JPEG decoding fused with RandomResizedCrop: draw the crop from the header, decode only as
many pixels as the crop needs, resize the crop's box once.

A JPEG can be decoded at M/8 of its size in the DCT domain (libjpeg-turbo's scaled IDCT),
which skips most of the inverse-DCT and colour-conversion work. A random crop of about
90% of a 500 x 375 image resized to 224 needs only ~2/3 of its pixels, so the decoder is
asked for the smallest scale at which the crop still has at least ``size`` pixels on
each side (never an upsampling), and PIL's bicubic resize (with its antialiasing) maps
the crop's box, in the scaled image's coordinates, to ``size``.

The crop is drawn with torchvision's ``RandomResizedCrop.get_params`` on the image's
size (read from the header), so the same torch RNG state gives the same crop as
torchvision's transform on the fully decoded image. The pixels differ from that
reference by what the scaled IDCT and the fractional box change: measured by
``harness bench --only decode`` and bounded in tests/test_jpeg.py (:data:`TOLERANCE`).

Decoders (:data:`DECODERS`): ``torchvision`` (``torchvision.io.decode_jpeg``, full size,
then torchvision's uint8 bicubic antialiased resize of the crop: no PIL image at all),
``simplejpeg`` (libjpeg-turbo bundled in its wheel, scales M/8), ``turbojpeg`` (PyTurboJPEG
over the system's libturbojpeg 2.x, M/8), ``pil_draft`` (PIL's draft mode: 1/2, 1/4, 1/8
only) and ``pil`` (full decode). :data:`DEFAULT` is the fastest one within
:data:`TOLERANCE` of the reference in ``harness bench --only decode``: torchvision's
(the DCT-scaled decoders are faster than PIL but differ from the reference by several
levels on average, their scaled IDCT being a different low-pass than bicubic antialiasing).
"""

from __future__ import annotations

import functools
import io
import math
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import io as tvio
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

# What the default path may differ from torchvision's RandomResizedCrop on PIL's full decode
# (uint8 levels, over ImageNet-like images): mean |difference| and the largest one. Measured by
# `harness bench --only decode` over 64 images: mean 0.02, max 4 (rounding in the two bicubic
# implementations, at a handful of pixels).
TOLERANCE = {"mean_abs": 0.5, "max_abs": 8}
_EIGHTHS = tuple(k / 8 for k in range(1, 9))


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's header, without decoding."""
    return Image.open(io.BytesIO(data)).size


def _scale(width: int, height: int, box: tuple[int, int, int, int], size: tuple[int, int],
           scales: tuple[float, ...]) -> float:
    """The smallest scale in ``scales`` at which the crop ``box`` (top, left, h, w) keeps at
    least ``size`` (h, w) pixels; 1 when none does."""
    _top, _left, h, w = box
    fits = [s for s in scales if math.floor(h * s) >= size[0] and math.floor(w * s) >= size[1]
            and s * width >= 1 and s * height >= 1]
    return min(fits) if fits else 1.0


def _pil(data: bytes, scale_of: Callable[[tuple[float, ...]], float]) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pil_draft(data: bytes, scale_of: Callable[[tuple[float, ...]], float]) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    scale = scale_of((1 / 8, 1 / 4, 1 / 2, 1.0))
    if scale < 1:
        image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    image.load()
    return image


def _simplejpeg(data: bytes, scale_of: Callable[[tuple[float, ...]], float]) -> Image.Image:
    import simplejpeg

    width, height, _colour, _sampling = simplejpeg.decode_jpeg_header(data)
    scale = scale_of(_EIGHTHS)
    # simplejpeg picks the smallest M/8 scale whose output is at least min_width x min_height
    array = simplejpeg.decode_jpeg(data, "RGB", min_width=math.ceil(width * scale),
                                   min_height=math.ceil(height * scale))
    return Image.fromarray(array, "RGB")


@functools.lru_cache(maxsize=1)
def _turbo():
    from turbojpeg import TurboJPEG, TJPF_RGB  # needs libturbojpeg (Debian: libturbojpeg0)

    return TurboJPEG(), TJPF_RGB


def _turbojpeg(data: bytes, scale_of: Callable[[tuple[float, ...]], float]) -> Image.Image:
    turbo, rgb = _turbo()
    factors = {n / d: (n, d) for n, d in turbo.scaling_factors if n <= d}
    scale = scale_of(tuple(sorted(factors)))
    array = turbo.decode(data, pixel_format=rgb, scaling_factor=factors.get(scale, (1, 1)))
    return Image.fromarray(array, "RGB")


DECODERS: dict[str, Callable] = {"simplejpeg": _simplejpeg, "turbojpeg": _turbojpeg,
                                 "pil_draft": _pil_draft, "pil": _pil}
DEFAULT = "torchvision"  # handled by FusedCrop itself: a tensor path, not a PIL decoder


def decoder_available(name: str) -> bool:
    """Whether ``name``'s library imports (PyTurboJPEG also needs the system's libturbojpeg)."""
    try:
        {"simplejpeg": lambda: __import__("simplejpeg"), "turbojpeg": _turbo}.get(name, lambda: None)()
        return True
    except (ImportError, OSError, RuntimeError):
        return False


def decode_crop(data: bytes, box: tuple[int, int, int, int], size: tuple[int, int],
                interpolation=Image.Resampling.BICUBIC, decoder: str = DEFAULT) -> Image.Image:
    """The crop ``box`` (top, left, height, width in full-size pixels) of a JPEG, resized to
    ``size`` (h, w), decoded at the smallest DCT scale that keeps the crop at least ``size``."""
    width, height = jpeg_size(data)
    image = DECODERS[decoder](data, lambda scales: _scale(width, height, box, size, scales))
    if image.mode != "RGB":
        image = image.convert("RGB")
    sx, sy = image.width / width, image.height / height
    top, left, h, w = box
    return image.resize((size[1], size[0]), interpolation,
                        box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


class FusedCrop:
    """``RandomResizedCrop`` (on PIL images, as torchvision's) fused with the JPEG decode:
    ``__call__(data)`` draws the same crop as ``crop(decode_image(data))`` from the same torch
    RNG state and returns it as uint8 (3, h, w). A JPEG torchvision cannot decode (it raises)
    is decoded by PIL and cropped with the box already drawn, exactly as the reference."""

    def __init__(self, crop: T.RandomResizedCrop, decoder: str = DEFAULT):
        if decoder != DEFAULT and decoder not in DECODERS:
            raise ValueError(f"unknown JPEG decoder {decoder!r}; valid: {', '.join([DEFAULT, *DECODERS])}")
        self.crop, self.decoder = crop, decoder
        self.interpolation = _PIL_MODES[crop.interpolation]

    def __call__(self, data: bytes) -> torch.Tensor:
        header = Image.open(io.BytesIO(data))  # lazy: the size only
        box = T.RandomResizedCrop.get_params(header, self.crop.scale, self.crop.ratio)
        size = list(self.crop.size)
        if self.decoder == DEFAULT:
            try:
                image = tvio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                         mode=tvio.ImageReadMode.RGB)
                return F.resized_crop(image, *box, size, interpolation=self.crop.interpolation, antialias=True)
            except RuntimeError:  # a JPEG variant libjpeg in torchvision refuses: PIL's way, same box
                header.load()
                rgb = header if header.mode == "RGB" else header.convert("RGB")
                return uint8_chw(F.resized_crop(rgb, *box, size, interpolation=self.crop.interpolation))
        return uint8_chw(decode_crop(data, box, tuple(size), self.interpolation, self.decoder))


_PIL_MODES = {T.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC, T.InterpolationMode.BILINEAR:
              Image.Resampling.BILINEAR, T.InterpolationMode.LANCZOS: Image.Resampling.LANCZOS}


def fusable(step) -> bool:
    """Whether a transform step is a RandomResizedCrop this module reproduces (PIL interpolation
    with antialiasing, which PIL always applies)."""
    return (type(step) is T.RandomResizedCrop and step.interpolation in _PIL_MODES
            and step.antialias is not False)


def uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
