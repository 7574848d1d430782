"""harness.metrics against sklearn and against slow brute-force definitions."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from harness.metrics import OOD_METRIC_NAMES, accuracy, ood_metrics


def brute_fpr95(id_scores, ood_scores):
    """ID-positive FPR95 by trying every distinct threshold (accept score >= t)."""
    ids, oods = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    best = math.inf
    for t in np.unique(np.concatenate([ids, oods])):
        if 100 * np.sum(ids >= t) >= 95 * ids.size:
            best = min(best, np.sum(oods >= t) / oods.size)
    return best


def brute_fpr95_ood_positive(id_scores, ood_scores):
    """OoD-positive FPR95 by trying every distinct threshold (flag score <= u)."""
    ids, oods = np.asarray(id_scores, float), np.asarray(ood_scores, float)
    best = math.inf
    for u in np.unique(np.concatenate([ids, oods])):
        if 100 * np.sum(oods <= u) >= 95 * oods.size:
            best = min(best, np.sum(ids <= u) / ids.size)
    return best


def sklearn_fpr95(id_scores, ood_scores):
    """ID-positive FPR95 read off sklearn's full ROC curve: the first point with TPR >= 0.95."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[id_scores, ood_scores], drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def sklearn_fpr95_ood_positive(id_scores, ood_scores):
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = roc_curve(y, -np.r_[id_scores, ood_scores], drop_intermediate=False)
    return fpr[np.argmax(tpr >= 0.95)]


def check_against_references(id_scores, ood_scores):
    got = ood_metrics(id_scores, ood_scores)
    assert tuple(got) == OOD_METRIC_NAMES
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in got.values())
    scores = np.r_[id_scores, ood_scores]
    is_id = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    assert got["auroc"] == pytest.approx(roc_auc_score(is_id, scores), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(is_id, scores), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(1 - is_id, -scores), abs=1e-12)
    assert got["fpr95"] == brute_fpr95(id_scores, ood_scores) == sklearn_fpr95(id_scores, ood_scores)
    assert (got["fpr95_ood_positive"] == brute_fpr95_ood_positive(id_scores, ood_scores)
            == sklearn_fpr95_ood_positive(id_scores, ood_scores))
    return got


