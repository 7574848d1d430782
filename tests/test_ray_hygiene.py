"""The harness never joins a Ray cluster it was not pointed at: the README's quick start works
while another cluster is registered on the machine (running, or dead), and leaves it alone.

Registered means what `ray start` leaves behind: ``<Ray temp root>/ray/ray_current_cluster``
naming the cluster, which ray.init(address=None) would join. Each test registers it in a Ray
temp root of its own (RAY_TMPDIR), so nobody else on the machine sees it.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cluster_drivers, ours
from raycluster import RayCluster, free_port

pytestmark = pytest.mark.slow

# The quick start's `harness demo`, made small: the session's small world, one pretraining
# epoch, one training epoch, FLYP's demo entries only (two trials: seeds 0 and 1).
SMALL_DEMO = ["--set", "data.synthetic_size=small", "--set", "pretrain.epochs=1", "--set", "schedule.epochs=1",
              "--method", "flyp"]


def _registered(address: str) -> dict:
    """An environment whose Ray temp root registers ``address`` as the machine's current cluster."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text(address)
    return {**os.environ, "RAY_TMPDIR": str(root), "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def registered_cluster():
    """A running cluster standing in for someone else's (the session's foreign one when it runs)."""
    with RayCluster(num_cpus=1) as cluster:
        yield cluster


@pytest.mark.parametrize("kind", ["running", "stale"])
def test_quick_start_beside_a_registered_cluster(world, tmp_path, kind, request):
    if kind == "running":
        cluster = request.getfixturevalue("registered_cluster")
        address, before = cluster.address, {p.pid for p in cluster.processes()}
    else:
        address, before = f"127.0.0.1:{free_port()}", set()  # nobody answers there any more
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "demo", "--out", str(out), *SMALL_DEMO],
                          env=_registered(address), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert (out / "report.md").is_file()
    if kind == "running":
        assert before <= {p.pid for p in cluster.processes()}, "a process of the registered cluster was ended"
        drivers, nodes = cluster_drivers(address)
        assert nodes == 1 and not [d for d in drivers if ours(d, tmp_path)], "the demo joined the registered cluster"


def test_address_auto_joins_the_registered_cluster(registered_cluster):
    """`--address auto` is the explicit way to join: it finds the registered cluster."""
    probe = ("from harness.orchestration import cluster; import ray; cluster.init('auto'); "
             "print(ray.get_runtime_context().gcs_address)")
    done = subprocess.run([sys.executable, "-c", probe], env=_registered(registered_cluster.address),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1].endswith(f":{registered_cluster.port}")
