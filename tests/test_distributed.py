"""Scaling out on a real local Ray cluster: same objective at any scale, killed workers resume, two nodes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from ray import cloudpickle  # Ray's own copy: the one that pickles the train loop
from raycluster import RayCluster, free_port, own_descendants

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests folder

BATCH = 8


def _one_step(config: dict) -> None:
    """One FLYP/CMA step of the tiny CLIP on a fixed global batch, split across the workers."""
    import ray.train
    import ray.train.torch

    from harness import models
    from harness.train import engine
    from harness.orchestration import ray_layer
    from harness.losses import CMALoss

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(0)
    model = models.build("tiny-vit-32", None).model
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    tokens = torch.randint(1, 5000, (BATCH, 16), generator=generator)
    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    if world > 1:
        model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss_fn = CMALoss(0.3, rank, world, ray_layer._all_gather if world > 1 else None)
    parts = engine.train_step(model, [(images[mine], tokens[mine])], loss_fn, optimizer, scheduler,
                              torch.device("cpu"))
    loss = torch.tensor(parts["loss"], dtype=torch.float64)
    if world > 1:
        torch.distributed.all_reduce(loss)
    params = torch.cat([p.detach().flatten() for p in models.unwrap(model).parameters()])
    if rank == 0:
        torch.save({"loss": loss / world, "params": params}, config["out"])
    ray.train.report({"done": 1})


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from harness.orchestration import cluster

    cluster.init(None, num_cpus=2)
    yield
    ray.shutdown()


def test_two_workers_give_the_loss_and_update_of_one(tmp_path, local_ray):
    import ray.train
    from ray.train.torch import TorchTrainer

    outcomes = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.pt"
        TorchTrainer(_one_step, train_loop_config={"out": str(out)},
                     scaling_config=ray.train.ScalingConfig(num_workers=workers),
                     run_config=ray.train.RunConfig(name=f"equiv{workers}", storage_path=str(tmp_path / "ray"))).fit()
        outcomes[workers] = torch.load(out)
    torch.testing.assert_close(outcomes[2]["loss"], outcomes[1]["loss"], rtol=1e-5, atol=1e-6)
    moved = (outcomes[1]["params"] - _initial_params()).abs().max()
    assert moved > 1e-3  # the step changed the weights, so equal weights mean equal updates
    torch.testing.assert_close(outcomes[2]["params"], outcomes[1]["params"], rtol=1e-4, atol=1e-5)


def _initial_params() -> torch.Tensor:
    from harness import models

    torch.manual_seed(0)
    return torch.cat([p.detach().flatten() for p in models.build("tiny-vit-32", None).model.parameters()])


def _training_checkpoint_registered(storage: Path) -> bool:
    """Ray's controller lists a checkpoint once it has taken it over (the file alone is not enough)."""
    for snapshot in storage.rglob("checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
        except json.JSONDecodeError:  # being rewritten
            continue
        if any("epoch" in r.get("metrics", {}) for r in results):
            return True
    return False


def _kill_a_worker_after_first_checkpoint(storage: Path, done: threading.Event, killed: list) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not done.is_set():
        if _training_checkpoint_registered(storage):
            # Only a worker of the local cluster this test process started: never anyone else's.
            for proc in own_descendants("RayTrainWorker"):
                proc.kill()
                killed.append(proc.pid)
            if killed:
                return
        time.sleep(0.2)


def _config(tmp_path: Path, **sections) -> Path:
    base = {
        "name": "dist",
        "model": {"arch": "tiny-vit-32", "pretrained": None},
        "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 16},
        "schedule": {"epochs": 4, "warmup_steps": 2, "checkpoint_every": 1, "max_failures": 2},
        "eval": {"neg_ratio": 0.3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_a_killed_worker_resumes_from_its_checkpoint(world, tmp_path, local_ray):
    from harness import cli, results

    out = tmp_path / "out"
    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(out / "ray", done, killed))
    watcher.start()
    try:
        assert cli.main(["train", str(_config(tmp_path)), "--out", str(out)]) == 0
    finally:
        done.set()
        watcher.join()
    assert killed, "no worker was killed: the test did not inject the fault"
    runs = results.read(out / "results", results.RUNS)
    assert len(runs) == 1 and runs["status"].iloc[0] == "finished"
    summary = json.loads((out / "runs" / runs["run_id"].iloc[0] / "result.json").read_text())
    assert summary["resumed_from_epoch"] >= 1  # continued from the checkpoint, not from zero
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3, 4]
    assert len(results.read(out / "results", results.EPOCHS)) == 4


@pytest.fixture()
def two_nodes():
    """A head and a second node on loopback, one CPU each, in their own temp dir on free ports;
    stopped afterwards by the process ids they started (never `ray stop`)."""
    with RayCluster(num_cpus=1, extra_nodes=1) as cluster:
        yield cluster.address


def test_two_workers_run_on_two_nodes(world, tmp_path, two_nodes):
    out = tmp_path / "out"
    config = _config(tmp_path, schedule={"epochs": 1})
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "train", str(config), "--out", str(out),
                           "--address", two_nodes, "--workers", "2"], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((out / "runs").iterdir())
    placement = [json.loads((run_dir / "workers" / f"rank{r}.json").read_text()) for r in range(2)]
    assert placement[0]["node_id"] != placement[1]["node_id"]
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 32
    _assert_each_test_sample_encoded_once(world, run_dir, summary)


