"""Relative Mahalanobis (Ren et al. 2021) as OpenOOD v1.5's rmds postprocessor: each class's
Mahalanobis term minus that of a background class (the mean and covariance of all ID-train
features), then the largest over classes. Same feature and float64 statistics as ``mds``.
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check_features
from harness.scores.mds_score import mahalanobis_terms
from harness.scores.registry import register


def rmds(image_features: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor, mean: torch.Tensor,
         whole_precision: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """max over classes of [-(f - mu_c)^T P (f - mu_c) + (f - mu)^T P0 (f - mu)]; (N,) float64."""
    check_features(image_features, class_means)

    def one(chunk):
        background = mahalanobis_terms(chunk, mean[None], whole_precision)
        return (mahalanobis_terms(chunk, class_means, precision) - background).amax(1)

    return by_chunks(image_features, chunk_size, one)


def _compute(inputs, cfg, seed):
    s = inputs.train_stats
    return rmds(inputs.features, s["class_means"], s["precision"], s["mean"], s["whole_precision"])


register("rmds", needs=("features", "train_stats"), compute=_compute, reference=None,
         openood="openood/postprocessors/rmds_postprocessor.py")(rmds)
