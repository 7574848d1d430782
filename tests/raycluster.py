"""A Ray cluster a test owns: `ray start` in its own temp dir, on free ports, stopped by the
process ids it started. Never `ray stop` (it ends every Ray process on the machine) and never a
kill by name: other people's Ray work may run beside the tests.

    with RayCluster(num_cpus=1, extra_nodes=1) as cluster:
        subprocess.run([..., "--address", cluster.address])

Each node is a `ray start --block` process in its own session; every Ray process of that node
(GCS, raylet, agents, workers) descends from it. :meth:`RayCluster.stop` signals those
processes (collected before the signal, so reparented ones are not lost) and kills what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node opens that has a fixed default (two heads on the defaults collide)."""
    options = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
               "--runtime-env-agent-port", "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port")
    return [f"{option}={free_port()}" for option in options]


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process below it (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_processes(procs: list[psutil.Process], grace_s: float = 15.0) -> None:
    """SIGTERM, then after ``grace_s`` SIGKILL, exactly these processes."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


class RayCluster:
    """A head node (and ``extra_nodes`` more, on loopback) with ``num_cpus`` CPUs each.

    ``temp_dir``: Ray's root temp dir for it (default: a new short one under /tmp: socket
    paths must stay under ~100 characters). The cluster registers itself there
    (``<temp_dir>/ray_current_cluster``), never in the machine's /tmp/ray.
    """

    def __init__(self, num_cpus: int = 1, extra_nodes: int = 0, temp_dir: Path | None = None,
                 env: dict | None = None):
        self.num_cpus, self.extra_nodes = num_cpus, extra_nodes
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
        self.nodes: list[subprocess.Popen] = []

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_node(self, args: list[str], ready, timeout_s: float) -> None:
        log = open(self.temp_dir / f"node{len(self.nodes)}.log", "w")
        node = subprocess.Popen([RAY, "start", "--block", f"--num-cpus={self.num_cpus}", "--disable-usage-stats",
                                 *_node_ports(), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.nodes.append(node)
        deadline = time.time() + timeout_s
        while not ready():
            if node.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray node did not start: {log.name}:\n{Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)

    def start(self, timeout_s: float = 90.0, attempts: int = 3) -> "RayCluster":
        """Start every node; a node that fails to come up (Ray gives a raylet 30 s to register,
        which a loaded machine can miss) stops what was started and the whole start is retried."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_all(timeout_s)
            except RuntimeError:
                if attempt == attempts:
                    raise
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
                (self.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _start_all(self, timeout_s: float) -> "RayCluster":
        self._start_node(["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
                          f"--ray-client-server-port={free_port()}"],
                         lambda: port_answers(self.port) and (self.temp_dir / "ray_current_cluster").is_file(), timeout_s)
        for _ in range(self.extra_nodes):
            want = len(self.nodes) + 1  # registered with the GCS, so its CPUs count
            self._start_node([f"--address={self.address}"], lambda: registered_nodes(self.address) >= want, timeout_s)
        return self

    def processes(self) -> list[psutil.Process]:
        """Every process this cluster started (the `ray start` processes and their descendants)."""
        return [proc for node in self.nodes for proc in tree(node.pid)]

    def alive_nodes(self) -> int:
        """Raylets running under this cluster's `ray start` processes."""
        return sum(1 for p in self.processes() if _is_raylet(p))

    def stop(self) -> None:
        """End exactly the processes this cluster started."""
        stop_processes(self.processes())
        for node in self.nodes:
            node.wait(timeout=10)
        self.nodes = []


def registered_nodes(address: str) -> int:
    """Live nodes the cluster's GCS lists, asked from a fresh process (which joins as no driver)."""
    probe = ("import sys; from ray._raylet import GcsClient; "
             "print(sum(n.state == 0 for n in GcsClient(address=sys.argv[1]).get_all_node_info().values()))")
    done = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120)
    return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout.split() else 0


def _is_raylet(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "raylet" or "raylet/raylet" in " ".join(proc.cmdline()[:1])
    except psutil.NoSuchProcess:
        return False


def own_descendants(marker: str, root_pid: int | None = None) -> list[psutil.Process]:
    """Processes below ``root_pid`` (default: this process) whose command line contains
    ``marker``: e.g. the Ray Train workers of the local cluster this test process started."""
    found = []
    for proc in tree(root_pid or os.getpid())[1:]:
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found
