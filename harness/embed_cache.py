"""One embedding cache per weights, shared by every run and command that evaluates them.

Location: ``$HARNESS_CACHE/embeddings`` (default ~/.cache/harness/embeddings; shared storage on
a multi-node cluster), or ``$HARNESS_EMBED_CACHE`` (what ``harness evaluate --cache DIR`` sets). Layout:
``<root>/<weights digest[:16]>/<dataset>.<what>.<key[:16]>.pt``, where the key hashes
everything the cached tensor depends on: the weights digest (a sha256 of the state dict's
tensors, not of a file or a run), the architecture and activation, the preprocessing, the
dataset's manifest checksum and the bad-sample policy, plus (for per-image results such as
GL-MCM's patch term or ODIN) the text features and hyperparameters they used.

Writers are safe together: each entry is built under an exclusive lock on ``<entry>.lock``
(a second writer waits, then reads the first one's result) and written through temp + rename.
``harness cache size`` reports the size per weights digest; ``harness cache prune`` removes
entries not used for a number of days (or all).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from harness.paths import cache_dir


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


class EmbeddingCache:
    """The cache entries of one model (``weights``: :func:`weights_digest`; ``model_facts``: the
    architecture, activation and preprocessing, as strings)."""

    def __init__(self, root: Path, weights: str, model_facts: dict[str, str], log: Callable[[str], None] = print):
        self.root, self.weights, self.facts, self.log = Path(root), weights, dict(model_facts), log
        self.hits, self.misses = 0, 0

    def path(self, dataset_dir: Path, what: str, **params) -> Path:
        key = json.dumps({"weights": self.weights, **self.facts, "manifest": manifest_checksum(dataset_dir),
                          "what": what, **params}, sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.root / self.weights[:16] / f"{Path(dataset_dir).name}.{what}.{digest}.pt"

    def text_path(self, **params) -> Path:
        """The entry of a text side (class prompts, mined negatives) of these weights: ``params``
        name everything it depends on (prompts, the negative files' checksums, mining settings)."""
        key = json.dumps({"weights": self.weights, **self.facts, "what": "text", **params}, sort_keys=True, default=str)
        return self.root / self.weights[:16] / f"text.{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def get_or_build(self, path: Path, build: Callable[[], object]) -> object:
        """The entry at ``path``, built once by whoever holds its lock first."""
        if path.is_file():
            self.hits += 1
            return torch.load(path, weights_only=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock")):
            if path.is_file():  # another writer built it while we waited
                self.hits += 1
                return torch.load(path, weights_only=True)
            value = build()
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            torch.save(value, tmp)
            os.replace(tmp, path)
            self.misses += 1
            return value

    def summary(self) -> str:
        return (f"embedding cache {self.root / self.weights[:16]}: {self.hits} reused, {self.misses} encoded"
                + (" (reused the cache, encoded nothing)" if self.hits and not self.misses else ""))


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sizes(root: Path) -> dict[str, tuple[int, int]]:
    """weights digest prefix -> (entries, bytes) under ``root``."""
    out = {}
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        files = [f for f in sub.glob("*.pt")]
        out[sub.name] = (len(files), sum(f.stat().st_size for f in files))
    return out


def prune(root: Path, older_than_days: float | None = None) -> tuple[int, int]:
    """Remove entries last used (read or written) more than ``older_than_days`` ago, or every entry
    when None; returns (entries removed, bytes freed)."""
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    removed = freed = 0
    for f in Path(root).glob("*/*.pt") if Path(root).is_dir() else []:
        stat = f.stat()
        if cutoff is None or max(stat.st_atime, stat.st_mtime) < cutoff:
            f.unlink(missing_ok=True)
            f.with_name(f.name + ".lock").unlink(missing_ok=True)
            removed, freed = removed + 1, freed + stat.st_size
    for sub in Path(root).iterdir() if Path(root).is_dir() else []:
        if sub.is_dir() and not any(sub.glob("*.pt")):
            shutil.rmtree(sub, ignore_errors=True)
    return removed, freed


def for_bundle(bundle, model, arch: str, quick_gelu: bool, root: Path | None = None, log=print) -> EmbeddingCache:
    """The cache of ``model`` as built by harness.models.build (its eval transform is the preprocessing)."""
    facts = {"arch": arch, "quick_gelu": str(bool(quick_gelu)), "preprocess": repr(bundle.eval_transform)}
    return EmbeddingCache(root or default_root(), weights_digest(model), facts, log)
