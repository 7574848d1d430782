"""What the commands do: prepare inputs, run through Ray, record results, track, report.

The driver is the single writer of Parquet and MLflow; runs only write their own
run directories. Ray's modules are imported by the functions that start Ray: `harness evaluate`
in this process and `harness report` import none of them (~0.8 s here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from harness import config as config_mod
from harness.orchestration import demo as demo_plan
from harness import report, results
from harness.train import prepare
from harness.train import runner
from harness.results import deferred, tracking
from harness.results.outdir import run_id
from harness.config import Config
from harness.train.engine import RunContext


class Timer:
    """Named wall-clock stages, printed as they finish, so a user sees where time goes."""

    def __init__(self, log=print):
        self.stages: list[tuple[str, float]] = []
        self.log = log

    @contextmanager
    def stage(self, name: str):
        self.log(f"==> {name} ...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.stages.append((name, elapsed))
        self.log(f"==> {name}: {elapsed:.1f} s")

    def table(self) -> str:
        total = sum(t for _, t in self.stages)
        lines = ["| stage | seconds | share |", "|---|---|---|"]
        lines += [f"| {name} | {sec:.1f} | {100 * sec / total:.0f}% |" for name, sec in self.stages]
        return "\n".join(lines + [f"| total | {total:.1f} | 100% |"])


def results_dir(out: Path) -> Path:
    return out / "results"


def _record(out: Path, sweep: str, cfg: Config, summary: dict | None, error: str | None,
            status: str | None = None) -> tracking.Record:
    rid = run_id(cfg)
    # A run that ended early on its own (diverged) says so in its summary, with the reason.
    status = status or ((summary.get("status") or "finished") if summary else "failed")
    error = error or (summary or {}).get("error")
    results.record_run(results_dir(out), rid, sweep, cfg, summary, status, error, run_dir=out / "runs" / rid)
    return tracking.Record(rid, cfg, summary, status, ended_at=time.time())


def baseline_config(cfg: Config) -> Config:
    """The zero-shot baseline of ``cfg``: validated, and without the search space (not searched, and
    it may name the searched method's parameters), so its recorded config loads again, e.g. for
    `harness evaluate` of its run directory. Its run id is the one any zero-shot run of ``cfg`` gets."""
    tree = config_mod.to_tree(cfg)
    return config_mod.from_dict({**tree, "method": {"name": "zero-shot"}, "search": {**tree["search"], "space": {}}})


def zero_shot(cfg: Config, inputs: prepare.Inputs, out: Path, sweep: str,
              live: tracking.Live | None = None) -> tracking.Record:
    """Evaluate the starting weights without training, in this process (no Ray needed)."""
    base = baseline_config(cfg)
    paths = runner.RunPaths(inputs.data_root, inputs.weights, out / "runs" / run_id(base))
    done = paths.run_dir / "result.json"
    if done.is_file():  # a resumed or repeated sweep: the same config gave these numbers already
        print(f"zero-shot baseline: reusing {done}")
        return _record(out, sweep, base, json.loads(done.read_text()), None)
    if live:
        live.start(run_id(base), base)
    summary = runner.run(base, paths, RunContext())
    record = _record(out, sweep, base, summary, None)
    if live:
        live.end(record.run_id, summary, record.status)
    if record.status != "finished":  # bad evaluation data: every trial would fail the same way, after training
        raise RuntimeError(f"zero-shot baseline {record.run_id} {record.status}: {summary.get('error')}")
    return record


def _start_ray(cfg: Config, address: str | None, timer: Timer):
    # Before data or weights are prepared: a run that can never fit fails in seconds; one that
    # waits for an autoscaler's nodes has them asked for now, and they start meanwhile.
    from harness.orchestration import cluster

    with timer.stage("start Ray"):
        cluster.init(address)
        return cluster.check_fits(cfg, log=timer.log)


def train(cfg: Config, out: Path, address: str | None, timer: Timer, live: tracking.Live | None = None,
          name: str | None = None) -> list[tracking.Record]:
    """One Ray Train run. ``live``: its MLflow run is created when training starts and closed
    when it ends (its epochs are logged then: a Train run reports to no callback here)."""
    from harness.orchestration import cluster, ray_layer

    admission = _start_ray(cfg, address, timer)
    with timer.stage("prepare data and starting weights"):
        inputs = prepare.prepare_inputs(cfg, log=timer.log)
    if admission.must_wait:
        with timer.stage("wait for the autoscaler's nodes"):
            cluster.wait_for_nodes(cfg, log=timer.log)
    with timer.stage(f"train + evaluate {run_id(cfg)}"):
        if live:
            live.start(run_id(cfg), cfg)
        try:
            summary, error = ray_layer.fit(ray_layer.Job(cfg, inputs, out)), None
        except Exception as err:  # recorded as a failed run, then re-raised for the exit code
            summary, error = None, repr(err)
        record = _record(out, name or cfg.name, cfg, summary, error)
        if live:
            live.end(record.run_id, summary, record.status)
        if error:
            raise RuntimeError(f"run {record.run_id} failed: {error}")
    return [record]


def sweep(cfg: Config, out: Path, address: str | None, timer: Timer, live: tracking.Live | None = None,
          name: str | None = None) -> list[tracking.Record]:
    """Zero-shot baseline + the Tune search; ``live`` logs each run to MLflow as it happens.
    ``name``: the sweep's name in the tables (default ``<cfg.name>-sweep``)."""
    name = name or f"{cfg.name}-sweep"
    if not cfg.search.space:
        raise ValueError("search.space is empty: nothing to sweep (use `harness train` for one run)")
    inputs, baseline = _sweep_start(cfg, out, address, timer, live, name)
    return [baseline] + _tune(cfg, inputs, out, name, timer, live, f"Ray Tune sweep over {', '.join(cfg.search.space)}")


def demo(cfg: Config, out: Path, address: str | None, timer: Timer, live: tracking.Live | None = None,
         name: str | None = None, only: Sequence[str] | None = None) -> list[tracking.Record]:
    """Every registered method (or those in ``only``) on ``cfg``'s data (harness.orchestration.demo has the plan):
    the zero-shot baseline, round 1's sweep, then the sweeps that build on round 1's selected runs."""
    name = name or f"{cfg.name}-sweep"
    first = demo_plan.first_round(cfg, only)
    inputs, baseline = _sweep_start(first, out, address, timer, live, name)
    records = [baseline] + _tune(first, inputs, out, name, timer, live, "Ray Tune sweep: every method")
    for what, later in demo_plan.later_rounds(cfg, records, only):
        records += _tune(later, inputs, out, name, timer, live, f"Ray Tune sweep: {what}")
    return records


def _sweep_start(cfg: Config, out: Path, address: str | None, timer: Timer, live: tracking.Live | None,
                 name: str) -> tuple[prepare.Inputs, tracking.Record]:
    _start_ray(cfg, address, timer)  # tune_sweep.sweep asks for (and waits for) the trials' nodes
    with timer.stage("prepare data and starting weights"):
        inputs = prepare.prepare_inputs(cfg, log=timer.log)
    with timer.stage("zero-shot baseline"):
        return inputs, zero_shot(cfg, inputs, out, name, live)


def _tune(cfg: Config, inputs: prepare.Inputs, out: Path, name: str, timer: Timer, live: tracking.Live | None,
          stage: str) -> list[tracking.Record]:
    """One Tune search of ``cfg.search``, each trial recorded as it is returned."""
    from harness.orchestration import tune_sweep

    with timer.stage(stage):
        try:
            outcomes = tune_sweep.sweep(cfg, inputs, out, log=timer.log, tracker=live)
        except tune_sweep.SweepInterrupted as stop:  # keep what ended, then let the caller exit
            for trial_cfg, summary, status, error in stop.outcomes:
                if summary is not None:
                    _record(out, name, trial_cfg, summary, error, status)
            raise
        return [_record(out, name, trial_cfg, summary, error, status) for trial_cfg, summary, status, error in outcomes]


def finish(cfg: Config, out: Path, name: str, records: list[tracking.Record], timer: Timer,
           notes: str = "", live: tracking.Live | None = None) -> tuple[Path, str, bool]:
    """Report from Parquet (with each run's own section in runs/<run_id>/report.md), then log
    everything to MLflow: the report on the sweep's run, each section on its run's.
    Returns (the report, the tracking URI, whether MLflow got everything: if not, one
    warning was printed and the sweep waits for `harness sync-mlflow`)."""
    with timer.stage("report"):
        md = report.write(results_dir(out), out / "report.md", title=f"{name}: OoD detection report", notes=notes,
                          run_sections=out / "runs")
    with timer.stage("log to MLflow"):
        artifacts = [md] + sorted(md.parent.glob(f"{md.stem}-*.png"))
        sections = {r.run_id: [out / "runs" / r.run_id / "report.md"] for r in records}
        uri, synced = deferred.log_or_defer(cfg, out, name, records, artifacts, run_artifacts=sections, live=live)
    return md, uri, synced


def sync_mlflow(out: Path, uri: str | None = None, log=print) -> int:
    """Log the sweeps that MLflow missed (deferred.pending) from the Parquet tables and run
    directories, to ``uri`` or each sweep's own store; returns how many are still pending.
    A synced sweep leaves the list; each sync logs a new parent run (nothing is deleted)."""
    entries = deferred.pending(out)
    if not entries:
        log(f"nothing to sync: no sweep of {out} waits for MLflow")
        return 0
    runs = results.read(results_dir(out), results.RUNS)
    for done, entry in enumerate(entries.values()):
        name = entry["name"]
        records = [_stored_record(out, runs, rid) for rid in entry["run_ids"]]
        target, synced = deferred.log_or_defer(
            Config.model_validate(entry["config"]), out, name, records, [Path(p) for p in entry["artifacts"]],
            {rid: [Path(p) for p in paths] for rid, paths in entry["run_artifacts"].items()},
            uri=uri or entry["tracking_uri"], entry_id=entry["entry_id"])
        if not synced:  # warned once; the others would fail the same way
            return len(entries) - done
        log(f"synced {name}: {len(records)} run(s) to {target}")
    return 0


def _stored_record(out: Path, runs, run_id: str) -> tracking.Record:
    """A run as MLflow logs it, rebuilt from its Parquet row and its run directory's summary."""
    rows = runs[runs["run_id"] == run_id] if not runs.empty else runs
    if rows.empty:
        raise ValueError(f"run {run_id} waits for MLflow but has no row in {results_dir(out) / 'runs'}")
    row = rows.iloc[-1]
    summary_file = out / "runs" / run_id / "result.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() and row["status"] != "failed" else None
    ended = pd.Timestamp(row["finished_at"]).timestamp() if isinstance(row.get("finished_at"), str) else None
    return tracking.Record(run_id, Config.model_validate_json(row["config_json"]), summary, row["status"], ended)
