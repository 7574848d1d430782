"""harness.report.uncertainty against direct, slow computations: harness.metrics on each materialised resample."""

import numpy as np
import pytest

from harness import metrics
from harness.report import uncertainty


def scores(seed, n, shift, decimals=1):
    """Rounded normal scores: rounding makes many ties, the case where shortcuts go wrong."""
    return np.round(np.random.default_rng(seed).normal(shift, 1.0, n), decimals)


ID = scores(0, 61, 1.0)
OOD = {"near": scores(1, 47, 0.4), "far": scores(2, 33, -0.5)}


def slow_replicates(id_scores, ood_sets, n_boot, seed):
    """Replay the same resample indices, one replicate at a time, through harness.metrics.ood_metrics."""
    out = {name: {m: [] for m in uncertainty.METRICS} for name in ood_sets}
    names = list(ood_sets)
    draws = uncertainty.draw_indices(seed, len(id_scores), [len(ood_sets[k]) for k in names], n_boot)
    for id_idx, ood_idx in draws:
        for row in range(id_idx.shape[0]):
            for name, idx in zip(names, ood_idx):
                found = metrics.ood_metrics(id_scores[id_idx[row]], ood_sets[name][idx[row]])
                for m in uncertainty.METRICS:
                    out[name][m].append(found[m])
    return {name: {m: np.array(v) for m, v in by.items()} for name, by in out.items()}


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several chunks, so chunk boundaries are exercised too."""
    monkeypatch.setattr(uncertainty, "_CHUNK_ELEMENTS", 500)


def test_each_replicate_equals_ood_metrics_on_the_same_resample(small_chunks):
    fast = uncertainty.replicates(ID, OOD, n_boot=40, seed=7)
    slow = slow_replicates(ID, OOD, n_boot=40, seed=7)
    for name in OOD:
        for m in uncertainty.METRICS:
            assert fast[name][m].shape == (40,)
            np.testing.assert_allclose(fast[name][m], slow[name][m], rtol=0, atol=1e-12)


def test_intervals_equal_percentiles_of_a_slow_loop(small_chunks):
    got = uncertainty.bootstrap(ID, OOD, n_boot=60, seed=3)
    slow = slow_replicates(ID, OOD, n_boot=60, seed=3)
    slow["avg"] = {m: np.mean([slow[k][m] for k in OOD], axis=0) for m in uncertainty.METRICS}
    for name in (*OOD, "avg"):
        for m in uncertainty.METRICS:
            low, high = np.percentile(slow[name][m], [2.5, 97.5])
            iv = got[name][m]
            assert iv.low == pytest.approx(low, abs=1e-12) and iv.high == pytest.approx(high, abs=1e-12)
    assert got["near"]["auroc"].estimate == metrics.ood_metrics(ID, OOD["near"])["auroc"]
    assert got["avg"]["fpr95"].estimate == pytest.approx(
        np.mean([metrics.ood_metrics(ID, OOD[k])["fpr95"] for k in OOD]))


def test_paired_difference_equals_a_slow_loop_over_the_same_resamples():
    other_id = ID + scores(5, len(ID), 0.0, decimals=2) * 0.3  # a second "method" on the same samples
    other = {k: v + scores(6 + i, len(v), 0.0, decimals=2) * 0.3 for i, (k, v) in enumerate(OOD.items())}
    got = uncertainty.paired((other_id, other), (ID, OOD), n_boot=50, seed=11)
    slow_a, slow_b = slow_replicates(other_id, other, 50, 11), slow_replicates(ID, OOD, 50, 11)
    for name in OOD:
        for m in uncertainty.METRICS:
            diff = slow_a[name][m] - slow_b[name][m]
            low, high = np.percentile(diff, [2.5, 97.5])
            iv = got[name][m]
            assert (iv.low, iv.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
            full = metrics.ood_metrics(other_id, other[name])[m] - metrics.ood_metrics(ID, OOD[name])[m]
            assert iv.estimate == pytest.approx(full, abs=1e-15)


def test_a_method_against_itself_differs_by_exactly_zero():
    got = uncertainty.paired((ID, OOD), (ID, OOD), n_boot=30)
    assert all(iv == uncertainty.Interval(0.0, 0.0, 0.0) for by in got.values() for iv in by.values())


def test_seeded_and_seed_sensitive():
    a = uncertainty.replicates(ID, OOD, n_boot=20, seed=1)
    b = uncertainty.replicates(ID, OOD, n_boot=20, seed=1)
    c = uncertainty.replicates(ID, OOD, n_boot=20, seed=2)
    assert np.array_equal(a["near"]["auroc"], b["near"]["auroc"])
    assert not np.array_equal(a["near"]["auroc"], c["near"]["auroc"])


def test_perfect_separation_has_a_degenerate_interval():
    got = uncertainty.bootstrap(np.arange(10.0, 20.0), {"o": np.arange(0.0, 10.0)}, n_boot=50)
    assert got["o"]["auroc"] == uncertainty.Interval(1.0, 1.0, 1.0)
    assert got["o"]["fpr95"] == uncertainty.Interval(0.0, 0.0, 0.0)


def test_paired_refuses_different_samples():
    with pytest.raises(ValueError, match="same samples"):
        uncertainty.paired((ID, OOD), (ID[:-1], OOD), n_boot=5)
    with pytest.raises(ValueError, match="same samples"):
        uncertainty.paired((ID, OOD), (ID, {"near": OOD["near"]}), n_boot=5)


def test_wilson_interval_known_values():
    low, high = uncertainty.wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    low, high = uncertainty.wilson_interval(1.0, 20)
    assert high == 1.0 and low == pytest.approx(0.8389, abs=1e-4)
