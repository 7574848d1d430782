"""ViM (Wang et al. 2022) as OpenOOD v1.5's vim postprocessor: energy of the head's logits minus
alpha x the norm of the feature's residual outside the principal space of the ID-train features.

The origin is u = -pinv(W) b; the principal space is the top ``dim`` eigenvectors of the
ID-train features' uncentred covariance about u; alpha = mean max ID-train logit / mean ID-train
residual norm. OpenOOD sets dim per network (its scripts: 1000 for ImageNet's 2048-d ResNet-50,
256 for CIFAR's 512-d ResNet-18, as the ViM paper's rule: 1000 for a feature size >= 1500,
512 for >= 768); below 768 this takes half the feature size (eval.vim_dim overrides). Feature:
the L2-normalised post-projection embedding that the run's classifier reads. The eigenvectors
come from eigh (OpenOOD: eig of the same symmetric matrix; the residual norm is basis-free).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of


def principal_dim(feature_dim: int, dim: int | None = None) -> int:
    """ViM's principal-space dimension for a feature size (``dim`` when given)."""
    if dim is None:
        dim = 1000 if feature_dim >= 1500 else 512 if feature_dim >= 768 else feature_dim // 2
    if not 1 <= dim < feature_dim:
        raise ValueError(f"vim_dim must be in [1, feature size {feature_dim}), got {dim}")
    return dim


def vim(image_features: torch.Tensor, train_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        dim: int | None = None) -> torch.Tensor:
    """energy(f W^T + b) - alpha ||(f - u) N||, N the residual space; (N,) float64, higher = more ID."""
    check_features(image_features, train_features)
    weight, bias = weight.double(), bias.double()
    check_head(image_features, weight, bias)
    dim = principal_dim(image_features.shape[1], dim)
    u = -torch.linalg.pinv(weight) @ bias
    x = train_features.double() - u
    _, vectors = torch.linalg.eigh(x.T @ x / x.shape[0])  # ascending eigenvalues
    residual = vectors[:, : x.shape[1] - dim]
    alpha = logits_of(train_features, weight, bias).amax(1).mean() / (x @ residual).norm(dim=1).mean()
    f = image_features.double()
    return torch.logsumexp(logits_of(f, weight, bias), dim=1) - alpha * ((f - u) @ residual).norm(dim=1)


def _compute(inputs, cfg, seed):
    weight, bias = linear_head(inputs)
    return vim(inputs.features, inputs.train_stats["features"], weight, bias, cfg.vim_dim)


register("vim", needs=("features", "linear_head", "train_stats"), compute=_compute, reference=None,
         openood="openood/postprocessors/vim_postprocessor.py", defaults=("vim_dim",))(vim)
