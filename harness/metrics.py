"""OoD-detection metrics and top-1 accuracy.

Convention (for every function here): a score is "higher = more in-distribution".
An ID sample is *accepted* at threshold t when its score >= t. Thresholds are the
distinct score values, so tied scores are always accepted or rejected together.

Metrics returned by :func:`ood_metrics` (all fractions in [0, 1]):

- ``fpr95``: ID-positive convention (MCM, NegLabel, CMA papers). Among thresholds
  that accept at least 95% of ID samples, the smallest share of OoD samples accepted.
  (GL-MCM's and LoCoOp's ``fpr_and_fdr_at_recall`` instead reads the threshold whose ID
  recall is nearest 95%, possibly below it: equal on large sets, a few samples apart on
  small ones; the report's conventions list states it.)
- ``fpr95_ood_positive``: OoD-positive convention (OpenOOD v1.5, pytorch-ood). OoD is
  the positive class with score -s: among thresholds that flag (s <= u) at least 95%
  of OoD samples, the smallest share of ID samples flagged.
- ``auroc``: P(ID score > OoD score) + P(equal) / 2 (Mann-Whitney U), exact; equals
  ``sklearn.metrics.roc_auc_score`` with ID labelled 1.
- ``aupr_in``: ``sklearn.metrics.average_precision_score`` with ID positive, scores as given.
- ``aupr_out``: the same with OoD positive and scores negated.

Everything is computed from one O(n log n) sort of the pooled scores.
"""

from __future__ import annotations

import numpy as np
import torch

OOD_METRIC_NAMES = ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out")

# 95% as an integer percentage: the test "count >= 95% of n" is done as
# 100 * count >= 95 * n in integers, so it is exact at any n.
_RECALL_PERCENT = 95


