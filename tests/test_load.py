"""Load: a sweep of 40 tiny trials on a real local Ray cluster gives exactly one results row and
one MLflow child run per trial (plus the zero-shot baseline), nothing lost or doubled."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

LAMS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
LRS = [1e-4, 2e-4, 3e-4, 4e-4]
LOAD = {
    "name": "load",
    "model": {"arch": "tiny-vit-32", "pretrained": None},
    # Train on the 200-image validation split: 3 steps per trial; one OoD test set; two cheap scores.
    "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 64, "train": "id_val",
             "ood_test": ["near_ood"]},
    "schedule": {"epochs": 1, "warmup_steps": 1, "checkpoint_every": 0},
    "eval": {"scores": ["mcm", "msp"], "selection_score": "mcm"},
    # ASHA with grace_period = max_t (epochs + 1) stops no trial; it is here because single-worker
    # trials then run inside their Tune trial (tune_sweep.trials_in_process), reusing its process.
    "search": {"algorithm": "grid", "scheduler": "asha", "grace_period": 2,
               "space": {"method": {"grid": [{"name": "cma", "lam": lam} if lam else {"name": "flyp"} for lam in LAMS]},
                         "optim.lr": {"grid": LRS}}},
}


def test_forty_trials_give_one_row_and_one_mlflow_child_each(world, tmp_path):
    import mlflow

    from harness import results
    from harness.results import deferred, tracking

    path = tmp_path / "load.yaml"
    path.write_text(yaml.safe_dump(LOAD))
    out = tmp_path / "out"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(path), "--out", str(out)],
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"40-trial sweep: {elapsed:.0f} s")

    trials = len(LAMS) * len(LRS)
    runs = results.read(out / "results", results.RUNS)
    assert len(runs) == runs["run_id"].nunique() == trials + 1  # + the zero-shot baseline
    assert (runs["status"] == "finished").all()
    swept = runs[runs["method"] != "zero-shot"]
    lams = swept["lam"].fillna(0.0)  # FLYP takes no lam (NaN in the table): it is the grid's lam 0
    assert set(zip(lams, swept["lr"])) == {(lam, lr) for lam in LAMS for lr in LRS}
    assert len(results.read(out / "results", results.OOD)) == (trials + 1) * 2  # 2 scores x 1 OoD set
    assert len(results.read(out / "results", results.EPOCHS)) == trials
    assert len(list((out / "ray").glob("load-sweep-*/_trial_in_process_*"))) == trials  # Tune ran each once

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["load"])
    parent = logged[logged["tags.harness.kind"] == "sweep"]
    children = logged[logged["tags.harness.kind"] == "run"]
    assert len(parent) == 1
    assert sorted(children[f"tags.{tracking.RUN_ID_TAG}"]) == sorted(runs["run_id"])
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert children["metrics.id_accuracy"].notna().all()
    assert not deferred.pending(out)
    assert not Path(out / "results" / deferred.PENDING_FILE).exists()
