"""MSP: maximum softmax probability of a classifier's logits.

On a zero-shot (contrastive) model the classifier is logit_scale x cosine to the class prompts,
the logits CLIP itself is trained with, unless the method has its own head.
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check, check_logits, max_softmax, work_dtype, zero_shot_logits
from harness.scores import naive
from harness.scores.registry import register


def msp(logits: torch.Tensor, temperature: float = 1.0, *, chunk_size: int = 4096) -> torch.Tensor:
    """Maximum softmax probability of (N, C) logits at temperature T; (N,) in (1/C, 1]."""
    check(chunk_size, temperature)
    check_logits(logits)
    dtype = work_dtype(logits)
    return by_chunks(logits, chunk_size, lambda chunk: max_softmax(chunk.to(dtype) / temperature))


def _reference(inputs, cfg, seed):
    return torch.tensor([naive.max_softmax(row) for row in naive.zero_shot_logits(inputs)], dtype=torch.float64)


register("msp", needs=("logits",), compute=lambda inputs, cfg, seed: msp(zero_shot_logits(inputs)),
         reference=_reference)(msp)
