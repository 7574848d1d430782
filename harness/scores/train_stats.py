"""ID-train statistics for the feature-space scores ported from OpenOOD v1.5 (Mahalanobis, RMDS,
ReAct, DICE), and the linear-head view of a run's classifier (ViM, ReAct, ASH, DICE, SCALE, NNGuide).

:func:`train_statistics` is computed once per weights digest and cached in the embedding cache
(harness.evaluation.score_inputs.provide), so a second score that needs class means or a precision pays
nothing. Everything is float64: OpenOOD fits its covariances in float32 (sklearn on
``astype(np.float32)``); the ports here keep float64 so that they are equal to the transcribed
formulas to 1e-9. A class with no ID-train sample is dropped (OpenOOD's mean of an empty class is
NaN, which makes every Mahalanobis score NaN).
"""

from __future__ import annotations

from harness.lazy import torch


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy.percentile(values, q) (its default linear interpolation) of all entries, in float64,
    without torch.quantile's input-size limit (ReAct takes it over every ID-train feature value)."""
    flat = values.reshape(-1)  # in its own dtype: no float64 copy of every ID-train value
    if flat.numel() == 0:
        raise ValueError("percentile of an empty set")
    pos = q / 100.0 * (flat.numel() - 1)
    lo, hi = int(pos // 1), min(int(pos // 1) + 1, flat.numel() - 1)
    low = flat.kthvalue(lo + 1).values.double()
    high = flat.kthvalue(hi + 1).values.double()
    return low + (high - low) * (pos - lo)


def _precision(centered: torch.Tensor) -> torch.Tensor:
    """sklearn's EmpiricalCovariance(assume_centered=False).fit(x).precision_, in float64: the
    pseudo-inverse (pinvh's cut-off: max(D, D) x eps x the largest eigenvalue) of the biased
    covariance of ``centered`` about its own mean."""
    x = centered - centered.mean(0, keepdim=True)
    cov = x.T @ x / x.shape[0]
    return torch.linalg.pinv(cov, hermitian=True)


def train_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     react_percentile: float = 90.0) -> dict[str, torch.Tensor]:
    """The ID-train statistics the scores share, from (N, D) features and (N,) labels in [0, num_classes).

    Returns float64 tensors: ``classes`` (C',) the classes with samples, ``class_means`` (C', D),
    ``precision`` (D, D) of the class-centred features (shared covariance: Mahalanobis, RMDS),
    ``mean`` (D,) and ``whole_precision`` (D, D) of all features (RMDS's background class; ``mean``
    is DICE's mean activation), ``react_threshold`` () the ``react_percentile`` of every feature value.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"train_stats: features must be (N, D) and labels (N,), got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    if features.shape[0] < 1:
        raise ValueError("train_stats: no ID-train features")
    x, labels = features.double(), labels.long()
    classes = torch.tensor([c for c in range(num_classes) if bool((labels == c).any())], dtype=torch.long)
    if len(classes) == 0:
        raise ValueError(f"train_stats: no ID-train label in [0, {num_classes})")
    means = torch.stack([x[labels == c].mean(0) for c in classes.tolist()])
    centered = torch.cat([x[labels == c] - means[i] for i, c in enumerate(classes.tolist())])
    mean = x.mean(0)
    return {"classes": classes, "class_means": means, "precision": _precision(centered), "mean": mean,
            "whole_precision": _precision(x - mean), "react_threshold": percentile(features, react_percentile),
            "react_percentile": torch.tensor(float(react_percentile), dtype=torch.float64)}


def linear_head(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (C, D), b (C,)) float64 with the run's logits = features @ W.T + b: the method's head when
    the evaluator gave one, else CLIP's zero-shot classifier (logit_scale x class prompts, b = 0)."""
    if inputs.linear_head is not None:
        weight, bias = inputs.linear_head
        weight = weight.double()
        bias = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.double()
        return weight, bias
    weight = inputs.logit_scale * inputs.class_text.double()
    return weight, torch.zeros(weight.shape[0], dtype=torch.float64)


def logits_of(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return features.double() @ weight.T + bias


def check_head(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if features.ndim != 2 or weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"linear_head: W must be (C, {features.shape[-1]}) for features {tuple(features.shape)}, "
                         f"got {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"linear_head: b must be ({weight.shape[0]},), got {tuple(bias.shape)}")
