"""Entry point on a running Ray cluster: ``ray submit cluster.yaml harness/entry.py -- <harness args>``
or ``ray job submit --working-dir . -- python -m harness.entry <harness args>``.

The same commands as ``harness`` (harness.cli), with two differences that fit a cluster:
train/sweep/demo join the cluster that is already running (``--address auto``, unless
``--address`` is given) instead of starting a local one, and ``check-suite SUITE ROOT``
checks a data root against a benchmark suite's expected sample counts before hours of
GPU time are spent. Run as a file (``ray submit`` copies just this file to the head),
it imports the harness installed there by cluster.yaml's setup_commands.

Under ``ray job submit --working-dir``, the job runs in a temporary copy of that directory
which is deleted with the job: a relative ``--out`` (or the default ``runs/<name>``) would
lose the results, so the entry refuses it unless ``$HARNESS_RESULTS_ROOT`` (the cluster's
shared results root, /mnt/efs/runs in cluster.yaml) gives the default a lasting home.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

JOINS_CLUSTER = ("train", "sweep", "demo")


def unshadowed(path: list[str], script_dir: str) -> list[str]:
    """``sys.path`` without the directory this file was run from when that directory holds a
    ``harness`` folder that is not the package: `ray submit` copies this file to the head's home,
    next to the ~/harness checkout (cluster.yaml's file_mounts), and Python would import that
    checkout as an empty namespace package ahead of the installed harness."""
    folder = Path(script_dir) / "harness"
    if folder.is_dir() and not (folder / "__init__.py").is_file():
        return [entry for entry in path if Path(entry or ".").resolve() != Path(script_dir).resolve()]
    return path
RESULTS_ROOT = "HARNESS_RESULTS_ROOT"  # harness.cli's default --out root (not imported: this runs as a file)


def _check_suite(argv: list[str]) -> int:
    from harness import suites

    parser = argparse.ArgumentParser(prog="harness.entry check-suite",
                                     description="compare a data root with a suite's expected sample counts")
    parser.add_argument("suite", choices=sorted(suites.SUITES))
    parser.add_argument("root", help="data.root: one directory (shards + manifest.json) per dataset")
    parser.add_argument("--allow-count-mismatch", action="store_true",
                        help="report differing counts as warnings (a missing dataset stays an error)")
    args = parser.parse_args(argv)
    try:
        warnings = suites.check_counts(args.suite, args.root, args.allow_count_mismatch)
    except suites.SuiteError as err:
        print(f"check-suite: {err}", file=sys.stderr)
        return 2
    for line in warnings:
        print(f"check-suite: warning: {line}", file=sys.stderr)
    suite = suites.get(args.suite)
    print(f"{args.root} holds suite {suite.name} (version {suite.version}): "
          + ", ".join(f"{name} {count}" for name, count in (suite.id_test, *suite.ood_test)))
    return 0


def job_working_dir() -> str | None:
    """The temporary working directory of the Ray job this process is the driver of (the job
    supervisor passes the job's runtime_env in RAY_JOB_CONFIG_JSON_ENV_VAR), else None."""
    try:
        runtime_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None


def _out_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def check_job_out(argv: list[str]) -> str | None:
    """Why this command's output would vanish with the Ray job's working directory, or None."""
    workdir = job_working_dir()
    if workdir is None:
        return None
    out, root = _out_arg(argv), os.environ.get(RESULTS_ROOT)
    if out is not None and not Path(out).expanduser().is_absolute():
        return (f"--out {out}: relative, and this Ray job runs in a temporary copy of its --working-dir ({workdir}) "
                "that is deleted with the job; give an absolute path on shared storage, e.g. --out /mnt/efs/runs/NAME")
    if out is None and not (root and Path(root).expanduser().is_absolute()):
        return (f"no --out, and this Ray job runs in a temporary copy of its --working-dir ({workdir}) that is deleted "
                f"with the job: give --out /mnt/efs/runs/NAME (shared storage), or set {RESULTS_ROOT} to an absolute "
                "shared directory on the cluster (cluster.yaml sets /mnt/efs/runs)")
    return None


def resolve_configs(argv: list[str], cwd: Path, checkout: Path | None) -> tuple[list[str], list[str]]:
    """(argv, notes): each relative ``*.yaml`` argument that is not under ``cwd`` but is in the
    harness checkout installed here (``checkout``: ~/harness on the head) made absolute there.
    `ray submit` runs this file in the head's home, not in ~/harness, so ``sweeps/demo.yaml`` typed
    as on the laptop would not be found; an existing file under ``cwd`` still wins."""
    resolved, notes = list(argv), []
    for i, arg in enumerate(argv[1:], start=1):
        path = Path(arg)
        if (checkout is None or "=" in arg or path.suffix not in (".yaml", ".yml") or path.is_absolute()
                or arg.startswith("~") or (cwd / path).exists() or not (checkout / path).is_file()):
            continue
        resolved[i] = str(checkout / path)
        notes.append(f"{arg}: not in {cwd}, taken from the installed checkout: {resolved[i]}")
    return resolved, notes


def installed_checkout() -> Path | None:
    """The source tree of the installed harness when it is an editable install (cluster.yaml's
    ``pip install -e ~/harness``), else None."""
    import harness

    root = Path(harness.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def record_faults() -> Path:
    """Keep the tracebacks of every thread if this process crashes or is sent SIGTERM or SIGHUP (the
    ssh session `ray submit` runs it in, closed) in $HARNESS_CACHE/entry-faults/<pid>.log, a file
    that outlives the session's stderr; a command that ends by itself removes its empty file. A run
    that died on the head without a word is then explained (tests/test_cluster_launcher shows it)."""
    import atexit
    import faulthandler
    import signal

    from harness.paths import cache_dir

    path = cache_dir() / "entry-faults" / f"{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = path.open("w")
    faulthandler.enable(file=sink, all_threads=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        faulthandler.register(signum, file=sink, all_threads=True, chain=True)  # then the usual ending

    def tidy() -> None:
        faulthandler.disable()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            faulthandler.unregister(signum)
        sink.close()
        if path.stat().st_size == 0:
            path.unlink()

    atexit.register(tidy)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check-suite":
        return _check_suite(argv[1:])
    argv, notes = resolve_configs(argv, Path.cwd(), installed_checkout())
    for note in notes:
        print(f"harness.entry: {note}", flush=True)
    if argv and argv[0] in JOINS_CLUSTER:
        problem = check_job_out(argv)
        if problem:
            print(f"harness.entry {argv[0]}: {problem}", file=sys.stderr)
            return 2
        if job_working_dir() is not None:
            print(f"harness.entry {argv[0]}: Ray job; its results go to the output directory below, not to the "
                  f"job's working directory", flush=True)
    if argv and argv[0] in JOINS_CLUSTER and not any(a == "--address" or a.startswith("--address=") for a in argv):
        argv += ["--address", "auto"]
    from harness import cli

    try:
        return cli.main(argv)
    except ConnectionError as err:  # the cluster went away between preflight's lookup and ray.init
        print(f"harness.entry {argv[0]}: no Ray cluster to join ({err}); start one (ray up cluster.yaml) "
              "or pass --address HOST:PORT", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path[:] = unshadowed(sys.path, os.path.dirname(os.path.abspath(__file__)))
    try:
        record_faults()
    except OSError as err:  # an unwritable cache costs the record, never the command
        print(f"harness.entry: no fault log ({err})", file=sys.stderr)
    sys.exit(main())
