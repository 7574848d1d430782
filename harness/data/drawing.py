"""Drawing the embedded world's images: shapes (anti-aliased polygon masks), fills, backgrounds,
textures, blur and noise, each from the numpy Generator it is given, as uint8 RGB arrays, and their
PNG bytes. Apart from harness.data.synthetic (what the world holds: concepts, splits, captions,
datasets and their shards), which decides what to draw; the order of random draws here is part of
the world (GENERATOR_VERSION there).
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (220, 35, 35), "green": (40, 180, 50), "blue": (45, 75, 235), "yellow": (240, 225, 40),
           "purple": (145, 50, 205), "orange": (250, 135, 20), "white": (240, 240, 240), "cyan": (40, 215, 225)}
BACKGROUNDS = ("dark", "grey", "noisy", "gradient")
PATTERNS = ("solid", "striped", "dotted")  # object fills; solid is drawn most often


def _regular(n: int, radii=(1.0,), phase: float = 0.0) -> list[tuple[float, float]]:
    m = n * len(radii)
    return [(radii[k % len(radii)] * math.cos(phase + 2 * math.pi * k / m),
             radii[k % len(radii)] * math.sin(phase + 2 * math.pi * k / m)) for k in range(m)]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    y = y - (y.max() + y.min()) / 2  # centre the bounding box on the origin
    return list(zip(x / 16.5, y / 16.5))


_W = 0.34  # half-width of the cross's arms
POLYGONS = {  # unit-radius outlines, rotated and scaled per image
    "square": _regular(4, (0.85,), math.pi / 4), "triangle": _regular(3, phase=-math.pi / 2),
    "star": _regular(5, (1.0, 0.42), -math.pi / 2), "diamond": [(0, -1), (0.58, 0), (0, 1), (-0.58, 0)],
    "cross": [(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1), (-_W, _W), (-1, _W),
              (-1, -_W), (-_W, -_W)],
    "arrow": [(-1, -0.24), (0.1, -0.24), (0.1, -0.68), (1, 0), (0.1, 0.68), (0.1, 0.24), (-1, 0.24)],
    "heart": _heart(),
}


def shape_mask(shape: str, cx: float, cy: float, r: float, angle: float, size: int, scale: int = 4) -> np.ndarray:
    """Coverage in [0, 1] (size x size x 1) of a shape centred at (cx, cy), radius r, rotated by angle.
    Drawn at ``scale`` times the resolution and box-filtered, for smooth edges."""
    img = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(img)
    cx, cy, r = cx * scale, cy * scale, r * scale
    ca, sa = math.cos(angle), math.sin(angle)

    def disc(rad: float, dx: float = 0.0, fill: int = 255):
        x, y = cx + dx * r * ca, cy + dx * r * sa
        draw.ellipse([x - rad * r, y - rad * r, x + rad * r, y + rad * r], fill=fill)

    if shape in POLYGONS:
        draw.polygon([(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in POLYGONS[shape]], fill=255)
    elif shape == "circle":
        disc(0.9)
    elif shape == "ring":
        disc(1.0), disc(0.55, fill=0)
    elif shape == "crescent":
        disc(1.0), disc(0.85, dx=0.5, fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    small = img.resize((size, size), Image.BOX)
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


_GRID = functools.lru_cache(maxsize=4)(lambda size: np.mgrid[0:size, 0:size].astype(np.float32))


def _jitter(rgb, rng, amount: int = 18) -> np.ndarray:
    """A colour with per-channel jitter and a brightness change: same name, varied pixels."""
    return np.clip((np.asarray(rgb) + rng.integers(-amount, amount + 1, 3)) * rng.uniform(0.85, 1.08), 0, 255)


def _background(rng, size: int) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    tint = rng.integers(0, 60, 3).astype(np.float32)
    img = np.broadcast_to(tint, (size, size, 3)).astype(np.float32)
    if kind == "grey":
        img[:] = rng.integers(50, 100)
    elif kind == "noisy":
        img = img + rng.normal(0, 22, (size, size, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
        img = img + t * rng.integers(0, 60, 3)
        img = img if rng.random() < 0.5 else img.transpose(1, 0, 2)
    return img, kind


def _rotated_grid(rng, size: int, turn: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame rotated by a random angle in [0, turn)."""
    yy, xx = _GRID(size)
    phi = rng.uniform(0, turn)
    return xx * math.cos(phi) + yy * math.sin(phi), -xx * math.sin(phi) + yy * math.cos(phi)


