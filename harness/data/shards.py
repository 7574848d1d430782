"""Writing WebDataset shards and their manifests; finding a dataset's shards.

A dataset is a directory of tar shards plus ``manifest.json``. Samples use the
layout of public ImageNet shards: image bytes under ``png`` / ``jpg``, the integer
class as ASCII text under ``cls``, metadata under ``json`` and, where there is one,
a caption under ``txt``. Nothing here knows about the synthetic world, so the same
functions describe converted real datasets.

Shards are reproducible: every value is encoded here (JSON with sorted keys) and
tar members get a fixed mtime, owner and mode, so the same samples give
byte-identical files and hence identical checksums.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import webdataset as wds

from harness.data.badsamples import BadDataError
from harness.paths import write_text_atomic

MANIFEST = "manifest.json"
KINDS = ("pretrain", "id", "ood")
# How webdataset splits a member name into sample key and field: "dir/key.ext".
_KEY = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
FIXED_MTIME = 0
"""Tar member time. webdataset's TarWriter stamps time.time() unless told; an int, because
tarfile adds a PAX header to every member whose mtime is a float (doubling small shards)."""


@dataclass(frozen=True)
class Manifest:
    """What a dataset directory holds.

    ``shards`` are file names relative to the dataset directory on disk and absolute
    paths (or URLs, kept as they are) once read back by :func:`read_manifest`;
    ``shard_samples[i]`` counts the samples of ``shards[i]``; ``checksums`` maps a
    shard's file name to its sha256. ``classnames[k]`` names class ``k`` (ID datasets
    only); ``image_key`` is the member extension holding the image.
    """

    name: str
    kind: str
    num_samples: int
    shards: list[str]
    shard_samples: list[int]
    image_key: str = "png"
    classnames: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)


def encode_value(key: str, value: Any) -> bytes:
    """Bytes for one sample field: bytes as they are, str as UTF-8, int as ASCII
    (the ``cls`` convention), dict/list as compact JSON with sorted keys."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):  # bool is an int subclass; "True" would not parse as a class
        raise TypeError(f"field {key!r}: booleans are ambiguous, store 0/1 or put them in json")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raise TypeError(f"field {key!r}: cannot encode {type(value).__name__} (give bytes, str, int or a dict)")


def encode_sample(sample: dict) -> dict:
    """A sample with every field but ``__key__`` turned into bytes."""
    if "__key__" not in sample:
        raise ValueError(f"sample without __key__ (fields: {sorted(sample)})")
    return {k: (v if k == "__key__" else encode_value(k, v)) for k, v in sample.items()}


def write_shards(samples: Iterable[dict], out_dir: str | Path, prefix: str, maxcount: int,
                 start_shard: int = 0) -> list[str]:
    """Write samples as ``{prefix}-000000.tar``, ``{prefix}-000001.tar``, ... in ``out_dir``.

    Each sample is a dict with a unique ``__key__`` (no dots) and fields as accepted
    by :func:`encode_value`. Every shard but the last holds exactly ``maxcount``
    samples (no size limit), so shard ``k`` holds samples ``k*maxcount ...``. Returns
    the file names written, in order (at least one: no samples give one empty shard).
    The same samples give byte-identical shards. Numbering starts at ``start_shard``, so
    separate processes can each write their own shards of one dataset.
    """
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    # `post` hears of each shard as it is closed: the names come from the writer
    # itself, not from globbing a directory that may hold stale shards.
    with wds.ShardWriter(str(out_dir / f"{prefix}-%06d.tar"), maxcount=maxcount, maxsize=float("inf"),
                         start_shard=start_shard, verbose=0,
                         post=lambda fname: names.append(Path(fname).name), encoder=False,
                         mtime=FIXED_MTIME, user="harness", group="harness") as sink:
        for sample in samples:
            sink.write(encode_sample(sample))
    return names


def count_samples(shard: str | Path) -> int:
    """Number of samples (distinct keys) in a tar shard, read from its member names."""
    keys = set()
    with tarfile.open(shard, "r") as tar:
        for member in tar:
            match = _KEY.match(member.name)
            if member.isfile() and match:
                keys.add(match.group(1))
    return len(keys)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_shards(dataset_dir: str | Path, name: str, kind: str, shards: Sequence[str], image_key: str = "png",
                    classnames: Sequence[str] = (), counts: Sequence[int] | None = None) -> Manifest:
    """A manifest for shards already in ``dataset_dir``, checksummed from the files. Samples are
    counted from the files too, unless the writer already knows ``counts`` (reading tar headers
    back costs about as much as writing them)."""
    dataset_dir = Path(dataset_dir)
    counts = list(counts) if counts is not None else [count_samples(dataset_dir / s) for s in shards]
    return Manifest(name=name, kind=kind, num_samples=sum(counts), shards=list(shards), shard_samples=counts,
                    image_key=image_key, classnames=list(classnames),
                    checksums={s: sha256(dataset_dir / s) for s in shards})


