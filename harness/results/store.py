"""Where results tables live on disk: one Parquet file per run per table.

Layout of a results directory::

    <results_dir>/<table>/<run_id>.parquet     every row of one run (run_id percent-quoted)
    <results_dir>/.lock                        held by a writer

Recording a run writes only that run's files, so its cost does not grow with the runs
already recorded (a single file per table made every record rewrite every earlier row:
quadratic over a sweep). The table directories are plain Parquet datasets:
``pd.read_parquet(dir)``, ``pyarrow.dataset.dataset(dir)`` and duckdb's
``read_parquet('<dir>/*.parquet', union_by_name=true)`` read them directly (temp files
start with a dot, which all three skip). :func:`read` is the one reader the harness uses:
it unifies the columns of files written by different schema versions.

Writes go through temp + fsync + rename under an exclusive lock, every temp before any
rename and ``last`` (the runs table) renamed last: a crash leaves every file as it was,
a run's row never appears before its other rows, and the next writer removes what a
killed one left behind.

Results directories of the earlier layout (one ``<table>.parquet`` file per table) are
read as they are and migrated by the first write: each run of the old file gets its own
file, then the old file is removed. A migration cut short is finished by the next write;
until then a reader takes from the old file only the runs that have no file of their own.

This module knows nothing about the tables' columns (harness.results does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RUN_ID = "run_id"


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


def table_dir(results_dir: Path, table: str) -> Path:
    """The directory holding ``table``'s files (one per run)."""
    return Path(results_dir) / table


def legacy_path(results_dir: Path, table: str) -> Path:
    """Where the earlier layout kept the whole table in one file."""
    return Path(results_dir) / f"{table}.parquet"


def run_file(results_dir: Path, table: str, run_id: str) -> Path:
    """The file of one run's rows. The name is the percent-quoted run id, with a leading dot or
    underscore quoted too (Parquet readers skip such files as hidden)."""
    name = urllib.parse.quote(str(run_id), safe="")
    if name[:1] in (".", "_"):
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return table_dir(results_dir, table) / f"{name}.parquet"


def run_files(results_dir: Path, table: str) -> list[Path]:
    """The table's run files, oldest write first (a run recorded again moves to the end, as
    the single-file layout appended it)."""
    directory = table_dir(results_dir, table)
    if not directory.is_dir():
        return []
    files = [(path.stat().st_mtime_ns, path.name, path) for path in directory.glob("*.parquet")
             if not path.name.startswith((".", "_"))]
    return [path for _, _, path in sorted(files)]


def _read_file(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, ValueError) as err:  # pyarrow's errors subclass these
        raise ValueError(f"results table {path} cannot be read ({err})") from None


def _legacy_rows(results_dir: Path, table: str, skip: set[str]) -> pa.Table | None:
    """The old single file's rows of runs not in ``skip`` (None when there is no old file)."""
    path = legacy_path(results_dir, table)
    if not path.is_file():
        return None
    old = _read_file(path)
    if skip and RUN_ID in old.column_names:
        keep = pc.invert(pc.is_in(old[RUN_ID], value_set=pa.array(sorted(skip), old[RUN_ID].type)))
        old = old.filter(keep)
    return old


def read(results_dir: Path, table: str) -> pd.DataFrame:
    """Every run's rows of ``table`` in one frame (columns unified across files: a column a
    file lacks is null there), or an empty frame when nothing was recorded yet."""
    files = run_files(results_dir, table)
    parts = [_read_file(path) for path in files]
    legacy = _legacy_rows(results_dir, table, {urllib.parse.unquote(p.stem) for p in files})
    if legacy is not None and legacy.num_rows:
        parts.insert(0, legacy)
    if not parts:
        return pd.DataFrame()
    merged = pa.concat_tables(parts, promote_options="permissive")
    return merged.to_pandas().reset_index(drop=True)


def remove_stale_temps(results_dir: Path) -> None:
    """Temp files of writers killed mid-write. Call under the lock: only a lock holder
    writes temps, so while we hold it every temp there is orphaned."""
    results_dir = Path(results_dir)
    for tmp in [*results_dir.glob(".*.tmp*"), *results_dir.glob("*/.*.tmp*")]:
        tmp.unlink(missing_ok=True)


def _reference_schema(results_dir: Path, table: str) -> pa.Schema | None:
    """The newest run file's schema (a footer read), to type the all-null columns of a new file."""
    files = run_files(results_dir, table)
    return pq.read_schema(files[-1]) if files else None


def _typed(frame: pd.DataFrame, reference: pa.Schema | None) -> pa.Table:
    """``frame`` as Arrow, its all-null columns given the type the table already has for them,
    so that files read alike by readers that take one file's schema for all (pyarrow.dataset)."""
    data = pa.Table.from_pandas(frame, preserve_index=False)
    if reference is None:
        return data
    for i, field in enumerate(data.schema):
        if pa.types.is_null(field.type) and field.name in reference.names:
            wanted = reference.field(field.name).type
            if not pa.types.is_null(wanted):
                data = data.set_column(i, field.name, pa.nulls(data.num_rows, wanted))
    return data


def _write_temp(data: pa.Table, path: Path) -> Path:
    """``data`` in a temp file beside ``path``, on disk (fsync) before anyone renames it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(data, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _split_by_run(frame: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    if RUN_ID not in frame.columns:
        raise ValueError(f"every results row needs a {RUN_ID} (got columns {list(frame.columns)})")
    for run_id, rows in frame.groupby(RUN_ID, sort=False):
        yield str(run_id), rows.reset_index(drop=True)


def _migrate(results_dir: Path, tables: Iterable[str]) -> None:
    """Give each run of an old single-file table its own file (runs that have one keep it),
    then remove the old file. Under the lock; safe to repeat after a crash."""
    for table in tables:
        old = legacy_path(results_dir, table)
        if not old.is_file():
            continue
        have = {urllib.parse.unquote(p.stem) for p in run_files(results_dir, table)}
        rows = _legacy_rows(results_dir, table, have).to_pandas()
        for run_id, part in _split_by_run(rows) if not rows.empty else ():
            path = run_file(results_dir, table, run_id)
            os.replace(_write_temp(_typed(part, None), path), path)
        old.unlink()


def replace_runs(results_dir: Path, tables: dict[str, pd.DataFrame], last: str) -> None:
    """For every table and every run_id in its frame, replace that run's file with the frame's
    rows (tables with an empty frame are left alone), under the lock, ``last`` renamed last."""
    results_dir = Path(results_dir)
    with locked(results_dir):
        remove_stale_temps(results_dir)
        _migrate(results_dir, tables)
        temps = []
        for table, frame in tables.items():
            if frame.empty:
                continue
            reference = _reference_schema(results_dir, table)
            for run_id, rows in _split_by_run(frame):
                path = run_file(results_dir, table, run_id)
                temps.append((table, _write_temp(_typed(rows, reference), path), path))
        for _table, tmp, path in sorted(temps, key=lambda t: t[0] == last):
            os.replace(tmp, path)
