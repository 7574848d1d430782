"""harness.report.interval_cache: the same intervals as uncertainty, computed once per input digest,
never returned stale; and the report bootstraps only what it prints with an interval."""

import numpy as np
import pandas as pd
import pytest

from harness.report import build, interval_cache, stats, uncertainty
from harness.report.interval_cache import Bootstraps

RNG = np.random.default_rng(0)
ID = np.round(RNG.normal(1.0, 1.0, 70), 1)  # rounded: ties, as real scores have
OOD = {"far": np.round(RNG.normal(-0.5, 1.0, 40), 1), "near": np.round(RNG.normal(0.4, 1.0, 50), 1)}
ID_B = np.round(ID + RNG.normal(0, 0.3, ID.size), 1)
OOD_B = {k: np.round(v + RNG.normal(0, 0.3, v.size), 1) for k, v in OOD.items()}


def test_same_intervals_as_uncertainty_bit_for_bit(tmp_path):
    boot = Bootstraps(tmp_path)
    assert boot.bootstrap(ID, OOD, 200, 3) == uncertainty.bootstrap(ID, OOD, 200, 3)
    assert boot.paired((ID, OOD), (ID_B, OOD_B), 200, 3) == uncertainty.paired((ID, OOD), (ID_B, OOD_B), 200, 3)


def test_a_paired_difference_reuses_each_sides_replicates():
    boot = Bootstraps()
    boot.bootstrap(ID, OOD, 100)
    boot.bootstrap(ID_B, OOD_B, 100)
    boot.paired((ID, OOD), (ID_B, OOD_B), 100)
    boot.paired((ID_B, OOD_B), (ID, OOD), 100)
    assert boot.replicated == 2 and len(boot.computed) == 4


def test_a_warm_render_reads_the_disk_and_resamples_nothing(tmp_path, monkeypatch):
    first = Bootstraps(tmp_path)
    want = first.bootstrap(ID, OOD, 100), first.paired((ID, OOD), (ID_B, OOD_B), 100)

    def refuse(*args, **kwargs):
        raise AssertionError("resampled on a cache hit")

    monkeypatch.setattr(uncertainty, "replicates", refuse)
    again = Bootstraps(tmp_path)
    assert (again.bootstrap(ID, OOD, 100), again.paired((ID, OOD), (ID_B, OOD_B), 100)) == want
    assert again.computed == [] and again.replicated == 0


@pytest.mark.parametrize("change", ["one score", "a set's name", "n_boot", "seed", "level", "order", "format"])
def test_any_change_to_the_inputs_recomputes(tmp_path, change, monkeypatch):
    Bootstraps(tmp_path).bootstrap(ID, OOD, 100, 0, 0.95)
    id_scores, sets, args = ID.copy(), dict(OOD), [100, 0, 0.95]
    if change == "one score":
        id_scores[5] += 0.1
    elif change == "a set's name":
        sets = {"Far": OOD["far"], "near": OOD["near"]}
    elif change == "order":
        sets = {"near": OOD["near"], "far": OOD["far"]}
    elif change == "format":
        monkeypatch.setattr(interval_cache, "FORMAT", interval_cache.FORMAT + 1)
    else:
        args[{"n_boot": 0, "seed": 1, "level": 2}[change]] = {"n_boot": 120, "seed": 1, "level": 0.9}[change]
    boot = Bootstraps(tmp_path)
    assert boot.bootstrap(id_scores, sets, *args) == uncertainty.bootstrap(id_scores, sets, *args)
    assert len(boot.computed) == 1, f"a stale interval was returned after changing {change}"


def test_a_torn_cache_file_is_recomputed(tmp_path):
    Bootstraps(tmp_path).bootstrap(ID, OOD, 50)
    (path,) = (tmp_path / "bootstrap").glob("*.json")
    path.write_text('{"avg": ')
    boot = Bootstraps(tmp_path)
    assert boot.bootstrap(ID, OOD, 50) == uncertainty.bootstrap(ID, OOD, 50) and len(boot.computed) == 1


def _tables() -> stats.Tables:
    """Zero-shot, FLYP at two seeds (λ 0), WiSE-FT twice (no λ): one selected run per method."""
    runs = [("zs", "zero-shot", float("nan"), 0.60), ("flyp-a", "flyp", 0.0, 0.70), ("flyp-b", "flyp", 0.0, 0.65),
            ("wise-a", "wise-ft", float("nan"), 0.68), ("wise-b", "wise-ft", float("nan"), 0.66)]
    frame = pd.DataFrame([{"run_id": r, "method": m, "lam": lam, "val_objective": v, "status": "finished",
                           "suite": "synthetic", "id_test": "id_test", "id_accuracy": 0.5} for r, m, lam, v in runs])
    rng = np.random.default_rng(1)
    samples = pd.DataFrame([{"run_id": r, "dataset": d, "score": s, "key": f"{d}-{i}", "value": rng.normal()}
                            for r, *_ in runs for s in ("mcm", "neglabel", "energy")
                            for d in ("id_test", "far", "near") for i in range(30)])
    return stats.Tables(frame, pd.DataFrame(), pd.DataFrame(), samples)


def test_the_report_bootstraps_only_what_it_prints_with_an_interval():
    boot = Bootstraps()
    ci = build._intervals(_tables(), ["mcm", "neglabel"], 50, boot)
    have = {rid: set(g["score"]) for rid, g in ci.groupby("run_id")}
    # selected runs: every score (main table, every other score, the answers); the other FLYP seed is
    # in the λ-sweep figure: its shown scores; the other WiSE-FT run is printed without intervals
    assert have == {"zs": {"mcm", "neglabel", "energy"}, "flyp-a": {"mcm", "neglabel", "energy"},
                    "wise-a": {"mcm", "neglabel", "energy"}, "flyp-b": {"mcm", "neglabel"}}
    assert len(boot.computed) == 3 * 3 + 2


def test_an_interval_does_not_depend_on_which_others_were_computed():
    tables = _tables()
    alone = stats.intervals(tables, tables.runs[tables.runs["run_id"] == "wise-b"], 50)
    every = stats.intervals(tables, tables.runs, 50)
    assert alone.equals(every[every["run_id"] == "wise-b"].reset_index(drop=True))
