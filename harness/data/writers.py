"""Real image collections into our dataset layout (tar shards + manifest.json).

Sources: ImageFolder trees (``root/<class>/<image>``; ImageNet's wnid folders get
open_clip's class names), OpenOOD v1.5 image lists (``relative/path label`` per line,
images under a root) and MOS folders (one OoD set: every image below a folder). Each
becomes a list of :class:`Item` in a fixed order; shard ``k`` holds items
``k*shard_size ...``, so a shard is a deterministic set of samples and any process
(local pool or Ray task) can write any shard.

Images keep their original bytes under their extension's key (jpg, png, webp) unless a
resize is asked for. Samples are ``{name}-{index:08d}`` with ``cls`` (the class, -1 for
OoD sets) and ``json`` (``{"label", "path"}``: where the image came from).

Resumable: a finished shard is renamed into place, then its sidecar
``.progress/<shard>.json`` records its plan digest (the items it holds), size and
sha256. A re-run skips shards whose sidecar matches the plan and the file on disk and
rewrites the rest (partial files live under ``.partial/`` and never count). The
manifest is written last, from the sidecars, so the 140 GB of ImageNet are not read
back to checksum them.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.pipeline import IMAGE_KEYS
from harness.data.shards import KINDS, Manifest, describe_shards, sha256, write_manifest, write_shards
from harness.paths import write_text_atomic

EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}  # ImageNet's .JPEG too (lower-cased)
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_WNID = re.compile(r"^n\d{8}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # becomes the shard prefix and the sample keys (no dots)
PROGRESS = ".progress"
PARTIAL = ".partial"
WRITER_VERSION = 1  # part of every plan digest: a new sample format rewrites old shards


class SourceError(ValueError):
    """A source that cannot be converted; the message names the file, line or folder."""


@dataclass(frozen=True)
class Item:
    """One image to store: its file, class (-1: OoD) and path as given (kept in ``json``)."""

    path: str
    label: int
    rel: str


# --- sources -------------------------------------------------------------------------------------

def _images_below(folder: Path) -> list[Path]:
    """Image files below ``folder`` (any depth), sorted by relative path (a fixed order)."""
    found = [p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def imagenet_classnames() -> list[str]:
    """open_clip's 1000 ImageNet class names, in the sorted-wnid order of the standard class index."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagefolder_items(root: str | Path) -> tuple[list[Item], list[str]]:
    """Items of ``root/<class>/...`` and the class names. The class index is the position of
    the folder in sorted order (torchvision's ImageFolder). 1000 wnid folders are ImageNet-1k:
    sorted wnids are exactly the order of open_clip's IMAGENET_CLASSNAMES, so those names are
    used; any other tree is named by its folders."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SourceError(f"{root}: no class folders (expected root/<class>/<image>)")
    items = []
    for label, cls in enumerate(classes):
        images = _images_below(root / cls)
        if not images:
            raise SourceError(f"{root / cls}: class folder without images ({', '.join(EXTENSIONS)})")
        items += [Item(str(p), label, p.relative_to(root).as_posix()) for p in images]
    imagenet = len(classes) == 1000 and all(_WNID.match(c) for c in classes)
    return items, (imagenet_classnames() if imagenet else classes)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def split_holdout(items: Sequence[Item], per_class: int, seed: str = "holdout") -> tuple[list[Item], list[Item]]:
    """(the rest, ``per_class`` items of every class): the held-out ID validation set for model
    selection, carved from a training tree. Which items are held out depends only on each item's
    relative path (a hash ranks them within its class), so the split is the same on every run and
    does not move when other files are added or removed."""
    if per_class < 1:
        raise SourceError(f"--holdout-per-class must be >= 1, got {per_class}")
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    small = sorted(label for label, members in by_class.items() if len(members) <= per_class)
    if small:
        raise SourceError(f"--holdout-per-class {per_class} would leave class {small[0]} with no training images "
                          f"({len(by_class[small[0]])} in all; {len(small)} such classes)")

    def rank(item: Item) -> str:
        return hashlib.sha256(f"{seed}/{item.rel}".encode()).hexdigest()

    held = {id(item) for members in by_class.values() for item in sorted(members, key=rank)[:per_class]}
    return [i for i in items if id(i) not in held], [i for i in items if id(i) in held]


def imagelist_items(list_file: str | Path, root: str | Path) -> list[Item]:
    """Items of an OpenOOD image list: ``relative/path label`` per line (paths may hold spaces;
    the label is the last field), images under ``root``. Blank lines are skipped."""
    list_file, root = Path(list_file).expanduser().resolve(), Path(root).expanduser().resolve()
    if not list_file.is_file():
        raise SourceError(f"{list_file}: image list not found")
    items = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        where = f"{list_file}:{number}"
        try:
            rel, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise SourceError(f"{where}: expected 'relative/path label', got {line.strip()!r}") from None
        path = root / rel
        if path.suffix.lower() not in EXTENSIONS:
            raise SourceError(f"{where}: {rel}: not an image extension ({', '.join(EXTENSIONS)})")
        if not path.is_file():
            raise SourceError(f"{where}: {path} does not exist (is --root {root} right?)")
        items.append(Item(str(path), label, rel))
    if not items:
        raise SourceError(f"{list_file}: no images listed")
    return items


def mos_items(folder: str | Path) -> list[Item]:
    """Items of a MOS OoD set: every image below ``folder`` (flat or nested), label -1."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a directory")
    items = [Item(str(p), -1, p.relative_to(folder).as_posix()) for p in _images_below(folder)]
    if not items:
        raise SourceError(f"{folder}: no images ({', '.join(EXTENSIONS)}) below it")
    return items


