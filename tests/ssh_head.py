"""A "head node" for Ray's cluster launcher on this machine: our own sshd on a free loopback port,
logging in a user made for the test with a key made for the test.

    with SshHead() as head:
        head.user, head.key, head.port, head.home

Never the system's sshd (it may run, or be denied by policy-rc.d): ``/usr/sbin/sshd -D -f <own
config>`` with its own host key, pid file and log in a temp dir, stopped by its pid.

The login user is a fresh unprivileged account (``useradd``), which needs root. That is what
keeps the launcher from ending other people's Ray: `ray up` and `ray down` run ``ray stop`` on the
head, which signals every Ray process on the machine its user may signal. As an account of its
own it may signal only what it started. Without root (sshd then logs in only its own user, whose
``ray stop`` would end that user's other clusters) :func:`why_not` says so and the test skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USER = "harness-ci-head"  # one fixed name: a crashed run's account is reused, not multiplied


def why_not() -> str | None:
    """Why this machine cannot host the head, or None."""
    if os.geteuid() != 0:
        return ("needs root: the head's login user must be an account of its own (useradd), since the "
                "launcher's `ray stop` on the head would end every Ray process of a shared user")
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "nc", "useradd") if not shutil.which(tool)]
    if missing:
        return f"missing {', '.join(missing)} (apt: openssh-server openssh-client rsync netcat-openbsd)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")


class SshHead:
    """sshd on 127.0.0.1:``port`` logging in ``user`` (home ``home``) with the private key ``key``."""

    def __init__(self) -> None:
        # mkdtemp is 0700: opened to traversal so that the user reaches its home below it.
        self.root = Path(tempfile.mkdtemp(prefix="h22ssh-", dir="/tmp"))
        self.root.chmod(0o711)
        self.user, self.home = USER, self.root / "home"
        self.key = self.root / "id_ed25519"
        self.port = free_port()
        self.pid_file = self.root / "sshd.pid"
        self.log = self.root / "sshd.log"
        self.sshd: subprocess.Popen | None = None

    def __enter__(self) -> "SshHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _make_user(self) -> None:
        try:
            pwd.getpwnam(self.user)
            _run("usermod", "--home", str(self.home), "--password", "*", self.user)  # a crashed run's account
            self.home.mkdir()
        except KeyError:
            # Password "*": none to log in with, yet not locked ("!", useradd's default), which sshd
            # refuses even for a key ("account is locked").
            _run("useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/bash",
                 "--password", "*", self.user)
        for skel in Path("/etc/skel").iterdir():  # a reused account's new home starts as useradd's would
            if skel.is_file() and not (self.home / skel.name).exists():
                shutil.copy(skel, self.home / skel.name)
        for path in (self.home, *self.home.iterdir()):
            shutil.chown(path, self.user, self.user)
        self.home.chmod(0o755)  # root (the test) reads the head's results and MLflow store

    def _config(self) -> Path:
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / "host_key"))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        keys = self.root / "authorized_keys"
        shutil.copy(self.key.with_suffix(".pub"), keys)
        keys.chmod(0o644)
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{self.port}",
            f"HostKey {self.root / 'host_key'}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {keys}",
            f"AllowUsers {self.user}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
            "UsePAM no",  # the account has no password; PAM's account checks would refuse it
            "StrictModes no",  # the key and the home sit below /tmp, which is world-writable (sticky)
            "AllowTcpForwarding yes",  # `ray attach -p`, `ray dashboard`
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
        ]) + "\n")
        return config

    def start(self, timeout_s: float = 30.0) -> "SshHead":
        self._make_user()
        config = self._config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while not self.answers():
            if self.sshd.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def user_pids(self) -> list[int]:
        """Processes still running as the head's user (the launcher's Ray, MLflow, ssh sessions)."""
        uid = pwd.getpwnam(self.user).pw_uid
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _owner(int(p)) == uid]

    def stop(self) -> None:
        """End sshd by its pid, then whatever still runs as the head's user (that account is ours
        alone), then remove the account and the temp dir."""
        if self.sshd is not None:
            self.sshd.send_signal(signal.SIGTERM)
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(timeout=10)
            self.sshd = None
        try:
            for pid in self.user_pids():
                _signal(pid, signal.SIGKILL)
            deadline = time.time() + 15  # userdel refuses while a process of the account is still dying
            while self.user_pids() and time.time() < deadline:
                time.sleep(0.2)
            subprocess.run(["userdel", "--force", self.user], capture_output=True, timeout=60)
        except KeyError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
