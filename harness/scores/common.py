"""Helpers shared by the score modules: dtype promotion, argument checks, chunked evaluation."""

from __future__ import annotations

from typing import Callable

from harness.lazy import torch


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # Softmax over thousands of prompts at T = 0.01 needs at least float32.
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def check(chunk_size: int, temperature: float = 1.0) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def check_features(image_features: torch.Tensor, *text_features: torch.Tensor) -> None:
    if image_features.ndim != 2:
        raise ValueError(f"image_features must be (N, D), got shape {tuple(image_features.shape)}")
    for text in text_features:
        if text.ndim != 2 or text.shape[1] != image_features.shape[1]:
            raise ValueError(f"text features must be (K, {image_features.shape[1]}), got shape {tuple(text.shape)}")


def check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")


def by_chunks(rows: torch.Tensor, chunk_size: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a per-row score ``fn`` to ``rows`` ``chunk_size`` rows at a time; concatenate."""
    if rows.shape[0] == 0:
        return rows.new_empty((0,), dtype=work_dtype(rows))
    return torch.cat([fn(chunk) for chunk in rows.split(chunk_size)])


def max_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """max softmax = exp(max - logsumexp): no probability matrix, no overflow."""
    return torch.exp(logits.amax(dim=dim) - torch.logsumexp(logits, dim=dim))


def zero_shot_logits(inputs) -> torch.Tensor:
    """The run's classifier logits: the method's head when it has one, else logit_scale x cosine
    (CLIP's own zero-shot classifier; see the README on why not raw cosine)."""
    if inputs.logits is not None:
        return inputs.logits
    return inputs.logit_scale * inputs.features @ inputs.class_text.T
