"""MLflow logging: one experiment per sweep name, one parent run per sweep (its summary metrics,
the best trial's values, the report), one child run per trial (named by its method and searched
values, with its own report section), from the driver only.

SQLite does not take concurrent writers well, so workers never log: the driver logs live
(:class:`Live`, fed by a Tune callback in the Ray layer): a child is created when its run
starts, epochs are logged at their step as they end, final metrics once at the end. Nothing
here ever deletes a run.

MLflow is a copy of what Parquet holds, so it may be late but never lose a run:
harness.results.deferred writes the sweep into ``results/mlflow_pending.json`` before it
finishes logging and clears it after; when the store cannot be reached (at the start, or
at any point of the sweep) it warns once and leaves the entry, which ``harness
sync-mlflow`` logs later, after the fact, as a new parent run (see driver.sync_mlflow).
Credentials never enter a URI we keep: :func:`strip_credentials`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from harness import config as config_mod
from harness.config import Config

RUN_ID_TAG = "harness.run_id"
ENTRY_TAG = "harness.logged_entry"  # on a parent run: the pending entry it completed (sync skips it)
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
    ended_at: float | None = None
    """When the run ended (seconds since the epoch), for runs logged after the fact."""


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


def _quiet_store_setup() -> None:
    """MLflow announces at INFO each time it creates or migrates a SQLite store's tables."""
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_reachable(uri: str) -> None:
    """One cheap request to the store; raises (quickly) when it cannot be reached."""
    from mlflow.tracking import MlflowClient

    _quiet_store_setup()
    with _http_settings(PROBE_HTTP, override=True):
        MlflowClient(uri).search_experiments(max_results=1)


def experiment_name(cfg: Config) -> str:
    """tracking.experiment, else the sweep's name: one MLflow experiment per experiment definition."""
    return cfg.tracking.experiment or cfg.name


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


