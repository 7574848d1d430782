"""NegLabel (ICLR 2024): the softmax mass on the ID prompts when mined negative labels compete.

Group count and remainder rule (both chosen by config, eval.neg_groups / eval.neg_remainder):
the NegLabel reference config uses 100 groups, the CMA code 1 (the default here, so runs
match the CMA paper's numbers). When G does not divide the M negatives, M mod G are dropped:
``"shuffled"`` (default) drops the last M mod G of the seeded permutation (which ones depends
on the seed); ``"tail"`` drops the last M mod G in the file's order, then shuffles (the
OpenOOD-VLM code's rule).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check, check_features, work_dtype
from harness.scores import naive
from harness.scores.registry import register

REMAINDER_RULES = ("shuffled", "tail")


def negative_groups(negative_text_features: torch.Tensor, groups: int, seed: int,
                    remainder: str = "shuffled") -> torch.Tensor:
    """(groups, M // groups, D): the negatives in ``groups`` equal groups (see the module docstring
    for the remainder rule). The shuffle is ``torch.randperm`` on a CPU generator seeded with
    ``seed`` (the same on any device). One group keeps all, in the given order."""
    k = negative_text_features.shape[0]
    if not 1 <= groups <= k:
        raise ValueError(f"groups must be in [1, number of negatives = {k}], got {groups}")
    if remainder not in REMAINDER_RULES:
        raise ValueError(f"remainder must be one of {REMAINDER_RULES}, got {remainder!r}")
    if groups == 1:  # a single group's softmax does not depend on the order
        return negative_text_features.unsqueeze(0)
    per_group = k // groups
    kept_count = groups * per_group
    generator = torch.Generator().manual_seed(seed)
    if remainder == "shuffled":
        kept = torch.randperm(k, generator=generator)[:kept_count]
    else:
        kept = torch.randperm(kept_count, generator=generator)
    return negative_text_features[kept.to(negative_text_features.device)].reshape(groups, per_group, -1)


def neglabel(image_features: torch.Tensor, class_text_features: torch.Tensor,
             negative_text_features: torch.Tensor, temperature: float = 0.01, groups: int = 1,
             seed: int = 0, *, remainder: str = "shuffled", chunk_size: int = 4096) -> torch.Tensor:
    """NegLabel: for one group G of negatives, logits = cos(f, [ID prompts ; G]) / T and
    score_G = sum_{ID} softmax = exp(lse(ID logits) - lse(ID and G logits)); the score is the
    mean of score_G over the groups (:func:`negative_groups`).

    Args:
        image_features: (N, D) L2-normalised image embeddings.
        class_text_features: (C, D) L2-normalised ID class-prompt embeddings.
        negative_text_features: (M, D) L2-normalised negative-label prompt embeddings.
        temperature: T > 0 (NegLabel uses 0.01).
        groups: number of negative groups, 1 <= groups <= M.
        seed: seed of the shuffle (used only when groups > 1).
        remainder: which negatives are dropped when groups does not divide M.

    Returns:
        (N,) float64 scores in (0, 1], higher = more ID.
    """
    check(chunk_size, temperature)
    check_features(image_features, class_text_features, negative_text_features)
    dtype = work_dtype(image_features, class_text_features, negative_text_features)
    id_text = class_text_features.to(dtype)
    neg = negative_groups(negative_text_features.to(dtype), groups, seed, remainder)  # (G, M, D)
    n_groups, per_group, dim = neg.shape
    neg_flat = neg.reshape(n_groups * per_group, dim)

    def score(chunk):
        chunk = chunk.to(dtype)
        # In place on the fresh (n, K) products: the same float ops as `a / T` and
        # torch.logsumexp, without two more (n, K) temporaries per chunk.
        lse_id = logsumexp_(torch.mm(chunk, id_text.T).div_(temperature), dim=1)  # (n,)
        neg_logits = torch.mm(chunk, neg_flat.T).div_(temperature).reshape(-1, n_groups, per_group)
        lse_neg = logsumexp_(neg_logits, dim=2)  # (n, G)
        # ID mass = sigmoid(lse_id - lse_neg). At T = 0.01 it sits within 1e-8 of 1 for
        # many images; float32 rounds those to exactly 1.0 and ties ID with OoD samples,
        # so the last step runs in float64 (distinct up to a log-odds of about 37).
        return torch.sigmoid((lse_id.unsqueeze(1) - lse_neg).double()).mean(dim=1)

    return by_chunks(image_features, chunk_size, score)


def logsumexp_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp(x, dim)``, bit for bit, overwriting ``x`` (ATen's steps: max with
    infinities masked to 0, exp of the difference, sum, log, add back the max)."""
    maxes = x.amax(dim, keepdim=True)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0)
    return x.sub_(maxes).exp_().sum(dim).log_().add_(maxes.squeeze(dim))


def from_config(inputs, cfg, seed: int, negatives: torch.Tensor) -> torch.Tensor:
    """NegLabel with the config's temperature, groups and remainder rule (also used by CSP)."""
    return neglabel(inputs.features, inputs.class_text, negatives, temperature=cfg.neg_temperature,
                    groups=cfg.neg_groups,
                    seed=seed, remainder=cfg.neg_remainder)


def _reference(inputs, cfg, seed):
    return naive.neglabel(inputs.features, inputs.class_text, inputs.negatives, cfg.neg_temperature,
                          cfg.neg_groups, seed, cfg.neg_remainder)


register("neglabel", needs=("features", "class_text", "negatives"),
         compute=lambda inputs, cfg, seed: from_config(inputs, cfg, seed, inputs.negatives),
         reference=_reference)(neglabel)
