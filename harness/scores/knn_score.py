"""KNN (Sun et al. 2022): minus the distance to the k-th nearest ID-training feature.

Features are L2-normalised, so the Euclidean distance is sqrt(2 - 2 cos) (the reference ranks by
its square: the same order). The reference's ImageNet scripts use K = 1000 over the full
ImageNet-train bank (eval.knn_k = 1000, eval.knn_bank_fraction = 1.0, as sweeps/imagenet-*.yaml set;
the harness default k is 50, for small banks).
"""

from __future__ import annotations

import math

from harness.lazy import torch
from harness.scores import naive
from harness.scores.common import by_chunks, check, check_features, work_dtype
from harness.scores.registry import register


def knn(image_features: torch.Tensor, train_features: torch.Tensor, k: int = 1000, *,
        chunk_size: int = 1024) -> torch.Tensor:
    """-(Euclidean distance from each image feature to its k-th nearest row of ``train_features``).

    Args:
        image_features: (N, D) L2-normalised test features.
        train_features: (B, D) L2-normalised ID-train features (the bank).
        k: 1 <= k <= B (ties between bank rows: any order, the k-th distance is the same).

    Returns:
        (N,) scores <= 0, higher = more ID.
    """
    check(chunk_size)
    check_features(image_features, train_features)
    if not 1 <= k <= train_features.shape[0]:
        raise ValueError(f"k must be in [1, bank size = {train_features.shape[0]}], got {k}")
    dtype = work_dtype(image_features, train_features)
    bank = train_features.to(dtype)
    return by_chunks(image_features, chunk_size,
                     lambda chunk: -torch.cdist(chunk.to(dtype), bank).kthvalue(k, dim=1).values)


def _reference(inputs, cfg, seed):
    bank = naive.rows(inputs.train_features)
    out = []
    for f in naive.rows(inputs.features):
        dists = sorted(math.sqrt(sum((a - b) ** 2 for a, b in zip(f, t))) for t in bank)
        out.append(-dists[cfg.knn_k - 1])
    return torch.tensor(out, dtype=torch.float64)


register("knn", needs=("features", "train_features"), reference=_reference,
         compute=lambda inputs, cfg, seed: knn(inputs.features, inputs.train_features, cfg.knn_k))(knn)
