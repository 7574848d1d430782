"""Bad configs and arguments, through the real `harness` command: every user-facing subcommand
rejects them with exit code 2 and a message naming the field (or argument) and what is
allowed, before any compute is spent. Also: config values never reach a shell, and nothing
of ours binds every interface."""

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.scores import SCORES

ALLOWED_SCORES = ", ".join(sorted(SCORES))  # the registry's names, as the message lists them

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted((REPO / "harness").rglob("*.py"))
SMALL = {
    "name": "faults",
    "model": {"arch": "tiny-vit-32", "pretrained": None},
    "data": {"source": "synthetic", "synthetic_size": "small", "batch_size": 32},
    "schedule": {"epochs": 1, "warmup_steps": 2},
    "search": {"space": {"method": {"grid": [{"name": "flyp"}, {"name": "cma", "lam": 0.5}]}}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def env(tmp_path):
    """A harness cache of its own, so a test can tell whether any compute was spent."""
    cache = tmp_path / "cache"
    return {**os.environ, "HARNESS_CACHE": str(cache), "RAY_AUTH_MODE": "disabled"}


@pytest.fixture()
def config(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def harness(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_rejected(done: subprocess.CompletedProcess, env: dict, *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    for text in expected:
        assert text in done.stderr, (text, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    spent = list(Path(env["HARNESS_CACHE"]).glob("*")) if Path(env["HARNESS_CACHE"]).exists() else []
    assert not spent, f"compute was spent before the input was rejected: {spent}"


# (arguments, what the message must contain); {config}, {tmp} and {port} are filled in.
TRAIN_CASES = {
    "missing config": (["train", "{tmp}/nope.yaml"], ["config file not found: {tmp}/nope.yaml"]),
    "unknown key": (["train", "{config}", "--set", "method.name=cma", "--set", "method.lamb=1"],
                    ["method.lamb: method cma takes no parameter 'lamb' (cma takes: name, lam)"]),
    "another method's parameter": (["train", "{config}", "--set", "method.name=flyp", "--set", "method.lam=0.5"],
                                   ["method.lam: method flyp takes no parameter 'lam'"]),
    "old loss section": (["train", "{config}", "--set", "loss.lam=0.5"],
                         ["the loss: section is gone", "method: {{name: cma, lam: 0.5}}"]),
    "bad literal": (["train", "{config}", "--set", "model.precision=fp8"], ["model.precision", "'fp32'", "'bf16'"]),
    "unknown method": (["train", "{config}", "--set", "method.name=clip"], ["unknown method 'clip'", "flyp", "cma"]),
    "bad number": (["train", "{config}", "--set", "optim.lr=-1"], ["optim.lr: Input should be greater than 0"]),
    "zero workers": (["train", "{config}", "--workers", "0"], ["resources.num_workers"]),
    "unknown arch": (["train", "{config}", "--set", "model.arch=nope"],
                     ["model.arch: unknown model 'nope'", "tiny-vit-32", "ViT-B-16"]),
    "missing checkpoint": (["train", "{config}", "--set", "model.pretrained={tmp}/nope/model.pt"],
                           ["model.pretrained: checkpoint file not found: {tmp}/nope/model.pt"]),
    "unknown weights tag": (["train", "{config}", "--set", "model.pretrained=openai"],
                            ["model.pretrained: tiny-vit-32 has no pretrained tag 'openai'"]),
    "missing suite root": (["train", "{config}", "--set", "data.source=shards", "--set", "data.root={tmp}/suite"],
                           ["data.root: {tmp}/suite does not exist"]),
    "shards without root": (["train", "{config}", "--set", "data.source=shards"], ["data.root: required"]),
    "unknown synthetic set": (["train", "{config}", "--set", "data.ood_test=[near_ood, nope]"],
                              ["data.ood_test[1]: 'nope' is not a dataset", "allowed: pretrain, id_train"]),
    "unknown score": (["train", "{config}", "--set", "eval.scores=[mcm, bogus]", "--set",
                       "eval.selection_score=mcm"],
                      [f"eval.scores: unknown score(s) 'bogus' (allowed: {ALLOWED_SCORES})"]),
    "out is a file": (["train", "{config}", "--out", "{config}"], ["--out {config}: exists and is not a directory"]),
    "nobody at address": (["train", "{config}", "--address", "127.0.0.1:{port}"],
                          ["--address 127.0.0.1:{port}: no Ray cluster answers there"]),
    "malformed address": (["train", "{config}", "--address", "headnode"], ["--address 'headnode': expected HOST:PORT"]),
    "auto without a cluster": (["train", "{config}", "--address", "auto"], ["--address auto: no running Ray cluster"]),
    "file tracking store": (["train", "{config}", "--set", "tracking.mlflow_uri=./mlruns"],
                            ["tracking.mlflow_uri: './mlruns' has scheme 'none' (allowed: http, https, sqlite"]),
    "database password": (["train", "{config}", "--set", "tracking.mlflow_uri=postgresql://bob:hunter2@db/mlflow"],
                          ["tracking.mlflow_uri: a password in a postgresql URI"]),
    "shell in name": (["train", "{config}", "--set", "name=x; touch {tmp}/pwned"],
                      ["name: 'x; touch", "is not allowed"]),
    "empty search space": (["sweep", "{config}", "--set", "search.space={{}}"], ["search.space: empty"]),
    "demo override": (["demo", "--set", "schedule.epochs=-1"], ["schedule.epochs"]),
}
OTHER_CASES = {
    "report: missing dir": (["report", "{tmp}/nope"], ["results directory {tmp}/nope: does not exist"]),
    "report: unknown score": (["report", "{tmp}", "--score", "bogus"],
                              [f"--score: unknown score(s) 'bogus' (allowed: {ALLOWED_SCORES})"]),
    "report: unknown suite": (["report", "{tmp}", "--suite", "imagenet"],
                              ["--suite: unknown suite(s) 'imagenet' (allowed: synthetic, custom, mos, openood-v1.5)"]),
    "report: unknown method": (["report", "{tmp}", "--method", "lora"], ["--method: unknown method(s) 'lora' (allowed:", "cma"]),
    "demo: unknown method": (["demo", "--method", "lora"], ["--method: unknown method(s) 'lora' (allowed:", "cma"]),
    "report: no replicates": (["report", "{tmp}", "--n-boot", "0"], ["--n-boot must be >= 1, got 0"]),
    "report: output needed": (["report", "{tmp}", "{tmp}"], ["--output is required"]),
    "report: output under a file": (["report", "{tmp}", "--output", "{config}/report.md"],
                                    ["--output (its directory) {config}: exists and is not a directory"]),
    "report: nothing recorded": (["report", "{tmp}"], ["no runs recorded in {tmp}"]),
    "bench: unknown benchmark": (["bench", "--only", "gpus"], ["unknown benchmark(s) gpus; valid names: pipeline"]),
    "bench: out is a file": (["bench", "--out", "{config}"], ["--out {config}: exists and is not a directory"]),
    "sync: no results": (["sync-mlflow", "--out", "{tmp}/nope"], ["--out {tmp}/nope: no results/ directory"]),
    "sync: bad uri": (["sync-mlflow", "--out", "{tmp}", "--tracking-uri", "ftp://host/x"],
                      ["--tracking-uri: 'ftp://host/x' has scheme 'ftp'"]),
    "no subcommand": ([], ["required: COMMAND"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TRAIN_CASES) + list(OTHER_CASES))
def test_bad_input_is_rejected_before_any_compute(case, config, tmp_path, env):
    args, expected = {**TRAIN_CASES, **OTHER_CASES}[case]
    fill = {"config": config, "tmp": tmp_path, "port": free_port()}
    if case.startswith("sync: bad"):
        (tmp_path / "results").mkdir()
    done = harness([a.format(**fill) for a in args], env)
    assert_rejected(done, env, *(e.format(**fill) for e in expected))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_unknown_dataset_in_a_shard_root_is_named_with_those_present(world, config, env):
    done = harness(["train", str(config), "--set", "data.source=shards", "--set", f"data.root={world}",
                    "--set", "data.id_test=imagenet_val"], env)
    assert_rejected(done, env, f"data.id_test: dataset not found: {world}/imagenet_val/manifest.json",
                    "datasets in", "id_test, id_train")


@pytest.mark.slow
def test_a_run_that_cannot_fit_fails_before_data_or_weights_are_prepared(config, env):
    """Ray starts first, so asking for more CPUs than the cluster has costs seconds, not a pretraining."""
    started = time.perf_counter()
    done = harness(["train", str(config), "--workers", "64", "--set", "model.pretrained=synthetic"], env)
    assert_rejected(done, env, "a run needs 64 CPU (resources.num_workers=64 x 1 per worker)", "wait forever")
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_credentials_in_a_database_uri_are_not_echoed(config, env):
    done = harness(["train", str(config), "--set", "tracking.mlflow_uri=mysql://bob:hunter2@db/x"], env)
    assert done.returncode == 2 and "hunter2" not in done.stderr + done.stdout


# --- config values never reach a shell; nothing binds every interface ----------------------------

def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_shell_anywhere_in_the_package():
    found = []
    for path in SOURCES:
        for node, name in _calls(path):
            shell = any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                        for k in node.keywords)
            if shell or name in ("os.system", "os.popen", "eval", "exec", "subprocess.getoutput",
                                 "subprocess.getstatusoutput", "os.execl", "os.execlp", "os.spawnl"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
            if name.startswith("subprocess.") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {name} with a command string")
    assert not found, found


def test_every_torch_load_is_weights_only():
    loads = []
    for path in SOURCES:
        for node, name in _calls(path):
            if name == "torch.load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                loads.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert loads and all(safe for _, safe in loads), loads


def test_nothing_of_ours_listens_on_every_interface():
    """Our only listeners are Ray's (dashboard off for a local cluster) and the MLflow UI we
    suggest (its default host, 127.0.0.1). Ray 2.60's own gRPC servers bind all interfaces
    and offer no switch: see README, "When things go wrong"."""
    text = "\n".join(p.read_text() for p in SOURCES)
    assert "0.0.0.0" not in text and "'::'" not in text and '"::"' not in text
    assert "--host" not in text  # the printed `mlflow ui` command keeps MLflow's loopback default
    init = (REPO / "harness" / "orchestration" / "cluster.py").read_text()
    assert "include_dashboard=False" in init
