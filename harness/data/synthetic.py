"""The embedded synthetic benchmark: coloured shapes at 32x32, structured like ImageNet OoD.

Concepts are ``"{colour} {shape}"``. The world splits them, deterministically
from the seed, into ID classes, OoD-validation concepts, near-OoD test concepts
and concepts seen only in pretraining; the far-OoD test set is object-free
textures. The captioned pretraining corpus covers every concept and texture
(CLIP's web data saw everything), so a tiny CLIP pretrained on it has real
zero-shot skill, and a vocabulary file stands in for WordNet's negative labels.

Every shape and every colour appears among the ID classes, so the ID task needs
both attributes; nuisance variation (position, size, rotation, background,
fill pattern, colour jitter, noise) keeps it from being trivial.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from harness.data.shards import Manifest, read_manifest, sha256, write_manifest, write_shards

GENERATOR_VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
           "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (235, 235, 235), "cyan": (50, 210, 220)}
TEXTURES = ("striped", "checkerboard", "dotted", "grid", "noise", "gradient", "wavy", "zigzag")
PATTERNS = ("solid", "solid", "solid", "striped", "dotted")  # fill patterns of objects (solid most often)
# Colour-shape offsets (concept = shape i, colour i + offset): each offset gives every shape and colour once.
SPLIT_OFFSETS = {"id": (0, 3), "ood_val": (5,), "near_ood": (1, 6), "pretrain_only": (2, 4, 7)}
UNRELATED_NOUNS = ("tree", "car", "river", "violin", "mountain", "bicycle", "castle", "kitchen", "forest", "bridge",
                   "guitar", "ocean", "desert", "library", "window", "garden", "airplane", "piano", "lantern",
                   "volcano", "harbor", "meadow", "tractor", "cathedral", "umbrella", "compass", "glacier",
                   "orchard", "telescope", "village", "waterfall", "balloon", "canyon", "island", "lighthouse",
                   "saddle", "teapot", "tunnel", "whistle", "anchor", "barn", "candle", "drum", "feather",
                   "helmet", "kettle", "ladder", "mirror", "needle", "pillow", "rocket", "spoon", "tent",
                   "wagon", "basket", "bottle", "cabinet", "dragon", "engine", "fountain")
UNRELATED_ADJECTIVES = ("happy", "ancient", "quiet", "wooden", "frozen", "noisy", "gentle", "rusty", "sacred",
                        "tropical", "urban", "vintage", "wild", "hollow", "fragile", "royal", "muddy", "silky",
                        "brave", "sleepy")

DATASETS = {  # name -> (kind, role)
    "pretrain": ("pretrain", "captioned corpus"), "id_train": ("id", "ID train"), "id_val": ("id", "ID validation"),
    "id_test": ("id", "ID test"), "ood_val": ("ood", "OoD validation"), "near_ood": ("ood", "near-OoD test"),
    "far_ood": ("ood", "far-OoD test"),
}


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and seed of the world; the defaults are the demo's."""

    seed: int = 0
    image_size: int = 32
    pretrain: int = 24000
    id_train_per_class: int = 200
    id_val_per_class: int = 40
    id_test_per_class: int = 60
    ood_val: int = 800
    near_ood: int = 1000
    far_ood: int = 1000
    texture_share: float = 0.15
    """Share of the pretraining corpus that shows textures."""
    shard_size: int = 500


def small_spec(seed: int = 0) -> WorldSpec:
    """A world of a few thousand images for tests (seconds to generate)."""
    return WorldSpec(seed=seed, pretrain=3000, id_train_per_class=40, id_val_per_class=10, id_test_per_class=10,
                     ood_val=120, near_ood=160, far_ood=160, shard_size=200)