def _to_numpy(values) -> np.ndarray:
    """Any array-like (numpy, torch on any device, list) -> numpy array (dtype kept for ints)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.to(torch.float64)  # bf16/fp16 have no numpy dtype
        return values.numpy()
    return np.asarray(values)


def _check_scores(values, side: str) -> np.ndarray:
    """Validate one side's scores: 1-D, non-empty, finite. Returns float64 numpy."""
    scores = np.asarray(_to_numpy(values), dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{side} scores must be 1-D, got shape {scores.shape}")
    if scores.size == 0:
        raise ValueError(f"{side} scores are empty")
    finite = np.isfinite(scores)
    if not finite.all():
        raise ValueError(f"{side} scores contain {int((~finite).sum())} non-finite values (NaN or inf)")
    return scores


def _accepted_counts(id_scores: np.ndarray, ood_scores: np.ndarray):
    """Cumulative counts at each distinct score, highest score first.

    Returns ``(id_acc, ood_acc, ends)``: int64 arrays of length n_distinct, where
    ``id_acc[k]`` / ``ood_acc[k]`` count the ID / OoD scores >= the k-th largest
    distinct value, and ``ends[k]`` is that group's last index in the descending
    order of the pooled scores (so the group spans ``ends[k-1]+1 .. ends[k]``).
    """
    pooled = np.concatenate([id_scores, ood_scores])
    is_id = np.zeros(pooled.size, dtype=bool)
    is_id[: id_scores.size] = True
    # Ascending sort reversed: the order inside a tie group does not matter,
    # because only whole groups are ever counted.
    order = np.argsort(pooled)[::-1]
    pooled = pooled[order]
    ends = np.append(np.flatnonzero(pooled[1:] != pooled[:-1]), pooled.size - 1)
    id_acc = np.cumsum(is_id[order], dtype=np.int64)[ends]
    ood_acc = ends + 1 - id_acc
    return id_acc, ood_acc, ends


def _fpr_at_95(pos_acc: np.ndarray, neg_acc: np.ndarray, n_pos: int, n_neg: int) -> float:
    """Smallest negative share over thresholds whose positive share is >= 95%.

    ``pos_acc``/``neg_acc`` are cumulative counts ordered by growing acceptance,
    so both are non-decreasing and the first threshold reaching 95% is the best.
    """
    first = int(np.searchsorted(100 * pos_acc, _RECALL_PERCENT * n_pos, side="left"))
    return float(neg_acc[first] / n_neg)


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    """Step-function average precision, following sklearn's operations exactly.

    ``tps``/``fps`` are cumulative positive/negative counts at each distinct
    threshold, strictest threshold first. Written like sklearn's
    precision_recall_curve + average_precision_score (same divisions, same
    summation order) so the floats agree with sklearn, not just the maths.
    """
    tps = tps.astype(np.float64)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every distinct threshold
    recall = tps / tps[-1]
    precision = np.append(precision[::-1], 1.0)
    recall = np.append(recall[::-1], 0.0)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _auroc_from_ranks(id_acc: np.ndarray, ends: np.ndarray, n_id: int, n_ood: int) -> float:
    """AUROC as the Mann-Whitney U statistic with average ranks for ties, exactly.

    Ascending rank of descending position p is n - p; a tie group spanning
    positions a..b gets the average rank n - (a + b) / 2. Doubling keeps every
    intermediate an integer, and Python's int / int is correctly rounded.
    """
    n = n_id + n_ood
    starts = np.concatenate(([0], ends[:-1] + 1))
    id_in_group = np.diff(id_acc, prepend=0)
    twice_rank_sum = int(np.sum(id_in_group * (2 * n - starts - ends)))
    twice_u = twice_rank_sum - n_id * (n_id + 1)
    return twice_u / (2 * n_id * n_ood)


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """Every metric in ``OOD_METRIC_NAMES`` for one (ID, OoD) pair of score sets.

    Args:
        id_scores: 1-D array-like (numpy, torch, list) of ID scores, higher = more ID.
        ood_scores: 1-D array-like of OoD scores, same convention.

    Returns:
        ``{name: python float in [0, 1]}`` with exactly the keys of ``OOD_METRIC_NAMES``.

    Raises:
        ValueError: a side is empty, not 1-D, or has NaN/inf (the message names the side).
    """
    ids = _check_scores(id_scores, "ID")
    oods = _check_scores(ood_scores, "OoD")
    n_id, n_ood = ids.size, oods.size
    id_acc, ood_acc, ends = _accepted_counts(ids, oods)

    # OoD-positive view: flagging s <= u for each distinct u, lowest u first.
    # Counts at or below group k = total minus counts strictly above it.
    ood_flag = (n_ood - np.concatenate(([0], ood_acc[:-1])))[::-1]
    id_flag = (n_id - np.concatenate(([0], id_acc[:-1])))[::-1]

    return {
        "fpr95": _fpr_at_95(id_acc, ood_acc, n_id, n_ood),
        "fpr95_ood_positive": _fpr_at_95(ood_flag, id_flag, n_ood, n_id),
        "auroc": _auroc_from_ranks(id_acc, ends, n_id, n_ood),
        "aupr_in": _average_precision(id_acc, ood_acc),
        "aupr_out": _average_precision(ood_flag, id_flag),
    }


def roc_curve(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve with ID positive: (OoD accepted share, ID accepted share) at every distinct
    threshold, strictest first, starting at (0, 0) and ending at (1, 1).

    Tied scores move both shares in one step, so the trapezoidal area under the curve is
    exactly ``ood_metrics(...)["auroc"]``.
    """
    ids = _check_scores(id_scores, "ID")
    oods = _check_scores(ood_scores, "OoD")
    id_acc, ood_acc, _ = _accepted_counts(ids, oods)
    return np.concatenate(([0.0], ood_acc / oods.size)), np.concatenate(([0.0], id_acc / ids.size))


def accuracy(logits_or_predictions, labels) -> float:
    """Top-1 accuracy as a fraction in [0, 1].

    Args:
        logits_or_predictions: (N, C) logits (argmax over C is the prediction) or
            (N,) integer class predictions; numpy or torch (any device).
        labels: (N,) integer class labels.
    """
    preds = logits_or_predictions
    if isinstance(preds, torch.Tensor) and preds.ndim == 2:
        preds = preds.argmax(dim=1)  # on the tensor's device: only N ints move to the CPU
    preds = _to_numpy(preds)
    if preds.ndim == 2:
        preds = preds.argmax(axis=1)
    labels = _to_numpy(labels)
    if preds.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"expected (N, C) logits or (N,) predictions and (N,) labels, "
                         f"got shapes {preds.shape} and {labels.shape}")
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.shape[0]} predictions but {labels.shape[0]} labels")
    if labels.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(preds == labels))
