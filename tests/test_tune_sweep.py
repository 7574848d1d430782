"""The Tune sweep's plain decisions (harness.orchestration.tune_sweep), without a cluster: how many
trials a sweep has, how many run at once, where trials run, and the sweep's name. The sweeps
themselves run in test_load, test_methods and the CLI tests."""

import pytest

from harness import config as config_mod
from harness.orchestration.admission import Admission, ResourceError
from harness.orchestration.tune_sweep import expected_trials, sweep_concurrency, sweep_name, trials_in_process

GRID = {"optim.lr": {"grid": [1e-5, 1e-4, 1e-3]}, "method.name": {"grid": ["flyp", "cma"]}}


def _cfg(**search):
    return config_mod.load(None, {"name": "ts", "search": search})


def test_expected_trials_counts_grid_points_times_num_samples():
    assert expected_trials(_cfg(space=GRID)) == 6
    assert expected_trials(_cfg(space=GRID, num_samples=2)) == 12
    assert expected_trials(_cfg(algorithm="random", num_samples=5, space={"optim.lr": {"loguniform": [1e-5, 1e-3]}})) == 5


def test_concurrency_is_what_the_cluster_holds_capped_by_the_sweep_and_the_config():
    cfg = _cfg(space=GRID)
    assert sweep_concurrency(cfg, Admission(runs_now=4, runs_ever=4)) == 4
    assert sweep_concurrency(cfg, Admission(runs_now=0, runs_ever=None, autoscaling=True)) == 1
    assert sweep_concurrency(cfg, Admission(runs_now=1, runs_ever=64, autoscaling=True)) == 6  # the sweep's 6 trials
    capped = config_mod.load(None, {"name": "ts", "search": {"space": GRID}, "resources": {"max_concurrent_trials": 2}})
    assert sweep_concurrency(capped, Admission(runs_now=4, runs_ever=4)) == 2


def test_asha_keeps_one_run_spare_and_refuses_a_cluster_of_one():
    two_workers = config_mod.load(None, {"name": "ts", "search": {"space": GRID, "scheduler": "asha"},
                                         "resources": {"num_workers": 2}})
    assert sweep_concurrency(two_workers, Admission(runs_now=3, runs_ever=3)) == 2
    with pytest.raises(ResourceError, match="two runs at once"):
        sweep_concurrency(two_workers, Admission(runs_now=1, runs_ever=1))


def test_single_worker_trials_run_in_process_under_asha_or_when_asked():
    assert not trials_in_process(_cfg(space=GRID))
    assert trials_in_process(_cfg(space=GRID, scheduler="asha"))
    assert trials_in_process(config_mod.load(None, {"name": "ts", "resources": {"trial_runner": "tune"}}))
    assert not trials_in_process(config_mod.load(None, {"name": "ts", "search": {"scheduler": "asha"},
                                                        "resources": {"num_workers": 2}}))


def test_sweep_name_is_the_same_for_the_same_config():
    assert sweep_name(_cfg(space=GRID)) == sweep_name(_cfg(space=GRID)) != sweep_name(_cfg(space=GRID, num_samples=2))
    assert sweep_name(_cfg(space=GRID)).startswith("ts-sweep-")
