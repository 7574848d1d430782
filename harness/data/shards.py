"""Writing WebDataset shards and their manifests; finding a dataset's shards.

A dataset is a directory of tar shards plus ``manifest.json``. Samples use the
layout of public ImageNet shards: image bytes under ``png`` / ``jpg``, the integer
class under ``cls``, metadata under ``json``, and a caption under ``txt`` where there
is one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import webdataset as wds

MANIFEST = "manifest.json"
KINDS = ("pretrain", "id", "ood")


@dataclass(frozen=True)
class Manifest:
    """What a dataset directory holds. ``shards`` are absolute paths when read back."""

    name: str
    kind: str
    num_samples: int
    shards: list[str]
    shard_samples: list[int]
    image_key: str = "png"
    classnames: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)


def write_shards(samples: Iterable[dict], out_dir: Path, prefix: str, maxcount: int) -> tuple[list[str], list[int]]:
    """Write samples (dicts with ``__key__``) as ``{prefix}-000000.tar`` ...; returns file names and counts.

    Tar member times are fixed, so the same samples give byte-identical shards.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    with wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=maxcount, verbose=0, mtime=0.0) as sink:
        for sample in samples:
            sink.write(sample)
            if sink.count == 1:
                counts.append(0)
            counts[-1] += 1
    names = sorted(p.name for p in out_dir.glob(f"{prefix}-*.tar"))
    return names, counts


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(dataset_dir: Path, manifest: Manifest) -> Path:
    """Atomic write (temp + rename); shards are stored relative to the dataset directory."""
    path = dataset_dir / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(manifest), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_manifest(dataset_dir: str | Path) -> Manifest:
    """The manifest of a dataset directory, with shard paths made absolute. Errors name the path."""
    dataset_dir = Path(dataset_dir).expanduser().resolve()
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path} does not exist")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: not a valid manifest ({err})") from None
    if manifest.kind not in KINDS:
        raise ValueError(f"{path}: kind {manifest.kind!r} is not one of {KINDS}")
    shards = [s if "://" in s else str(dataset_dir / s) for s in manifest.shards]
    return Manifest(**{**asdict(manifest), "shards": shards})