def concept_splits(seed: int) -> dict[str, list[str]]:
    """Concept names per split, deterministic from the seed."""
    rng = np.random.default_rng([seed, 1])
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    return {split: [f"{colours[(i + off) % len(colours)]} {shapes[i]}" for off in offsets for i in range(len(shapes))]
            for split, offsets in SPLIT_OFFSETS.items()}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    def poly(n: int, radii=(1.0,), phase: float = 0.0):
        pts = []
        for k in range(n * len(radii)):
            a = angle + phase + 2 * math.pi * k / (n * len(radii))
            rad = r * radii[k % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)

    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        draw.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=0)  # mask image: 0 = background
    elif shape == "square":
        poly(4, phase=math.pi / 4)
    elif shape == "diamond":
        poly(4, radii=(1.0, 0.55))
    elif shape == "triangle":
        poly(3, phase=-math.pi / 2)
    elif shape == "hexagon":
        poly(6)
    elif shape == "star":
        poly(5, radii=(1.0, 0.42), phase=-math.pi / 2)
    elif shape == "cross":
        poly(4, radii=(1.0, 0.42, 0.42, 1.0), phase=math.pi / 4 - 0.4)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _jitter(rgb, rng, amount: int = 25) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _background(rng, size: int) -> tuple[np.ndarray, str]:
    kind = ["dark", "noisy", "grey"][rng.integers(3)]
    base = rng.integers(0, 70, 3) if kind != "grey" else np.full(3, rng.integers(60, 110))
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    if kind == "noisy":
        img = img + rng.normal(0, 25, (size, size, 3))
    return img, kind


