"""The results layer: Parquet tables (tables), their atomic store (store), the run's output
directory (outdir) and MLflow tracking (tracking). ``harness.results.read`` and friends are the
tables' API, re-exported so that callers say ``results.read(dir, results.OOD)``."""

from harness.results.tables import (EPOCHS, OOD, RUNS, SAMPLES, SCHEMA_VERSION, TABLES, read, record_run,
                                    run_row, searched_columns, table_path, upsert)

__all__ = ["EPOCHS", "OOD", "RUNS", "SAMPLES", "SCHEMA_VERSION", "TABLES", "read", "record_run", "run_row",
           "searched_columns", "table_path", "upsert"]