def read_classnames(spec: str) -> list[str]:
    """``imagenet`` (open_clip's names) or a text file with one class name per line."""
    if spec == "imagenet":
        return imagenet_classnames()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SourceError(f"--classnames {spec!r}: neither 'imagenet' nor an existing file of names (one a line)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise SourceError(f"--classnames {path}: no names in it")
    return names


# --- writing -------------------------------------------------------------------------------------

def image_key(path: str) -> str:
    return EXTENSIONS[Path(path).suffix.lower()]


def _image_bytes(item: Item, resize: int | None) -> bytes:
    """The file's own bytes, or (``resize``) the image re-encoded in its own format with its
    shorter side at most ``resize`` pixels (never enlarged)."""
    data = Path(item.path).read_bytes()
    if not resize:
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    scale = resize / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    fmt = _PIL_FORMAT[image_key(item.path)]
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):  # CMYK (a few in ImageNet), RGBA, palettes
        image = image.convert("RGB")
    elif fmt == "WEBP" and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return buf.getvalue()


def _plan_digest(name: str, first: int, items: Sequence[Item], resize: int | None) -> str:
    """What shard content follows from: the items (file, size, label), their indices, the resize."""
    digest = hashlib.sha256(json.dumps([WRITER_VERSION, name, first, resize]).encode())
    for item in items:
        size = os.stat(item.path).st_size
        digest.update(json.dumps([item.path, item.rel, item.label, size]).encode())
    return digest.hexdigest()


def shard_name(name: str, k: int) -> str:
    return f"{name}-{k:06d}.tar"  # write_shards' pattern


def _sidecar(out_dir: Path, shard: str) -> Path:
    return out_dir / PROGRESS / f"{shard}.json"


