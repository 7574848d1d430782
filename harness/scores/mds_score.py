"""Mahalanobis (Lee et al. 2018) as OpenOOD v1.5's mds postprocessor: the largest negative
Mahalanobis distance to an ID-train class mean, under the covariance shared by all classes.

No input perturbation and no feature ensemble (the CLIP OoD papers use epsilon 0), on the run's
L2-normalised post-projection image feature (the one its classifier reads); statistics in
float64 from every ID-train sample (harness.scores.train_stats).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check_features
from harness.scores.registry import register


def mahalanobis_terms(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, C) -(f - mu_c)^T P (f - mu_c), expanded so no (N, C, D) tensor is held."""
    f = features.double()
    fp = f @ precision
    cross = fp @ means.T  # f^T P mu_c (P is symmetric)
    return -((fp * f).sum(1, keepdim=True) - 2 * cross + ((means @ precision) * means).sum(1))


def mahalanobis(image_features: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor, *,
                chunk_size: int = 4096) -> torch.Tensor:
    """max over classes of -(f - mu_c)^T P (f - mu_c); (N,) float64, higher = more ID."""
    check_features(image_features, class_means)
    return by_chunks(image_features, chunk_size,
                     lambda chunk: mahalanobis_terms(chunk, class_means, precision).amax(1))


def _compute(inputs, cfg, seed):
    stats = inputs.train_stats
    return mahalanobis(inputs.features, stats["class_means"], stats["precision"])


register("mds", needs=("features", "train_stats"), compute=_compute, reference=None,
         openood="openood/postprocessors/mds_postprocessor.py")(mahalanobis)
