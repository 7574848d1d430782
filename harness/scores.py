"""Post-hoc OoD scores. Every score is "higher = more in-distribution".

Two kinds of input:

- zero-shot scores (``mcm``, ``neglabel``) take L2-normalised image features (N, D)
  and L2-normalised prompt features (K, D); they are not re-normalised here.
- classifier-head scores (``msp``, ``energy``, ``max_logit``) take (N, C) logits.

Every function returns a 1-D float tensor of shape (N,) on the input's device, in
the input's float dtype promoted to at least float32. Images are processed
``chunk_size`` rows at a time, so e.g. 50,000 images x 11,000 prompts never holds
the full (N, K) similarity matrix, only (chunk_size, K).

Scores are chosen by name through :data:`SCORES` (name -> function) and
:func:`get_score` (name -> :class:`ScoreSpec`, which says which inputs to pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

Needs = Literal["text", "text+negatives", "logits"]


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: its name, the function, and the inputs it takes.

    needs: ``"text"``           -> ``fn(image_features, class_text_features, **kw)``
           ``"text+negatives"`` -> ``fn(image_features, class_text_features, negative_text_features, **kw)``
           ``"logits"``         -> ``fn(logits, **kw)``
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs: Needs

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)


SCORES: dict[str, Callable[..., torch.Tensor]] = {}
SCORE_SPECS: dict[str, ScoreSpec] = {}
_NEEDS = ("text", "text+negatives", "logits")


class UnknownScoreError(KeyError, ValueError):
    """An unknown score name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