rng = np.random.default_rng(1234)
CASES = {
    "random_gaussians": (rng.normal(1.0, 1.0, 700), rng.normal(0.0, 1.0, 900)),
    "ties_0_to_3": (rng.integers(0, 4, 500).astype(float), rng.integers(0, 4, 800).astype(float)),
    "ties_shifted": (rng.integers(1, 4, 300).astype(float), rng.integers(0, 3, 300).astype(float)),
    "one_id_vs_1000": (rng.normal(0.5, 1.0, 1), rng.normal(0.0, 1.0, 1000)),
    "1000_id_vs_one": (rng.normal(0.5, 1.0, 1000), rng.normal(0.0, 1.0, 1)),
    "one_tied_vs_many": (np.array([2.0]), rng.integers(0, 4, 1000).astype(float)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_sklearn_and_brute_force(name):
    check_against_references(*CASES[name])


def test_perfectly_separated():
    got = check_against_references(np.linspace(2, 3, 50), np.linspace(0, 1, 70))
    assert got == {"fpr95": 0.0, "fpr95_ood_positive": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}


def test_perfectly_inverted():
    got = check_against_references(np.linspace(0, 1, 50), np.linspace(2, 3, 70))
    assert got["auroc"] == 0.0 and got["fpr95"] == 1.0 and got["fpr95_ood_positive"] == 1.0


def test_identical_distributions():
    same = rng.normal(size=400)
    got = check_against_references(same, same.copy())
    assert got["auroc"] == 0.5
    assert got["aupr_in"] == got["aupr_out"]


def test_hand_worked_fpr95_conventions_differ():
    # ID = 10..109 (100), OoD = 0..19 (20).
    # ID-positive: t = 15 accepts 15..109 = 95 ID (t = 16 only 94); OoD >= 15: 15..19 -> 5/20.
    # OoD-positive: u = 18 flags 0..18 = 19 OoD (u = 17 only 18); ID <= 18: 10..18 -> 9/100.
    ids, oods = np.arange(10, 110.0), np.arange(0, 20.0)
    got = ood_metrics(ids, oods)
    assert got["fpr95"] == 0.25
    assert got["fpr95_ood_positive"] == 0.09


def test_hand_worked_ties_cannot_be_split():
    # 19 ID at 1, one at 0 -> t = 1 accepts exactly 95% of ID, and all 5 OoD tied at 1.
    # OoD-positive: flagging s <= 0 catches only 5/10 OoD, so s <= 1 flags everything.
    got = ood_metrics([1.0] * 19 + [0.0], [1.0] * 5 + [0.0] * 5)
    assert got["fpr95"] == 0.5
    assert got["fpr95_ood_positive"] == 1.0
    # All ID tied: the only threshold accepting >= 95% accepts all of them and the tied OoD.
    assert ood_metrics([1.0] * 20, [1.0] + [0.0] * 9)["fpr95"] == 0.1


def test_hand_worked_auroc_and_aupr():
    # Pairs (ID, OoD): (1,0) win, (1,1) tie, (2,0) win, (2,1) win -> 3.5 / 4.
    assert ood_metrics([1.0, 2.0], [0.0, 1.0])["auroc"] == 0.875
    # Descending: 3 (ID), 2 (OoD), 1 (ID): AP_in = 1/2 * 1 + 1/2 * 2/3.
    # Negated, descending: -1 (ID), -2 (OoD), -3 (ID): the one OoD comes with precision 1/2.
    got = ood_metrics([3.0, 1.0], [2.0])
    assert got["aupr_in"] == pytest.approx(0.5 + 1 / 3, abs=1e-15)
    assert got["aupr_out"] == 0.5


def test_accepts_torch_and_lists():
    ids, oods = CASES["ties_0_to_3"]
    expected = ood_metrics(ids, oods)
    assert ood_metrics(torch.tensor(ids, dtype=torch.float32), torch.tensor(oods)) == expected
    assert ood_metrics(list(ids), list(oods)) == expected


@pytest.mark.parametrize("side", ["ID", "OoD"])
@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [float("inf"), 0.2], [-float("inf")]])
def test_rejects_empty_and_non_finite(side, bad):
    good = [0.1, 0.5, 0.9]
    args = (bad, good) if side == "ID" else (good, bad)
    with pytest.raises(ValueError, match=rf"^{side} scores"):
        ood_metrics(*args)


def test_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        ood_metrics(np.zeros((3, 2)), np.zeros(3))


def test_accuracy_logits_and_predictions():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.1, 0.2], [5.0, 0.0, 0.0]])
    labels = np.array([1, 0, 1, 2])
    assert accuracy(logits, labels) == 0.5
    assert accuracy(torch.tensor(logits), torch.tensor(labels)) == 0.5
    assert accuracy(np.array([1, 0, 1, 2]), labels) == 1.0
    assert accuracy(torch.tensor([0, 0, 0, 0]), labels) == 0.25


def test_accuracy_errors():
    with pytest.raises(ValueError):
        accuracy(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        accuracy(np.zeros((0, 3)), np.zeros(0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn_and_its_area_is_the_auroc(seed):
    from harness.metrics import roc_curve as our_roc

    rng = np.random.default_rng(seed)
    ids, oods = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)  # rounded: ties
    fpr, tpr = our_roc(ids, oods)
    y = np.r_[np.ones(len(ids)), np.zeros(len(oods))]
    sk_fpr, sk_tpr, _ = roc_curve(y, np.r_[ids, oods], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(ood_metrics(ids, oods)["auroc"], abs=1e-12)
