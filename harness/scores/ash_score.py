"""ASH (Djurisic et al. 2023) as OpenOOD v1.5's ash postprocessor and networks/ash_net.py: prune
each feature vector to its top (100 - percentile)% entries, then the energy of the head's logits.

``ash_p`` keeps the top entries, ``ash_b`` sets them to the vector's original sum / their number
(OpenOOD's ``ash`` postprocessor runs this one), ``ash_s`` keeps them and multiplies by
exp(original sum / kept sum). Percentile eval.ash_percentile (OpenOOD's ash.yml: 90). The pruned
feature is the L2-normalised post-projection image embedding (CLIP's pre-projection feature is
not cached; unlike a ResNet's post-ReLU feature it has negative entries, so ASH-S's ratio of sums
can be negative or large). Ties among entries at the cut keep the lowest index (torch.topk's
order among ties is unspecified).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of

MODES = ("p", "b", "s")


def kept_count(n: int, percentile: float) -> int:
    """The number of entries ASH keeps of ``n``: n - round(n x percentile / 100), rounding half to even."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return n - int(round(n * percentile / 100.0))


def top_entries(x: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the row's top entries kept, the rest zeroed; the mask of kept entries); ties: lowest index first."""
    k = kept_count(x.shape[1], percentile)
    order = torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order, True)
    return torch.where(mask, x, torch.zeros_like(x)), mask


def ash_features(features: torch.Tensor, percentile: float, mode: str) -> torch.Tensor:
    """The (N, D) float64 features after ASH-``mode`` pruning."""
    if mode not in MODES:
        raise ValueError(f"ASH mode must be one of {MODES}, got {mode!r}")
    x = features.double()
    pruned, mask = top_entries(x, percentile)
    total = x.sum(1, keepdim=True)
    if mode == "p":
        return pruned
    if mode == "b":
        return torch.where(mask, total / mask.sum(1, keepdim=True), torch.zeros_like(x))
    return pruned * torch.exp(total / pruned.sum(1, keepdim=True))


def ash(image_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, percentile: float = 90.0,
        mode: str = "b") -> torch.Tensor:
    """logsumexp(ASH-``mode``(f) W^T + b); (N,) float64, higher = more ID."""
    check_features(image_features)
    check_head(image_features, weight, bias)
    return torch.logsumexp(logits_of(ash_features(image_features, percentile, mode), weight.double(),
                                     bias.double()), dim=1)


def _register(mode: str) -> None:
    def compute(inputs, cfg, seed):
        weight, bias = linear_head(inputs)
        return ash(inputs.features, weight, bias, cfg.ash_percentile, mode)

    def fn(image_features, weight, bias, percentile=90.0):
        return ash(image_features, weight, bias, percentile, mode)

    fn.__doc__ = f"ASH-{mode.upper()}: :func:`ash` with mode {mode!r}."
    register(f"ash_{mode}", needs=("features", "linear_head"), compute=compute, reference=None,
             openood="openood/postprocessors/ash_postprocessor.py", defaults=("ash_percentile",))(fn)


for _mode in MODES:
    _register(_mode)
