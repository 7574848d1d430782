"""One embedding cache per weights, shared by every run and command that evaluates them.

Location: ``$HARNESS_CACHE/embeddings`` (default ~/.cache/harness/embeddings; shared storage on
a multi-node cluster), or ``$HARNESS_EMBED_CACHE`` (what ``harness evaluate --cache DIR`` sets). Layout:
``<root>/<weights digest[:16]>/<dataset>.<what>.<key[:16]>.pt``, where the key hashes
everything the cached tensor depends on: the weights digest (a sha256 of the state dict's
tensors, not of a file or a run), the architecture and activation, the preprocessing, the
dataset's manifest checksum, the size and modification time of each of its local shards (so a
repaired or replaced shard is read again) and the bad-sample policy, plus (for per-image results
such as GL-MCM's patch term or ODIN) the text features and hyperparameters they used.

Every entry has a content digest beside it (``<entry>.sha256``, the sha256 of its bytes), checked
on each read: an entry that does not match it (a flipped bit, a truncated or empty file, one with
no digest) is reported by name and rebuilt, never used.

Writers are safe together: each entry is built under an exclusive lock on ``<entry>.lock``
(a second writer waits, then reads the first one's result) and written through temp + rename,
its digest first. ``harness cache size`` reports the size per weights digest (leftover temp files
of killed builds included); ``harness cache prune`` removes entries not used for a number of days
(or all) and leftover temp files, and skips every entry whose lock a build holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from harness.paths import cache_dir, write_atomic, write_text_atomic

DIGEST_SUFFIX = ".sha256"
# A build's temp files, ``.<entry>.tmp<pid>`` and ``.<entry>.sha256.tmp<pid>``: group 1 is the entry's name.
_TEMP = re.compile(r"^\.(.+\.pt)(?:\.sha256)?\.tmp\d+$")


def default_root() -> Path:
    """$HARNESS_EMBED_CACHE (set by `harness evaluate --cache`), else $HARNESS_CACHE/embeddings."""
    override = os.environ.get("HARNESS_EMBED_CACHE")
    return Path(override) if override else cache_dir() / "embeddings"


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every tensor of the model's state dict (names, dtypes, shapes, bytes), in name order:
    the same weights give the same digest whether they came from a file, a tag or a training run."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous().double()
        h.update(f"{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def file_checksum(path: Path | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path is not None else None


def manifest_checksum(dataset_dir: Path) -> str:
    return hashlib.sha256((Path(dataset_dir) / "manifest.json").read_bytes()).hexdigest()


def shard_state(dataset_dir: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime in ns) of each local shard the manifest names, in its order: what a read of
    the set would find on disk. A shard truncated, repaired or replaced since an entry was built gives
    another key, though the manifest is unchanged. URLs (nothing to stat) and missing shards are
    left to the reader, which reports them."""
    dataset_dir = Path(dataset_dir)
    shards = json.loads((dataset_dir / "manifest.json").read_text()).get("shards", [])
    state = []
    for shard in shards if isinstance(shards, list) else []:
        if not isinstance(shard, str) or "://" in shard:
            continue
        with contextlib.suppress(OSError):
            stat = (dataset_dir / shard).stat()
            state.append((shard, stat.st_size, stat.st_mtime_ns))
    return state


class CorruptEntry(Exception):
    """A cache entry whose bytes cannot be trusted (the message says why)."""


def digest_path(entry: Path) -> Path:
    return entry.with_name(entry.name + DIGEST_SUFFIX)


def read_entry(path: Path) -> object:
    """The value stored at ``path``; FileNotFoundError when there is none, CorruptEntry when its
    bytes do not match the digest recorded beside them (or there is no digest, or they do not load)."""
    data = Path(path).read_bytes()
    try:
        recorded = digest_path(path).read_text().strip()
    except FileNotFoundError:
        raise CorruptEntry("no content digest recorded beside it") from None
    if not data:
        raise CorruptEntry("empty file")
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise CorruptEntry(f"content digest mismatch ({len(data)} bytes, sha256 {actual[:12]}, "
                           f"recorded {recorded[:12]}): truncated or altered")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch says, the entry is rebuilt
        raise CorruptEntry(f"does not load ({type(err).__name__}: {err})") from None


