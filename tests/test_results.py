import multiprocessing as mp

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from harness import config, gap, results
from harness.data import badsamples
from harness.results import tables


def summary(acc):
    return {"id_accuracy": acc, "val_objective": 0.5, "val_id_accuracy": acc, "val_auroc": 0.6, "val_fpr95": 0.5,
            "train_s": 1.0, "eval_s": 1.0, "wall_s": 2.0, "world_size": 1, "global_batch": 8,
            "ood": [{"score": "mcm", "dataset": "near", "fpr95": 0.5, "fpr95_ood_positive": 0.4, "auroc": 0.7,
                     "aupr_in": 0.6, "aupr_out": 0.6, "n_id": 10, "n_ood": 10}],
            "epochs": [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]}


def test_recording_a_run_again_replaces_its_rows(tmp_path):
    cfg = config.load(None, ["method.name=cma", "method.lam=0.1"])
    results.record_run(tmp_path, "r1", "s", cfg, summary(0.5))
    results.record_run(tmp_path, "r2", "s", cfg, summary(0.6))
    results.record_run(tmp_path, "r1", "s", cfg, summary(0.9))
    runs = results.read(tmp_path, results.RUNS)
    assert sorted(runs["run_id"]) == ["r1", "r2"]
    assert runs.set_index("run_id").loc["r1", "id_accuracy"] == 0.9
    assert len(results.read(tmp_path, results.OOD)) == 2
    assert len(results.read(tmp_path, results.EPOCHS)) == 4
    assert (runs["schema_version"] == results.SCHEMA_VERSION).all()
    assert runs.set_index("run_id").loc["r1", "method"] == "cma"


def test_failed_run_gets_a_row_with_its_error(tmp_path):
    results.record_run(tmp_path, "bad", "s", config.load(None), None, status="failed", error="boom")
    row = results.read(tmp_path, results.RUNS).iloc[0]
    assert row["status"] == "failed" and row["error"] == "boom" and pd.isna(row["id_accuracy"])


def test_a_run_failed_on_bad_data_has_its_bad_sample_counts_in_its_row(tmp_path):
    import json

    run_dir = tmp_path / "runs" / "bad"
    run_dir.mkdir(parents=True)
    counts = {"bad_samples_train": 7, **{f"bad_samples_train_{r}": 0 for r in badsamples.REASONS}}
    first = badsamples.REASONS[0]
    counts[f"bad_samples_train_{first}"] = 7
    (run_dir / "failed.json").write_text(json.dumps({"status": "failed", "error": "too bad", "wall_s": 3.0, **counts}))
    results.record_run(tmp_path / "res", "bad", "s", config.load(None), None, status="failed", error="too bad",
                       run_dir=run_dir)
    row = results.read(tmp_path / "res", results.RUNS).iloc[0]
    assert row["status"] == "failed" and row["bad_samples_train"] == 7 and row[f"bad_samples_train_{first}"] == 7
    assert row["wall_s"] == 3.0 and pd.isna(row["id_accuracy"])
    assert results.read(tmp_path / "res", results.OOD).empty  # no metrics were made up for it


def _writer(args):
    directory, worker = args
    cfg = config.load(None)
    for i in range(8):
        results.record_run(directory, f"w{worker}-{i}", "s", cfg, summary(i / 10))


@pytest.mark.slow
def test_concurrent_writers_lose_no_rows(tmp_path):
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_writer, [(tmp_path, w) for w in range(3)])
    runs = results.read(tmp_path, results.RUNS)
    assert len(runs) == runs["run_id"].nunique() == 24
    assert not list(tmp_path.glob("**/.*.tmp*"))  # no temp files left behind


def test_a_crash_mid_write_leaves_the_previous_table(tmp_path, monkeypatch):
    cfg = config.load(None)
    results.record_run(tmp_path, "r1", "s", cfg, summary(0.5))

    def crash(table, path, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    try:
        results.record_run(tmp_path, "r2", "s", cfg, summary(0.6))
    except OSError:
        pass
    monkeypatch.undo()
    assert list(results.read(tmp_path, results.RUNS)["run_id"]) == ["r1"]


def test_sample_scores_carry_keys_and_old_files_get_positions(tmp_path):
    cfg = config.load(None)
    values = {"id_test": {"mcm": torch.tensor([0.9, 0.8])}, "near": {"mcm": torch.tensor([0.1, 0.2, 0.3])}}
    new_dir, old_dir = tmp_path / "new", tmp_path / "old"
    new_dir.mkdir(), old_dir.mkdir()
    torch.save({"keys": {"id_test": ["a", "b"], "near": ["x", "y", "z"]}, "scores": values}, new_dir / "scores.pt")
    torch.save(values, old_dir / "scores.pt")  # written before keys were saved
    results.record_run(tmp_path / "res", "new", "s", cfg, summary(0.5), run_dir=new_dir)
    results.record_run(tmp_path / "res", "old", "s", cfg, summary(0.5), run_dir=old_dir)
    samples = results.read(tmp_path / "res", results.SAMPLES).set_index("run_id")
    assert list(samples.loc["new", "key"]) == ["a", "b", "x", "y", "z"]
    assert list(samples.loc["old", "key"]) == ["#0", "#1", "#0", "#1", "#2"]
    assert list(samples.loc["new", "value"]) == pytest.approx([0.9, 0.8, 0.1, 0.2, 0.3])


def test_run_row_has_suite_and_every_gap_measure():
    row = results.run_row("r", "s", config.load(None), {"gap": {"pair_cosine": 0.5}, "device": "cpu"}, "finished", None)
    assert row["suite"] == "synthetic" and row["device"] == "cpu" and row["gap_pair_cosine"] == 0.5
    assert all(f"gap_{m}" in row for m in gap.MEASURES) and row["gap_uniform_cross"] is None


def test_the_package_re_exports_the_tables_api_lazily():
    # results/__init__ serves the tables' names on first use (PEP 562); they are the same objects
    for name in results.__all__:
        assert getattr(results, name) is getattr(tables, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        results.nope
