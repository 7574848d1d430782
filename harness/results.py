"""The results layer: Parquet tables of runs and metrics, written atomically and idempotently.

Tables (one file each in a results directory, every row carrying ``schema_version``):

- ``runs.parquet``: one row per run: config, status, timings, validation metrics, ID accuracy.
- ``ood_metrics.parquet``: one row per run x score x OoD test set, every metric of harness.metrics.
- ``epochs.parquet``: one row per run x epoch (training curves).
- ``sample_scores.parquet``: one row per run x dataset x score x sample (for histograms and bootstraps),
  with the sample's ``key`` so that two runs can be paired sample by sample.

Every table is keyed by ``run_id``: recording a run replaces all of its earlier rows,
so re-running never duplicates. Writes hold a lock file and go through temp + fsync +
rename, so concurrent writers do not drop rows and a crash leaves the previous table
intact; the next writer removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
import torch

from harness import gap, methods, paper
from harness.config import Config
from harness.data import badsamples

# 2: runs gained suite, device and every gap_* measure; sample_scores gained key.
# 3: runs gained bad_samples_train (and one column per reason) and bad_samples_eval; status may be diverged.
SCHEMA_VERSION = 3
RUNS, OOD, EPOCHS, SAMPLES = "runs", "ood_metrics", "epochs", "sample_scores"
TABLES = (RUNS, OOD, EPOCHS, SAMPLES)


@contextlib.contextmanager
def locked(results_dir: Path) -> Iterator[None]:
    """Exclusive lock on a results directory (released by the kernel if the holder dies)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with open(results_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temps(results_dir: Path) -> None:
    """Temp files of writers killed mid-write. Call under the lock: only a lock holder
    writes temps, so while we hold it every temp there is orphaned."""
    for tmp in results_dir.glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)


def table_path(results_dir: Path, table: str) -> Path:
    return Path(results_dir) / f"{table}.parquet"


def read(results_dir: Path, table: str) -> pd.DataFrame:
    """A table, or an empty frame when nothing was recorded yet."""
    path = table_path(results_dir, table)
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors subclass these
        raise ValueError(f"results table {path} cannot be read ({err})") from None


def _write_temp(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` in a temp file beside ``path``, on disk (fsync) before anyone renames it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _merged(results_dir: Path, table: str, new: pd.DataFrame) -> pd.DataFrame:
    """The table with every earlier row of the new frame's run_ids replaced by the new rows."""
    new = new.assign(schema_version=SCHEMA_VERSION)
    old = read(results_dir, table)
    if not old.empty:
        old = old[~old["run_id"].isin(set(new["run_id"]))]
        new = pd.concat([old, new], ignore_index=True) if not old.empty else new
    return new.reset_index(drop=True)


def upsert(results_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Replace the rows of every run_id present in the new frames, under one lock.

    Every table's temp file is written before any table is replaced, and runs.parquet is
    replaced last: a crash at any point leaves the previous tables, and a run's row never
    appears before its other rows are in place."""
    results_dir = Path(results_dir)
    with locked(results_dir):
        _remove_stale_temps(results_dir)
        temps = {table: _write_temp(_merged(results_dir, table, new), table_path(results_dir, table))
                 for table, new in tables.items() if not new.empty}
        for table in sorted(temps, key=lambda t: t == RUNS):
            os.replace(temps[table], table_path(results_dir, table))


def run_row(run_id: str, sweep: str, cfg: Config, summary: dict | None, status: str, error: str | None) -> dict:
    summary = summary or {}
    gaps = summary.get("gap", {})
    row = {
        "run_id": run_id, "sweep": sweep, "name": cfg.name, "method": cfg.method(), "status": status,
        "error": error, "suite": paper.suite_of(cfg.data.source, cfg.data.ood_test),
        "lam": methods.build(cfg.method).contrastive_lam(),
        "method_params": json.dumps(methods.minimal(cfg.method), sort_keys=True), "lr": cfg.optim.lr, "epochs": cfg.schedule.epochs, "seed": cfg.seed,
        "arch": cfg.model.arch, "world_size": summary.get("world_size"), "device": summary.get("device"),
        "global_batch": summary.get("global_batch"), "steps_per_epoch": summary.get("steps_per_epoch"),
        **{f"gap_{name}": gaps.get(name) for name in gap.MEASURES},
        "num_negatives": summary.get("num_negatives"), "checkpoint": summary.get("checkpoint"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_json": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
    }
    for key in ("val_id_accuracy", "val_auroc", "val_fpr95", "val_objective", "id_accuracy",
                "train_s", "eval_s", "wall_s", "bad_samples_train", "bad_samples_eval",
                *(f"bad_samples_train_{reason}" for reason in badsamples.REASONS)):
        row[key] = summary.get(key)
    return row


def record_run(results_dir: Path, run_id: str, sweep: str, cfg: Config, summary: dict | None,
               status: str = "finished", error: str | None = None, run_dir: Path | None = None) -> None:
    """Write every table's rows for one run (replacing any earlier rows of the same run_id)."""
    tables = {RUNS: pd.DataFrame([run_row(run_id, sweep, cfg, summary, status, error)])}
    if summary:
        tables[OOD] = pd.DataFrame([{"run_id": run_id, **row} for row in summary.get("ood", [])])
        tables[EPOCHS] = pd.DataFrame([{"run_id": run_id, **row} for row in summary.get("epochs", [])])
        scores_file = run_dir / "scores.pt" if run_dir else None
        if scores_file and scores_file.is_file():
            tables[SAMPLES] = _sample_scores(run_id, torch.load(scores_file, weights_only=True))
    upsert(results_dir, tables)


def _sample_scores(run_id: str, saved: dict) -> pd.DataFrame:
    """Rows of one run's ``scores.pt``: {"keys": {dataset: [key]}, "scores": {dataset: {score: tensor}}}.

    Files written before keys were saved ({dataset: {score: tensor}}) get ``#<position>``
    keys: the eval read order is deterministic, so positions still pair runs of one dataset.
    """
    if set(saved) == {"keys", "scores"}:
        keys, scores = saved["keys"], saved["scores"]
    else:
        scores = saved
        keys = {d: [f"#{i}" for i in range(len(next(iter(s.values()))))] for d, s in scores.items()}
    frames = [pd.DataFrame({"run_id": run_id, "dataset": dataset, "score": score, "key": list(keys[dataset]),
                            "value": values.double().numpy()})
              for dataset, by_score in scores.items() for score, values in by_score.items()]
    return pd.concat(frames, ignore_index=True)
