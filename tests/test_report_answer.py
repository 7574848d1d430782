"""The report's opening answers, on hand-made frames whose verdicts are worked out by hand."""

import math

import pandas as pd

from harness.report import answer as report_answer


def _run(run_id: str, acc: float) -> pd.Series:
    return pd.Series({"run_id": run_id, "id_accuracy": acc})


def _ood(n_id: int, *run_ids: str) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": r, "n_id": n_id, "dataset": "near_ood", "score": "mcm"} for r in run_ids])


def _wilson(p: float, n: int) -> tuple[float, float]:  # the textbook formula, z = 1.96
    z = 1.959963984540054
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_fine_tuning_helps_when_the_intervals_do_not_overlap():
    chosen = {"zero-shot": _run("z", 0.436), "flyp": _run("f", 0.636), "lp": _run("l", 0.50)}
    line = report_answer.accuracy_answer(chosen, _ood(1000, "z", "f", "l"))
    low, high = _wilson(0.636, 1000)
    assert "**yes**" in line and "FLYP" in line and f"63.60 [{100 * low:.1f}, {100 * high:.1f}]" in line
    assert "+20.00 points" in line and "do not overlap" in line


def test_fine_tuning_is_unresolved_when_they_overlap_and_a_loss_is_named():
    chosen = {"zero-shot": _run("z", 0.647), "flyp": _run("f", 0.664)}
    line = report_answer.accuracy_answer(chosen, _ood(1000, "z", "f"))
    assert "**not resolved**" in line and "+1.70 points" in line and "overlap" in line
    worse = report_answer.accuracy_answer({"zero-shot": _run("z", 0.6), "cma": _run("c", 0.3)}, _ood(1000, "z", "c"))
    assert "**no, it hurt**" in worse and "-30.00 points" in worse
    assert report_answer.accuracy_answer({"flyp": _run("f", 0.6)}, _ood(1000, "f")) is None  # no zero-shot


def _ci(rows):
    return pd.DataFrame([{"run_id": r, "score": s, "dataset": d, "metric": "auroc", "estimate": e, "low": e - 0.02,
                          "high": e + 0.02} for r, s, d, e in rows])


def test_best_method_and_score_per_set_with_its_runner_up():
    chosen = {"zero-shot": _run("z", 0.4), "flyp": _run("f", 0.6)}
    ci = _ci([("z", "mcm", "near_ood", 0.66), ("z", "neglabel", "near_ood", 0.76), ("f", "neglabel", "near_ood", 0.71),
              ("f", "mcm", "far_ood", 0.89), ("z", "neglabel", "far_ood", 0.998), ("x", "mcm", "far_ood", 0.999),
              ("z", "neglabel", "avg", 0.87), ("f", "mcm", "avg", 0.75)])
    lines = report_answer.detection_answers(chosen, ci)
    assert lines[0].startswith("- **Best on far_ood:** zero-shot × neglabel, AUROC 99.80")  # run x is not selected
    assert "(runner-up: FLYP × mcm, AUROC 89.00" in lines[0]
    assert lines[1].startswith("- **Best on near_ood:** zero-shot × neglabel, AUROC 76.00 [74.0, 78.0]")
    assert "runner-up: FLYP × neglabel" in lines[1] and "the average over OoD sets" in lines[2]
    tie = report_answer.detection_answers(chosen, _ci([("z", "mcm", "far_ood", 1.0), ("f", "mcm", "far_ood", 0.99999)]))
    assert "(tied with FLYP × mcm, AUROC 100.00" in tie[0]  # equal as printed: no winner claimed


def test_cma_minus_flyp_is_resolved_only_when_its_interval_excludes_zero():
    diffs = pd.DataFrame([
        {"a": "cma", "b": "flyp", "score": "mcm", "dataset": "avg", "metric": "auroc", "estimate": 0.0056, "low": 0.005, "high": 0.0061},
        {"a": "cma", "b": "flyp", "score": "mcm", "dataset": "avg", "metric": "fpr95", "estimate": -0.0075, "low": -0.0125, "high": -0.0025},
        {"a": "cma", "b": "flyp", "score": "neglabel", "dataset": "avg", "metric": "auroc", "estimate": -0.0005, "low": -0.001, "high": 0.0001},
        {"a": "cma", "b": "flyp", "score": "neglabel", "dataset": "avg", "metric": "fpr95", "estimate": 0.0045, "low": -0.0005, "high": 0.0075},
        {"a": "cma", "b": "zero-shot", "score": "mcm", "dataset": "avg", "metric": "auroc", "estimate": 0.1, "low": 0.09, "high": 0.11},
    ])
    mcm, neglabel = report_answer.cma_flyp_answers(diffs, ["mcm", "neglabel"])
    assert "(mcm, average over OoD sets)?** ΔAUROC +0.56 pp [+0.50, +0.61] (resolved); ΔFPR95 -0.75 pp" in mcm
    assert "ΔAUROC -0.05 pp [-0.10, +0.01] (not resolved); ΔFPR95 +0.45 pp [-0.05, +0.75] (not resolved)" in neglabel
    assert report_answer.cma_flyp_answers(diffs[diffs["b"] != "flyp"], ["mcm"]) == []
