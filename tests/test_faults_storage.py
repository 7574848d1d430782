"""Storage faults, injected for real: a results writer killed mid-write, runs recorded twice,
processes writing at once, an MLflow store that cannot be reached (then `harness sync-mlflow`),
and the security of what is stored: pickled checkpoints never run code, credentials are never
written."""

import json
import multiprocessing as mp
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness import config, results
from harness.results import deferred, tracking

SUMMARY = {"id_accuracy": 0.5, "val_objective": 0.5, "val_id_accuracy": 0.5, "val_auroc": 0.6, "val_fpr95": 0.5,
           "train_s": 1.0, "eval_s": 1.0, "wall_s": 2.0, "world_size": 1, "global_batch": 8,
           "ood": [{"score": "mcm", "dataset": "near", "fpr95": 0.5, "fpr95_ood_positive": 0.4, "auroc": 0.7,
                    "aupr_in": 0.6, "aupr_out": 0.6, "n_id": 10, "n_ood": 10}],
           "epochs": [{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.5}]}


def scores_file(run_dir: Path, n: int) -> Path:
    """A run directory with a real scores.pt of two datasets x two scores x ``n`` samples."""
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(n)
    saved = {"keys": {d: [f"{d}-{i:07d}" for i in range(n)] for d in ("id_test", "near")},
             "scores": {d: {s: torch.rand(n, generator=gen) for s in ("mcm", "msp")} for d in ("id_test", "near")}}
    torch.save(saved, run_dir / "scores.pt")
    return run_dir


def tables(directory: Path) -> dict[str, pd.DataFrame]:
    return {t: results.read(directory, t) for t in results.TABLES}


# --- results tables -------------------------------------------------------------------------------

KILLED_WRITER = """
import json, sys
from pathlib import Path
from harness import config, results
results.record_run(Path(sys.argv[1]), "r2", "s", config.load(None), json.loads(sys.argv[2]), run_dir=Path(sys.argv[3]))
"""


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_every_previous_table(tmp_path):
    res = tmp_path / "results"
    results.record_run(res, "r1", "s", config.load(None), SUMMARY, run_dir=scores_file(tmp_path / "r1", 50))
    before = tables(res)
    big = scores_file(tmp_path / "r2", 500_000)  # 2M sample_scores rows: about a second to write
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(res), json.dumps(SUMMARY), str(big)])
    temp = res / results.SAMPLES / f".r2.parquet.tmp{writer.pid}"
    deadline = time.time() + 600  # loading 1M keys from scores.pt takes minutes on a loaded machine
    while writer.poll() is None and time.time() < deadline:
        if temp.is_file() and temp.stat().st_size > 0:
            os.kill(writer.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    assert writer.wait(30) == -signal.SIGKILL, "the writer finished before it could be killed mid-write"
    assert temp.is_file()  # it died holding a half-written table

    after = tables(res)  # every table still reads, and is exactly the previous one
    for table in results.TABLES:
        pd.testing.assert_frame_equal(after[table], before[table], obj=table)

    # The lock died with the writer; the next writer goes through and sweeps up the temp.
    results.record_run(res, "r3", "s", config.load(None), SUMMARY, run_dir=scores_file(tmp_path / "r3", 50))
    assert sorted(results.read(res, results.RUNS)["run_id"]) == ["r1", "r3"]
    assert not list(res.glob("**/.*.tmp*"))


def test_recording_the_same_run_again_changes_no_row(tmp_path):
    run_dir = scores_file(tmp_path / "r1", 40)
    cfg = config.load(None, ["method.name=cma", "method.lam=0.1"])
    results.record_run(tmp_path / "res", "r0", "s", cfg, SUMMARY, run_dir=scores_file(tmp_path / "r0", 40))
    results.record_run(tmp_path / "res", "r1", "s", cfg, SUMMARY, run_dir=run_dir)
    first = tables(tmp_path / "res")
    results.record_run(tmp_path / "res", "r1", "s", cfg, SUMMARY, run_dir=run_dir)
    second = tables(tmp_path / "res")
    assert [len(first[t]) for t in results.TABLES] == [2, 2, 4, 2 * 2 * 2 * 40]
    for table in results.TABLES:
        drop = ["finished_at"] if table == results.RUNS else []
        pd.testing.assert_frame_equal(second[table].drop(columns=drop), first[table].drop(columns=drop), obj=table)


def _writer(args):
    directory, worker, runs = args
    cfg = config.load(None)
    for i in range(runs):
        run_dir = scores_file(Path(directory).parent / f"w{worker}-{i}", 30 + worker)
        results.record_run(directory, f"w{worker}-{i}", "s", cfg, SUMMARY, run_dir=run_dir)


@pytest.mark.slow
def test_processes_writing_at_once_lose_no_row_of_any_table(tmp_path):
    workers, runs = 4, 5
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_writer, [(tmp_path / "res", w, runs) for w in range(workers)])
    got = tables(tmp_path / "res")
    assert len(got[results.RUNS]) == got[results.RUNS]["run_id"].nunique() == workers * runs
    assert len(got[results.OOD]) == workers * runs and len(got[results.EPOCHS]) == 2 * workers * runs
    samples = got[results.SAMPLES]
    assert len(samples) == sum(2 * 2 * (30 + w) for w in range(workers)) * runs
    assert not samples.duplicated(["run_id", "dataset", "score", "key"]).any()
    assert not list((tmp_path / "res").glob("**/.*.tmp*"))


