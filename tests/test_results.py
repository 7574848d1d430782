import multiprocessing as mp

import pandas as pd

from harness import config, results


def summary(acc):
    return {"id_accuracy": acc, "val_objective": 0.5, "val_id_accuracy": acc, "val_auroc": 0.6, "val_fpr95": 0.5,
            "train_s": 1.0, "eval_s": 1.0, "wall_s": 2.0, "world_size": 1, "global_batch": 8,
            "ood": [{"score": "mcm", "dataset": "near", "fpr95": 0.5, "fpr95_ood_positive": 0.4, "auroc": 0.7,
                     "aupr_in": 0.6, "aupr_out": 0.6, "n_id": 10, "n_ood": 10}],
            "epochs": [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]}


def test_recording_a_run_again_replaces_its_rows(tmp_path):
    cfg = config.load(None, ["loss.lam=0.1"])
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


def _writer(args):
    directory, worker = args
    cfg = config.load(None)
    for i in range(8):
        results.record_run(directory, f"w{worker}-{i}", "s", cfg, summary(i / 10))


def test_concurrent_writers_lose_no_rows(tmp_path):
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_writer, [(tmp_path, w) for w in range(3)])
    runs = results.read(tmp_path, results.RUNS)
    assert len(runs) == runs["run_id"].nunique() == 24
    assert not list(tmp_path.glob(".*.tmp*"))  # no temp files left behind


def test_a_crash_mid_write_leaves_the_previous_table(tmp_path, monkeypatch):
    cfg = config.load(None)
    results.record_run(tmp_path, "r1", "s", cfg, summary(0.5))

    def crash(self, path, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", crash)
    try:
        results.record_run(tmp_path, "r2", "s", cfg, summary(0.6))
    except OSError:
        pass
    monkeypatch.undo()
    assert list(results.read(tmp_path, results.RUNS)["run_id"]) == ["r1"]
