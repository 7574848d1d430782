"""MLflow logging that may come late: the pending file (``results/mlflow_pending.json``) of the
sweeps whose logging has not completed, :func:`log_or_defer` (finish a sweep's logging, or warn
once and leave it pending), and :func:`log_sweep`, which logs a sweep after the fact (`harness
sync-mlflow`) unless a parent run already completed that entry. Apart from harness.results.tracking
(the live logging it builds on), because this is the part that must lose nothing when the store is
away.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable, Mapping, Sequence

from harness.config import Config
from harness.paths import write_text_atomic
from harness.results import store
from harness.results.tracking import (ENTRY_TAG, LOG_HTTP, Live, Record, _http_settings, _warn,
                                      check_reachable, experiment_name, tracking_uri)

PENDING_FILE = "mlflow_pending.json"


def _already_logged(uri: str, cfg: Config, entry_id: str) -> bool:
    """Whether a finished parent run completed pending entry ``entry_id`` (a sync that died
    after logging, before clearing the entry)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment_name(cfg))
    return found is not None and bool(client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{ENTRY_TAG}` = '{entry_id}' and attributes.status = 'FINISHED'"))


def log_sweep(cfg: Config, out: Path, sweep_name: str, records: list[Record], artifacts: Sequence[Path] = (),
              run_artifacts: Mapping[str, Sequence[Path]] | None = None, uri: str | None = None,
              entry_id: str | None = None) -> str:
    """Log a finished sweep after the fact (sync-mlflow): a new parent run with one child per
    record, at the runs' recorded times, unless a parent already completed ``entry_id``;
    returns the tracking URI used. Raises when a call fails."""
    uri = uri or tracking_uri(cfg, out)
    if entry_id and _already_logged(uri, cfg, entry_id):
        return uri
    errors: list[str] = []
    live = Live(cfg, out, sweep_name, uri, warn=errors.append, tags={"harness.logged": "after the fact"})
    if not live.finish(records, artifacts, run_artifacts, entry_id):
        raise RuntimeError(errors[0] if errors else live.broken)
    return live.uri


def pending_path(out: Path) -> Path:
    return Path(out) / "results" / PENDING_FILE


def pending(out: Path) -> dict[str, dict]:
    """Sweeps whose MLflow logging has not completed: entry id -> entry (see :func:`log_or_defer`).
    Keyed by the entry's own id, not its sweep name: every `harness train` of one --out is
    `demo-train`, and two of them (or two evaluates) must not take each other's place."""
    path = pending_path(out)
    entries = json.loads(path.read_text()) if path.is_file() else {}
    # A file from before entry ids were keys is keyed by sweep name: that name serves as its id.
    return {entry.get("entry_id") or key: {"name": key, **entry, "entry_id": entry.get("entry_id") or key}
            for key, entry in entries.items()}


def _update_pending(out: Path, entry_id: str, entry: dict | None) -> None:
    """Set (or with None, remove) one entry, atomically, under the results lock (so concurrent
    sweeps of one --out add and remove only their own)."""
    path = pending_path(out)
    with store.locked(path.parent):
        entries = pending(out)
        if entry is None:
            entries.pop(entry_id, None)
        else:
            entries[entry_id] = entry
        if not entries:
            path.unlink(missing_ok=True)
            return
        write_text_atomic(path, json.dumps(entries, indent=1, sort_keys=True))


def log_or_defer(cfg: Config, out: Path, name: str, records: list[Record], artifacts: Sequence[Path] = (),
                 run_artifacts: Mapping[str, Sequence[Path]] | None = None, uri: str | None = None,
                 warn: Callable[[str], None] = _warn, live: Live | None = None,
                 entry_id: str | None = None) -> tuple[str, bool]:
    """Finish the sweep's ``live`` logging (or, without one, log it after the fact), or, when the
    store cannot be reached or ``live`` broke on the way, one warning and the sweep left
    pending. Returns (the tracking URI, whether everything was logged).

    The entry is written before the last logging and removed after, so a crash in between also
    leaves it pending; a replay logs the sweep again as a new parent run (nothing is deleted).
    """
    uri = uri or (live.uri if live else tracking_uri(cfg, out))
    entry_id = entry_id or uuid.uuid4().hex
    entry = {"name": name, "entry_id": entry_id, "tracking_uri": uri, "config": cfg.model_dump(mode="json"),
             "run_ids": [r.run_id for r in records], "artifacts": [str(p) for p in artifacts],
             "run_artifacts": {rid: [str(p) for p in paths] for rid, paths in (run_artifacts or {}).items()}}
    _update_pending(out, entry_id, entry)
    try:
        if live is not None:
            if live.broken or not live.finish(records, artifacts, run_artifacts, entry_id):
                raise RuntimeError(live.broken)
        else:
            check_reachable(uri)
            with _http_settings(LOG_HTTP, override=False):
                log_sweep(cfg, out, name, records, artifacts, run_artifacts, uri=uri, entry_id=entry_id)
    # Deliberately broad: MLflow is a copy of the Parquet tables, already written, and no
    # failure of the copy (refused connection, HTTP error, locked or unwritable store) may
    # end a sweep; the entry stays for sync-mlflow and the error is shown.
    except Exception as err:  # noqa: BLE001
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        warn(f"MLflow at {uri} could not be reached ({type(err).__name__}: {reason}); the results are in "
             f"{Path(out) / 'results'}. {len(records)} run(s) of {name} wait in {pending_path(out)}: "
             f"run `harness sync-mlflow --out {out}` once it is back")
        return uri, False
    _update_pending(out, entry_id, None)
    return uri, True
