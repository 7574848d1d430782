"""Where the harness keeps what it can regenerate (synthetic data, pretrained weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$HARNESS_CACHE, else ~/.cache/harness. Must be shared storage on a multi-node cluster."""
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser().resolve()


def synthetic_root(size: str) -> Path:
    return cache_dir() / f"synthetic-{size}"
