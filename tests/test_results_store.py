"""The results directory's layout: one Parquet file per run per table, read by one function and
by pandas, pyarrow.dataset and duckdb directly; old single-file directories read and migrated."""

import os

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from harness.results import store as store


def frame(run_id: str, n: int, value: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"run_id": run_id, "key": [f"k{i}" for i in range(n)], "value": value})


def test_each_run_gets_its_own_file_and_rerecording_touches_no_other(tmp_path):
    store.replace_runs(tmp_path, {"t": frame("a", 3), "runs": frame("a", 1)}, last="runs")
    store.replace_runs(tmp_path, {"t": frame("b", 2), "runs": frame("b", 1)}, last="runs")
    other = os.stat(store.run_file(tmp_path, "t", "b"))
    store.replace_runs(tmp_path, {"t": frame("a", 4, 0.9), "runs": frame("a", 1)}, last="runs")
    assert sorted(p.name for p in store.table_dir(tmp_path, "t").iterdir()) == ["a.parquet", "b.parquet"]
    after = os.stat(store.run_file(tmp_path, "t", "b"))
    assert (after.st_ino, after.st_mtime_ns) == (other.st_ino, other.st_mtime_ns)  # b's file was not rewritten
    got = store.read(tmp_path, "t")
    assert list(got["run_id"]) == ["b", "b", "a", "a", "a", "a"]  # a re-recorded run moves to the end
    assert (got[got.run_id == "a"]["value"] == 0.9).all()


def test_the_table_directory_is_a_plain_parquet_dataset(tmp_path):
    for run_id in ("r1", "r2", "r3"):
        store.replace_runs(tmp_path, {"t": frame(run_id, 5)}, last="runs")
    (store.table_dir(tmp_path, "t") / ".r4.parquet.tmp123").write_bytes(b"half a file")  # a killed writer's temp
    directory = store.table_dir(tmp_path, "t")
    ours = store.read(tmp_path, "t").sort_values(["run_id", "key"], ignore_index=True)
    by_pandas = pd.read_parquet(directory).sort_values(["run_id", "key"], ignore_index=True)
    by_arrow = ds.dataset(directory, format="parquet").to_table().to_pandas()
    by_duckdb = duckdb.sql(f"select * from read_parquet('{directory}/*.parquet', union_by_name=true) "
                           "order by run_id, key").df()
    assert len(ours) == 15
    for other in (by_pandas, by_arrow.sort_values(["run_id", "key"], ignore_index=True), by_duckdb):
        pd.testing.assert_frame_equal(other[list(ours.columns)], ours, check_dtype=False)


def test_all_null_columns_take_the_tables_type(tmp_path):
    store.replace_runs(tmp_path, {"t": pd.DataFrame({"run_id": ["ok"], "error": ["boom"], "acc": [0.5]})}, last="t")
    store.replace_runs(tmp_path, {"t": pd.DataFrame({"run_id": ["bad"], "error": [None], "acc": [None]})}, last="t")
    schema = ds.dataset(store.run_file(tmp_path, "t", "bad")).schema
    assert str(schema.field("error").type) in ("string", "large_string") and str(schema.field("acc").type) == "double"
    assert ds.dataset(store.table_dir(tmp_path, "t")).to_table().num_rows == 2


def test_files_of_different_columns_read_as_one_table(tmp_path):
    store.replace_runs(tmp_path, {"t": pd.DataFrame({"run_id": ["old"], "x": [1.0]})}, last="t")
    store.replace_runs(tmp_path, {"t": pd.DataFrame({"run_id": ["new"], "x": [2.0], "added": ["m"]})}, last="t")
    got = store.read(tmp_path, "t").set_index("run_id")
    assert got.loc["new", "added"] == "m" and pd.isna(got.loc["old", "added"]) and got.loc["old", "x"] == 1.0


@pytest.mark.parametrize("run_id", ["plain", "with/slash", ".hidden", "_under", "sp ace%"])
def test_any_run_id_makes_a_visible_file_of_its_own(tmp_path, run_id):
    store.replace_runs(tmp_path, {"t": frame(run_id, 2)}, last="t")
    path = store.run_file(tmp_path, "t", run_id)
    assert path.parent == store.table_dir(tmp_path, "t") and not path.name.startswith((".", "_"))
    assert list(store.read(tmp_path, "t")["run_id"]) == [run_id, run_id]
    assert list(pd.read_parquet(store.table_dir(tmp_path, "t"))["run_id"]) == [run_id, run_id]


def test_an_old_single_file_directory_is_read_then_migrated_once(tmp_path):
    old = pd.concat([frame("a", 2), frame("b", 3)], ignore_index=True)
    old.to_parquet(store.legacy_path(tmp_path, "t"), index=False)
    pd.testing.assert_frame_equal(store.read(tmp_path, "t"), old)  # read as it is, nothing written
    assert not store.table_dir(tmp_path, "t").exists()

    store.replace_runs(tmp_path, {"t": frame("b", 1, 0.9)}, last="t")  # the first write migrates
    assert not store.legacy_path(tmp_path, "t").exists()
    assert sorted(p.name for p in store.table_dir(tmp_path, "t").iterdir()) == ["a.parquet", "b.parquet"]
    got = store.read(tmp_path, "t")
    assert list(got["run_id"]) == ["a", "a", "b"] and list(got["value"]) == [0.5, 0.5, 0.9]


def test_a_migration_cut_short_reads_each_run_once_and_finishes_on_the_next_write(tmp_path):
    pd.concat([frame("a", 2), frame("b", 3)], ignore_index=True).to_parquet(store.legacy_path(tmp_path, "t"))
    store.table_dir(tmp_path, "t").mkdir()
    frame("a", 2, 0.7).to_parquet(store.run_file(tmp_path, "t", "a"))  # as if it died after run a's file
    got = store.read(tmp_path, "t").sort_values("run_id")
    assert list(got["run_id"]) == ["a", "a", "b", "b", "b"] and list(got["value"][:2]) == [0.7, 0.7]
    store.replace_runs(tmp_path, {"t": frame("c", 1)}, last="t")
    assert not store.legacy_path(tmp_path, "t").exists()
    assert sorted(store.read(tmp_path, "t")["run_id"]) == ["a", "a", "b", "b", "b", "c"]


def test_an_unreadable_file_is_named(tmp_path):
    store.table_dir(tmp_path, "t").mkdir()
    store.run_file(tmp_path, "t", "x").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="x.parquet cannot be read"):
        store.read(tmp_path, "t")


def test_rows_without_a_run_id_are_refused(tmp_path):
    with pytest.raises(ValueError, match="run_id"):
        store.replace_runs(tmp_path, {"t": pd.DataFrame({"x": [1]})}, last="t")
