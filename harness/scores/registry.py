"""The score registry: each score module registers its function beside its definition, with the
inputs it needs and how to compute it from what the evaluator provides.

A score declares its inputs by name (:data:`INPUTS`); the evaluator builds only what the
selected scores declare (harness.evaluation.evaluate) and hands them over as :class:`ScoreInputs`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.lazy import torch

# What a score may ask for. The evaluator knows how to provide each of these.
INPUTS = {
    "features": "L2-normalised pooled image features (N, D) of the set being scored",
    "class_text": "L2-normalised ID class-prompt features (C, D) and the logit scale",
    "negatives": "L2-normalised mined negative-label prompt features (M, D)",
    "csp_negatives": "L2-normalised template-averaged features of CSP's mined pool (nouns and phrases) (M', D)",
    "patches": "per-image patch-level result: max over patches and classes of the local softmax (N,)",
    "logits": "the run's classifier logits (N, C): the method's head, else logit_scale x cosine",
    "train_features": "L2-normalised pooled features of ID-train images (the KNN bank)",
    "model": "the model itself (input gradients), through a per-image result computed by the evaluator",
    "stream": "the ID and OoD test features of one pair, mixed into a test stream (test-time scores)",
    "linear_head": "the classifier as (W (C, D), b (C,)) on the L2-normalised features: logits = f W^T + b "
                   "(the method's head, else logit_scale x the class prompts, b = 0)",
    "train_stats": "ID-train statistics (harness.scores.train_stats: class means, shared and whole precision, "
                   "mean activation, percentiles) with the ID-train features and labels, cached per weights digest",
}


@dataclass
class ScoreInputs:
    """What the evaluator provides for one set (or, for stream scores, one ID/OoD pair).

    Fields a selected score did not declare may be None. ``extra`` carries per-image results
    computed by the evaluator from the model (``patches``: "local_mcm"; ``model``: "odin").
    """

    features: torch.Tensor | None = None
    class_text: torch.Tensor | None = None
    logit_scale: float = 1.0
    negatives: torch.Tensor | None = None
    csp_negatives: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    train_features: torch.Tensor | None = None
    id_features: torch.Tensor | None = None  # stream scores: the ID side of the pair
    local_features: torch.Tensor | None = None  # (N, P, D) patch features, when held whole (tests)
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None  # images -> logits (model scores)
    images: torch.Tensor | None = None  # the set's preprocessed images, when held whole (tests)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    linear_head: tuple[torch.Tensor, torch.Tensor] | None = None  # (W, b): logits = features @ W.T + b
    train_stats: dict | None = None  # harness.scores.train_stats.train_statistics(...) plus "features", "labels"


Compute = Callable[[ScoreInputs, Any, int], Any]
"""(inputs, harness.config.EvalConfig, seed) -> (N,) scores; a stream score returns (id, ood)."""
Reference = Compute
"""The same contract, computed the slow obvious way (loops, explicit softmax): the test oracle."""


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: its name, its public function, the inputs it declares, and ``compute``
    (how the evaluator calls it). ``stream``: scores one (ID, OoD) pair at a time, whose ID scores
    depend on the OoD set it is mixed with."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs: frozenset[str]
    compute: Compute
    reference: Reference | None
    stream: bool = False
    openood: str | None = None  # the OpenOOD v1.5 file it ports (its oracle: tests/openood_oracles.py)
    defaults: tuple[tuple[str, Any], ...] = ()  # (eval.* key, default) pairs it reads, for `harness scores`

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.fn(*args, **kwargs)


SCORES: dict[str, Callable[..., torch.Tensor]] = {}
SCORE_SPECS: dict[str, ScoreSpec] = {}


class UnknownScoreError(KeyError, ValueError):
    """An unknown score name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


def register(name: str, needs: tuple[str, ...] | frozenset[str], compute: Compute, reference: Reference | None,
             openood: str | None = None, defaults: tuple[str, ...] = ()):
    """Decorator: add ``fn`` under ``name`` with the inputs it ``needs``, how the evaluator computes
    it and its test oracle; a duplicate name or an unknown input raises. A port of an OpenOOD
    postprocessor names its file (``openood``) and may leave ``reference`` None: its oracle is the
    formula transcribed from that file (tests/openood_oracles.py). ``defaults``: the eval.* keys it reads."""
    needs = frozenset(needs)
    unknown = sorted(needs - set(INPUTS))
    if unknown:
        raise ValueError(f"score {name!r}: unknown input(s) {unknown}; known: {sorted(INPUTS)}")
    from harness.config import EvalConfig

    known = EvalConfig.model_fields
    bad = [k for k in defaults if k not in known]
    if bad:
        raise ValueError(f"score {name!r}: defaults {bad} are not eval.* keys")
    pairs = tuple((k, known[k].default) for k in defaults)

    def add(fn):
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        if reference is None and openood is None:
            raise ValueError(f"score {name!r}: give a reference (its test oracle) or the OpenOOD file it ports")
        SCORES[name] = fn
        SCORE_SPECS[name] = ScoreSpec(name, fn, needs, compute, reference, stream="stream" in needs,
                                      openood=openood, defaults=pairs)
        return fn

    return add


def get_score(name: str) -> ScoreSpec:
    """The :class:`ScoreSpec` registered as ``name`` (callable like its function)."""
    try:
        return SCORE_SPECS[name]
    except KeyError:
        raise UnknownScoreError(f"unknown score {name!r}; registered scores: {sorted(SCORE_SPECS)}") from None


def _settings(spec: ScoreSpec) -> list[tuple[str, Any]]:
    """The eval.* keys a score reads: those it declared, else those named after it (knn_k, odin_*,
    ...; NegLabel's and CSP's mining and grouping keys are neg_*)."""
    if spec.defaults:
        return list(spec.defaults)
    from harness.config import EvalConfig

    prefixes = (spec.name + "_",) + (("neg_",) if spec.name in ("neglabel", "csp") else ())
    return [(k, f.default) for k, f in EvalConfig.model_fields.items() if k.startswith(prefixes)]


def describe() -> str:
    """Every registered score with its inputs, its eval.* settings and defaults, and what it ports:
    `harness scores`."""
    lines = ["Scores (higher = more in-distribution; eval.scores: [a, b] or all; harness evaluate --scores a,b):", ""]
    for name, spec in sorted(SCORE_SPECS.items()):
        kind = "test-time, scores an ID/OoD stream" if spec.stream else "post-hoc"
        port = f"; ports OpenOOD v1.5 {spec.openood}" if spec.openood else ""
        module = sys.modules.get(spec.fn.__module__)  # the score module's docstring says what it is
        doc = " ".join(((module.__doc__ if module else None) or spec.fn.__doc__ or "").split())
        doc = re.split(r"(?<! al)\. ", doc)[0]
        lines.append(f"{name}  ({kind}{port}): {doc}")
        lines.append(f"    inputs: {', '.join(sorted(spec.needs))}")
        for key, default in _settings(spec):
            lines.append(f"    eval.{key}: default {default!r}")
        lines.append("")
    return "\n".join(lines).rstrip()