def _fill(pattern: str, rng, size: int) -> np.ndarray | float:
    """Shading of the object's fill: 1 where the colour is full, 0.5 on stripes / dots."""
    if pattern == "solid":
        return 1.0
    u, v = _rotated_grid(rng, size, math.pi)
    if pattern == "striped":
        dark = np.sin(2 * math.pi * u / rng.uniform(3.5, 5)) > 0.2
    else:
        dark = ((u % 4) - 2) ** 2 + ((v % 4) - 2) ** 2 < 1.6
    return np.where(dark, 0.3, 1.0).astype(np.float32)[..., None]


def _finish(img: np.ndarray, rng, blur: bool) -> np.ndarray:
    """Optional blur, then sensor noise; uint8 RGB."""
    if blur:
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))
        img = np.asarray(out, np.float32)
    noisy = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def render_object(rng, shape: str, colour: str, size: int, pattern: str | None = None) -> tuple[np.ndarray, dict]:
    """An RGB uint8 image of one shape on a background, and the attributes that were drawn.
    ``pattern``: the fill (an ID class fixes it); None draws one."""
    bg, bg_kind = _background(rng, size)
    radius = rng.uniform(0.28, 0.45) * size
    cx, cy = rng.uniform(radius * 0.85, size - radius * 0.85, 2)
    mask = shape_mask(shape, cx, cy, radius, rng.uniform(0, 2 * math.pi), size)
    drawn = PATTERNS[int(np.searchsorted([0.6, 0.8], rng.random()))]  # solid 60%, striped / dotted 20% each
    pattern = pattern or drawn  # drawn either way, so a fixed fill leaves the other draws unchanged
    fg = _jitter(COLOURS[colour], rng).astype(np.float32) * _fill(pattern, rng, size)
    blur = bool(rng.random() < 0.25)
    pixels = _finish(bg * (1 - mask) + fg * mask, rng, blur)
    return pixels, {"shape": shape, "colour": colour, "second_colour": None, "texture": None,
                    "background": bg_kind, "pattern": pattern, "blur": blur,
                    "size": "small" if radius < 0.36 * size else "large"}


def _block_noise(size: int, rng) -> np.ndarray:
    block = int(rng.integers(1, 4))
    return np.kron(rng.random((size // block + 1,) * 2), np.ones((block, block)))[:size, :size] > 0.5


_TEXTURE_MAPS = {  # kind -> share of the first colour per pixel, from rotated coordinates (u, v) and period p
    "striped": lambda u, v, p, rng: np.sin(2 * math.pi * u / p) > 0,
    "checkered": lambda u, v, p, rng: (np.floor(u / p) + np.floor(v / p)) % 2 == 0,
    "dotted": lambda u, v, p, rng: ((u % p) - p / 2) ** 2 + ((v % p) - p / 2) ** 2 < (p / 3) ** 2,
    "grid": lambda u, v, p, rng: ((u % p) < 1.2) | ((v % p) < 1.2),
    "noise": lambda u, v, p, rng: _block_noise(u.shape[0], rng),
    "gradient": lambda u, v, p, rng: np.clip(u / (u.shape[0] * 1.4) + 0.5, 0, 1),
    "wavy": lambda u, v, p, rng: np.sin(2 * math.pi * (v + 2.0 * np.sin(2 * math.pi * u / (2.5 * p))) / p) > 0,
    "zigzag": lambda u, v, p, rng: np.sin(2 * math.pi * (v + p * np.abs((u / p) % 2 - 1)) / p) > 0,
}


def render_texture(rng, texture: str, size: int) -> tuple[np.ndarray, dict]:
    """An object-free texture image in two random colours (the far-OoD style)."""
    i, j = rng.choice(len(COLOURS), 2, replace=False)
    names = list(COLOURS)
    c1, c2 = _jitter(COLOURS[names[i]], rng, 30), _jitter(COLOURS[names[j]], rng, 30)
    if texture not in _TEXTURE_MAPS:
        raise ValueError(f"unknown texture {texture!r}")
    p = rng.uniform(3, 8)
    u, v = _rotated_grid(rng, size, 2 * math.pi)
    t = np.asarray(_TEXTURE_MAPS[texture](u, v, p, rng), np.float32)[..., None]
    blur = bool(rng.random() < 0.25)
    pixels = _finish(c1 * t + c2 * (1 - t), rng, blur)
    return pixels, {"shape": None, "colour": names[i], "second_colour": names[j], "texture": texture,
                    "background": None, "pattern": texture, "blur": blur, "size": None}


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()
