"""Where the harness keeps what it can regenerate (synthetic data, pretrained weights), and how it
writes a file so that no reader sees half of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """$HARNESS_CACHE, else ~/.cache/harness. Must be shared storage on a multi-node cluster."""
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/harness")).expanduser().resolve()


def synthetic_root(size: str) -> Path:
    return cache_dir() / f"synthetic-{size}"


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by ``write(temp)`` on a temp file beside it (``.<name>.tmp<pid>``) and a rename,
    so a reader (or a crash) sees the old file or the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of ``text``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def torch_save_atomic(obj: object, path: str | Path) -> Path:
    """:func:`write_atomic` of ``torch.save(obj)``."""
    import torch  # here: the paths module is imported by commands that never touch a tensor

    return write_atomic(path, lambda tmp: torch.save(obj, tmp))