def register(name: str, needs: Needs):
    """Decorator: add ``fn`` to the registry under ``name``; a duplicate name raises."""
    if needs not in _NEEDS:
        raise ValueError(f"score {name!r}: needs must be one of {_NEEDS}, got {needs!r}")

    def add(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = fn
        SCORE_SPECS[name] = ScoreSpec(name, fn, needs)
        return fn

    return add


def get_score(name: str) -> ScoreSpec:
    """The :class:`ScoreSpec` registered as ``name`` (callable like its function)."""
    try:
        return SCORE_SPECS[name]
    except KeyError:
        raise UnknownScoreError(f"unknown score {name!r}; valid names: {sorted(SCORE_SPECS)}") from None


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # Softmax over thousands of prompts at T = 0.01 needs at least float32.
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def _check(chunk_size: int, temperature: float = 1.0) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _check_features(image_features: torch.Tensor, *text_features: torch.Tensor) -> None:
    if image_features.ndim != 2:
        raise ValueError(f"image_features must be (N, D), got shape {tuple(image_features.shape)}")
    for text in text_features:
        if text.ndim != 2 or text.shape[1] != image_features.shape[1]:
            raise ValueError(f"text features must be (K, {image_features.shape[1]}), got shape {tuple(text.shape)}")


def _by_chunks(rows: torch.Tensor, chunk_size: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a per-row score ``fn`` to ``rows`` ``chunk_size`` rows at a time; concatenate."""
    if rows.shape[0] == 0:
        return rows.new_empty((0,), dtype=_work_dtype(rows))
    return torch.cat([fn(chunk) for chunk in rows.split(chunk_size)])


@register("mcm", needs="text")
def mcm(image_features: torch.Tensor, class_text_features: torch.Tensor, temperature: float = 1.0,
        *, chunk_size: int = 4096) -> torch.Tensor:
    """Maximum concept matching: max_k softmax_k(cos(f, t_k) / T).

    Args:
        image_features: (N, D) L2-normalised image embeddings.
        class_text_features: (C, D) L2-normalised ID class-prompt embeddings.
        temperature: T > 0 (MCM uses 1).

    Returns:
        (N,) scores in (1/C, 1], higher = more ID.
    """
    _check(chunk_size, temperature)
    _check_features(image_features, class_text_features)
    dtype = _work_dtype(image_features, class_text_features)
    text = class_text_features.to(dtype)

    def score(chunk):
        logits = chunk.to(dtype) @ text.T / temperature
        # max softmax = exp(max - logsumexp): no (chunk, C) probability matrix, no overflow.
        return torch.exp(logits.max(dim=1).values - torch.logsumexp(logits, dim=1))

    return _by_chunks(image_features, chunk_size, score)


def _negative_groups(negative_text_features: torch.Tensor, groups: int, seed: int) -> torch.Tensor:
    """(groups, K // groups, D): negatives shuffled by ``torch.randperm(K, generator=seed)`` and
    split into equal groups, dropping the remainder. One group keeps all, in the given order."""
    k = negative_text_features.shape[0]
    if not 1 <= groups <= k:
        raise ValueError(f"groups must be in [1, number of negatives = {k}], got {groups}")
    if groups == 1:  # a single group's softmax does not depend on the order
        return negative_text_features.unsqueeze(0)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))  # CPU generator: same on any device
    per_group = k // groups
    kept = perm[: groups * per_group].to(negative_text_features.device)
    return negative_text_features[kept].reshape(groups, per_group, -1)


@register("neglabel", needs="text+negatives")
def neglabel(image_features: torch.Tensor, class_text_features: torch.Tensor,
             negative_text_features: torch.Tensor, temperature: float = 0.01, groups: int = 1,
             seed: int = 0, *, chunk_size: int = 4096) -> torch.Tensor:
    """NegLabel: the softmax mass on the ID prompts when negative labels compete.

    For one group G of negatives: logits = cos(f, [ID prompts ; G]) / T and
    score_G = sum_{ID} softmax = exp(lse(ID logits) - lse(ID and G logits)).
    With ``groups`` > 1 the negatives are shuffled with
    ``torch.randperm(K, generator=torch.Generator().manual_seed(seed))``, split into
    ``groups`` groups of K // groups (remainder dropped), and the score is the mean of
    score_G over groups.

    Args:
        image_features: (N, D) L2-normalised image embeddings.
        class_text_features: (C, D) L2-normalised ID class-prompt embeddings.
        negative_text_features: (K, D) L2-normalised negative-label prompt embeddings.
        temperature: T > 0 (NegLabel uses 0.01).
        groups: number of negative groups, 1 <= groups <= K.
        seed: seed of the shuffle (used only when groups > 1).

    Returns:
        (N,) float64 scores in (0, 1], higher = more ID.
    """
    _check(chunk_size, temperature)
    _check_features(image_features, class_text_features, negative_text_features)
    dtype = _work_dtype(image_features, class_text_features, negative_text_features)
    id_text = class_text_features.to(dtype)
    neg = _negative_groups(negative_text_features.to(dtype), groups, seed)  # (G, M, D)
    n_groups, per_group, dim = neg.shape
    neg_flat = neg.reshape(n_groups * per_group, dim)

    def score(chunk):
        chunk = chunk.to(dtype)
        # In place on the fresh (n, K) products: the same float ops as `a / T` and
        # torch.logsumexp, without two more (n, K) temporaries per chunk.
        lse_id = _logsumexp_(torch.mm(chunk, id_text.T).div_(temperature), dim=1)  # (n,)
        neg_logits = torch.mm(chunk, neg_flat.T).div_(temperature).reshape(-1, n_groups, per_group)
        lse_neg = _logsumexp_(neg_logits, dim=2)  # (n, G)
        # ID mass = sigmoid(lse_id - lse_neg). At T = 0.01 it sits within 1e-8 of 1 for
        # many images; float32 rounds those to exactly 1.0 and ties ID with OoD samples,
        # so the last step runs in float64 (distinct up to a log-odds of about 37).
        return torch.sigmoid((lse_id.unsqueeze(1) - lse_neg).double()).mean(dim=1)

    return _by_chunks(image_features, chunk_size, score)


def _logsumexp_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.logsumexp(x, dim)``, bit for bit, overwriting ``x`` (ATen's steps: max with
    infinities masked to 0, exp of the difference, sum, log, add back the max)."""
    maxes = x.amax(dim, keepdim=True)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0)
    return x.sub_(maxes).exp_().sum(dim).log_().add_(maxes.squeeze(dim))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")


@register("msp", needs="logits")
def msp(logits: torch.Tensor, temperature: float = 1.0, *, chunk_size: int = 4096) -> torch.Tensor:
    """Maximum softmax probability of (N, C) logits at temperature T; (N,) in (1/C, 1]."""
    _check(chunk_size, temperature)
    _check_logits(logits)
    dtype = _work_dtype(logits)

    def score(chunk):
        scaled = chunk.to(dtype) / temperature
        return torch.exp(scaled.max(dim=1).values - torch.logsumexp(scaled, dim=1))

    return _by_chunks(logits, chunk_size, score)


@register("energy", needs="logits")
def energy(logits: torch.Tensor, temperature: float = 1.0, *, chunk_size: int = 4096) -> torch.Tensor:
    """Negated free energy T * logsumexp(logits / T) of (N, C) logits; (N,), higher = more ID."""
    _check(chunk_size, temperature)
    _check_logits(logits)
    dtype = _work_dtype(logits)
    return _by_chunks(logits, chunk_size,
                      lambda chunk: temperature * torch.logsumexp(chunk.to(dtype) / temperature, dim=1))


@register("max_logit", needs="logits")
def max_logit(logits: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Largest logit of each row of (N, C) logits; (N,)."""
    _check(chunk_size)
    _check_logits(logits)
    dtype = _work_dtype(logits)
    return _by_chunks(logits, chunk_size, lambda chunk: chunk.to(dtype).max(dim=1).values)