def write_entry(path: Path, value: object) -> None:
    """``value`` at ``path`` with its digest, each through temp + rename; the digest goes first, so a
    reader between the two renames sees a mismatch (and waits for the lock), never a wrong value."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)  # again: a prune may have removed an empty folder
    write_text_atomic(digest_path(path), hashlib.sha256(data).hexdigest() + "\n")
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


class EmbeddingCache:
    """The cache entries of one model (``weights``: :func:`weights_digest`; ``model_facts``: the
    architecture, activation and preprocessing, as strings)."""

    def __init__(self, root: Path, weights: str, model_facts: dict[str, str], log: Callable[[str], None] = print):
        self.root, self.weights, self.facts, self.log = Path(root), weights, dict(model_facts), log
        self.hits, self.misses, self.rebuilt = 0, 0, 0

    def path(self, dataset_dir: Path, what: str, **params) -> Path:
        key = json.dumps({"weights": self.weights, **self.facts, "manifest": manifest_checksum(dataset_dir),
                          "shards": shard_state(dataset_dir), "what": what, **params}, sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.root / self.weights[:16] / f"{Path(dataset_dir).name}.{what}.{digest}.pt"

    def text_path(self, **params) -> Path:
        """The entry of a text side (class prompts, mined negatives) of these weights: ``params``
        name everything it depends on (prompts, the negative files' checksums, mining settings)."""
        key = json.dumps({"weights": self.weights, **self.facts, "what": "text", **params}, sort_keys=True, default=str)
        return self.root / self.weights[:16] / f"text.{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def lookup(self, path: Path) -> object | None:
        """The entry at ``path`` when it is there and intact (a hit), else None: a missing or corrupt
        one is left to :meth:`get_or_build`, which reports and rebuilds it."""
        try:
            value = read_entry(path)
        except (FileNotFoundError, CorruptEntry):
            return None
        self.hits += 1
        return value

    def get_or_build(self, path: Path, build: Callable[[], object]) -> object:
        """The entry at ``path``, built once by whoever holds its lock first; an entry that fails its
        digest is reported (naming the file) and rebuilt."""
        value = self.lookup(path)  # a bad one is looked at again under the lock
        if value is not None:
            return value
        with _locked(path.with_name(path.name + ".lock")):
            try:
                value = read_entry(path)  # another writer built (or repaired) it while we waited
                self.hits += 1
                return value
            except FileNotFoundError:
                pass
            except CorruptEntry as err:
                self.rebuilt += 1
                self.log(f"embedding cache: {path} is corrupt ({err}); rebuilding it")
            value = build()
            write_entry(path, value)
            self.misses += 1
            return value

    def summary(self) -> str:
        return (f"embedding cache {self.root / self.weights[:16]}: {self.hits} reused, {self.misses} encoded"
                + (f" ({self.rebuilt} corrupt entr{'y' if self.rebuilt == 1 else 'ies'} rebuilt)" if self.rebuilt else "")
                + (" (reused the cache, encoded nothing)" if self.hits and not self.misses else ""))


@contextlib.contextmanager
def _locked(lock: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock ``lock`` (yields True), or, with ``blocking`` False, yield False at once
    when another process holds it. The lock is the file now at that path: one a prune removed while
    we waited for it is let go and the new one taken, so two holders can never coexist."""
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)  # a build re-creates a folder a prune removed
        try:
            handle = open(lock, "a")
        except FileNotFoundError:  # the folder went between the two calls
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))  # released if the holder dies
        except BlockingIOError:
            handle.close()
            yield False
            return
        try:
            current = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()
    try:
        yield True
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _leftovers(folder: Path) -> list[Path]:
    """Temp files of builds in ``folder`` (a killed build's stay behind)."""
    return [f for f in folder.iterdir() if _TEMP.match(f.name)]


def sizes(root: Path) -> dict[str, tuple[int, int]]:
    """weights digest prefix -> (entries, bytes) under ``root``; the bytes include digests and the temp
    files of builds (in progress, or left by a killed one: `harness cache prune` removes those)."""
    out = {}
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        files = [f for f in sub.glob("*.pt")]
        extra = [*_leftovers(sub), *sub.glob(f"*.pt{DIGEST_SUFFIX}")]
        out[sub.name] = (len(files), sum(_size(f) for f in [*files, *extra]))
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a build renamed or a prune removed it meanwhile
        return 0


def prune(root: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove entries last used (read or written) more than ``older_than_days`` ago, or every entry
    when None, and the temp files no build holds any more; returns (entries removed, bytes freed).
    An entry whose lock is held (a build or a repair in progress) is skipped, whatever its age."""
    root = Path(root)
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = freed = 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for entry in sorted(folder.glob("*.pt")):
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                if cutoff is None or max(stat.st_atime, stat.st_mtime) < cutoff:
                    freed += _remove_unless_held(entry, entry, digest_path(entry))
                    removed += 1 if not entry.exists() else 0
        for temp in _leftovers(folder):
            freed += _remove_unless_held(folder / _TEMP.match(temp.name).group(1), temp)
        with contextlib.suppress(OSError):  # only an empty folder: a build may be about to use it
            folder.rmdir()
    return removed, freed


def _remove_unless_held(entry: Path, *files: Path) -> int:
    """Remove ``files`` (and the entry's lock file) unless a build holds the entry's lock; bytes freed."""
    lock = entry.with_name(entry.name + ".lock")
    with _locked(lock, blocking=False) as held:
        if not held:
            return 0
        freed = sum(_size(f) for f in files)
        for f in files:
            f.unlink(missing_ok=True)
        if not entry.exists():  # no entry left to guard: the lock goes too (safe while we hold it)
            lock.unlink(missing_ok=True)
        return freed


def for_bundle(bundle, model, arch: str, quick_gelu: bool, root: Path | None = None, log=print) -> EmbeddingCache:
    """The cache of ``model`` as built by harness.models.build (its eval transform is the preprocessing)."""
    facts = {"arch": arch, "quick_gelu": str(bool(quick_gelu)), "preprocess": repr(bundle.eval_transform)}
    return EmbeddingCache(root or default_root(), weights_digest(model), facts, log)
