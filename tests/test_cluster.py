"""cluster.yaml against the cluster-launcher schema shipped in the installed ray package."""

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    jsonschema.validate(cluster, SCHEMA)


@pytest.mark.parametrize("break_it", [
    lambda c: c.pop("provider"),
    lambda c: c["available_node_types"]["gpu_a10g"]["resources"].update(GPU=-1),
    lambda c: c.update(setup_comands=c["setup_commands"]),  # a typo'd key
])
def test_schema_catches_broken_configs(cluster, break_it):
    """The validation above can fail: the same schema rejects these edits of our file."""
    broken = copy.deepcopy(cluster)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_cluster_has_what_the_protocol_needs(cluster):
    nodes = cluster["available_node_types"]
    head = nodes[cluster["head_node_type"]]
    assert head["resources"].get("GPU") == 0  # no trial worker on the head
    gpus = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpus and any(n["max_workers"] > 0 for n in gpus)
    assert cluster["provider"]["type"] == "aws"
    setup = " ".join(cluster["setup_commands"])
    assert "pip install" in setup and "-e ~/harness" in setup and cluster["file_mounts"]["~/harness"] == "."
    assert "/mnt/efs" in setup  # shared storage for shards, checkpoints, results, MLflow
    head_cmds = " ".join(cluster["head_start_ray_commands"])
    # MLflow and the dashboard on loopback only: reached through ssh forwarding, never exposed.
    assert "mlflow server --host 127.0.0.1 --port 5000" in head_cmds and "--dashboard-host=127.0.0.1" in head_cmds
    for name in ("imagenet-cma", "imagenet-flyp", "imagenet-lambda"):
        sweep = yaml.safe_load((REPO / "sweeps" / f"{name}.yaml").read_text())
        assert sweep["tracking"]["mlflow_uri"] == "http://127.0.0.1:5000"
        per_run_gpus = sweep["resources"]["num_workers"] * sweep["resources"]["gpus_per_worker"]
        assert any(n["resources"]["GPU"] * n["max_workers"] >= per_run_gpus for n in gpus), name
        assert all(sweep["resources"]["cpus_per_worker"] * n["resources"]["GPU"] <= n["resources"]["CPU"]
                   for n in gpus), name


def test_every_node_runs_the_pinned_ami_and_setup_is_safe_to_repeat(cluster):
    """No node falls back to Ray's default AMI (Ubuntu 18.04, glibc 2.27: no manylinux_2_28 torch);
    `ray up` twice does not fail on an existing venv; git-ignored outputs stay local."""
    images = {n["node_config"].get("ImageId") for n in cluster["available_node_types"].values()}
    assert len(images) == 1 and images.pop().startswith("ami-")
    header = (REPO / "cluster.yaml").read_text().split("cluster_name:")[0]
    assert "Ubuntu 22.04" in header and "glibc" in header and "describe-images" in header
    setup = cluster["setup_commands"]
    assert any("GNU_LIBC_VERSION" in c for c in setup) and any("nfs-common" in c for c in setup)
    (venv,) = [c for c in setup if "uv venv" in c]
    assert venv.startswith("test -x ~/venv/bin/python ||")
    assert cluster["rsync_filter"] == [".gitignore"]
    assert not any("pgrep" in c for c in cluster["head_start_ray_commands"])  # it matched its own bash -c


def test_documented_commands_quote_every_tilde_after_the_double_dash():
    """`~` after `--` must reach the head unexpanded (README and cluster.yaml's header)."""
    import re

    for path in (REPO / "README.md", REPO / "cluster.yaml"):
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            command = line.lstrip("# ")
            if command.startswith(("ray submit", "ray job submit")) and " -- " in command:
                after = command.split(" -- ", 1)[1]
                assert not re.search(r"(^|\s)~", after), (path.name, line)


