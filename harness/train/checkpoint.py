"""Resumable training state: model, optimiser, scheduler, position and RNG, in one file.

Loaded with ``torch.load(weights_only=True)``: only tensors and plain containers,
never arbitrary pickles.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from harness.models import unwrap
from harness.paths import torch_save_atomic

STATE_FILE = "train_state.pt"


def save(directory: Path, model, optimizer, scheduler, epoch: int, step: int, history: list[dict],
         stage: int = 0) -> Path:
    """Write the state after ``epoch`` (1-based, counted over the whole run) of training ``stage``
    (a method's stage index; its optimiser and scheduler are that stage's) into ``directory``
    atomically; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": history,
        "stage": stage,
        "torch_rng": torch.get_rng_state(),
        "python_rng": list(random.getstate()[1]),
    }
    torch_save_atomic(state, directory / STATE_FILE)
    return directory


def load(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training state in checkpoint {directory} (expected {STATE_FILE})")
    return torch.load(path, weights_only=True)


def restore(state: dict, model, optimizer=None, scheduler=None) -> None:
    """Put a saved state back into freshly built objects (same architecture and settings): the
    model and the RNGs, and the optimiser and scheduler when given (see :func:`restore_optimizer`)."""
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        restore_optimizer(state, optimizer, scheduler)
    torch.set_rng_state(state["torch_rng"])
    random.setstate((3, tuple(state["python_rng"]), None))


def restore_optimizer(state: dict, optimizer, scheduler) -> None:
    """The optimiser and scheduler of the saved stage (a later stage starts its own)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
