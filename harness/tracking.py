"""MLflow logging: one parent run per sweep (with the report), one child run per trial (with its
own report section), from the driver only.

SQLite does not take concurrent writers well, so workers never log; the driver
logs after the runs finish, from the same summaries that go into Parquet. A run
logged again (same harness run_id) replaces its earlier MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from harness import config as config_mod
from harness.config import Config

RUN_ID_TAG = "harness.run_id"


@dataclass(frozen=True)
class Record:
    run_id: str
    cfg: Config
    summary: dict | None
    status: str


def tracking_uri(cfg: Config, out: Path) -> str:
    return cfg.tracking.mlflow_uri or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def _experiment_id(client, name: str, out: Path) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    # With SQLite, artifacts would default to ./mlruns of whatever directory we run in.
    return client.create_experiment(name, artifact_location=(Path(out).resolve() / "mlartifacts").as_uri())


def final_metrics(summary: dict) -> dict[str, float]:
    out = {k: float(summary[k]) for k in ("id_accuracy", "val_id_accuracy", "val_auroc", "val_fpr95",
                                           "val_objective", "train_s", "eval_s", "wall_s", "bad_samples_train",
                                           "bad_samples_eval") if summary.get(k) is not None}
    for row in summary.get("ood", []):
        for metric in ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"):
            out[f"{row['dataset']}.{row['score']}.{metric}"] = float(row[metric])
    for key, value in summary.get("gap", {}).items():
        out[f"gap.{key}"] = float(value)
    return out


def log_sweep(cfg: Config, out: Path, sweep_name: str, records: list[Record], artifacts: Sequence[Path] = (),
              run_artifacts: Mapping[str, Sequence[Path]] | None = None) -> str:
    """Log a parent run with one child per record; returns the tracking URI used.

    ``artifacts`` go on the parent run; ``run_artifacts[run_id]`` on that run's child (files
    that do not exist are skipped: a failed run may have no report section).
    """
    import mlflow  # heavy import, only where tracking happens
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg, out)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, cfg.tracking.experiment, out)
    _delete_previous(client, experiment_id, [sweep_name] + [r.run_id for r in records])
    with mlflow.start_run(experiment_id=experiment_id, run_name=sweep_name,
                          tags={RUN_ID_TAG: sweep_name, "harness.kind": "sweep"}):
        mlflow.log_params({f"search.{k}": str(v.model_dump(exclude_none=True)) for k, v in cfg.search.space.items()})
        for record in records:
            _log_child(experiment_id, record, (run_artifacts or {}).get(record.run_id, ()))
        for path in artifacts:
            mlflow.log_artifact(str(path))
    return uri


def _log_child(experiment_id: str, record: Record, artifacts: Sequence[Path] = ()) -> None:
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id, run_name=record.run_id, nested=True,
                          tags={RUN_ID_TAG: record.run_id, "harness.kind": "run",
                                "method": record.cfg.method(), "status": record.status}):
        mlflow.log_params(config_mod.flatten(record.cfg))
        if record.summary:
            for epoch in record.summary.get("epochs", []):
                mlflow.log_metrics({k: float(v) for k, v in epoch.items() if isinstance(v, (int, float))},
                                   step=int(epoch["epoch"]))
            mlflow.log_metrics(final_metrics(record.summary))
            if record.summary.get("checkpoint"):
                mlflow.set_tag("checkpoint", record.summary["checkpoint"])
        for path in artifacts:
            if Path(path).is_file():
                mlflow.log_artifact(str(path))


def _delete_previous(client, experiment_id: str, run_ids: list[str]) -> None:
    for rid in run_ids:
        for old in client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{rid}'"):
            client.delete_run(old.info.run_id)
