"""ReAct (Sun et al. 2021) as OpenOOD v1.5's react postprocessor: clip the feature at a percentile
of the ID feature values, then the energy of the head's logits.

The clipped feature is the L2-normalised post-projection image embedding that the run's
classifier reads (CLIP's pre-projection feature is not cached); the threshold is the
eval.react_percentile (90) of every ID-train feature value (OpenOOD takes it over ID-val's),
computed once per weights digest (harness.scores.train_stats).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of


def react(image_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, threshold: float) -> torch.Tensor:
    """logsumexp(min(f, threshold) W^T + b); (N,) float64, higher = more ID."""
    check_features(image_features)
    check_head(image_features, weight, bias)
    clipped = image_features.double().clip(max=float(threshold))
    return torch.logsumexp(logits_of(clipped, weight.double(), bias.double()), dim=1)


def _compute(inputs, cfg, seed):
    stats = inputs.train_stats
    if float(stats["react_percentile"]) != cfg.react_percentile:
        raise ValueError(f"train_stats were computed at react_percentile {float(stats['react_percentile'])}, "
                         f"not eval.react_percentile {cfg.react_percentile}")
    weight, bias = linear_head(inputs)
    return react(inputs.features, weight, bias, float(stats["react_threshold"]))


register("react", needs=("features", "linear_head", "train_stats"), compute=_compute, reference=None,
         openood="openood/postprocessors/react_postprocessor.py", defaults=("react_percentile",))(react)
