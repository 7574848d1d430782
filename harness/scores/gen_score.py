"""GEN (Liu et al. 2023) as OpenOOD v1.5's gen postprocessor: minus the generalised entropy
sum p^gamma (1 - p)^gamma over the top M softmax probabilities of the run's classifier logits
(eval.gen_gamma 0.1, eval.gen_m 100, or every class when there are fewer).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import check_logits, zero_shot_logits
from harness.scores.registry import register


def gen(logits: torch.Tensor, gamma: float = 0.1, m: int = 100) -> torch.Tensor:
    """-sum over the top min(m, C) probabilities of p^gamma (1 - p)^gamma; (N,) float64, higher = more ID."""
    check_logits(logits)
    if not gamma > 0 or m < 1:
        raise ValueError(f"GEN needs gamma > 0 and m >= 1, got gamma={gamma}, m={m}")
    probs = torch.softmax(logits.double(), dim=1)
    top = torch.topk(probs, min(m, probs.shape[1]), dim=1).values
    return -(top ** gamma * (1 - top) ** gamma).sum(1)


register("gen", needs=("logits",), compute=lambda inputs, cfg, seed: gen(zero_shot_logits(inputs), cfg.gen_gamma,
                                                                          cfg.gen_m),
         reference=None, openood="openood/postprocessors/gen_postprocessor.py",
         defaults=("gen_gamma", "gen_m"))(gen)
