"""MaxLogit (Hendrycks et al. 2022): the largest logit (logit_scale x cosine on a zero-shot model)."""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check, check_logits, work_dtype, zero_shot_logits
from harness.scores import naive
from harness.scores.registry import register


def max_logit(logits: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Largest logit of each row of (N, C) logits; (N,)."""
    check(chunk_size)
    check_logits(logits)
    dtype = work_dtype(logits)
    return by_chunks(logits, chunk_size, lambda chunk: chunk.to(dtype).max(dim=1).values)


def _reference(inputs, cfg, seed):
    return torch.tensor([max(row) for row in naive.zero_shot_logits(inputs)], dtype=torch.float64)


register("max_logit", needs=("logits",),
         compute=lambda inputs, cfg, seed: max_logit(zero_shot_logits(inputs)),
         reference=_reference)(max_logit)
