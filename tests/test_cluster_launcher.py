"""Ray's cluster launcher end to end on this machine: cluster.yaml as a `local` provider cluster
of one head (tests/cluster_local.py) reached over our own sshd (tests/ssh_head.py). `ray up`
(twice: setup_commands are safe to repeat), `ray submit ... harness/entry.py -- train ...`, the
Parquet rows and MLflow runs on the head, `ray submit -- report`, `ray down`. A bad cluster file
(missing key, wrong head_ip) fails with the launcher's message, not a hang.

Everything started is stopped by pid (sshd) or belongs to the head's own account (the launcher's
Ray and MLflow); a foreign Ray cluster on the machine (conftest's foreign_ray) must survive.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from cluster_local import REPO, Head, head_ports, load_cluster, local_cluster
from raycluster import port_answers
from ssh_head import SshHead, free_port, why_not

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
BASE_VENV = Path(sys.executable).parent.parent  # the test's venv: the head reads its packages


def launcher_env(tmp: Path, **extra: str) -> dict:
    """The launcher's own state (Ray's temp root: the local provider's cluster state and lock;
    TMPDIR: its config cache) in the test's dir, never /tmp/ray of someone else. The launcher waits
    AUTOSCALER_NODE_START_WAIT_S for ssh (900 s by default): here the head is up in seconds, or broken."""
    return {**os.environ, "RAY_TMPDIR": str(tmp), "TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0",
            "AUTOSCALER_NODE_START_WAIT_S": "60", **extra}


def launch(env: dict, *args: str, timeout: float = 300, log: Path | None = None) -> tuple[int, str, float]:
    """(exit code, stdout+stderr, seconds) of one `ray ...` command, run from the repository root
    (cluster.yaml's file_mounts sync "."); the whole output also in ``log`` when given."""
    started = time.perf_counter()
    if log is not None:
        with log.open("w") as sink:
            done = subprocess.run([RAY, *args], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        return done.returncode, log.read_text(errors="replace"), time.perf_counter() - started
    try:
        done = subprocess.run([RAY, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"ray {' '.join(args)} ran past {timeout} s:\n{(err.output or '')[-4000:]}") from None
    return done.returncode, done.stdout, time.perf_counter() - started


def venv_for(user: str, open_dir: Path) -> Path:
    """The test's venv as the head's account can read it. A clone under root's 0700 home (or any
    closed folder) hides it; then a hard-linked mirror in an open folder (no bytes copied; a full
    copy where hard links cannot cross file systems) serves instead of skipping the test."""
    def readable(venv: Path) -> bool:
        return subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(venv / "pyvenv.cfg")]).returncode == 0

    if readable(BASE_VENV):
        return BASE_VENV
    mirror = open_dir / "venv"
    if subprocess.run(["cp", "-a", "--link", str(BASE_VENV), str(mirror)], capture_output=True).returncode != 0:
        subprocess.run(["rm", "-rf", str(mirror)], check=True)
        subprocess.run(["cp", "-a", str(BASE_VENV), str(mirror)], check=True)
    assert readable(mirror), f"the head's account cannot read the venv mirror {mirror} either"
    return mirror


def _wait(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(1)
    return condition()


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, width=1000))
    return path