# MLflow's run states for a harness status (a diverged trial is an outcome of the search, not an error).
MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _numeric(metrics: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Live:
    """One sweep in MLflow, logged as it happens, from the driver process only (SQLite takes one
    writer): a parent run created now, a child per run created when the run starts (named by
    :func:`harness.config.run_label`, e.g. ``cma lam=0.01 lr=2e-4``), its epochs logged at their
    step as they end, its final test metrics once when it ends; :meth:`finish` adds the report,
    the sweep's summary metrics and the best trial's values to the parent.

    Logging never deletes a run. A call that fails (the store went away) is warned about once
    and turns the logger off (``broken``); the driver then leaves the sweep for sync-mlflow.
    """

    def __init__(self, cfg: Config, out: Path, sweep_name: str, uri: str | None = None,
                 warn: Callable[[str], None] | None = None, tags: Mapping[str, str] | None = None):
        from mlflow.tracking import MlflowClient  # heavy import, only where tracking happens

        self.cfg, self.out, self.name = cfg, Path(out), sweep_name
        self.uri = uri or tracking_uri(cfg, out)
        self.warn, self.broken = warn or _warn, None
        self.client = MlflowClient(self.uri)
        self.experiment_id = _experiment_id(self.client, experiment_name(cfg), out)
        self.parent = self.client.create_run(self.experiment_id, run_name=sweep_name,
                                             tags={RUN_ID_TAG: sweep_name, "harness.kind": "sweep", **(tags or {})}
                                             ).info.run_id
        space = {f"search.{k}": str(v.model_dump(exclude_none=True)) for k, v in cfg.search.space.items()}
        self._params(self.parent, space)
        self.children: dict[str, str] = {}  # harness run_id -> MLflow run id, runs of this invocation
        self.epochs_logged: set[str] = set()
        self.open: set[str] = set()  # children not ended yet

    def _params(self, run: str, params: Mapping) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for at in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run, params=items[at:at + 100])

    def _metrics(self, run: str, metrics: Mapping[str, float], step: int = 0, at: float | None = None) -> None:
        from mlflow.entities import Metric

        stamp = _ms(at if at is not None else time.time())
        items = [Metric(k, v, stamp, step) for k, v in _numeric(metrics).items()]
        for first in range(0, len(items), 1000):
            self.client.log_batch(run, metrics=items[first:first + 1000])

    def guarded(self, what: str, call: Callable[[], None]) -> None:
        """Run one logging call; the first failure warns and turns the logger off."""
        if self.broken:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - MLflow is a copy of Parquet: never end a sweep over it
            self.broken = f"{type(err).__name__}: {str(err).strip()[:300]}"
            self.warn(f"MLflow logging stopped while {what} ({self.broken}); the sweep goes on and waits for "
                      f"`harness sync-mlflow --out {self.out}`")

    def start(self, run_id: str, cfg: Config, started: float | None = None) -> None:
        """A child run for ``run_id`` (once per invocation), with its config as params."""
        if run_id in self.children:
            return

        def create() -> None:
            child = self.client.create_run(
                self.experiment_id, start_time=_ms(started or time.time()), run_name=config_mod.run_label(cfg),
                tags={RUN_ID_TAG: run_id, "harness.kind": "run", "mlflow.parentRunId": self.parent,
                      "method": cfg.method()})
            self.children[run_id] = child.info.run_id
            self.open.add(run_id)
            self._params(child.info.run_id, config_mod.flatten(cfg))

        self.guarded(f"starting {run_id}", create)

    def epoch(self, run_id: str, metrics: Mapping) -> None:
        """One epoch's metrics at step = its epoch number, stamped now."""
        if run_id not in self.children:
            return
        self.epochs_logged.add(run_id)
        self.guarded(f"logging an epoch of {run_id}",
                     lambda: self._metrics(self.children[run_id], metrics, step=int(metrics["epoch"])))

    def end(self, run_id: str, summary: dict | None, status: str, artifacts: Sequence[Path] = (),
            ended: float | None = None) -> None:
        """The run's final test metrics (once, at the last epoch's step), its status, end time."""
        if run_id not in self.children:
            return
        child = self.children[run_id]
        self.open.discard(run_id)

        def close() -> None:
            epochs = (summary or {}).get("epochs", [])
            if run_id not in self.epochs_logged:  # ended before this invocation (resumed), or logged after the fact
                for row in epochs:
                    self._metrics(child, row, step=int(row["epoch"]))
            self.client.set_tag(child, "status", status)
            if summary:
                last = max((int(e["epoch"]) for e in epochs), default=0)
                final = final_metrics(summary)
                if epochs:  # what the last epoch logged already (its validation) is not logged again
                    final = {k: v for k, v in final.items() if epochs[-1].get(k) != v}
                self._metrics(child, final, step=last)
                if summary.get("checkpoint"):
                    self.client.set_tag(child, "checkpoint", summary["checkpoint"])
            for path in artifacts:
                if Path(path).is_file():
                    self.client.log_artifact(child, str(path))
            self.client.set_terminated(child, MLFLOW_STATUS.get(status, "FINISHED"), end_time=_ms(ended))

        self.guarded(f"ending {run_id}", close)

    def abort(self, status: str = "KILLED") -> None:
        """Close the parent and every open child with MLflow ``status`` (the command stopped early)."""
        for run_id in sorted(self.open):
            self.guarded(f"closing {run_id}", lambda r=run_id: self.client.set_terminated(self.children[r], status))
        self.open.clear()
        self.guarded("closing the sweep's run", lambda: self.client.set_terminated(self.parent, status))

    def record(self, record: "Record", artifacts: Sequence[Path] = ()) -> None:
        """A run that was not logged live (sync-mlflow, or one this invocation did not run), with
        its recorded start and end times when known."""
        wall = (record.summary or {}).get("wall_s")
        started = record.ended_at - wall if record.ended_at and wall is not None else record.ended_at
        self.start(record.run_id, record.cfg, started=started)
        self.end(record.run_id, record.summary, record.status, artifacts, ended=record.ended_at)

    def finish(self, records: list["Record"], artifacts: Sequence[Path] = (),
               run_artifacts: Mapping[str, Sequence[Path]] | None = None, entry_id: str | None = None) -> bool:
        """Log what was not logged live, each run's report section, the parent's summary metrics
        and artifacts, and close the parent (tagged with the pending ``entry_id`` it completes).
        Returns whether everything reached MLflow."""
        run_artifacts = run_artifacts or {}
        for record in records:
            paths = [p for p in run_artifacts.get(record.run_id, ()) if Path(p).is_file()]
            if record.run_id in self.open:  # started here, never told it ended (Tune stopped it)
                self.end(record.run_id, record.summary, record.status, paths)
            elif record.run_id in self.children:
                self.guarded(f"logging {record.run_id}'s report",
                             lambda r=record, p=paths: [self.client.log_artifact(self.children[r.run_id], str(x))
                                                        for x in p])
            else:
                self.record(record, paths)

        def close() -> None:
            metrics, best = sweep_summary(self.cfg, records)
            self._metrics(self.parent, metrics)
            if best is not None:
                self.client.set_tag(self.parent, "best_run", best.run_id)
                self.client.set_tag(self.parent, "best_run_name", config_mod.run_label(best.cfg))
                flat = config_mod.flatten(best.cfg)
                self._params(self.parent, {f"best.{k}": flat[k] for k in self.cfg.search.space if k in flat})
            for path in artifacts:
                if Path(path).is_file():
                    self.client.log_artifact(self.parent, str(path))
            if entry_id:
                self.client.set_tag(self.parent, ENTRY_TAG, entry_id)
            failed = any(r.status == "failed" for r in records)
            self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")

        self.guarded("closing the sweep's run", close)
        return self.broken is None


