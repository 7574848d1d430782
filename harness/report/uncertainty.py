"""Bootstrap confidence intervals for FPR95 and AUROC, one method or the paired difference of two.

Definitions are those of :func:`harness.metrics.ood_metrics` (scores higher = more ID;
``fpr95`` ID-positive; ``auroc`` = P(ID > OoD) + P(ID = OoD) / 2), computed on each
bootstrap replicate exactly, ties included.

Resampling: a replicate draws n_id ID samples and, for each OoD set, n_k OoD samples,
with replacement (sizes kept). The ID draw is shared by every OoD set of the replicate,
so the average over OoD sets is resampled as one statistic. Draws depend only on
(seed, sizes, n_boot), so two methods evaluated on the same samples, given in the same
order, are resampled identically: that is the paired bootstrap of their difference.

Intervals are percentile intervals (2.5th and 97.5th percentiles of the replicates
for 95%, numpy's linear interpolation) around the estimate on the full sample.

Vectorised: a replicate is a row of resample counts over the distinct score values, and
both metrics come from cumulative sums of those counts, O(n_boot x n) with no sort per
replicate. Replicates are processed in chunks that bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from harness import metrics

METRICS = ("fpr95", "auroc")
AVERAGE = "avg"
_CHUNK_ELEMENTS = 4_000_000  # resample indices held at once (int64: ~32 MB)
_RECALL_PERCENT = 95


@dataclass(frozen=True)
class Interval:
    """A metric on the full sample and its bootstrap percentile interval (fractions)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def draw_indices(seed: int, n_id: int, ood_sizes: Sequence[int], n_boot: int
                 ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """The resamples, chunk by chunk: ((b, n_id) ID indices, [(b, n_k) indices per OoD set]).

    The chunk size depends only on the sizes, so the same arguments always give the same
    indices (tests replay them through harness.metrics).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // (n_id + sum(ood_sizes)))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield rng.integers(0, n_id, (b, n_id)), [rng.integers(0, n, (b, n)) for n in ood_sizes]


def _counts(inverse_idx: np.ndarray, n_values: int) -> np.ndarray:
    """(b, m) indices into n_values distinct values -> (b, n_values) counts per row."""
    b = inverse_idx.shape[0]
    flat = inverse_idx + (np.arange(b, dtype=np.int64) * n_values)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n_values).reshape(b, n_values)


def _tail_sums(counts: np.ndarray) -> np.ndarray:
    """(b, U) counts over ascending values -> (b, U + 1): column k = count of values >= the k-th; last = 0."""
    tails = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    return np.concatenate([tails, np.zeros((counts.shape[0], 1), dtype=tails.dtype)], axis=1)


class _Side:
    """One score array as distinct ascending values plus each sample's position among them."""

    def __init__(self, scores) -> None:
        values = np.asarray(metrics._check_scores(scores, "scores"))
        self.values, self.inverse = np.unique(values, return_inverse=True)
        self.n = values.size


def _replicate_metrics(id_side: _Side, id_tails: np.ndarray, id_counts: np.ndarray,
                       ood_side: _Side, ood_idx: np.ndarray) -> dict[str, np.ndarray]:
    """FPR95 and AUROC of each resample row (exact, as harness.metrics.ood_metrics)."""
    ood_counts = _counts(ood_side.inverse[ood_idx], ood_side.values.size)
    ood_tails = _tail_sums(ood_counts)
    n_id, n_ood = id_side.n, ood_side.n
    # FPR95: the strictest threshold accepting >= 95% of ID is the largest distinct ID
    # value k with 100 * #(ID >= v_k) >= 95 * n_id; FPR = #(OoD >= v_k) / n_ood.
    k = (100 * id_tails[:, :-1] >= _RECALL_PERCENT * n_id).sum(axis=1) - 1
    first_ood_at_or_above = np.searchsorted(ood_side.values, id_side.values, side="left")
    rows = np.arange(ood_idx.shape[0])
    fpr = ood_tails[rows, first_ood_at_or_above[k]] / n_ood
    # AUROC: for each distinct OoD value v, count ID > v (twice) and ID == v (once).
    above = np.searchsorted(id_side.values, ood_side.values, side="right")
    equal_at = np.searchsorted(id_side.values, ood_side.values, side="left")
    has_equal = equal_at < above
    equal = np.where(has_equal, id_counts[:, np.minimum(equal_at, id_side.values.size - 1)], 0)
    twice_u = (ood_counts * (2 * id_tails[:, above] + equal)).sum(axis=1)
    return {"fpr95": fpr, "auroc": twice_u / (2 * n_id * n_ood)}


def replicates(id_scores, ood_sets: Mapping[str, object], n_boot: int = 1000,
               seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{OoD set: {metric: (n_boot,) float64 values on the bootstrap replicates}} (see the module docstring)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    id_side = _Side(id_scores)
    sides = {name: _Side(scores) for name, scores in ood_sets.items()}
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {m: [] for m in METRICS} for name in sides}
    for id_idx, ood_idx in draw_indices(seed, id_side.n, [s.n for s in sides.values()], n_boot):
        id_counts = _counts(id_side.inverse[id_idx], id_side.values.size)
        id_tails = _tail_sums(id_counts)
        for (name, side), idx in zip(sides.items(), ood_idx):
            for metric, values in _replicate_metrics(id_side, id_tails, id_counts, side, idx).items():
                parts[name][metric].append(values)
    return {name: {m: np.concatenate(v) for m, v in by_metric.items()} for name, by_metric in parts.items()}


def interval(values: np.ndarray, estimate: float, level: float = 0.95) -> Interval:
    """Percentile interval of replicate ``values`` around ``estimate``."""
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(low), float(high))