# --- MLflow unreachable, then synced --------------------------------------------------------------

def _logged(uri: str, experiment: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])  # one experiment per sweep name


@pytest.mark.slow
def test_an_unusable_store_defers_logging_and_sync_replays_it_once(tmp_path):
    """A SQLite store that cannot be created stands in for any store MLflow cannot use; the
    sweep is replayed from Parquet and the run directories into a good one, idempotently."""
    from harness.orchestration import driver

    out = tmp_path / "out"
    cfg = config.load(None, ["tracking.mlflow_uri=sqlite:////proc/no-such-dir/mlflow.db", "name=defer"])
    records = []
    for lam in (0.0, 0.1):
        trial = config.load(None, ["tracking.mlflow_uri=sqlite:////proc/no-such-dir/mlflow.db", "name=defer",
                                   *(["method.name=cma", f"method.lam={lam}"] if lam else [])])
        rid = f"defer-{lam}"
        (out / "runs" / rid).mkdir(parents=True)
        (out / "runs" / rid / "result.json").write_text(json.dumps(SUMMARY))
        results.record_run(out / "results", rid, "defer-sweep", trial, SUMMARY)
        records.append(tracking.Record(rid, trial, SUMMARY, "finished"))
    warnings = []
    started = time.perf_counter()
    uri, synced = deferred.log_or_defer(cfg, out, "defer-sweep", records, warn=warnings.append)
    assert not synced and len(warnings) == 1 and time.perf_counter() - started < 30
    assert "harness sync-mlflow --out" in warnings[0]
    [entry] = deferred.pending(out).values()
    assert entry["name"] == "defer-sweep" and entry["run_ids"] == ["defer-0.0", "defer-0.1"]

    good = f"sqlite:///{tmp_path / 'good.db'}"
    saved = deferred.pending_path(out).read_text()
    assert driver.sync_mlflow(out, good) == 0 and not deferred.pending(out)
    deferred.pending_path(out).write_text(saved)  # as if a sync died after logging, before clearing
    assert driver.sync_mlflow(out, good) == 0
    assert driver.sync_mlflow(out, good) == 0  # nothing left: a no-op
    logged = _logged(good, "defer")
    children = logged[logged["tags.harness.kind"] == "run"]
    assert sorted(children[f"tags.{tracking.RUN_ID_TAG}"]) == ["defer-0.0", "defer-0.1"]
    assert (logged["tags.harness.kind"] == "sweep").sum() == 1
    assert sorted(children["params.method.name"]) == ["cma", "flyp"]
    assert children["metrics.id_accuracy"].notna().all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deferred_run(out: Path, method: str, uri: str, sweep: str) -> tuple[str, bool]:
    """One run recorded into ``out`` and logged (or deferred) under ``sweep``, as a train or an
    evaluate of one --out does: every train point is `<name>-train`, every evaluate `<name>-evaluate`."""
    cfg = config.load(None, [f"tracking.mlflow_uri={uri}", "name=keyed", f"method.name={method}"])
    rid = f"keyed-{method}-{uri.rsplit('/', 1)[-1].split('.')[0]}"
    (out / "runs" / rid).mkdir(parents=True, exist_ok=True)
    (out / "runs" / rid / "result.json").write_text(json.dumps(SUMMARY))
    results.record_run(out / "results", rid, sweep, cfg, SUMMARY)
    _, synced = deferred.log_or_defer(cfg, out, sweep, [tracking.Record(rid, cfg, SUMMARY, "finished")],
                                      warn=lambda message: None)
    return rid, synced