@pytest.fixture
def open_dir() -> Path:
    """A folder every account may read (the venv mirror of venv_for), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="h22venv", dir="/tmp"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], timeout=300)


@pytest.fixture
def tmp(tmp_path) -> Path:
    """A short temp dir (Ray's socket paths must stay under ~100 characters)."""
    path = Path(tempfile.mkdtemp(prefix="h22", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], timeout=60)


def test_ray_up_submit_report_down_on_a_local_head(tmp, tmp_path, open_dir, foreign_ray):
    reason = why_not()
    if reason:
        pytest.skip(reason)
    timings: dict[str, float] = {}
    with SshHead() as ssh:
        venv = venv_for(ssh.user, open_dir)
        head = Head(user=ssh.user, key=ssh.key, ssh_port=ssh.port, home=ssh.home, ports=head_ports(free_port))
        config = local_cluster(load_cluster(), head, venv, name=f"h22-{ssh.port}")
        first = _write(config, tmp / "cluster.yaml")
        # An unchanged file would skip the setup ("Configuration already up to date"); one more
        # command changes its hash, as a code change does, so every setup command runs again.
        config["setup_commands"].append("echo second ray up: every setup command ran again")
        cluster = _write(config, tmp / "cluster-again.yaml")
        env = launcher_env(tmp)
        efs = ssh.home / "efs"
        for attempt, path in (("ray up", first), ("ray up again", cluster)):
            rc, log, timings[attempt] = launch(env, "up", "-y", "--disable-usage-stats", str(path),
                                               log=tmp_path / f"{attempt.replace(' ', '-')}.log")
            if rc != 0 and attempt == "ray up again":
                # On a loaded machine the head's `ray start --head`, a second after `ray stop` freed
                # the same ports, has failed silently once in CI (2026-12-03); `ray up` is meant to be
                # re-run, so one more is what a user does. Shown, so that a recurrence is seen.
                print(f"{attempt} failed once, running it again; its tail:\n{log[-1500:]}")
                rc, log, timings[attempt] = launch(env, "up", "-y", "--disable-usage-stats", str(path),
                                                   log=tmp_path / "ray-up-again-retry.log")
            home = subprocess.run(["ls", "-la", str(ssh.home)], capture_output=True, text=True).stdout
            assert rc == 0, f"{attempt}:\n{log[-6000:]}\nthe head's home:\n{home}"
        assert "every setup command ran again" in log and "pip install" in log, log[-3000:]
        assert (ssh.home / "harness" / "harness" / "entry.py").is_file()  # file_mounts synced the tree
        assert not (ssh.home / "harness" / ".git").exists()  # rsync_exclude
        mlflow_port = head.ports["mlflow"]
        started = time.perf_counter()
        assert _wait(lambda: port_answers(mlflow_port), 240), (efs / "mlflow" / "mlflow.log").read_text()[-3000:]
        timings["MLflow answers after ray up"] = time.perf_counter() - started

        out = efs / "runs" / "launcher"
        rc, log, timings["ray submit train"] = launch(
            env, "submit", str(cluster), "harness/entry.py", "--", "train", "sweeps/demo.yaml",
            "--set", "data.synthetic_size=small", "--set", "schedule.epochs=1",
            "--set", f"tracking.mlflow_uri=http://127.0.0.1:{mlflow_port}", "--out", str(out), timeout=420,
            log=tmp_path / "submit-train.log")
        assert rc == 0, log[-8000:] + _tails(out) + _fault_logs(ssh.home)
        # entry.py runs in the head's home: the laptop-style relative config came from ~/harness.
        assert f"taken from the installed checkout: {ssh.home}/harness/sweeps/demo.yaml" in log, log[-3000:]
        _check_results(out, mlflow_port)

        rc, log, timings["ray submit report"] = launch(env, "submit", str(cluster), "harness/entry.py", "--",
                                                       "report", str(out), log=tmp_path / "submit-report.log")
        assert rc == 0, log[-6000:]
        assert (out / "report.md").is_file(), log[-3000:]

        rc, log, timings["ray down"] = launch(env, "down", "-y", str(cluster), log=tmp_path / "down.log")
        assert rc == 0, log[-6000:]
        assert _wait(lambda: not _ray_of(ssh), 60), f"Ray of the head still runs after ray down: {_ray_of(ssh)}"
    assert not ssh.answers(), "sshd still answers"
    with pytest.raises(KeyError):  # the head's account is gone with it
        pwd.getpwnam(ssh.user)
    if foreign_ray is not None:  # conftest checks its processes at the session's end; it must answer now
        assert port_answers(foreign_ray.port)
    print("\ncluster launcher: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def _tails(out: Path, chars: int = 3000) -> str:
    """What the head's harness left in its output directory (logs, failure records), for a failed submit."""
    if not out.is_dir():
        return f"\n(no {out} on the head)"
    parts = [f"\n{out} on the head: {sorted(p.name for p in out.iterdir())}"]
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in (".log", ".json", ".txt"):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def _fault_logs(home: Path) -> str:
    """The tracebacks harness/entry.py keeps when the head's process crashed or was signalled."""
    logs = sorted(home.rglob("entry-faults/*.log"))
    if not logs:
        return "\n(no entry-faults log on the head: the process ended by itself, or by SIGKILL)"
    return "".join(f"\n--- {path}\n{path.read_text(errors='replace')[-4000:]}" for path in logs)


def _check_results(out: Path, mlflow_port: int) -> None:
    import mlflow

    from harness import results

    runs = results.read(out / "results", results.RUNS)
    assert list(runs["status"]) == ["finished"] and list(runs["method"]) == ["flyp"], runs
    client = mlflow.MlflowClient(f"http://127.0.0.1:{mlflow_port}")
    experiment = client.get_experiment_by_name("demo")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    logged = client.search_runs([experiment.experiment_id])
    assert len(logged) == 2 and all(r.info.status == "FINISHED" for r in logged), logged  # parent + the run


def _ray_of(ssh: SshHead) -> list[str]:
    names = []
    for pid in ssh.user_pids():
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in ("raylet", "gcs_server"):
            names.append(f"{pid} {name}")
    return names


def _bad(tmp: Path, **head_fields) -> Path:
    head = Head(**{"user": "nobody", "key": tmp / "id", "ssh_port": free_port(), "home": tmp / "home",
                   "ports": head_ports(free_port), **head_fields})
    return _write(local_cluster(load_cluster(), head, BASE_VENV, name=f"h22bad-{head.ssh_port}"), tmp / "bad.yaml")


def test_a_missing_key_fails_naming_it(tmp):
    missing = tmp / "no-such-key"
    rc, log, seconds = launch(launcher_env(tmp), "up", "-y", str(_bad(tmp, key=missing)), timeout=120)
    assert rc != 0 and str(missing) in log, log[-4000:]


def test_a_wrong_head_ip_fails_with_the_launchers_message_not_a_hang(tmp):
    """Nothing listens there: the launcher retries ssh for AUTOSCALER_NODE_START_WAIT_S (900 s by
    default; a short one here), then says so and exits non-zero."""
    key = tmp / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    env = launcher_env(tmp, AUTOSCALER_NODE_START_WAIT_S="20")
    rc, log, seconds = launch(env, "up", "-y", str(_bad(tmp, key=key, head_ip="127.0.0.2")), timeout=180)
    assert rc != 0 and "SSH still not available" in log, log[-4000:]
    assert "Failed to setup head node" in log or "failed" in log.lower(), log[-4000:]