def write_manifest(dataset_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``dataset_dir/manifest.json`` atomically (temp file + os.replace), so a reader
    sees the old manifest or the new one, never half of one. Returns its path."""
    path = Path(dataset_dir) / MANIFEST
    _check(manifest, path)
    return write_text_atomic(path, json.dumps(asdict(manifest), indent=1, sort_keys=True) + "\n")


def write_dataset(samples: Iterable[dict], dataset_dir: str | Path, name: str, kind: str, maxcount: int,
                  image_key: str = "png", classnames: Sequence[str] = ()) -> Manifest:
    """Shards (named after ``name``) plus their manifest in ``dataset_dir``; returns the manifest."""
    seen = [0]

    def counted(items: Iterable[dict]) -> Iterator[dict]:
        for item in items:
            seen[0] += 1
            yield item

    shards = write_shards(counted(samples), dataset_dir, name, maxcount)
    # write_shards fills every shard but the last to maxcount, so the counts follow from the total.
    counts = [max(0, min(maxcount, seen[0] - k * maxcount)) for k in range(len(shards))]
    manifest = describe_shards(dataset_dir, name, kind, shards, image_key, classnames, counts)
    write_manifest(dataset_dir, manifest)
    return manifest


def read_manifest(dataset_dir: str | Path) -> Manifest:
    """The manifest of a dataset directory, shard paths made absolute (URLs kept as they are).

    Raises FileNotFoundError when it is missing and ValueError when it is not a valid
    manifest; both name the path.
    """
    dataset_dir = Path(dataset_dir).expanduser().resolve()
    path = dataset_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path} does not exist")
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(Manifest)}
        unknown = set(data) - known if isinstance(data, dict) else set()
        if not isinstance(data, dict) or unknown:
            raise TypeError(f"unknown fields {sorted(unknown)}" if unknown else "not a JSON object")
        manifest = Manifest(**data)
        _check(manifest, path)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:  # wrong JSON, fields or field types
        raise ValueError(f"{path}: not a valid manifest ({err})") from None
    shards = [s if "://" in s else str(dataset_dir / s) for s in manifest.shards]
    return Manifest(**{**asdict(manifest), "shards": shards})


def shard_urls(dataset_dir: str | Path) -> list[str]:
    """The shards of a dataset, as absolute paths or URLs, in manifest order."""
    return read_manifest(dataset_dir).shards


def verify(dataset_dir: str | Path) -> None:
    """Check that every local shard exists and matches its checksum (URLs are skipped);
    ValueError names the first bad shard. Reads every byte: for audits, not for every run."""
    root = Path(dataset_dir).expanduser().resolve()
    manifest = read_manifest(root)
    for local in (s for s in manifest.shards if "://" not in s):
        if not Path(local).is_file():
            raise ValueError(f"{local}: shard listed in the manifest is missing")
        expected = manifest.checksums.get(Path(local).relative_to(root).as_posix())  # keyed as stored
        if expected is not None and sha256(local) != expected:
            raise ValueError(f"{local}: sha256 differs from the manifest (corrupt or rewritten shard)")


def check_class_lists(manifests: Mapping[str, Manifest]) -> list[str]:
    """The class list shared by ID datasets (name -> manifest; the first is the reference, e.g.
    the training set); returns it.

    Labels index the class list and the class prompts are built from it, so every ID dataset of
    a run must carry the same names in the same order, without repeats. Raises BadDataError
    naming the datasets and the first difference, before any compute is spent.
    """
    (first, reference), *others = manifests.items()
    for name, manifest in manifests.items():
        if manifest.kind != "id":
            raise BadDataError(f"{name}: kind {manifest.kind!r}, but it is used as an ID dataset (kind 'id', "
                               "with classnames)", collective=True)
        repeated = sorted({c for c in manifest.classnames if manifest.classnames.count(c) > 1})
        if repeated:
            raise BadDataError(f"{name}: class names {repeated} appear more than once: their prompts could not "
                               "be told apart", collective=True)
    for name, manifest in others:
        theirs, ours = manifest.classnames, reference.classnames
        if len(theirs) != len(ours):
            raise BadDataError(f"{name} has {len(theirs)} classes but {first} has {len(ours)}: its labels and the "
                               "class prompts would not match", collective=True)
        diff = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)
        if diff is not None:
            raise BadDataError(f"{name} names class {diff} {theirs[diff]!r} but {first} names it {ours[diff]!r}: "
                               "ID datasets must list the same classes in the same order", collective=True)
    return list(reference.classnames)


def _check(manifest: Manifest, path: Path) -> None:
    """Internal consistency of a manifest; errors name ``path``."""
    problems = []
    if manifest.kind not in KINDS:
        problems.append(f"kind {manifest.kind!r} is not one of {KINDS}")
    if len(manifest.shards) != len(manifest.shard_samples):
        problems.append(f"{len(manifest.shards)} shards but {len(manifest.shard_samples)} shard_samples")
    elif sum(manifest.shard_samples) != manifest.num_samples:
        problems.append(f"num_samples {manifest.num_samples} != sum of shard_samples {sum(manifest.shard_samples)}")
    if manifest.kind == "id" and not manifest.classnames:
        problems.append("an ID dataset needs classnames")
    if problems:
        raise ValueError(f"{path}: invalid manifest: " + "; ".join(problems))