def _assert_each_test_sample_encoded_once(world: Path, run_dir: Path, summary: dict) -> None:
    """The keys each test set was scored on (gathered from both ranks into the shared embedding
    cache, in scores.pt) are the dataset's keys, each once, split over both ranks."""
    from harness.data.shards import read_manifest
    from harness.data.tario import read_samples

    by_rank = summary["eval_encoded_by_rank"]
    scored = torch.load(run_dir / "scores.pt", weights_only=True)["keys"]
    assert set(by_rank) == {"id_test", "near_ood", "far_ood"}
    for name, counts in by_rank.items():
        expected = [s["__key__"] for url in read_manifest(world / name).shards for s in read_samples(url)]
        keys = scored[name]
        assert len(keys) == len(set(keys)) == len(expected) and set(keys) == set(expected), name
        assert len(counts) == 2 and sum(counts) == len(expected), (name, counts)
    assert min(by_rank["id_test"]) > 0 and min(by_rank["far_ood"]) > 0  # both ranks did encode
    assert by_rank["near_ood"][1] == 0  # one shard: the second rank had none, and nothing hung


@pytest.fixture()
def mlflow_server(tmp_path):
    """A real `mlflow server` on loopback with its own SQLite store; its http URI."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 240  # a loaded machine: mlflow server starts uvicorn and its job workers
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not come up")
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers, nothing else
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:  # a loaded machine: uvicorn and its job workers stop slowly
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)


def test_optuna_sweep_with_asha_is_tracked_on_an_mlflow_server(world, tmp_path, local_ray, mlflow_server):
    import mlflow

    from harness import cli, results

    config = _config(tmp_path, schedule={"epochs": 2}, tracking={"mlflow_uri": mlflow_server},
                     method={"name": "cma"},
                     search={"algorithm": "optuna", "num_samples": 3, "scheduler": "asha", "grace_period": 1,
                             "space": {"method.lam": {"loguniform": [0.001, 1.0]}}})
    out = tmp_path / "out"
    assert cli.main(["sweep", str(config), "--out", str(out)]) == 0
    runs = results.read(out / "results", results.RUNS)
    trials = runs[runs["method"] != "zero-shot"]
    assert len(trials) == 3 and trials["lam"].nunique() == 3
    assert set(trials["status"]) <= {"finished", "stopped"} and (trials["status"] == "finished").any()
    assert not (out / "mlflow.db").exists()  # everything went to the server
    mlflow.set_tracking_uri(mlflow_server)
    logged = mlflow.search_runs(experiment_names=["dist"])
    parent = logged[logged["tags.harness.kind"] == "sweep"]
    children = logged[logged["tags.harness.kind"] == "run"]
    assert len(parent) == 1 and len(children) == 4
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert set(children["params.method.lam"].dropna().astype(float)) == set(trials["lam"])


def _result_files(out: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}


def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(world, tmp_path):
    import signal

    from harness import results

    config = _config(tmp_path, schedule={"epochs": 1, "checkpoint_every": 0}, resources={"max_concurrent_trials": 1},
                     search={"space": {"method": {"grid": [{"name": "flyp"}, {"name": "cma", "lam": 0.01},
                                                           {"name": "cma", "lam": 0.1}]}}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "harness.cli", "sweep", str(config), "--out", str(out)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while len(_result_files(out)) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # the zero-shot baseline and the first trial have ended
    assert first.poll() is None, "the sweep ended before it could be interrupted"
    ended = _result_files(out)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130, output[-3000:]
    assert "run the same command again to resume" in output

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming sweep" in second.stdout
    after = _result_files(out)
    rewritten = [str(path) for path, mtime in ended.items() if after[path] != mtime]
    assert not rewritten, f"ended runs were run again: {rewritten}\n{second.stdout[-3000:]}"
    runs = results.read(out / "results", results.RUNS)
    trials = runs[runs["method"] != "zero-shot"]
    assert sorted(trials["lam"]) == [0.0, 0.01, 0.1] and (trials["status"] == "finished").all()
