"""Admission (harness.orchestration.admission) on hand-worked cluster shapes: fixed clusters refuse at once,
autoscaling ones admit what their node types and max_workers can ever hold; and --space."""

from pathlib import Path

import pytest

from harness import config as config_mod
from harness.orchestration.admission import ClusterShape, NodeType, ResourceError, admit, per_node, workers_ever, workers_now

CPU1 = {"CPU": 1.0}
GPU = {"CPU": 12.0, "GPU": 1.0}
HEAD = {"CPU": 4.0, "GPU": 0.0}
A10G = NodeType("gpu_a10g", {"CPU": 48.0, "GPU": 4.0}, max_workers=4)
A100 = NodeType("gpu_a100", {"CPU": 96.0, "GPU": 8.0}, max_workers=0)


def test_per_node_counts_the_scarcest_resource():
    assert per_node({"CPU": 48, "GPU": 4}, GPU) == 4  # GPUs bound it, not the 48 CPUs
    assert per_node({"CPU": 40, "GPU": 4}, GPU) == 3  # 40 CPUs / 12
    assert per_node(HEAD, GPU) == 0
    assert per_node({"CPU": 0.9999999999}, CPU1) == 1  # float noise in Ray's totals


def test_fixed_cluster_refuses_at_once_naming_what_it_has():
    shape = ClusterShape(nodes=({"CPU": 2.0},))
    with pytest.raises(ResourceError, match=r"a run needs 64 CPU \(resources.num_workers=64 x 1 per worker\) "
                                            r"but the cluster has 2 .*wait forever"):
        admit(shape, CPU1, 64)
    assert admit(shape, CPU1, 1).runs_now == 2 and not admit(shape, CPU1, 1).must_wait


def test_fixed_cluster_checks_each_worker_fits_on_one_node():
    """4 CPUs in total, but no node holds a 3-CPU worker."""
    shape = ClusterShape(nodes=({"CPU": 2.0}, {"CPU": 2.0}))
    with pytest.raises(ResourceError, match="each on one node"):
        admit(shape, {"CPU": 3.0}, 1)


def test_cluster_yaml_shape_admits_the_paper_run_before_any_gpu_node_exists():
    """cluster.yaml: a 0-GPU head, gpu_a10g up to 4 nodes: 8 workers x 1 GPU waits for 2 nodes."""
    shape = ClusterShape(nodes=(HEAD,), autoscaler=True, node_types=(A10G, A100), max_workers=4)
    adm = admit(shape, GPU, 8)
    assert adm.must_wait and adm.runs_now == 0 and adm.runs_ever == 2  # 16 GPUs ever / 8 per run
    assert "8 worker(s) x {12 CPU, 1 GPU}" in adm.waiting_for and "autoscaler can add" in adm.waiting_for


def test_autoscaling_refuses_only_what_even_the_largest_cluster_cannot_hold():
    shape = ClusterShape(nodes=(HEAD,), autoscaler=True, node_types=(A10G, A100), max_workers=4)
    with pytest.raises(ResourceError, match=r"holds at most 16 even with every node.*gpu_a10g \(4 per node, "
                                            r"max_workers 4\).*cluster max_workers 4"):
        admit(shape, GPU, 17)


def test_the_cluster_wide_cap_and_running_nodes_limit_growth():
    kinds = (NodeType("small", {"CPU": 1.0}, 3, running=1), NodeType("big", {"CPU": 4.0}, 2))
    # max_workers 3, one small already up: 2 more nodes, the big ones first: 1 (head) + 1 + 2 x 4
    shape = ClusterShape(nodes=({"CPU": 1.0}, {"CPU": 1.0}), autoscaler=True, node_types=kinds, max_workers=3,
                         workers_running=1)
    assert workers_now(shape, CPU1) == 2 and workers_ever(shape, CPU1) == 10


def test_an_autoscaler_with_unreadable_node_types_admits_and_lets_the_wait_decide():
    shape = ClusterShape(nodes=(HEAD,), autoscaler=True)
    adm = admit(shape, GPU, 8)
    assert adm.must_wait and adm.runs_ever is None and "not readable" in adm.waiting_for


@pytest.mark.parametrize("text, key, spec", [
    ("method.lam=grid:0.001,0.01,0.1", "method.lam", {"grid": [0.001, 0.01, 0.1]}),
    ("optim.lr=loguniform:1e-5,1e-3", "optim.lr", {"loguniform": (1e-5, 1e-3)}),
    ("optim.lr=uniform:0.1,0.2", "optim.lr", {"uniform": (0.1, 0.2)}),
    ("seed=choice:1,2", "seed", {"choice": [1, 2]}),
    ("method.lam={grid: [0.1, 0.5]}", "method.lam", {"grid": [0.1, 0.5]}),
])
def test_space_on_the_command_line_equals_the_file_form(text, key, spec):
    cma = {"method": {"name": "cma"}}  # the method that takes lam
    cfg = config_mod.from_dict(config_mod.apply_space(cma, dict([config_mod.parse_space(text)])))
    from_file = config_mod.from_dict({**cma, "search": {"space": {key: {k: list(v) for k, v in spec.items()}}}})
    assert cfg.search.space == from_file.search.space
    assert getattr(cfg.search.space[key], next(iter(spec))) == spec[next(iter(spec))]


@pytest.mark.parametrize("text, message", [
    ("method.lam=grd:0,1", "--space method.lam: 'grd:0,1' has no known form (allowed: grid:"),
    ("method.lam", "--space expects dotted.key=FORM:v1,v2,..."),
    ("method.lamm=grid:0,1", "method.lamm: method cma takes no parameter 'lamm'"),
    ("optim.lr=uniform:1,2,3", "search.space.optim.lr.uniform: Tuple should have at most 2 items"),
    ("method.lam={grid: [0, 1]", "--space method.lam: cannot parse"),
])
def test_bad_space_names_the_key(text, message):
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(None, ["method.name=cma"], space=[text])
    assert message in str(err.value)


def test_space_adds_to_the_files_space_and_replaces_its_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("method: {name: cma}\nsearch:\n  space:\n    method.lam: {grid: [0.1, 1]}\n    optim.lr: {grid: [0.1]}\n")
    cfg = config_mod.load(path, [], space=["method.lam=grid:0.5"])
    assert cfg.search.space["method.lam"].grid == [0.5] and cfg.search.space["optim.lr"].grid == [0.1]


def test_a_bad_space_on_the_command_line_exits_2_naming_the_key(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "sweeps/demo.yaml", "--space",
                           "method.lam=grd:0,1", "--out", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2 and "--space method.lam: 'grd:0,1' has no known form" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "cache").exists()
