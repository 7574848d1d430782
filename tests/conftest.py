"""Shared fixtures: one small synthetic world per test session, real shards on disk, and Ray
hygiene: the tests start and stop only their own Ray clusters, beside a foreign one they prove
untouched."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/raycluster.py, for every test module

from raycluster import RayCluster  # noqa: E402

# Never touch the user's cache or start Ray with an auth token from a test.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray's machine-wide temp root (/tmp/ray: session dirs, the "current cluster" file that
# address=None / "auto" join) becomes the session's own: no test can find, join or register
# in someone else's cluster by accident. Short: Ray's socket paths live below it.
SESSION_RAY_TMP = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
os.environ["RAY_TMPDIR"] = str(SESSION_RAY_TMP)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def world(cache) -> Path:
    """The small synthetic world, generated once, at $HARNESS_CACHE/synthetic-small (where configs look)."""
    from harness.data import synthetic
    from harness.paths import synthetic_root

    root = synthetic_root("small")
    synthetic.generate(root, synthetic.small_spec())
    return root


def cluster_drivers(address: str) -> tuple[list[tuple[int, str]], int]:
    """([(driver pid, entrypoint)] of every driver that ever connected, live nodes) of the cluster
    at ``address``, asked of its GCS from a fresh process, which does not connect as a driver."""
    probe = ("import json, sys; from ray._raylet import GcsClient; c = GcsClient(address=sys.argv[1]); "
             "jobs = c.get_all_job_info(skip_submission_job_info_field=True, skip_is_running_tasks_field=True); "
             "nodes = c.get_all_node_info(); "
             "print(json.dumps([[[j.driver_pid, j.entrypoint] for j in jobs.values() "
             "if not j.config.ray_namespace.startswith('_ray_internal')], "
             "sum(n.state == 0 for n in nodes.values())]))")
    done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    drivers, nodes = json.loads(done.stdout.strip().splitlines()[-1])
    return [tuple(d) for d in drivers], nodes


def ours(driver: tuple[int, str], basetemp: Path) -> bool:
    """Whether a driver came from this test session: this process, one below it, or a command
    naming the session's temp dir. (Other people's code on the machine may join any cluster it
    finds: Ray's legacy `address="auto"` takes any running one.)"""
    import psutil

    pid, entrypoint = driver
    mine = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    return pid in mine or str(basetemp) in entrypoint


def _wants_foreign_cluster(session) -> bool:
    """The foreign cluster costs a Ray start: run it when slow (Ray) tests are selected, as in
    `python -m pytest -q`, or when HARNESS_TEST_FOREIGN_RAY=1 asks for it."""
    wanted = os.environ.get("HARNESS_TEST_FOREIGN_RAY")
    if wanted is not None:
        return wanted == "1"
    return any(item.get_closest_marker("slow") for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def foreign_ray(request):
    """Someone else's Ray cluster, running on this machine for the whole session (its own temp
    dir and ports, registered in its own temp dir as `ray start` does). At the end, every one
    of its processes must still run and no driver of this session may have joined it; otherwise the
    session ends with an error naming what happened. None when not started (a start that fails
    on a loaded machine is a warning, not an error of every test)."""
    cluster = None
    if _wants_foreign_cluster(request.session):
        try:
            cluster = RayCluster(num_cpus=1).start()
        except RuntimeError as err:  # a loaded machine: not a defect of what is tested, so say so and go on
            warnings.warn(f"the foreign Ray cluster did not start, so this session does not check that it "
                          f"survives: {str(err)[:300]}")
    if cluster is None:
        yield None
    else:
        pids = {p.pid for p in cluster.processes()}
        try:
            yield cluster
            gone = sorted(pid for pid in pids if not _running(pid))
            assert not gone, f"the test session killed processes of a foreign Ray cluster: {gone}"
            drivers, nodes = cluster_drivers(cluster.address)
            assert nodes == 1, f"the foreign Ray cluster has {nodes} live nodes, expected 1"
            joined = [d for d in drivers if ours(d, request.config._tmp_path_factory.getbasetemp())]
            assert not joined, f"driver(s) of the test session joined a foreign Ray cluster: {joined}"
        finally:
            cluster.stop()
    shutil.rmtree(SESSION_RAY_TMP, ignore_errors=True)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
