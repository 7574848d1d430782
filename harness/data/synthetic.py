"""The embedded synthetic benchmark: coloured shapes at 32x32, structured like ImageNet OoD.

Concepts are ``"{colour} {shape}"``. The shape x colour grid is cut, from the seed,
into diagonals (shape i with colour i + d): each diagonal holds every shape and
every colour once, so any union of diagonals needs both attributes to tell its
members apart. Diagonals go to the ID classes, the OoD-validation concepts, the
near-OoD test concepts (new combinations of seen attributes, like SSB-hard) and
concepts seen only in pretraining. Each ID concept is two ID classes, one per fill
("plain red circle", "striped red circle"): the fine-grained distinction that the
pretraining captions name only ``fill_caption_share`` of the time (web alt text says
"a dog", ImageNet asks for the breed), so zero-shot guesses it and fine-tuning on
labels learns it. OoD objects take the same fills. Object-free textures are far-OoD; their kinds
are split between the far-OoD test set and the OoD-validation set, so validation
never sees the test distribution. The captioned pretraining corpus covers every
concept and texture (CLIP's web data saw everything) and ``negatives.tsv`` stands
in for WordNet's candidate negative labels.

Nuisance variation (position, size, rotation, background, pretraining fills, colour
jitter, blur, noise) keeps the task from being trivial. Every sample comes from
its own seeded generator, so output is byte-identical for a spec and independent
of order or process count.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from harness.data.drawing import COLOURS, png_bytes, render_object, render_texture
from harness.data.shards import MANIFEST, Manifest, describe_shards, write_manifest, write_shards

GENERATOR_VERSION = 3
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "crescent", "arrow", "heart")
TEXTURES = ("striped", "checkered", "dotted", "grid", "noise", "gradient", "wavy", "zigzag")
ID_FILLS = {"plain": "solid", "striped": "striped"}  # the fine-grained ID distinction: class-name word -> fill
SPLIT_DIAGONALS = {"id": 2, "ood_val": 1, "near_ood": 2}  # the rest: pretraining only
PARALLEL_FROM = 5000  # images; smaller worlds render in-process (a pool costs more than it saves)
OOD_VAL_TEXTURES = 2  # texture kinds held out for OoD validation; the others are far-OoD test
NOUNS = ("tree", "car", "river", "violin", "mountain", "bicycle", "castle", "kitchen", "forest", "bridge", "guitar",
    "ocean", "desert", "library", "window", "garden", "airplane", "piano", "lantern", "volcano", "harbor", "meadow",
    "tractor", "cathedral", "umbrella", "compass", "glacier", "orchard", "telescope", "village", "waterfall",
    "balloon", "canyon", "island", "lighthouse", "saddle", "teapot", "tunnel", "whistle", "anchor", "barn", "candle",
    "drum", "feather", "helmet", "kettle", "ladder", "mirror", "needle", "pillow", "rocket", "spoon", "tent", "wagon",
    "basket", "bottle", "cabinet", "dragon", "engine", "fountain", "hammer", "jacket", "keyboard", "lemon",
    "microscope", "notebook", "oven", "parrot", "quilt", "racket", "scissors", "submarine", "tiger", "trumpet",
    "vase", "wallet", "yacht", "zebra", "apple", "bench", "chimney", "dolphin", "elevator", "fence", "giraffe",
    "hospital", "igloo", "jungle", "kayak", "leaf", "magnet", "nest", "owl", "pencil", "pyramid", "sandwich",
    "skyscraper", "statue", "sunflower", "tomato", "turtle")
ADJECTIVES = ("happy", "ancient", "quiet", "wooden", "frozen", "loud", "gentle", "rusty", "sacred", "tropical", "urban",
    "vintage", "wild", "hollow", "fragile", "royal", "muddy", "silky", "brave", "sleepy", "angry", "bitter", "clever",
    "cozy", "dusty", "elegant", "fancy", "fluffy", "glossy", "greasy", "humid", "icy", "juicy", "lazy", "lonely",
    "modern", "narrow", "polite", "rural", "salty", "spicy", "sturdy", "velvety", "windy")
PATTERN_ADJECTIVES = ("striped", "checkered", "dotted", "wavy", "zigzag")
DATASETS = {  # name -> (kind, role); ID datasets share the ID classes
    "pretrain": ("pretrain", "captioned pretraining corpus"), "id_train": ("id", "ID train"),
    "id_val": ("id", "ID validation"), "id_test": ("id", "ID test"), "ood_val": ("ood", "OoD validation"),
    "near_ood": ("ood", "near-OoD test"), "far_ood": ("ood", "far-OoD test"),
}


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and seed of the world; the defaults are the demo's (~32k images)."""

    seed: int = 0
    image_size: int = 32
    pretrain: int = 20000
    id_train_per_class: int = 100
    id_val_per_class: int = 20
    id_test_per_class: int = 50
    ood_val: int = 800
    near_ood: int = 2000
    far_ood: int = 2000
    texture_share: float = 0.15
    """Share of the pretraining corpus that shows textures."""
    fill_caption_share: float = 0.05
    """Share of pretraining captions that name the object's fill (the ID classes' fine-grained
    attribute); the rest name only colour and shape, as alt text names "a dog", not its breed."""
    shard_size: int = 500

    def __post_init__(self):
        for name in _COUNTS + ("shard_size",):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 16 or not 0 <= self.texture_share < 1 or not 0 <= self.fill_caption_share <= 1:
            raise ValueError("WorldSpec: image_size must be >= 16, texture_share in [0, 1) and "
                             f"fill_caption_share in [0, 1]: {self}")

    def scaled(self, factor: float, shard_size: int | None = None) -> WorldSpec:
        """The same world with every image count multiplied by ``factor`` (at least one each)."""
        counts = {name: max(1, round(getattr(self, name) * factor)) for name in _COUNTS}
        return replace(self, **counts, shard_size=shard_size or self.shard_size)


