"""DICE (Sun & Li 2022) as OpenOOD v1.5's dice postprocessor: zero the head's weights whose
contribution (weight x mean ID-train activation) is at or below its eval.dice_p (90) percentile,
then the energy of the sparsified head's logits.

The activation is the L2-normalised post-projection image embedding the run's classifier reads;
its ID-train mean comes from the cached statistics (harness.scores.train_stats).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of, percentile


def dice_mask(weight: torch.Tensor, mean_activation: torch.Tensor, p: float) -> torch.Tensor:
    """The (C, D) mask of the weights DICE keeps: contribution above its p-th percentile."""
    contrib = mean_activation.double()[None, :] * weight.double()
    return contrib > percentile(contrib, p)


def dice(image_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean_activation: torch.Tensor,
         p: float = 90.0) -> torch.Tensor:
    """logsumexp(f (W * mask)^T + b); (N,) float64, higher = more ID."""
    check_features(image_features)
    check_head(image_features, weight, bias)
    masked = weight.double() * dice_mask(weight, mean_activation, p)
    return torch.logsumexp(logits_of(image_features, masked, bias.double()), dim=1)


def _compute(inputs, cfg, seed):
    weight, bias = linear_head(inputs)
    return dice(inputs.features, weight, bias, inputs.train_stats["mean"], cfg.dice_p)


register("dice", needs=("features", "linear_head", "train_stats"), compute=_compute, reference=None,
         openood="openood/postprocessors/dice_postprocessor.py", defaults=("dice_p",))(dice)
