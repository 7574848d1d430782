"""The results layer: Parquet tables of runs and metrics, written atomically and idempotently.

Tables (a directory each in a results directory, one Parquet file per run in it, see
harness.results.store; every row carrying ``schema_version``):

- ``runs``: one row per run: config, status, timings, validation metrics, ID accuracy.
- ``ood_metrics``: one row per run x score x OoD test set, every metric of harness.metrics.
- ``epochs``: one row per run x epoch (training curves).
- ``runs``, ``ood_metrics`` and ``epochs`` also carry ``method`` and one column per searched key
  (``method.lam``, ``optim.lr``: :func:`searched_columns`).
- ``sample_scores``: one row per run x dataset x score x sample (for histograms and bootstraps),
  with the sample's ``key`` so that two runs can be paired sample by sample.

Every table is keyed by ``run_id``: recording a run replaces all of its earlier rows,
so re-running never duplicates, and writes only that run's files. Writes hold a lock
file and go through temp + fsync + rename, so concurrent writers do not drop rows and a
crash leaves the previous files intact; the next writer removes what a killed one left
behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from harness import config as config_mod
from harness import gap, methods, paper
from harness.results import store as results_store
from harness.config import Config
from harness.data import badsamples

# 2: runs gained suite, device and every gap_* measure; sample_scores gained key.
# 3: runs gained bad_samples_train (and one column per reason) and bad_samples_eval; status may be diverged.
# 4: ood_metrics and epochs gained method and one column per searched key (e.g. method.lam), as runs did.
SCHEMA_VERSION = 4
RUNS, OOD, EPOCHS, SAMPLES = "runs", "ood_metrics", "epochs", "sample_scores"
TABLES = (RUNS, OOD, EPOCHS, SAMPLES)


def table_path(results_dir: Path, table: str) -> Path:
    """The directory of ``table``'s files, one per run (harness.results.store)."""
    return results_store.table_dir(results_dir, table)


def read(results_dir: Path, table: str) -> pd.DataFrame:
    """A table, or an empty frame when nothing was recorded yet."""
    return results_store.read(results_dir, table)


def upsert(results_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Replace the rows of every run_id present in the new frames, under one lock.

    Only those runs' files are written: every temp before any rename and the runs table's
    last, so a crash at any point leaves the previous files, and a run's row never
    appears before its other rows are in place."""
    stamped = {table: new.assign(schema_version=SCHEMA_VERSION) for table, new in tables.items() if not new.empty}
    results_store.replace_runs(results_dir, stamped, last=RUNS)


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


def searched_columns(cfg: Config) -> dict:
    """The run's method and its value of every searched key (dotted names, e.g. ``method.lam``):
    columns of the per-run tables, so nobody has to join them with runs.parquet to group."""
    return {**config_mod.searched_values(cfg), "method": cfg.method()}


def record_run(results_dir: Path, run_id: str, sweep: str, cfg: Config, summary: dict | None,
               status: str = "finished", error: str | None = None, run_dir: Path | None = None) -> None:
    """Write every table's rows for one run (replacing any earlier rows of the same run_id). A run
    that stopped itself on bad data has no summary; its row takes the facts of its failed.json
    (bad-sample counts, times), so the table says how bad the data was, as the file does."""
    facts = summary if summary is not None else _failed_facts(run_dir)
    tables = {RUNS: pd.DataFrame([{**searched_columns(cfg), **run_row(run_id, sweep, cfg, facts, status, error)}])}
    if summary:
        columns = searched_columns(cfg)
        tables[OOD] = pd.DataFrame([{"run_id": run_id, **columns, **row} for row in summary.get("ood", [])])
        tables[EPOCHS] = pd.DataFrame([{"run_id": run_id, **columns, **row} for row in summary.get("epochs", [])])
        scores_file = run_dir / "scores.pt" if run_dir else None
        if scores_file and scores_file.is_file():
            tables[SAMPLES] = _sample_scores(run_id, torch.load(scores_file, weights_only=True))
    upsert(results_dir, tables)


def _failed_facts(run_dir: Path | None) -> dict | None:
    failed = run_dir / "failed.json" if run_dir else None  # harness.train.runner.FAILED (the results layer does not import the trainer)
    return json.loads(failed.read_text()) if failed and failed.is_file() else None


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
