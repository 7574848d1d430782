"""Where the harness keeps what it can regenerate (synthetic data, pretrained weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$HARNESS_CACHE, else ~/.cache/harness. Must be shared storage on a multi-node cluster."""
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser().resolve()


def synthetic_root(size: str) -> Path:
    return cache_dir() / f"synthetic-{size}"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file beside it and a rename, so a reader (or a
    crash) sees the old file or the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
