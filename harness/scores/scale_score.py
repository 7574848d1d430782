"""SCALE (Xu et al. 2024) as OpenOOD v1.5's scale postprocessor and networks/scale_net.py: multiply
the whole feature by exp(its sum / the sum of its top (100 - percentile)% entries), then the
energy of the head's logits (eval.scale_percentile, OpenOOD's scale.yml: 85).

The scaled feature is the L2-normalised post-projection image embedding (see ``ash_s``, which
prunes as well; the same note on negative entries and ties applies).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.ash_score import top_entries
from harness.scores.common import check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of


def scale(image_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
          percentile: float = 85.0) -> torch.Tensor:
    """logsumexp(f exp(sum f / sum top(f)) W^T + b); (N,) float64, higher = more ID."""
    check_features(image_features)
    check_head(image_features, weight, bias)
    x = image_features.double()
    pruned, _ = top_entries(x, percentile)
    scaled = x * torch.exp(x.sum(1, keepdim=True) / pruned.sum(1, keepdim=True))
    return torch.logsumexp(logits_of(scaled, weight.double(), bias.double()), dim=1)


def _compute(inputs, cfg, seed):
    weight, bias = linear_head(inputs)
    return scale(inputs.features, weight, bias, cfg.scale_percentile)


register("scale", needs=("features", "linear_head"), compute=_compute, reference=None,
         openood="openood/postprocessors/scale_postprocessor.py", defaults=("scale_percentile",))(scale)
