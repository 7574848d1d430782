"""NNGuide (Park et al. 2023) as OpenOOD v1.5's nnguide postprocessor: the energy of the head's
logits times the mean of the k largest inner products between the normalised feature and the
ID-train bank, each bank row weighted by its own energy.

The bank is KNN's (eval.knn_bank_fraction of the ID-train features; OpenOOD: the first 1% of its
train loader's batches); k is eval.nnguide_k (100), at most the bank's size. As OpenOOD's
``normalizer``, 1e-10 is added to every entry after L2 normalisation.
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check_features
from harness.scores.registry import register
from harness.scores.train_stats import check_head, linear_head, logits_of


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True) + 1e-10


def nnguide(image_features: torch.Tensor, train_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            k: int = 100, *, chunk_size: int = 1024) -> torch.Tensor:
    """energy(f) x mean of the top-min(k, B) of <norm(f), norm(bank) x energy(bank)>; (N,) float64."""
    check_features(image_features, train_features)
    check_head(image_features, weight, bias)
    weight, bias = weight.double(), bias.double()
    bank = train_features.double()
    guide = _normalise(bank) * torch.logsumexp(logits_of(bank, weight, bias), dim=1, keepdim=True)
    k = min(k, bank.shape[0])

    def one(chunk):
        f = chunk.double()
        conf = torch.topk(_normalise(f) @ guide.T, k, dim=1).values.mean(1)
        return conf * torch.logsumexp(logits_of(f, weight, bias), dim=1)

    return by_chunks(image_features, chunk_size, one)


def _compute(inputs, cfg, seed):
    weight, bias = linear_head(inputs)
    return nnguide(inputs.features, inputs.train_features, weight, bias, cfg.nnguide_k)


register("nnguide", needs=("features", "train_features", "linear_head"), compute=_compute, reference=None,
         openood="openood/postprocessors/nnguide_postprocessor.py", defaults=("nnguide_k", "knn_bank_fraction"))(nnguide)
