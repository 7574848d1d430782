"""Numerical faults: a NaN/inf loss stops the run with status `diverged`, before another step,
reported to Tune and recorded in Parquet and MLflow, while the rest of the sweep goes on.

The fault is real: an absurd learning rate (1e6, fp32 tiny model) turns the loss to NaN
within a few steps (checked: step 2-3 on seeds 0 and 1)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from harness import config, models
from harness.train import engine
from harness.train import runner
from harness.config import OptimConfig
from harness.data.pipeline import CountedBatches, class_prompt, train_pipeline
from harness.data.shards import read_manifest
from harness.losses import CMALoss

ABSURD_LR = 1e6


@pytest.fixture(scope="module")
def root(world, tmp_path_factory) -> Path:
    """The small world without its pretraining corpus (runs here start from random weights)."""
    out = tmp_path_factory.mktemp("numeric") / "data"
    shutil.copytree(world, out, ignore=shutil.ignore_patterns("pretrain"))
    return out


def _batches(root: Path, bundle, batch_size=32):
    manifest = read_manifest(root / "id_train")
    return CountedBatches(train_pipeline(manifest.shards, bundle.train_transform,
                                         class_prompt(manifest.classnames, "a photo of a {}"), bundle.tokenizer,
                                         batch_size, shard_samples=manifest.shard_samples))


@pytest.mark.slow
def test_a_nan_loss_stops_before_the_step_is_applied(root):
    torch.manual_seed(0)
    bundle = models.build("tiny-vit-32", None)
    optimizer = engine.make_optimizer(bundle.model, OptimConfig(lr=ABSURD_LR))
    scheduler = engine.warmup_cosine(optimizer, 2, 20)
    with pytest.raises(engine.Diverged, match=r"non-finite training loss \(nan\) at step [23]") as caught:
        engine.train_epoch(bundle.model, _batches(root, bundle), 10, CMALoss(0.0), optimizer, scheduler,
                           engine.RunContext())
    assert math.isnan(caught.value.loss)
    # the step with the NaN loss was never applied: every weight is still a number
    assert all(torch.isfinite(p).all() for p in bundle.model.parameters())
    assert isinstance(caught.value, FloatingPointError)  # what the loop raised before: callers keep working


@pytest.mark.slow
def test_ranks_agree_to_stop_when_only_another_rank_overflows(root):
    """Each rank's loss covers its own rows, so one rank can overflow alone; the others must stop
    at the same step or they would wait for it in the next all-gather forever. `gather` stands in
    for the all-gather of a second rank that saw a NaN (the real one is tested in test_distributed)."""
    bundle = models.build("tiny-vit-32", None)
    optimizer = engine.make_optimizer(bundle.model, OptimConfig(lr=1e-4))
    scheduler = engine.warmup_cosine(optimizer, 2, 20)
    before = [p.detach().clone() for p in bundle.model.parameters()]
    other_rank_nan = lambda flag: torch.cat([flag, torch.zeros_like(flag)])  # noqa: E731
    with pytest.raises(engine.Diverged):
        engine.train_step(bundle.model, [next(_batches(root, bundle))], CMALoss(0.0), optimizer, scheduler,
                          torch.device("cpu"), gather=other_rank_nan)
    assert all(torch.equal(a, b) for a, b in zip(before, bundle.model.parameters()))


@pytest.mark.slow
def test_a_diverged_run_ends_with_its_status_and_reports_it(root, tmp_path):
    cfg = config.load(None, [f"data.root={root}", "data.source=shards", "model.pretrained=null", "schedule.epochs=2",
                             "data.batch_size=64", "schedule.warmup_steps=2", "eval.neg_ratio=0.3",
                             f"optim.lr={ABSURD_LR}"])
    reports = []
    ctx = engine.RunContext(report=lambda metrics, checkpoint_dir=None: reports.append((metrics, checkpoint_dir)))
    summary = runner.run(cfg, runner.RunPaths(root, None, tmp_path / "run"), ctx, log=lambda line: None)

    assert summary["status"] == "diverged"
    assert summary["error"].startswith("non-finite training loss (nan) at step ")
    assert summary["error"].endswith(" of epoch 1") and summary["epochs"] == []  # stopped in its first epoch
    saved = json.loads((tmp_path / "run" / "result.json").read_text())  # a re-run reuses it: same config, same end
    assert saved["status"] == "diverged" and saved["error"] == summary["error"]
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "scores.pt").exists()
    # Tune hears of it once, with the searchable metrics present (Tune requires them) but no number
    (metrics, checkpoint_dir), = reports
    assert metrics["diverged"] == 1 and checkpoint_dir is None
    assert all(math.isnan(metrics[m]) for m in ("val_objective", "val_auroc", "val_fpr95", "val_id_accuracy"))


SWEEP = {
    "name": "diverge",
    "model": {"arch": "tiny-vit-32", "pretrained": None},
    "data": {"source": "shards", "batch_size": 64},
    "schedule": {"epochs": 2, "warmup_steps": 2},
    "eval": {"neg_ratio": 0.3},
    "search": {"space": {"optim.lr": {"grid": [5e-4, ABSURD_LR]}}},
}


@pytest.fixture(scope="module")
def ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_a_diverged_trial_is_recorded_and_the_sweep_goes_on(root, tmp_path, ray_session):
    import mlflow

    from harness import cli, results
    from harness.results import tracking

    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "data": {**SWEEP["data"], "root": str(root)}}))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 0  # a diverged trial is an outcome, not an error

    runs = results.read(out / "results", results.RUNS).set_index("lr")
    assert runs.loc[ABSURD_LR, "status"] == "diverged"
    assert runs.loc[ABSURD_LR, "error"].startswith("non-finite training loss (nan) at step ")
    assert pd_isnull(runs.loc[ABSURD_LR, "val_objective"])  # no number stands in for a run that has none
    others = runs[runs["status"] != "diverged"]
    assert sorted(others["method"]) == ["flyp", "zero-shot"] and (others["status"] == "finished").all()
    epochs = results.read(out / "results", results.EPOCHS)
    diverged_id = runs.loc[ABSURD_LR, "run_id"]
    assert (epochs["run_id"] != diverged_id).all() and len(epochs) == 2  # the finished trial's 2 epochs, no NaN ones
    assert not (results.read(out / "results", results.OOD)["run_id"] == diverged_id).any()

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["diverge"]).set_index(f"tags.{tracking.RUN_ID_TAG}")
    assert logged.loc[diverged_id, "tags.status"] == "diverged"
    assert float(logged.loc[diverged_id, "params.optim.lr"]) == ABSURD_LR
    finished_id = others[others["method"] == "flyp"]["run_id"].iloc[0]
    assert logged.loc[finished_id, "tags.status"] == "finished" and logged.loc[finished_id, "metrics.id_accuracy"] >= 0
    assert "| diverged |" in (out / "report.md").read_text()  # the report lists it with its status


def pd_isnull(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
