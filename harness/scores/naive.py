"""Slow, obvious arithmetic on Python lists for the scores' test oracles (ScoreSpec.reference).

Nothing here shares code with the fast paths: explicit dot products, math.exp softmax, sorting.
"""

from __future__ import annotations

import math

from harness.lazy import torch


def rows(t: torch.Tensor) -> list[list[float]]:
    return t.double().tolist()


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def logits(images: torch.Tensor, texts: torch.Tensor, scale: float = 1.0) -> list[list[float]]:
    texts_ = rows(texts)
    return [[scale * dot(f, t) for t in texts_] for f in rows(images)]


def max_softmax(values: list[float], temperature: float = 1.0) -> float:
    return max(softmax([v / temperature for v in values]))


def id_mass(id_logits: list[float], neg_logits: list[float], temperature: float) -> float:
    probs = softmax([v / temperature for v in id_logits + neg_logits])
    return sum(probs[: len(id_logits)])


def groups_of(m: int, groups: int, seed: int, remainder: str) -> list[list[int]]:
    """The negatives' row indices per group, by NegLabel's documented grouping rule."""
    if groups == 1:
        return [list(range(m))]
    size = m // groups
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(m, generator=gen).tolist() if remainder == "shuffled" \
        else torch.randperm(groups * size, generator=gen).tolist()
    return [order[g * size:(g + 1) * size] for g in range(groups)]


def neglabel(images, id_text, negatives, temperature, groups, seed, remainder) -> torch.Tensor:
    id_l, neg_l = logits(images, id_text), logits(images, negatives)
    parts = groups_of(negatives.shape[0], groups, seed, remainder)
    return torch.tensor([sum(id_mass(a, [b[j] for j in part], temperature) for part in parts) / len(parts)
                         for a, b in zip(id_l, neg_l)], dtype=torch.float64)


def zero_shot_logits(inputs) -> list[list[float]]:
    if inputs.logits is not None:
        return rows(inputs.logits)
    return logits(inputs.features, inputs.class_text, inputs.logit_scale)
