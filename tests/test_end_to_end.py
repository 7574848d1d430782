"""The whole system on a real local Ray cluster: sweep -> Parquet -> report -> MLflow, then an idempotent re-run."""

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SMALL = {
    "name": "e2e",
    "model": {"arch": "tiny-vit-32", "pretrained": "synthetic"},
    "pretrain": {"epochs": 1, "batch_size": 64},
    "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 32},
    "schedule": {"epochs": 1, "warmup_steps": 2},
    "optim": {"lr": 5e-4},
    "eval": {"neg_ratio": 0.3},
    "search": {"space": {"method": {"grid": [{"name": "flyp"}, {"name": "cma", "lam": 0.5}]}}},
}


@pytest.fixture(scope="module")
def ray_session():
    yield
    import ray

    ray.shutdown()


def test_sweep_writes_tables_report_and_mlflow_runs(world, tmp_path, ray_session):
    import mlflow

    from harness import cli, results
    from harness.results import tracking

    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 0

    runs = results.read(out / "results", results.RUNS)
    assert sorted(runs["method"]) == ["cma", "flyp", "zero-shot"]
    assert (runs["status"] == "finished").all()
    assert runs["id_accuracy"].between(0, 1).all() and runs["val_objective"].notna().all()
    ood = results.read(out / "results", results.OOD)
    assert len(ood) == 3 * 5 * 2  # runs x scores x OoD test sets
    assert set(ood["dataset"]) == {"near_ood", "far_ood"}  # never the validation OoD set
    by_run = runs.set_index("run_id")  # method and the searched values ride along: no join needed
    assert (ood["method"] == by_run.loc[ood["run_id"], "method"].to_numpy()).all()
    cma = (ood["method"] == "cma").to_numpy()
    lam = by_run.loc[ood["run_id"], "lam"].to_numpy()
    assert (ood.loc[cma, "method.lam"].to_numpy() == lam[cma]).all() and ood.loc[cma, "method.lam"].eq(0.5).all()
    assert ood.loc[~cma, "method.lam"].isna().all()  # FLYP and zero-shot take no lam
    assert ood[["fpr95", "auroc", "aupr_in", "aupr_out"]].stack().between(0, 1).all()
    assert len(results.read(out / "results", results.EPOCHS)) == 2  # two trials x one epoch

    assert runs[[f"gap_{m}" for m in ("centroid_distance", "pair_cosine", "uniform_cross")]].notna().all().all()
    samples = results.read(out / "results", results.SAMPLES)
    assert not samples.duplicated(["run_id", "dataset", "score", "key"]).any()  # keys pair runs sample by sample

    report = (out / "report.md").read_text()
    for row in ("| zero-shot | mcm |", "| FLYP | neglabel |", "| CMA | neglabel |", "| CMA − FLYP | neglabel | avg |",
                "`uniform_cross`", "Suite `synthetic`"):
        assert row in report
    for png in ("lambda", "scores", "roc", "training", "gap"):
        assert (out / f"report-{png}.png").stat().st_size > 0, png

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["e2e"])  # one experiment per sweep name
    assert sorted(logged[f"tags.{tracking.RUN_ID_TAG}"]) == sorted(list(runs["run_id"]) + ["e2e-sweep"])
    children = logged[logged["tags.harness.kind"] == "run"]
    parent = logged[logged["tags.harness.kind"] == "sweep"].iloc[0]
    assert children["metrics.id_accuracy"].notna().all()
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert sorted(children["tags.mlflow.runName"]) == ["cma lam=0.5", "flyp templates=single", "zero-shot"]
    # Logged live: each run's MLflow span covers its own training and evaluation (wall_s).
    spans = (children["end_time"] - children["start_time"]).dt.total_seconds()
    walls = runs.set_index("run_id").loc[children[f"tags.{tracking.RUN_ID_TAG}"], "wall_s"].to_numpy()
    assert (spans.to_numpy() >= walls).all(), (spans, walls)
    assert parent["start_time"] <= children["start_time"].min() and parent["end_time"] >= children["end_time"].max()
    assert parent["metrics.trials"] == 2 and parent["metrics.trials_finished"] == 2
    assert parent["metrics.best.val_objective"] == runs[runs["method"] != "zero-shot"]["val_objective"].max()
    client = mlflow.tracking.MlflowClient()
    for _, child in children[children["tags.method"] != "zero-shot"].iterrows():
        assert [m.step for m in client.get_metric_history(child["run_id"], "train_loss")] == [1]  # epoch 1, once
        assert [m.step for m in client.get_metric_history(child["run_id"], "id_accuracy")] == [1]
    for child in children["run_id"]:  # each run's own report section, with its intervals
        assert [a.path for a in client.list_artifacts(child)] == ["report.md"]
        assert "% [95% CI]" in (Path(client.download_artifacts(child, "report.md", str(tmp_path)))).read_text()

    # `harness train` of the CMA trial's config is the same run: its rows are replaced, not added.
    assert cli.main(["train", str(path), "--out", str(out), "--set", "method.name=cma", "--set", "method.lam=0.5"]) == 0
    again = results.read(out / "results", results.RUNS)
    assert len(again) == 3 and sorted(again["run_id"]) == sorted(runs["run_id"])
    assert len(results.read(out / "results", results.OOD)) == 3 * 5 * 2