def sweep_summary(cfg: Config, records: list["Record"]) -> tuple[dict[str, float], "Record | None"]:
    """The parent's metrics: trial counts by status, and the best trial's (by search.metric, among
    trained runs) searched values and final metrics as ``best.<name>``."""
    trials = [r for r in records if r.cfg.method() != "zero-shot"]
    metrics = {"trials": float(len(trials))}
    for status in MLFLOW_STATUS:
        metrics[f"trials_{status}"] = float(sum(r.status == status for r in trials))
    key, sign = cfg.search.metric, (1 if cfg.search.mode == "max" else -1)
    scored = [r for r in trials if r.summary and isinstance(r.summary.get(key), (int, float))
              and r.summary[key] == r.summary[key]]  # NaN (a stopped trial) is no score
    if not scored:
        return metrics, None
    best = max(scored, key=lambda r: (sign * r.summary[key], r.run_id))
    flat = config_mod.flatten(best.cfg)
    metrics.update({f"best.{k}": float(flat[k]) for k in cfg.search.space
                    if isinstance(flat.get(k), (int, float)) and not isinstance(flat.get(k), bool)})
    metrics.update({f"best.{k}": v for k, v in final_metrics(best.summary).items()})
    return metrics, best


def open_live(cfg: Config, out: Path, sweep_name: str, uri: str | None = None,
              warn: Callable[[str], None] | None = None) -> Live | None:
    """A :class:`Live` logger when the store answers; None (silently: the sweep's end warns and
    defers) when it does not."""
    uri = uri or tracking_uri(cfg, out)
    try:
        check_reachable(uri)
        for key, value in LOG_HTTP.items():  # for the whole sweep: a store that goes away costs seconds
            os.environ.setdefault(key, value)
        return Live(cfg, out, sweep_name, uri, warn=warn)
    except Exception:  # noqa: BLE001 - unreachable now: logged after the sweep, or deferred
        return None


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr)