_COUNTS = tuple(f.name for f in fields(WorldSpec) if f.name.startswith(("pretrain", "id_", "ood_", "near_", "far_")))


def small_spec(seed: int = 0) -> WorldSpec:
    """A world of about 5,000 images for tests (seconds): several id_train shards, two id_test and
    far_ood shards (two ranks share the evaluation), one near_ood shard (a second rank gets none).
    Its 40 classes get half the images a class of the 20-class v2 world had: the same sizes, so the
    slow tests train no longer."""
    return WorldSpec(seed=seed, pretrain=3000, id_train_per_class=20, id_val_per_class=5, id_test_per_class=5,
                     ood_val=120, near_ood=150, far_ood=160, shard_size=150)


# --- the concepts and their splits ---------------------------------------------------------------

def concept_splits(seed: int) -> dict[str, list[str]]:
    """Object concepts per split (id, ood_val, near_ood, pretrain_only): a partition of the
    shape x colour grid, each split sorted (the ID class index is the position in ``id``)."""
    rng = np.random.default_rng([seed, 1])
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))]
    diagonals = [int(d) for d in rng.permutation(len(colours))]
    sizes = {**SPLIT_DIAGONALS, "pretrain_only": len(colours) - sum(SPLIT_DIAGONALS.values())}
    splits, start = {}, 0
    for split, count in sizes.items():
        splits[split] = sorted(f"{colours[(i + d) % len(colours)]} {shape}"
                               for d in diagonals[start:start + count] for i, shape in enumerate(shapes))
        start += count
    return splits


def id_classes(seed: int) -> list[str]:
    """The ID classes: every ID concept in each fill of ID_FILLS ("plain red circle", "striped red
    circle"), sorted. Telling a pair apart needs the fill, which pretraining captions rarely name."""
    return sorted(f"{word} {concept}" for concept in concept_splits(seed)["id"] for word in ID_FILLS)


def parse_concept(concept: str) -> tuple[str | None, str, str]:
    """(fill word or None, colour or texture, shape or "texture") of a concept or ID class name."""
    words = concept.split(" ")
    return (words[0] if len(words) == 3 else None), words[-2], words[-1]


def texture_splits(seed: int) -> dict[str, list[str]]:
    """Texture concepts ("striped texture", ...) of the OoD-validation and far-OoD test sets (disjoint)."""
    order = [f"{TEXTURES[i]} texture" for i in np.random.default_rng([seed, 2]).permutation(len(TEXTURES))]
    return {"ood_val": sorted(order[:OOD_VAL_TEXTURES]), "far_ood": sorted(order[OOD_VAL_TEXTURES:])}


def all_concepts() -> list[str]:
    """Every concept; a pretraining sample's ``cls`` is its index here (textures come last)."""
    return [f"{c} {s}" for s in SHAPES for c in COLOURS] + [f"{t} texture" for t in TEXTURES]


