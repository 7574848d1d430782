"""The cluster path on real Ray clusters of our own on this machine:

(a) Ray's fake autoscaling provider: a 2-worker run that needs a node that does not exist yet is
    admitted, the autoscaler adds the node, and the run's ranks land on two nodes. The run goes
    through `python harness/entry.py` as a file, which is what `ray submit` runs on the head
    (`ray submit` itself needs ssh and rsync to the head: README, "The cluster").
(b) Ray Jobs: `ray job submit` of a train and of a sweep (with --space) to a head with the job
    server; results and MLflow checked; a relative --out refused inside the job.
(c) cluster.yaml's MLflow guard under `bash -c` against a live loopback `mlflow server`.

Every cluster has its own --temp-dir and free ports and is stopped by the ids of the processes
whose command lines name that directory (and their children), never with `ray stop`.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = {
    "name": "live",
    "model": {"arch": "tiny-vit-32", "pretrained": None},
    "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 32},
    "schedule": {"epochs": 1, "warmup_steps": 2, "checkpoint_every": 0},
    "eval": {"neg_ratio": 0.3},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def stop_processes_naming(marker: str) -> None:
    """End the processes whose command line names ``marker`` (our own temp dir), and their children."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    for proc in found.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(found.values()), timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "HARNESS_CACHE": str(cache), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO),
            "PATH": f"{BIN}:{env.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0", **extra}


@pytest.fixture(autouse=True)
def sigterm_cleans_up():
    """`timeout` (SIGTERM) ends a test through its finally blocks, so its clusters are stopped."""
    def interrupt(*_):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)


def _start_head(env: dict, args: tuple[str, ...], port: int) -> str | None:
    """One `ray start --head` in a fresh temp dir; returns the dir, or None (its processes stopped)
    when the raylet missed Ray's fixed 30 s registration window, as happens on a loaded machine."""
    temp = tempfile.mkdtemp(prefix="h15ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ports = {f"--{name}": free_port() for name in ("node-manager-port", "object-manager-port", "ray-client-server-port",
                                                   "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "metrics-export-port", "runtime-env-agent-port")}
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--disable-usage-stats",
           "--object-store-memory=209715200", *(f"{k}={v}" for k, v in ports.items()), *args]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except BaseException:
        stop_processes_naming(temp)
        raise
    if done.returncode == 0:
        return temp
    stop_processes_naming(temp)
    shutil.rmtree(temp, ignore_errors=True)
    print(f"ray start failed (retrying): {done.stderr[-1500:]}")
    return None


@contextmanager
def ray_head(env: dict, *args: str, port: int | None = None):
    """`ray start --head` with its own temp dir and free ports; yields (gcs address, temp dir)."""
    port = port or free_port()
    temp = None
    for _ in range(4):  # each try has Ray's fixed 30 s; a machine shared with other work can miss it
        temp = temp or _start_head(env, args, port)
    assert temp, "ray start --head failed 4 times"
    try:
        from ray._private.services import get_node_ip_address

        yield f"{get_node_ip_address()}:{port}", Path(temp)
    finally:
        stop_processes_naming(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _fake_autoscaling_config(gcs: str) -> dict:
    """A complete fake_multinode config (the 2.60 wheel ships no example): a 1-CPU head and one
    node type of 1 CPU, at most one node, started only on demand."""
    return {
        "cluster_name": "h15-fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": 1, "object_store_memory": 209715200}, "node_config": {},
                           "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [], "docker": {}, "auth": {},
    }


@contextmanager
def fake_autoscaling_cluster(env: dict):
    """A head of 1 CPU whose autoscaler (fake_multinode) can add one 1-CPU node."""
    port = free_port()
    from ray._private.services import get_node_ip_address

    config = Path(tempfile.mkdtemp(prefix="h15cfg-", dir="/tmp")) / "fake.yaml"
    config.write_text(yaml.safe_dump(_fake_autoscaling_config(f"{get_node_ip_address()}:{port}")))
    try:
        with ray_head({**env, "RAY_FAKE_CLUSTER": "1"}, "--num-cpus=1", "--include-dashboard=false",
                      f"--autoscaling-config={config}", port=port) as (gcs, temp):
            yield gcs, temp
    finally:
        shutil.rmtree(config.parent, ignore_errors=True)