def _estimates(id_scores, ood_sets: Mapping[str, object]) -> dict[str, dict[str, float]]:
    full = {name: metrics.ood_metrics(id_scores, scores) for name, scores in ood_sets.items()}
    full[AVERAGE] = {m: float(np.mean([full[name][m] for name in ood_sets])) for m in METRICS}
    return full


def _with_average(reps: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    reps = dict(reps)
    reps[AVERAGE] = {m: np.mean([reps[name][m] for name in reps], axis=0) for m in METRICS}
    return reps


def bootstrap(id_scores, ood_sets: Mapping[str, object], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, dict[str, Interval]]:
    """{OoD set or "avg": {metric: Interval}} for one method; "avg" is the unweighted mean over sets."""
    reps = _with_average(replicates(id_scores, ood_sets, n_boot, seed))
    return intervals_of(reps, _estimates(id_scores, ood_sets), level)


def intervals_of(reps: dict, full: dict, level: float) -> dict[str, dict[str, Interval]]:
    """{set: {metric: Interval}} from the replicates (with "avg") and the full-sample estimates."""
    return {name: {m: interval(reps[name][m], full[name][m], level) for m in METRICS} for name in reps}


def aligned_pair(a: tuple[object, Mapping[str, object]], b: tuple[object, Mapping[str, object]]) -> dict:
    """``b``'s OoD sets in ``a``'s order; ValueError unless both have the same sets and sizes."""
    (id_a, sets_a), (id_b, sets_b) = a, b
    sizes_a = [len(id_a)] + [len(sets_a[k]) for k in sets_a]
    sizes_b = [len(id_b)] + [len(sets_b[k]) for k in sets_a] if set(sets_a) == set(sets_b) else None
    if sizes_a != sizes_b:
        raise ValueError("paired bootstrap needs the same samples for both methods (same OoD sets and sizes)")
    return {k: sets_b[k] for k in sets_a}


def difference_intervals(reps_a: dict, reps_b: dict, full_a: dict, full_b: dict,
                         level: float) -> dict[str, dict[str, Interval]]:
    """{set: {metric: Interval of a − b}} from both sides' replicates (the same draws) and estimates."""
    return {name: {m: interval(reps_a[name][m] - reps_b[name][m], full_a[name][m] - full_b[name][m], level)
                   for m in METRICS} for name in reps_a}


def paired(a: tuple[object, Mapping[str, object]], b: tuple[object, Mapping[str, object]], n_boot: int = 1000,
           seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Interval]]:
    """{OoD set or "avg": {metric: Interval of a − b}}, both methods resampled on the same samples.

    ``a`` and ``b`` are (ID scores, {OoD set: scores}) with the samples in the same order
    (the caller aligns them by sample key); sizes must agree.
    """
    (id_a, sets_a), (id_b, _) = a, b
    sets_b = aligned_pair(a, b)
    reps_a = _with_average(replicates(id_a, sets_a, n_boot, seed))
    reps_b = _with_average(replicates(id_b, sets_b, n_boot, seed))
    return difference_intervals(reps_a, reps_b, _estimates(id_a, sets_a), _estimates(id_b, sets_b), level)


def wilson_interval(p: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials (default 95%).

    Used for ID accuracy, for which per-sample correctness is not stored; unlike the
    normal approximation it stays inside [0, 1] and is sensible at p = 0 or 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
