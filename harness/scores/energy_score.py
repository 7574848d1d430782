"""Energy (Liu et al. 2020): the negated free energy T * logsumexp(logits / T).

On a zero-shot model the logits are logit_scale x cosine (CLIP's classifier). The MCM
repository applies energy to the raw cosines instead; logsumexp is not scale-equivariant, so the
two rank images differently (at T = 1, raw cosines in [-1, 1] make energy nearly the mean
similarity; x100 makes it nearly the max).
"""

from __future__ import annotations

import math

from harness.lazy import torch
from harness.scores.common import by_chunks, check, check_logits, work_dtype, zero_shot_logits
from harness.scores import naive
from harness.scores.registry import register


def energy(logits: torch.Tensor, temperature: float = 1.0, *, chunk_size: int = 4096) -> torch.Tensor:
    """Negated free energy T * logsumexp(logits / T) of (N, C) logits; (N,), higher = more ID."""
    check(chunk_size, temperature)
    check_logits(logits)
    dtype = work_dtype(logits)
    return by_chunks(logits, chunk_size,
                     lambda chunk: temperature * torch.logsumexp(chunk.to(dtype) / temperature, dim=1))


def _reference(inputs, cfg, seed):
    return torch.tensor([max(row) + math.log(sum(math.exp(v - max(row)) for v in row))
                         for row in naive.zero_shot_logits(inputs)], dtype=torch.float64)


register("energy", needs=("logits",), compute=lambda inputs, cfg, seed: energy(zero_shot_logits(inputs)),
         reference=_reference)(energy)