def render_object(rng, shape: str, colour: str, size: int) -> tuple[np.ndarray, dict]:
    """An RGB uint8 image of one shape on a background, and the attributes that were drawn."""
    scale = 2  # draw at 2x, downsample: smooth edges at 32 px
    bg, bg_kind = _background(rng, size)
    radius = rng.uniform(0.22, 0.42) * size
    cx, cy = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
    mask_img = Image.new("L", (size * scale, size * scale), 0)
    _draw_shape(ImageDraw.Draw(mask_img), shape, cx * scale, cy * scale, radius * scale, rng.uniform(0, 2 * math.pi), 255)
    mask = np.asarray(mask_img.resize((size, size), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    fg = np.broadcast_to(np.array(_jitter(COLOURS[colour], rng), np.float32), (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    if pattern == "striped":
        fg[((xx + yy) // 2) % 2 == 0] *= 0.45
    elif pattern == "dotted":
        fg[(xx % 4 < 2) & (yy % 4 < 2)] *= 0.45
    img = bg * (1 - mask) + fg * mask + rng.normal(0, 6, (size, size, 3))
    attrs = {"shape": shape, "colour": colour, "pattern": pattern, "background": bg_kind,
             "size": "large" if radius > 0.33 * size else "small"}
    return np.clip(img, 0, 255).astype(np.uint8), attrs


def render_texture(rng, texture: str, size: int) -> tuple[np.ndarray, dict]:
    """An object-free texture image (the far-OoD style)."""
    c1, c2 = (np.array(_jitter(list(COLOURS.values())[i], rng, 40), np.float32) for i in rng.choice(8, 2, replace=False))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.integers(3, 8)
    phase = rng.uniform(0, 2 * math.pi)
    if texture == "striped":
        t = (np.sin(2 * math.pi * (xx * math.cos(phase) + yy * math.sin(phase)) / period) > 0)
    elif texture == "checkerboard":
        t = ((xx // period + yy // period) % 2 == 0)
    elif texture == "dotted":
        t = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 3) ** 2
    elif texture == "grid":
        t = (xx % period == 0) | (yy % period == 0)
    elif texture == "noise":
        t = rng.random((size, size)) > 0.5
    elif texture == "gradient":
        t = (xx * math.cos(phase) + yy * math.sin(phase)) / size
    elif texture == "wavy":
        t = np.sin(2 * math.pi * (yy + 2 * np.sin(xx / 3 + phase)) / period) > 0
    elif texture == "zigzag":
        t = ((yy + np.abs((xx % (2 * period)) - period)) // period) % 2 == 0
    else:
        raise ValueError(f"unknown texture {texture!r}")
    t = np.clip(np.asarray(t, np.float32), 0, 1)[..., None]
    img = c1 * t + c2 * (1 - t) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), {"texture": texture}


def caption(rng, attrs: dict) -> str:
    """Web-style alt text for a pretraining image, using the attributes actually drawn."""
    if "texture" in attrs:
        t = attrs["texture"]
        return [f"a {t} texture", f"a photo of a {t} texture", f"{t} texture", f"a {t} pattern"][rng.integers(4)]
    c, s, p = attrs["colour"], attrs["shape"], attrs["pattern"]
    options = [f"a photo of a {c} {s}", f"a {c} {s}", f"a {attrs['size']} {c} {s}",
               f"a {c} {s} on a {attrs['background']} background", f"{c} {s}, {p}", f"a {p} {c} {s}"]
    return options[rng.integers(len(options))]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _samples(name: str, spec: WorldSpec, splits: dict[str, list[str]]) -> Iterator[dict]:
    """Every sample of one dataset, each from its own seeded generator (order-independent)."""
    all_concepts = [c for group in splits.values() for c in group]
    id_classes = splits["id"]
    per_class = {"id_train": spec.id_train_per_class, "id_val": spec.id_val_per_class, "id_test": spec.id_test_per_class}
    totals = {"pretrain": spec.pretrain, "ood_val": spec.ood_val, "near_ood": spec.near_ood, "far_ood": spec.far_ood}
    count = per_class[name] * len(id_classes) if name in per_class else totals[name]
    stream = list(DATASETS).index(name)
    for i in range(count):
        rng = np.random.default_rng([spec.seed, stream, i])
        label, text = -1, None
        if name == "pretrain" and rng.random() < spec.texture_share:
            concept = f"{TEXTURES[rng.integers(len(TEXTURES))]} texture"
        elif name == "pretrain":
            concept = all_concepts[rng.integers(len(all_concepts))]
        elif name in per_class:
            label = i % len(id_classes)
            concept = id_classes[label]
        elif name == "far_ood":
            concept = f"{TEXTURES[i % len(TEXTURES)]} texture"
        else:
            group = splits["ood_val" if name == "ood_val" else "near_ood"]
            concept = group[i % len(group)]
        first, second = concept.split(" ")
        pixels, attrs = (render_texture(rng, first, spec.image_size) if second == "texture"
                         else render_object(rng, second, first, spec.image_size))
        if name == "pretrain":
            label = (all_concepts + [f"{t} texture" for t in TEXTURES]).index(concept)
            text = caption(rng, attrs)
        sample = {"__key__": f"{name}-{i:06d}", "png": _png(pixels), "cls": label,
                  "json": {"concept": concept, **attrs}}
        if text is not None:
            sample["txt"] = text
        yield sample


def negative_vocabulary(splits: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(kind, word) candidates, the WordNet stand-in: concept names, parts of them and unrelated words."""
    nouns = {c for group in splits.values() for c in group} | set(SHAPES) | {f"{t} texture" for t in TEXTURES}
    nouns |= set(UNRELATED_NOUNS)
    adjectives = set(COLOURS) | set(TEXTURES) | set(UNRELATED_ADJECTIVES)
    return sorted({("noun", n) for n in nouns} | {("adj", a) for a in adjectives})


def _world_description(spec: WorldSpec, splits: dict[str, list[str]]) -> dict:
    return {"generator_version": GENERATOR_VERSION, "spec": asdict(spec), "shapes": list(SHAPES),
            "colours": list(COLOURS), "textures": list(TEXTURES), "splits": splits, "id_classes": splits["id"],
            "far_ood_textures": list(TEXTURES), "datasets": {k: {"kind": v[0], "role": v[1]} for k, v in DATASETS.items()}}


def is_complete(out_dir: Path, spec: WorldSpec) -> bool:
    world = Path(out_dir) / "world.json"
    if not world.is_file():
        return False
    data = json.loads(world.read_text())
    return data.get("spec") == asdict(spec) and data.get("generator_version") == GENERATOR_VERSION


def generate(out_dir: str | Path, spec: WorldSpec = WorldSpec(), progress: Callable[[str], None] | None = None,
             force: bool = False) -> dict:
    """Write the world under ``out_dir`` (one directory per dataset, world.json, negatives.tsv).

    Cached: a complete world with the same spec is returned as is. Written into a
    temporary sibling directory and renamed, so a crash never leaves half a world.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if not force and is_complete(out_dir, spec):
        return json.loads((out_dir / "world.json").read_text())
    log = progress or (lambda _msg: None)
    start = time.perf_counter()
    splits = concept_splits(spec.seed)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, (kind, _role) in DATASETS.items():
        names, counts = write_shards(_samples(name, spec, splits), tmp / name, name, spec.shard_size)
        write_manifest(tmp / name, Manifest(
            name=name, kind=kind, num_samples=sum(counts), shards=names, shard_samples=counts,
            classnames=splits["id"] if kind == "id" else [],
            checksums={n: sha256(tmp / name / n) for n in names}))
    vocab = negative_vocabulary(splits)
    (tmp / "negatives.tsv").write_text("".join(f"{kind}\t{word}\n" for kind, word in vocab))
    world = _world_description(spec, splits)
    (tmp / "world.json").write_text(json.dumps(world, indent=1, sort_keys=True))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(f"synthetic world written to {out_dir} in {time.perf_counter() - start:.1f} s "
        f"({sum(read_manifest(out_dir / n).num_samples for n in DATASETS)} images)")
    return world
