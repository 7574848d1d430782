"""Metrics: harness.metrics.ood_metrics against scikit-learn computing the same five numbers.

scikit-learn needs four calls for them: ``roc_curve`` (FPR95 in both conventions, read
off the curve), ``roc_auc_score``, and ``average_precision_score`` with ID positive and
with OoD positive. Scores are float32 draws widened to float64, so ties occur (about
20,000 among 2,000,000) and both sides must handle them. The values are checked
equal (to 1e-12) before any timing is reported: a fast wrong answer raises.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from harness import metrics
from harness.bench.common import BenchContext, interleaved, seconds
from harness.bench.table import Row, Section

TOLERANCE = 1e-12


def scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ID, OoD) scores, n each: overlapping normals, OoD shifted down."""
    rng = np.random.default_rng(seed)
    ids = rng.standard_normal(n, dtype=np.float32).astype(np.float64) + 1.0
    oods = rng.standard_normal(n, dtype=np.float32).astype(np.float64)
    return ids, oods


def sklearn_metrics(ids: np.ndarray, oods: np.ndarray) -> dict[str, float]:
    """The five numbers of :func:`harness.metrics.ood_metrics`, by scikit-learn."""
    y = np.concatenate([np.ones(ids.size), np.zeros(oods.size)])
    s = np.concatenate([ids, oods])
    # Every threshold kept: FPR95 is read at the first point reaching 95% recall.
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    fpr_out, tpr_out, _ = skm.roc_curve(1 - y, -s, drop_intermediate=False)
    return {
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "fpr95_ood_positive": float(fpr_out[np.searchsorted(tpr_out, 0.95, side="left")]),
        "auroc": float(skm.roc_auc_score(y, s)),
        "aupr_in": float(skm.average_precision_score(y, s)),
        "aupr_out": float(skm.average_precision_score(1 - y, -s)),
    }


def run(ctx: BenchContext) -> Section:
    n = ctx.pick(1_000_000, 10_000)
    ids, oods = scores(n)
    ours, theirs = metrics.ood_metrics(ids, oods), sklearn_metrics(ids, oods)
    diff = max(abs(ours[k] - theirs[k]) for k in metrics.OOD_METRIC_NAMES)
    if diff > TOLERANCE:
        raise AssertionError(f"ood_metrics disagrees with scikit-learn by {diff:.3g}: {ours} vs {theirs}")
    times = interleaved({"ours": lambda: seconds(lambda: metrics.ood_metrics(ids, oods)),
                         "sklearn": lambda: seconds(lambda: sklearn_metrics(ids, oods))}, ctx.pick(3, 1))
    ties = 2 * n - np.unique(np.concatenate([ids, oods])).size
    row = Row("metrics", f"ood_metrics, {n:,} ID + {n:,} OoD scores (5 metrics)", times["ours"], "s",
              "scikit-learn: roc_curve x2, roc_auc_score, average_precision_score x2", times["sklearn"],
              times["sklearn"] / times["ours"], ">= 1.0",
              note=f"values equal: max |difference| {diff:.1e} (tolerance {TOLERANCE:.0e})")
    notes = [
        f"Same values: {', '.join(f'{k} {ours[k]:.6f}' for k in metrics.OOD_METRIC_NAMES)}; the largest "
        f"difference from scikit-learn is {diff:.1e} ({ties:,} tied scores among {2 * n:,}).",
        "ood_metrics sorts the pooled scores once and reads every metric off the cumulative counts; "
        "scikit-learn sorts once per call (four sorts for the five numbers). The stage is bound by that one "
        f"argsort of {2 * n:,} float64 values (numpy's, one core).",
    ]
    return Section("metrics", "4. metrics", [row], notes)
