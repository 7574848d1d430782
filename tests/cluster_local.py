"""cluster.yaml turned into a cluster file for Ray's `local` provider: one head, this machine,
reached over ssh (tests/ssh_head.py). Built FROM cluster.yaml, so the launcher test runs its
file_mounts, rsync filters, setup_commands and head start commands; what cannot run here is a
named override below. An override whose cluster.yaml command is gone is an error (no drift).

    config = local_cluster(load_cluster(), Head(user=..., key=..., ssh_port=..., home=...), base_venv)

The overrides, and why each differs from cluster.yaml:
- provider: `local`, head_ip 127.0.0.1, no worker_ips (AWS is not reachable from a test);
- auth: the test's user and key; the launcher has no ssh port option, so ssh reaches the test's
  sshd through ``ssh_proxy_command: nc -w 5 %h PORT`` (%h is head_ip: a wrong one still fails);
- available_node_types, head_node_type: dropped (the local provider refuses them), max_workers 0;
- /mnt/efs -> <head home>/efs everywhere (no EFS: "shared storage" is the head's own disk);
- the two NFS commands (install nfs-common, mount EFS) are dropped; the storage dirs are made
  without sudo or `chown ubuntu`;
- uv: not installed (no downloads at test time). ~/venv is made by Debian's python3.11 (the test's
  own interpreter may sit in root's 0700 home) and reads the test's venv through a .pth
  (site.addsitedir: its packages, no copy); `ray` and `mlflow` in ~/venv/bin are the test venv's
  scripts re-pointed at ~/venv/bin/python; the editable install of ~/harness is the same, with
  pip instead of uv and --no-deps (the dependencies come from the test venv);
- ~/.bashrc also gets RAY_TMPDIR=~/rt (Ray's temp root: /tmp/ray may belong to another user here);
- Ray and MLflow ports: free ones (6379, 8265, 10001, 5000 and the node ports may be taken by
  another cluster on this machine); MLflow's log and pid file live in the store, not in /tmp.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EFS = "/mnt/efs"


@dataclass(frozen=True)
class Head:
    user: str
    key: Path
    ssh_port: int
    home: Path
    head_ip: str = "127.0.0.1"
    ports: dict = field(default_factory=dict)  # gcs, dashboard, client, mlflow, node ports (see head_ports)


def load_cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def head_ports(free_port) -> dict:
    names = ("gcs", "dashboard", "client", "mlflow", "node-manager", "object-manager", "metrics-export",
             "runtime-env-agent", "dashboard-agent-grpc", "dashboard-agent-listen")
    return {name: free_port() for name in names}


def _venv_commands(base_venv: Path) -> list[str]:
    site = base_venv / "lib" / "python3.11" / "site-packages"
    scripts = " ".join(str(base_venv / "bin" / tool) for tool in ("ray", "mlflow"))
    return [
        "test -x ~/venv/bin/python || /usr/bin/python3.11 -m venv --without-pip ~/venv",
        f"echo \"import site; site.addsitedir('{site}')\" > ~/venv/lib/python3.11/site-packages/zz_test_venv.pth",
        f"for tool in {scripts}; do sed \"1s|.*|#!$HOME/venv/bin/python|\" $tool > ~/venv/bin/$(basename $tool) "
        "&& chmod +x ~/venv/bin/$(basename $tool); done",
    ]


def setup_overrides(base_venv: Path) -> dict[str, list[str]]:
    """cluster.yaml setup command (a substring that names it) -> what runs instead ([] = dropped)."""
    return {
        "command -v mount.nfs4": [],
        "mount -t nfs4": [],
        f"sudo mkdir -p {EFS}/shards": [f"mkdir -p {EFS}/shards {EFS}/runs {EFS}/mlflow {EFS}/hf"],
        "uv/install.sh": [],
        "uv venv --python 3.11": _venv_commands(base_venv),
        "uv pip install": ["~/venv/bin/python -m pip install -q --no-index --no-deps --no-build-isolation "
                           "-e ~/harness"],
        "grep -q HARNESS_RESULTS_ROOT": ["grep -q RAY_TMPDIR ~/.bashrc || echo 'export RAY_TMPDIR=~/rt' >> ~/.bashrc",
                                         "mkdir -p ~/rt"],
    }


def _override(commands: list[str], overrides: dict[str, list[str]], keep_matched: set[str] = frozenset()) -> list[str]:
    """Each command, or its override; an override naming no command is an error (cluster.yaml changed)."""
    out, used = [], set()
    for command in commands:
        hits = [key for key in overrides if key in command]
        if len(hits) > 1:
            raise ValueError(f"command matches overrides {hits}: {command}")
        if hits:
            used.add(hits[0])
            if hits[0] in keep_matched:
                out.append(command)
            out.extend(overrides[hits[0]])
        else:
            out.append(command)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"cluster.yaml no longer has the command(s) these overrides replace: {unused}")
    return out


def _ray_start(command: str, ports: dict) -> str:
    if "--port=6379" not in command:
        raise ValueError(f"the head's ray start no longer says --port=6379: {command}")
    node = " ".join(f"--{name}-port={ports[name]}" for name in
                    ("node-manager", "object-manager", "metrics-export", "runtime-env-agent",
                     "dashboard-agent-grpc", "dashboard-agent-listen"))
    return (command.replace("--port=6379", f"--port={ports['gcs']}")
            + f" --dashboard-port={ports['dashboard']} --ray-client-server-port={ports['client']} {node}")


def _mlflow(command: str, ports: dict, efs: str) -> str:
    for old in ("5000", "/tmp/mlflow.log", "/tmp/mlflow.pid"):
        if old not in command:
            raise ValueError(f"cluster.yaml's MLflow command no longer has {old}: {command}")
    return (command.replace("5000", str(ports["mlflow"])).replace("/tmp/mlflow.log", f"{efs}/mlflow/mlflow.log")
            .replace("/tmp/mlflow.pid", f"{efs}/mlflow/mlflow.pid"))


def local_cluster(cluster: dict, head: Head, base_venv: Path, name: str = "harness-launcher-test") -> dict:
    """cluster.yaml (parsed) as a `local` provider cluster of one head: see the module doc."""
    config = copy.deepcopy(cluster)
    efs = str(head.home / "efs")
    config["cluster_name"] = name
    config["provider"] = {"type": "local", "head_ip": head.head_ip, "worker_ips": []}
    config["auth"] = {"ssh_user": head.user, "ssh_private_key": str(head.key),
                      "ssh_proxy_command": f"nc -w 5 %h {head.ssh_port}"}
    for key in ("available_node_types", "head_node_type"):
        config.pop(key)
    config["max_workers"] = 0
    config["setup_commands"] = _override(config["setup_commands"], setup_overrides(base_venv),
                                         keep_matched={"grep -q HARNESS_RESULTS_ROOT"})
    starts = []
    for command in config["head_start_ray_commands"]:
        if "ray start --head" in command:
            command = _ray_start(command, head.ports)
        elif "mlflow server" in command:
            command = _mlflow(command, head.ports, EFS)
        starts.append(command)
    config["head_start_ray_commands"] = starts
    config["worker_start_ray_commands"] = [c.replace(":6379", f":{head.ports['gcs']}")
                                           for c in config["worker_start_ray_commands"]]
    return _replace(config, EFS, efs)  # last: every /mnt/efs, the overrides' included


def _replace(value, old: str, new: str):
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    return value