def _finished(out_dir: Path, shard: str, plan: str) -> dict | None:
    """The sidecar of a finished shard of this plan, else None (missing, other plan, file changed)."""
    try:
        done = json.loads(_sidecar(out_dir, shard).read_text())
        ok = done["plan"] == plan and (out_dir / shard).stat().st_size == done["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return done if ok else None


def write_shard(job: dict) -> dict:
    """Write one shard (a pure function of ``job``, so any process may run it); returns its sidecar.

    Written under ``.partial/``, renamed into place, then the sidecar: a crash at any point
    leaves either no shard, or a shard without sidecar, which a re-run rewrites."""
    out_dir, name, k, first = Path(job["out_dir"]), job["name"], job["k"], job["first"]
    items = [Item(*t) for t in job["items"]]
    shard = shard_name(name, k)
    tmp = out_dir / PARTIAL / f"{os.getpid()}-{k}"
    shutil.rmtree(tmp, ignore_errors=True)
    samples = ({"__key__": f"{name}-{first + i:08d}", image_key(item.path): _image_bytes(item, job["resize"]),
                "cls": item.label if job["kind"] == "id" else -1, "json": {"label": item.label, "path": item.rel}}
               for i, item in enumerate(items))
    [written] = write_shards(samples, tmp, name, max(1, len(items)), start_shard=k)
    assert written == shard, (written, shard)
    done = {"plan": job["plan"], "samples": len(items), "bytes": (tmp / shard).stat().st_size,
            "sha256": sha256(tmp / shard)}
    os.replace(tmp / shard, out_dir / shard)
    shutil.rmtree(tmp, ignore_errors=True)
    write_text_atomic(_sidecar(out_dir, shard), json.dumps(done, sort_keys=True))
    return {**done, "shard": shard}


@dataclass
class WriteSummary:
    """What a conversion did; ``manifest`` as written (shard names relative to the dataset directory)."""

    manifest: Manifest
    written: int
    skipped: int
    seconds: float
    images_written: int

    @property
    def images_per_s(self) -> float:
        return self.images_written / self.seconds if self.seconds else 0.0


def write_items(items: Sequence[Item], out_dir: str | Path, name: str, kind: str, classnames: Sequence[str] = (),
                shard_size: int = 1000, resize: int | None = None, workers: int = 1, address: str | None = None,
                log: Callable[[str], None] = print) -> WriteSummary:
    """Shards of ``items`` plus manifest.json in ``out_dir``; finished shards are skipped.

    ``workers`` > 1: a local process pool; ``address`` (a Ray address, ``auto`` for a running
    cluster, ``local`` to start one here): one Ray task per shard, the image paths must then be
    readable on every node (shared storage) and ``out_dir`` too.
    """
    if not _NAME.match(name):
        raise SourceError(f"--name {name!r}: use letters, digits, '-' and '_' only (it names shards and keys)")
    if kind not in KINDS:
        raise SourceError(f"--kind {kind!r}: one of {KINDS}")
    if kind == "id" and not classnames:
        raise SourceError(f"{name}: an ID dataset needs class names (--classnames imagenet or a file)")
    if kind == "id" and (bad := [i for i in items if not 0 <= i.label < len(classnames)]):
        raise SourceError(f"{bad[0].rel}: label {bad[0].label} outside 0..{len(classnames) - 1} "
                          f"({len(bad)} such images)")
    if shard_size < 1:
        raise SourceError(f"--shard-size must be >= 1, got {shard_size}")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs, done = [], {}
    for k, first in enumerate(range(0, len(items), shard_size)):
        part = items[first:first + shard_size]
        plan = _plan_digest(name, first, part, resize)
        shard = shard_name(name, k)
        if (finished := _finished(out_dir, shard, plan)) is not None:
            done[k] = {**finished, "shard": shard}
        else:
            jobs.append({"out_dir": str(out_dir), "name": name, "kind": kind, "k": k, "first": first, "plan": plan,
                         "resize": resize, "items": [(i.path, i.label, i.rel) for i in part]})
    total = -(-len(items) // shard_size)
    skipped = len(done)
    log(f"{name}: {len(items)} images in {total} shards of {shard_size}; {skipped} already written, "
        f"{len(jobs)} to write ({'ray ' + address if address else f'{workers} process(es)'})")
    began, new_images = time.perf_counter(), 0
    for result in _run(jobs, workers, address):
        k = int(result["shard"].rsplit("-", 1)[1].split(".")[0])
        done[k] = result
        new_images += result["samples"]
        rate = new_images / max(1e-9, time.perf_counter() - began)
        left = sum(len(j["items"]) for j in jobs) - new_images
        log(f"  {result['shard']}: {result['samples']} images ({len(done)}/{total} shards, "
            f"{rate:.0f} images/s, about {left / rate if rate else 0:.0f} s left)")
    order = [done[k] for k in range(total)]
    manifest = Manifest(name=name, kind=kind, num_samples=len(items), shards=[d["shard"] for d in order],
                        shard_samples=[d["samples"] for d in order], image_key=_main_key(items),
                        classnames=list(classnames) if kind == "id" else [],
                        checksums={d["shard"]: d["sha256"] for d in order})
    write_manifest(out_dir, manifest)
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
    seconds = time.perf_counter() - start
    log(f"{name}: {manifest.num_samples} images, {len(order)} shards in {out_dir} ({len(jobs)} written, "
        f"{skipped} skipped, {seconds:.1f} s, {new_images / max(1e-9, time.perf_counter() - began):.0f} images/s)")
    return WriteSummary(manifest, len(jobs), skipped, seconds, new_images)


def _main_key(items: Sequence[Item]) -> str:
    """The manifest's image_key: the commonest (readers look for every image key anyway)."""
    return Counter(image_key(i.path) for i in items).most_common(1)[0][0] if items else "jpg"


def _run(jobs: list[dict], workers: int, address: str | None):
    """Results of write_shard over ``jobs``, as they finish."""
    if not jobs:
        return
    if address:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False,  # "local": a private cluster, never auto-join
                     log_to_driver=False)
        try:
            task = ray.remote(num_cpus=1, max_retries=2)(write_shard)  # a shard is idempotent: retry on node loss
            pending = [task.remote(job) for job in jobs]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                yield ray.get(ready[0])
        finally:
            if started:
                ray.shutdown()
    elif workers > 1:
        # fork: workers inherit the imported modules (spawn would re-import torch via webdataset).
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap_unordered(write_shard, jobs)
    else:
        yield from map(write_shard, jobs)


# --- other people's shards -----------------------------------------------------------------------

def index_shards(dataset_dir: str | Path, name: str, kind: str, classnames: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> Manifest:
    """A manifest.json for shards someone else wrote (every ``*.tar`` below ``dataset_dir``, sorted):
    samples counted and checksums computed by reading each shard once."""
    dataset_dir = Path(dataset_dir).expanduser().resolve()
    if kind not in KINDS:
        raise SourceError(f"--kind {kind!r}: one of {KINDS}")
    if kind == "id" and not classnames:
        raise SourceError(f"{name}: an ID dataset needs class names (--classnames imagenet or a file)")
    shards = sorted(p.relative_to(dataset_dir).as_posix() for p in dataset_dir.rglob("*.tar")
                    if not any(part in (PARTIAL, PROGRESS) for part in p.parts))
    if not shards:
        raise SourceError(f"{dataset_dir}: no .tar shards below it")
    start = time.perf_counter()
    manifest = describe_shards(dataset_dir, name, kind, shards, image_key=_first_image_key(dataset_dir / shards[0]),
                               classnames=classnames if kind == "id" else ())
    write_manifest(dataset_dir, manifest)
    log(f"{name}: {manifest.num_samples} samples in {len(shards)} shards indexed in {dataset_dir} "
        f"({time.perf_counter() - start:.1f} s)")
    return manifest


def _first_image_key(shard: Path) -> str:
    with tarfile.open(shard) as tar:
        for member in tar:
            suffix = member.name.rsplit("/", 1)[-1].partition(".")[2].lower()
            if suffix in IMAGE_KEYS:
                return suffix
    raise SourceError(f"{shard}: no image member ({', '.join(IMAGE_KEYS)})")
