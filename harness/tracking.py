"""MLflow logging: one parent run per sweep (with the report), one child run per trial (with its
own report section), from the driver only.

SQLite does not take concurrent writers well, so workers never log; the driver
logs after the runs finish, from the same summaries that go into Parquet. A run
logged again (same harness run_id) replaces its earlier MLflow run.

MLflow is a copy of what Parquet holds, so it may be late but never lose a run:
:func:`log_or_defer` writes the sweep into ``results/mlflow_pending.json`` before it
logs and clears it after; when the store cannot be reached it warns once and leaves
the entry, which ``harness sync-mlflow`` replays later (see driver.sync_mlflow).
Credentials never enter a URI we keep: :func:`strip_credentials`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from harness import config as config_mod
from harness import results
from harness.config import Config
from harness.paths import write_text_atomic

RUN_ID_TAG = "harness.run_id"
PENDING_FILE = "mlflow_pending.json"
# MLflow retries a refused connection 7 times with exponential backoff (about 4 minutes)
# and waits 120 s for an answer. A store that is down must cost seconds: the probe tries
# once; logging after a good probe retries a little (the user's own settings win there).
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
LOG_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@dataclass(frozen=True)
class Record:
    run_id: str
    cfg: Config
    summary: dict | None
    status: str


def tracking_uri(cfg: Config, out: Path) -> str:
    return cfg.tracking.mlflow_uri or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def strip_credentials(uri: str | None) -> str | None:
    """An http(s) ``uri`` without its ``user:password@``, which moves into MLflow's own
    variables (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, read by its HTTP client),
    so the URI that goes into results, MLflow params and printed lines carries no secret.
    Other URIs are returned as they are (preflight refuses a password in them)."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return uri
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@contextlib.contextmanager
def _http_settings(values: Mapping[str, str], override: bool) -> Iterator[None]:
    """MLflow's HTTP retry variables set for a block (``override``: even when the user set them)."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if override or saved[key] is None:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str) -> None:
    """One cheap request to the store; raises (quickly) when it cannot be reached."""
    from mlflow.tracking import MlflowClient

    with _http_settings(PROBE_HTTP, override=True):
        MlflowClient(uri).search_experiments(max_results=1)


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
              run_artifacts: Mapping[str, Sequence[Path]] | None = None, uri: str | None = None) -> str:
    """Log a parent run with one child per record; returns the tracking URI used
    (``uri``, else the config's, else the SQLite store in ``out``).

    ``artifacts`` go on the parent run; ``run_artifacts[run_id]`` on that run's child (files
    that do not exist are skipped: a failed run may have no report section).
    """
    import mlflow  # heavy import, only where tracking happens
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri(cfg, out)
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
            if Path(path).is_file():
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


# --- deferred logging ----------------------------------------------------------------------------

def pending_path(out: Path) -> Path:
    return Path(out) / "results" / PENDING_FILE


def pending(out: Path) -> dict[str, dict]:
    """Sweeps whose MLflow logging has not completed: name -> entry (see :func:`log_or_defer`)."""
    path = pending_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _update_pending(out: Path, name: str, entry: dict | None) -> None:
    """Set (or with None, remove) one entry, atomically, under the results lock."""
    path = pending_path(out)
    with results.locked(path.parent):
        entries = pending(out)
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry
        if not entries:
            path.unlink(missing_ok=True)
            return
        write_text_atomic(path, json.dumps(entries, indent=1, sort_keys=True))


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr)


def log_or_defer(cfg: Config, out: Path, name: str, records: list[Record], artifacts: Sequence[Path] = (),
                 run_artifacts: Mapping[str, Sequence[Path]] | None = None, uri: str | None = None,
                 warn: Callable[[str], None] = _warn) -> tuple[str, bool]:
    """:func:`log_sweep`, or, when the store cannot be reached, one warning and the sweep left
    pending. Returns (the tracking URI, whether everything was logged).

    The entry is written before logging and removed after, so a crash in between also
    leaves it pending; replaying it is safe because logging a run again replaces it.
    """
    uri = uri or tracking_uri(cfg, out)
    entry = {"name": name, "tracking_uri": uri, "config": cfg.model_dump(mode="json"),
             "run_ids": [r.run_id for r in records], "artifacts": [str(p) for p in artifacts],
             "run_artifacts": {rid: [str(p) for p in paths] for rid, paths in (run_artifacts or {}).items()}}
    _update_pending(out, name, entry)
    try:
        check_reachable(uri)
        with _http_settings(LOG_HTTP, override=False):
            log_sweep(cfg, out, name, records, artifacts, run_artifacts, uri=uri)
    # Deliberately broad: MLflow is a copy of the Parquet tables, already written, and no
    # failure of the copy (refused connection, HTTP error, locked or unwritable store) may
    # end a sweep; the entry stays for sync-mlflow and the error is shown.
    except Exception as err:  # noqa: BLE001
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        warn(f"MLflow at {uri} could not be reached ({type(err).__name__}: {reason}); the results are in "
             f"{Path(out) / 'results'}. {len(records)} run(s) of {name} wait in {pending_path(out)}: "
             f"run `harness sync-mlflow --out {out}` once it is back")
        return uri, False
    _update_pending(out, name, None)
    return uri, True
