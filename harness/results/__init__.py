"""The results layer: Parquet tables (tables), their atomic store (store), the run's output
directory (outdir) and MLflow tracking (tracking). ``harness.results.read`` and friends are the
tables' API, re-exported so that callers say ``results.read(dir, results.OOD)``.

The re-export is lazy (PEP 562): the tables import pandas, torch and the method registry, and the
CLI imports ``harness.results.outdir`` for every command, ``harness methods`` included."""

from __future__ import annotations

import importlib

__all__ = ["EPOCHS", "OOD", "RUNS", "SAMPLES", "SCHEMA_VERSION", "TABLES", "read", "record_run", "run_row",
           "searched_columns", "table_path", "upsert"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("harness.results.tables"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
