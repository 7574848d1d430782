"""harness.results.tracking on a real MLflow SQLite store: runs logged live read back through
mlflow.search_runs with their names, real durations, metric steps, nesting and the parent's
summary; logging after the fact and again deletes nothing."""

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from harness import config
from harness.results import deferred, tracking


def _summary(objective: float, epochs: int = 2) -> dict:
    return {"status": "finished", "id_accuracy": 0.6 + objective / 10, "val_objective": objective,
            "val_auroc": 0.7, "epochs": [{"epoch": e, "train_loss": 2.0 / e} for e in range(1, epochs + 1)],
            "ood": [{"dataset": "near_ood", "score": "mcm", "fpr95": 0.5, "fpr95_ood_positive": 0.4, "auroc": 0.8,
                     "aupr_in": 0.7, "aupr_out": 0.6}], "wall_s": 1.0}


@pytest.fixture()
def sweep_cfg():
    return config.load(None, ["name=live", "schedule.epochs=2", "optim.lr=2e-4", "method.name=cma",
                              "search.space={method.lam: {grid: [0.001, 0.01]}, optim.lr: {grid: [2.0e-4]}}"])


def _trial(cfg, lam: float):
    return cfg.model_copy(update={"method": cfg.method.model_copy(update={"lam": lam})})


def test_run_label_names_the_method_and_searched_values(sweep_cfg):
    assert config.run_label(_trial(sweep_cfg, 0.01)) == "cma lam=0.01 lr=2e-4"
    assert config.run_label(_trial(sweep_cfg, 0.001)) == "cma lam=1e-3 lr=2e-4"
    assert config.run_label(config.load(None, ["optim.lr=2e-4"])) == "flyp lr=2e-4"  # no lam to name
    assert config.run_label(config.load(None, ["method.name=zero-shot"])) == "zero-shot"
    assert config.run_label(config.load(None, ["method.name=cma", "method.lam=0.5"])) == "cma lam=0.5 lr=" + config._short_number(
        config.load(None).optim.lr)


def _live_sweep(cfg, out, pause: float = 0.3) -> list[tracking.Record]:
    live = tracking.Live(cfg, out, "live-sweep")
    records = []
    for lam, objective in ((0.001, 0.5), (0.01, 0.7)):
        trial = _trial(cfg, lam)
        rid = f"live-{lam}"
        live.start(rid, trial)
        summary = _summary(objective)
        for epoch in summary["epochs"]:
            time.sleep(pause)  # an epoch takes time: the run's duration must show it
            live.epoch(rid, epoch)
        live.end(rid, summary, "finished")
        records.append(tracking.Record(rid, trial, summary, "finished"))
    assert live.finish(records)
    return records


def test_a_live_sweep_reads_back_with_names_durations_steps_nesting_and_summary(sweep_cfg, tmp_path):
    out = tmp_path / "out"
    _live_sweep(sweep_cfg, out)
    mlflow.set_tracking_uri(tracking.tracking_uri(sweep_cfg, out))
    logged = mlflow.search_runs(experiment_names=["live"])  # one experiment per sweep name
    parent = logged[logged["tags.harness.kind"] == "sweep"]
    children = logged[logged["tags.harness.kind"] == "run"].set_index("tags.mlflow.runName")
    assert len(parent) == 1 and sorted(children.index) == ["cma lam=0.01 lr=2e-4", "cma lam=1e-3 lr=2e-4"]
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    durations = (children["end_time"] - children["start_time"]).dt.total_seconds()
    assert (durations >= 0.6).all(), durations  # created when the run started, ended when it ended
    assert (children["status"] == "FINISHED").all() and parent["status"].iloc[0] == "FINISHED"
    client = MlflowClient(tracking.tracking_uri(sweep_cfg, out))
    for child in children["run_id"]:
        assert [(m.step, m.value) for m in client.get_metric_history(child, "train_loss")] == [(1, 2.0), (2, 1.0)]
        assert [m.step for m in client.get_metric_history(child, "id_accuracy")] == [2]  # once, at the last step
    best = parent.iloc[0]
    assert best["metrics.trials"] == 2 and best["metrics.trials_finished"] == 2
    assert best["metrics.best.val_objective"] == 0.7 and best["metrics.best.method.lam"] == 0.01
    assert best["params.best.method.lam"] == "0.01" and best["tags.best_run_name"] == "cma lam=0.01 lr=2e-4"
    assert children.loc["cma lam=0.01 lr=2e-4", "params.method.lam"] == "0.01"


def test_logging_again_deletes_nothing_and_a_completed_entry_is_not_logged_twice(sweep_cfg, tmp_path):
    out = tmp_path / "out"
    records = _live_sweep(sweep_cfg, out, pause=0)
    uri = tracking.tracking_uri(sweep_cfg, out)
    deferred.log_sweep(sweep_cfg, out, "live-sweep", records, uri=uri, entry_id="e1")  # after the fact
    deferred.log_sweep(sweep_cfg, out, "live-sweep", records, uri=uri, entry_id="e1")  # a replay: skipped
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("live").experiment_id
    every = client.search_runs([experiment], run_view_type=3)  # ViewType.ALL: deleted runs too
    assert len(every) == 6 and all(r.info.lifecycle_stage == "active" for r in every)
    late = [r for r in every if r.data.tags.get("harness.logged") == "after the fact"]
    assert len(late) == 1 and late[0].data.tags[tracking.ENTRY_TAG] == "e1"


def test_a_store_that_breaks_mid_sweep_turns_live_logging_off_with_one_warning(sweep_cfg, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    warnings = []
    live = tracking.Live(sweep_cfg, tmp_path / "out", "live-sweep", warn=warnings.append)
    live.start("r1", _trial(sweep_cfg, 0.01))
    live.client = MlflowClient(f"http://127.0.0.1:{port}")  # the store goes away: nobody answers there now
    live.epoch("r1", {"epoch": 1, "train_loss": 1.0})
    live.end("r1", _summary(0.5), "finished")
    assert len(warnings) == 1 and "harness sync-mlflow" in warnings[0] and live.broken
    assert not live.finish([])