@pytest.mark.slow
def test_deferred_records_of_one_out_never_replace_each_other(tmp_path):
    """Two trains into one --out while MLflow is down (one pending name), and two evaluates at once,
    one of which reaches the store: sync logs every deferred run, each exactly once."""
    from harness.orchestration import driver

    out, down = tmp_path / "out", "sqlite:////proc/no-such-dir/mlflow.db"
    good = f"sqlite:///{tmp_path / 'good.db'}"
    flyp, _ = _deferred_run(out, "flyp", down, "keyed-train")
    cma, _ = _deferred_run(out, "cma", down, "keyed-train")
    assert sorted(rid for e in deferred.pending(out).values() for rid in e["run_ids"]) == sorted([flyp, cma])

    with mp.get_context("spawn").Pool(2) as pool:  # at once: one defers, one logs and clears its own entry
        done = pool.starmap(_deferred_run, [(out, "lp", down, "keyed-evaluate"), (out, "fft", good, "keyed-evaluate")])
    assert [synced for _, synced in done] == [False, True]
    waiting = sorted(rid for e in deferred.pending(out).values() for rid in e["run_ids"])
    assert waiting == sorted([flyp, cma, done[0][0]])

    assert driver.sync_mlflow(out, good) == 0 and not deferred.pending(out)
    assert driver.sync_mlflow(out, good) == 0  # nothing left: a no-op
    logged = _logged(good, "keyed")
    children = logged[logged["tags.harness.kind"] == "run"]
    assert sorted(children[f"tags.{tracking.RUN_ID_TAG}"]) == sorted([flyp, cma, done[0][0], done[1][0]])


def start_mlflow_server(port: int, store: Path) -> subprocess.Popen:
    store.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                os.killpg(server.pid, signal.SIGTERM)
                raise RuntimeError("mlflow server did not come up")
            time.sleep(0.5)


SECRET_URI, SECRET_ENV = "uRiS3cret-4417", "eNvS3cret-9021"