def test_a_config_path_typed_as_on_the_laptop_is_found_in_the_heads_checkout(tmp_path):
    """`ray submit` runs entry.py in the head's home: `-- train sweeps/demo.yaml` means ~/harness/sweeps/demo.yaml."""
    from harness import entry

    home, checkout = tmp_path / "home", tmp_path / "home" / "harness"
    (checkout / "sweeps").mkdir(parents=True)
    (checkout / "sweeps" / "demo.yaml").write_text("name: demo\n")
    argv = ["train", "sweeps/demo.yaml", "--set", "a=b.yaml", "--out", "/abs/out"]
    resolved, notes = entry.resolve_configs(argv, home, checkout)
    assert resolved == ["train", str(checkout / "sweeps" / "demo.yaml"), *argv[2:]]
    assert len(notes) == 1 and "sweeps/demo.yaml" in notes[0] and str(checkout) in notes[0]
    # A file of that name under the working directory wins; no checkout (a wheel install): unchanged.
    (home / "sweeps").mkdir()
    (home / "sweeps" / "demo.yaml").write_text("name: mine\n")
    assert entry.resolve_configs(argv, home, checkout) == (argv, [])
    assert entry.resolve_configs(["train", "sweeps/x.yaml"], tmp_path, None) == (["train", "sweeps/x.yaml"], [])
    assert entry.resolve_configs(["train", "sweeps/missing.yaml"], home, checkout)[0][1] == "sweeps/missing.yaml"


def test_the_launcher_tests_cluster_file_is_cluster_yaml_with_named_overrides(cluster):
    """tests/cluster_local.py builds the `local` provider file from cluster.yaml: it validates, keeps
    every command no override names, and fails when cluster.yaml drops a command it overrides."""
    from cluster_local import Head, head_ports, local_cluster, setup_overrides

    ports = iter(range(41000, 41100))
    head = Head(user="u", key=Path("/k"), ssh_port=2222, home=Path("/h"), ports=head_ports(lambda: next(ports)))
    local = local_cluster(cluster, head, Path("/venv"))
    jsonschema.validate(local, SCHEMA)
    assert local["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert "available_node_types" not in local and local["file_mounts"] == cluster["file_mounts"]
    assert "/mnt/efs" not in json.dumps(local) and "uv" not in " ".join(local["setup_commands"])
    overridden = setup_overrides(Path("/venv"))
    kept = [c for c in cluster["setup_commands"] if not any(key in c for key in overridden)]
    assert kept and all(c in local["setup_commands"] for c in kept)
    assert local["head_start_ray_commands"][0] == cluster["head_start_ray_commands"][0]  # ray stop, as the head's user
    assert "--port=6379" not in json.dumps(local) and "5000" not in json.dumps(local["head_start_ray_commands"])
    drifted = copy.deepcopy(cluster)
    drifted["setup_commands"] = [c for c in drifted["setup_commands"] if "mount -t nfs4" not in c]
    with pytest.raises(ValueError, match="no longer has the command"):
        local_cluster(drifted, head, Path("/venv"))


def test_entry_copied_next_to_the_checkout_imports_the_installed_harness(tmp_path):
    """`ray submit` puts entry.py in the head's home beside ~/harness (the synced checkout, whose
    top level has no __init__.py): run from there it must not import the checkout as a namespace package."""
    from harness import entry

    (tmp_path / "harness" / "harness").mkdir(parents=True)
    assert entry.unshadowed([str(tmp_path), "/lib"], str(tmp_path)) == ["/lib"]
    assert entry.unshadowed([str(REPO / "harness"), "/lib"], str(REPO / "harness")) == [str(REPO / "harness"), "/lib"]


@pytest.mark.slow
def test_entry_run_as_a_file_from_the_heads_home_imports_the_installed_harness(tmp_path):
    """The same, end to end: the file copied next to a checkout named harness runs (a subprocess)."""
    import shutil
    import subprocess
    import sys

    (tmp_path / "harness" / "harness").mkdir(parents=True)
    shutil.copy(REPO / "harness" / "entry.py", tmp_path / "entry.py")
    # As on the head: harness found by the install's finder, not by a PYTHONPATH entry (which would win).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(tmp_path / "entry.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "sweep" in done.stdout, done.stderr[-2000:]


def test_the_entry_keeps_a_traceback_when_signalled_and_nothing_when_it_ends_by_itself(tmp_path):
    """A `ray submit` command that dies on the head leaves its stack where the test's tail finds it."""
    import signal
    import subprocess
    import sys

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path)}
    start = "from harness import entry\npath = entry.record_faults()\nprint(path, flush=True)\n"
    quiet = subprocess.run([sys.executable, "-c", start], env=env, capture_output=True, text=True, check=True)
    assert not os.path.exists(quiet.stdout.strip()), "an ended command left its empty fault log"
    killed = subprocess.run([sys.executable, "-c", start + "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n"],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGTERM
    log = Path(killed.stdout.strip())
    assert log.parent == tmp_path / "entry-faults" and "line 5" in log.read_text(), log.read_text()