def describe_world(spec: WorldSpec) -> dict:
    """The world as world.json stores it: spec, vocabularies, splits and what each dataset draws from."""
    splits, textures, classes = concept_splits(spec.seed), texture_splits(spec.seed), id_classes(spec.seed)
    n = len(classes)
    members = {"pretrain": all_concepts(), "id_train": classes, "id_val": classes, "id_test": classes,
               "ood_val": splits["ood_val"] + textures["ood_val"], "near_ood": splits["near_ood"],
               "far_ood": textures["far_ood"]}
    counts = {"pretrain": spec.pretrain, "id_train": spec.id_train_per_class * n, "id_val": spec.id_val_per_class * n,
              "id_test": spec.id_test_per_class * n, "ood_val": spec.ood_val, "near_ood": spec.near_ood,
              "far_ood": spec.far_ood}
    return {"generator_version": GENERATOR_VERSION, "spec": asdict(spec), "shapes": list(SHAPES),
            "colours": {k: list(v) for k, v in COLOURS.items()}, "textures": list(TEXTURES),
            "concepts": all_concepts(), "splits": splits, "texture_splits": textures, "id_classes": classes,
            "id_fills": ID_FILLS,
            "negatives": "negatives.tsv",
            "datasets": {name: {"kind": kind, "role": role, "num_samples": counts[name], "concepts": members[name]}
                         for name, (kind, role) in DATASETS.items()}}


def negative_vocabulary() -> list[tuple[str, str]]:
    """(kind, word) candidate negative labels, sorted and unique: every concept name, shape and
    texture name, colour and pattern adjectives, and ordinary words unrelated to the world."""
    nouns = set(all_concepts()) | set(SHAPES) | set(NOUNS)
    adjectives = set(COLOURS) | set(PATTERN_ADJECTIVES) | set(ID_FILLS) | set(ADJECTIVES)
    return sorted({("noun", w) for w in nouns} | {("adj", w) for w in adjectives})


def caption(rng, attrs: dict, fill_share: float = 1.0) -> str:
    """Web-style alt text built from the attributes actually drawn; always contains the concept name.
    It names an object's fill with probability ``fill_share`` (never otherwise)."""
    c, c2 = attrs["colour"], attrs["second_colour"]
    if attrs["texture"]:
        t = attrs["texture"]
        options = [f"a {t} texture", f"a photo of a {t} texture", f"a {c} {t} texture",
                   f"a {c} and {c2} {t} texture", f"{t} texture, {c} and {c2}"]
    else:
        s, p, size, bg = attrs["shape"], attrs["pattern"], attrs["size"], attrs["background"]
        if rng.random() < fill_share:
            fill = "plain" if p == "solid" else p
            options = [f"a {fill} {c} {s}", f"a photo of a {fill} {c} {s}", f"a {size} {fill} {c} {s}"]
        else:
            options = [f"a photo of a {c} {s}", f"a {c} {s}", f"a {size} {c} {s}", f"a {c} {s} on a {bg} background",
                       f"a {'blurry' if attrs['blur'] else 'clear'} photo of a {c} {s}",
                       f"a {size} {c} {s} on a {bg} background"]
    return options[rng.integers(len(options))]


# --- datasets ------------------------------------------------------------------------------------

def _object_fill(fill: str | None, dataset: str, cycle: int) -> str | None:
    """The fill an object sample is drawn with: its ID class's (``fill``, the class-name word); in an
    OoD set the ID fills in turn, one per pass over the set's concepts (``cycle``), so only the
    concept tells it from ID; None in pretraining (drawn at random)."""
    if fill:
        return ID_FILLS[fill]
    return None if dataset == "pretrain" else list(ID_FILLS.values())[cycle % len(ID_FILLS)]