@pytest.mark.slow
def test_a_sweep_with_mlflow_down_completes_warns_once_and_syncs_later(world, tmp_path):
    """The tracking server is down (a closed port) for the whole sweep; its URI carries
    user:password and MLFLOW_TRACKING_PASSWORD is set. Afterwards a real server comes up
    on that port and `harness sync-mlflow` logs the missed runs, once."""
    port = free_port()
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump({
        "name": "down", "model": {"arch": "tiny-vit-32", "pretrained": None},
        "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 64, "train": "id_val",
                 "ood_test": ["near_ood"]},
        "schedule": {"epochs": 1, "warmup_steps": 1, "checkpoint_every": 0},
        "eval": {"scores": ["mcm", "msp"], "selection_score": "mcm"},
        "tracking": {"mlflow_uri": f"http://alice:{SECRET_URI}@127.0.0.1:{port}"},
        # ASHA with grace = max_t stops nothing; it makes the single-worker trial run in-process (cheap).
        "search": {"scheduler": "asha", "grace_period": 2, "space": {"method": {"grid": [{"name": "cma", "lam": 0.1}]}}}}))
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_PASSWORD": SECRET_ENV}
    cli = [sys.executable, "-m", "harness.cli"]
    done = subprocess.run(cli + ["sweep", str(path), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("harness: warning: MLflow") == 1, done.stderr[-3000:]
    mlflow_stage = [line for line in done.stdout.splitlines() if line.startswith("==> log to MLflow:")]
    assert float(mlflow_stage[0].split(":")[1].split()[0]) < 20  # no minutes of retries
    assert f"NOT REACHED: run `harness sync-mlflow --out {out}`" in done.stdout

    runs = results.read(out / "results", results.RUNS)
    assert sorted(runs["method"]) == ["cma", "zero-shot"] and (runs["status"] == "finished").all()
    [entry] = deferred.pending(out).values()
    assert entry["name"] == "down-sweep"
    assert sorted(entry["run_ids"]) == sorted(runs["run_id"]) and entry["tracking_uri"] == f"http://127.0.0.1:{port}"
    _assert_no_secret(out, done.stdout + done.stderr)

    server = start_mlflow_server(port, tmp_path / "server")
    try:
        synced = subprocess.run(cli + ["sync-mlflow", "--out", str(out)], env=env, capture_output=True, text=True,
                                timeout=300)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert "synced down-sweep: 2 run(s)" in synced.stdout
        again = subprocess.run(cli + ["sync-mlflow", "--out", str(out)], env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0 and "nothing to sync" in again.stdout
        logged = _logged(f"http://127.0.0.1:{port}", "down")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    children = logged[logged["tags.harness.kind"] == "run"]
    assert sorted(children[f"tags.{tracking.RUN_ID_TAG}"]) == sorted(runs["run_id"])
    assert (logged["tags.harness.kind"] == "sweep").sum() == 1
    assert (children["tags.mlflow.parentRunId"] == logged[logged["tags.harness.kind"] == "sweep"]["run_id"].iloc[0]).all()
    params = " ".join(str(v) for v in logged.filter(like="params.").to_numpy().ravel())
    assert f"127.0.0.1:{port}" in params and SECRET_URI not in params and SECRET_ENV not in params
    _assert_no_secret(out, synced.stdout + synced.stderr)


def _assert_no_secret(out: Path, printed: str) -> None:
    """No credential in anything written under ``out`` (Parquet, result.json, report, Ray's storage,
    the pending list, MLflow's artifacts) or printed."""
    assert SECRET_URI not in printed and SECRET_ENV not in printed
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_URI.encode() not in data and SECRET_ENV.encode() not in data, path


def test_credentials_leave_the_uri_for_mlflows_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking.strip_credentials("https://al%40ce:p%3Ass@mlflow.example:8443/base") == \
        "https://mlflow.example:8443/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "al@ce" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "p:ss"
    assert tracking.strip_credentials("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert tracking.strip_credentials(None) is None


# --- checkpoints never run code ---------------------------------------------------------------------

class Payload:
    """Unpickling this calls open(marker, "w"): arbitrary code that leaves a trace."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _malicious(path: Path, marker: Path, wrap) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


def _loaders(tmp_path: Path, marker: Path):
    from harness import models
    from harness.train import checkpoint
    from harness.evaluation import evaluate

    yield "training state", lambda: checkpoint.load(
        _malicious(tmp_path / "ckpt" / checkpoint.STATE_FILE, marker, lambda p: {"model": p, "epoch": 1}).parent)
    yield "model weights", lambda: models.build(
        "tiny-vit-32", str(_malicious(tmp_path / "w" / "model.pt", marker, lambda p: {"state_dict": p})))
    yield "embedding cache", lambda: evaluate.Embeddings.load(
        _malicious(tmp_path / "e" / "id_test.pt", marker, lambda p: {"features": p, "labels": p, "keys": []}))
    yield "text side", lambda: evaluate.TextSide.load(
        _malicious(tmp_path / "e" / "text.pt", marker, lambda p: {"class_features": p}))
    yield "sample scores", lambda: results.record_run(
        tmp_path / "res", "r", "s", config.load(None), SUMMARY,
        run_dir=_malicious(tmp_path / "run" / "scores.pt", marker, lambda p: {"keys": p, "scores": p}).parent)


def test_a_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    probe = _malicious(tmp_path / "probe.pt", marker, lambda p: [p])
    torch.load(probe, weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    for name, load in _loaders(tmp_path, marker):
        with pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL io.open") as err:
            load()
        assert not marker.exists(), f"{name}: unpickling ran code ({err.value!r})"