def test_an_autoscaling_cluster_admits_a_run_that_needs_a_node_it_has_not_started(world, tmp_path):
    """2 workers x 1 CPU on a 1-CPU head: refused today on a fixed cluster; here admitted, the
    autoscaler adds the node, and the ranks run on two nodes. Also: 3 workers can never fit
    (head + at most one node) and are refused at once."""
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    started = time.perf_counter()
    env = _env(world.parent)
    with fake_autoscaling_cluster(env) as (gcs, _):
        env = {**env, "RAY_ADDRESS": gcs}  # what `--address auto` finds on the head
        never = subprocess.run([sys.executable, str(REPO / "harness" / "entry.py"), "train", str(config),
                                "--workers", "3", "--out", str(tmp_path / "never")],
                               env=env, capture_output=True, text=True, timeout=300)
        assert never.returncode == 2, never.stderr[-3000:]
        assert "holds at most 2 even with every node its autoscaler may add (cpu_worker (1 per node, " \
               "max_workers 1); cluster max_workers 1)" in never.stderr, never.stderr[-3000:]

        done = subprocess.run([sys.executable, str(REPO / "harness" / "entry.py"), "train", str(config),
                               "--workers", "2", "--set", "resources.node_wait_s=300", "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=900)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-5000:]
    print(f"\nfake autoscaling cluster test: {time.perf_counter() - started:.0f} s wall")
    print("\n".join(line for line in log.splitlines() if "nodes" in line or "holds at most" in line))
    assert "admitted, waiting for nodes: 2 worker(s) x {1 CPU}: the cluster holds 1 now; the autoscaler can " \
           "add the rest" in log
    assert "waiting for nodes (" in log and "nodes ready after" in log
    placements = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/workers/rank*.json"))]
    assert [p["rank"] for p in placements] == [0, 1]
    assert len({p["node_id"] for p in placements}) == 2, placements
    from harness import results

    assert list(results.read(out / "results", results.RUNS)["status"]) == ["finished"]


def _submit(dashboard: int, submission_id: str, entrypoint: list[str], env: dict, runtime_env: dict,
            timeout: float = 900) -> tuple[str, str]:
    """`ray job submit` (Ray's own client; it waits for the job); returns (status, logs)."""
    from ray.job_submission import JobSubmissionClient

    cmd = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--submission-id",
           submission_id, "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
    return str(client.get_job_status(submission_id)), client.get_job_logs(submission_id)


def test_ray_jobs_train_and_sweep_write_results_and_mlflow(world, tmp_path):
    import mlflow

    from harness import results

    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    dashboard = free_port()
    env = _env(world.parent)
    runtime_env = {"env_vars": {"HARNESS_CACHE": str(world.parent), "RAY_AUTH_MODE": "disabled"}}
    entry = [sys.executable, "-m", "harness.entry"]
    started = time.perf_counter()
    with ray_head(env, "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dashboard}"):
        status, logs = _submit(dashboard, "h15-relative", [*entry, "train", str(config), "--out", "runs/lost"],
                               env, runtime_env, timeout=300)
        assert status == "FAILED" and "--out runs/lost: relative, and this Ray job runs in a temporary copy" in logs, logs

        train_out, sweep_out = tmp_path / "train", tmp_path / "sweep"
        status, logs = _submit(dashboard, "h15-train", [*entry, "train", str(config), "--out", str(train_out)],
                               env, runtime_env)
        assert status == "SUCCEEDED", logs[-5000:]
        assert f"output directory: {train_out}" in logs and "Ray job; its results go to" in logs
        status, logs = _submit(dashboard, "h15-sweep", [*entry, "sweep", str(config), "--space", "method={grid: [{name: flyp}, {name: cma, lam: 0.5}]}",
                                                        "--out", str(sweep_out)], env, runtime_env)
        assert status == "SUCCEEDED", logs[-5000:]
    print(f"\nRay Jobs test: {time.perf_counter() - started:.0f} s wall")

    assert list(results.read(train_out / "results", results.RUNS)["status"]) == ["finished"]
    runs = results.read(sweep_out / "results", results.RUNS)
    assert sorted(runs["method"]) == ["cma", "flyp", "zero-shot"] and (runs["status"] == "finished").all()
    for out, expected in ((train_out, 2), (sweep_out, 4)):  # a parent run (train / sweep) and one per run
        mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
        logged = mlflow.search_runs(experiment_names=["live"])  # one experiment per sweep name
        assert len(logged) == expected, logged
        assert logged["status"].eq("FINISHED").all()


def _mlflow_guard() -> str:
    """cluster.yaml's head start command that starts MLflow."""
    commands = yaml.safe_load((REPO / "cluster.yaml").read_text())["head_start_ray_commands"]
    (guard,) = [c for c in commands if "mlflow server" in c]
    return guard


def _guard_here(port: int, store: Path) -> str:
    """The guard with this machine's paths and a free port in place of the head's."""
    guard = _mlflow_guard()
    for old, new in (("~/venv/bin/", f"{BIN}/"), ("5000", str(port)), ("/mnt/efs/mlflow", str(store)),
                     ("/tmp/mlflow.log", str(store / "mlflow.log")), ("/tmp/mlflow.pid", str(store / "mlflow.pid"))):
        assert old in guard, old
        guard = guard.replace(old, new)
    return guard


def _wait_until(condition, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _naming(marker: str) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_head_start_command_starts_mlflow_only_when_its_port_is_free(tmp_path):
    """Run under `bash -c` (as Ray runs it): with a live `mlflow server` on the port the guard
    starts nothing (the old `pgrep -f` guard matched its own bash -c and never started one);
    with the port free it starts one, which then answers there; run again while that one still
    starts, it starts no second one (its pid file says it runs)."""
    started = time.perf_counter()
    port = free_port()
    store = Path(tempfile.mkdtemp(prefix="h15mlflow-", dir="/tmp"))
    own = store / "own"
    own.mkdir()
    guard = _guard_here(port, store / "guard")
    (store / "guard").mkdir()
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{own}/mlflow.db", "--workers", "1"],
                              stdout=(own / "log").open("w"), stderr=subprocess.STDOUT)
    try:
        assert _wait_until(lambda: answers(port), 240), (own / "log").read_text()[-3000:]
        done = subprocess.run(["bash", "-c", guard], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        time.sleep(3)
        assert not _naming(str(store / "guard")), "the guard started a second MLflow on a busy port"
        stop_processes_naming(f"{own}/mlflow.db")
        assert _wait_until(lambda: not answers(port), 30)
        shutil.copy(own / "mlflow.db", store / "guard" / "mlflow.db")  # migrated already: minutes on a loaded machine

        done = subprocess.run(["bash", "-c", guard], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # A second `ray up` while that server still starts (not answering yet) starts no other one.
        again = subprocess.run(["bash", "-c", guard], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        servers = [p for p in _naming(f"sqlite:///{store}/guard/mlflow.db") if "server" in p.info["cmdline"]]
        assert len(servers) == 1, [p.info["cmdline"] for p in servers]
        assert _wait_until(lambda: answers(port), 240), (store / "guard" / "mlflow.log").read_text()[-3000:]
        assert _naming(f"sqlite:///{store}/guard/mlflow.db"), "something else answers on the port"
    finally:
        server.kill()
        stop_processes_naming(str(store))
        shutil.rmtree(store, ignore_errors=True)
    print(f"\nMLflow guard test: {time.perf_counter() - started:.0f} s wall")