def make_sample(world: dict, name: str, i: int) -> dict:
    """Sample ``i`` of dataset ``name``: a pure function of (spec, name, i)."""
    spec, info = world["spec"], world["datasets"][name]
    rng = np.random.default_rng([spec["seed"], list(DATASETS).index(name), i])  # DATASETS order is part of the format
    members, label = info["concepts"], -1
    if name == "pretrain":
        objects = len(SHAPES) * len(COLOURS)
        pick = objects + rng.integers(len(TEXTURES)) if rng.random() < spec["texture_share"] else rng.integers(objects)
        concept, label = members[pick], int(pick)
    else:
        concept = members[i % len(members)]
        label = i % len(members) if info["kind"] == "id" else -1
    fill, first, second = parse_concept(concept)
    if second == "texture":
        pixels, attrs = render_texture(rng, first, spec["image_size"])
    else:
        pixels, attrs = render_object(rng, second, first, spec["image_size"], _object_fill(fill, name, i // len(members)))
    sample = {"__key__": f"{name}-{i:06d}", "png": png_bytes(pixels), "cls": label, "json": {"concept": concept, **attrs}}
    if name == "pretrain":
        sample["txt"] = caption(rng, attrs, spec["fill_caption_share"])
    return sample


def samples(world: dict, name: str, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Samples ``start`` to ``stop`` (default: all) of one dataset, in key order."""
    stop = world["datasets"][name]["num_samples"] if stop is None else stop
    return (make_sample(world, name, i) for i in range(start, stop))


def _write_shard(job: tuple[dict, str, Path, int]) -> str:
    """Write shard ``k`` of a dataset (a pure function of the job, so any process may run it)."""
    world, name, out_dir, k = job
    size = world["spec"]["shard_size"]
    end = min((k + 1) * size, world["datasets"][name]["num_samples"])
    [shard] = write_shards(samples(world, name, k * size, end), out_dir, name, size, start_shard=k)
    return shard


def _write_dataset(world: dict, name: str, out_dir: Path, map_fn=map) -> Manifest:
    """All shards of one dataset (their rendering spread by ``map_fn``) and its manifest."""
    n, size, kind = world["datasets"][name]["num_samples"], world["spec"]["shard_size"], DATASETS[name][0]
    shards = list(map_fn(_write_shard, [(world, name, out_dir, k) for k in range(-(-n // size))]))
    manifest = describe_shards(out_dir, name, kind, shards, classnames=world["id_classes"] if kind == "id" else (),
                               counts=[min(size, n - k * size) for k in range(len(shards))])
    write_manifest(out_dir, manifest)
    return manifest


def load_world(out_dir: str | Path, spec: WorldSpec) -> dict | None:
    """The world.json of a complete world made by this generator from ``spec``, else None."""
    out_dir = Path(out_dir)
    try:
        world = json.loads((out_dir / "world.json").read_text())
    except (OSError, ValueError):
        return None
    if world.get("generator_version") != GENERATOR_VERSION or world.get("spec") != asdict(spec):
        return None
    for name in DATASETS:  # cheap completeness check: every manifest and shard present
        try:
            shards = json.loads((out_dir / name / MANIFEST).read_text())["shards"]
        except (OSError, ValueError, KeyError):
            return None
        if not all((out_dir / name / s).is_file() for s in shards):
            return None
    return world


def generate(out_dir: str | Path, spec: WorldSpec = WorldSpec(), progress: Callable[[str], None] | None = None,
             force: bool = False, workers: int | None = None) -> dict:
    """Write the world under ``out_dir``; returns the world.json contents.

    Layout: one directory per dataset in DATASETS (shards ``{name}-%06d.tar`` plus
    manifest.json), world.json and negatives.tsv. A complete world from the same spec
    is returned as is (no file touched) unless ``force``. Everything is written into a
    temporary sibling and renamed into place, so a crash never leaves half a world.
    ``workers`` rendering processes (default: the CPUs, for worlds over PARALLEL_FROM images).
    """
    out_dir = Path(out_dir).expanduser().resolve()
    log = progress or (lambda _msg: None)
    if not force and (cached := load_world(out_dir, spec)) is not None:
        log(f"synthetic world: {out_dir} (cached)")
        return cached
    start = time.perf_counter()
    world = describe_world(spec)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    total = sum(d["num_samples"] for d in world["datasets"].values())
    workers = workers or (min(len(os.sched_getaffinity(0)), 8) if total >= PARALLEL_FROM else 1)
    # One task per shard. fork: workers inherit the imported modules (spawn would re-import torch).
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for name in DATASETS:
            began = time.perf_counter()
            manifest = _write_dataset(world, name, tmp / name, pool.map if pool else map)
            log(f"  {name}: {manifest.num_samples} images, {len(manifest.shards)} shards "
                f"({time.perf_counter() - began:.1f} s)")
        (tmp / "negatives.tsv").write_text("".join(f"{k}\t{w}\n" for k, w in negative_vocabulary()))
        (tmp / "world.json").write_text(json.dumps(world, indent=1, sort_keys=True) + "\n")  # last: marks complete
        if force or load_world(out_dir, spec) is None:  # another process may have finished the same world first
            _replace_dir(tmp, out_dir)
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"synthetic world: {total} images written to {out_dir} in {time.perf_counter() - start:.1f} s")
    return world


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an old ``target`` (renames, so readers never see a mix)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
