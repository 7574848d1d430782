"""The Ray Tune sweep: a search space onto Tune, one trial per run (Ray 2.60).

A trial is a Train run (harness.orchestration.ray_layer.fit) or, with one worker under ASHA or
resources.trial_runner=tune, the run inside the trial itself (:func:`trials_in_process`).
Also how many trials run at once, resuming an interrupted sweep, each trial's outcome, and
the Tune callback that feeds live MLflow logging. Separate from the Train layer: ray_layer
runs one run, this chooses and schedules many; it builds on ray_layer (the runs) and cluster
(the nodes), and neither imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from pathlib import Path

import ray
import torch
from ray import tune

from harness.orchestration.admission import Admission, ResourceError, admit
from harness.orchestration.cluster import cluster_shape, request_nodes, wait_for_nodes, worker_resources
from harness.orchestration.ray_layer import Job, RunFailed, _failure, _restore, fit, run_id
from harness import config as config_mod
from harness.config import Config
from harness.train.engine import RunContext
from harness.train.prepare import Inputs
from harness.train.runner import RESULT, RunPaths, run, tune_metrics


def _tune_domain(space: config_mod.ParamSpace):
    if space.grid is not None:
        return tune.grid_search(space.grid)
    if space.choice is not None:
        return tune.choice(space.choice)
    if space.uniform is not None:
        return tune.uniform(*space.uniform)
    return tune.loguniform(*space.loguniform)


def _already_done(job: Job) -> bool:
    """A trial whose run wrote its results before the sweep was interrupted (so Tune had
    not marked it ended) is reported again from those results rather than re-run."""
    done = job.run_dir / RESULT
    if not done.is_file():
        return False
    tune.report(tune_metrics(json.loads(done.read_text())))
    return True


def _trial(params: dict, base: dict, inputs: Inputs, out: str) -> None:
    job = Job(config_mod.from_dict(base, overrides=params), inputs, Path(out))
    if not _already_done(job):
        fit(job, under_tune=True)


def _tune_report(metrics: dict, checkpoint_dir: str | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def _trial_in_process(params: dict, base: dict, inputs: Inputs, out: str) -> None:
    """A single-worker trial run inside the Tune trial itself, no Train worker group.

    Used under ASHA: when ASHA stops a Train V2 trial, its worker group can keep its
    placement group while the next trial's group waits for it and times out (ray issue
    54305; seen here even with a run's worth of CPUs kept spare). Stopping a plain
    function trial frees its resources at once. Checkpoints and restarts go through
    Tune (tune.report / tune.get_checkpoint, FailureConfig on the sweep).
    """
    cfg = config_mod.from_dict(base, overrides=params)
    job = Job(cfg, inputs, Path(out))
    if _already_done(job):
        return
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(cfg.resources.cpus_per_worker)
    device = torch.device("cuda" if cfg.resources.use_gpu and torch.cuda.is_available() else "cpu")
    ctx = RunContext(device=device, report=_tune_report, prepare_model=lambda m: m.to(device),
                     restore=functools.partial(_restore, tune.get_checkpoint))
    run(cfg, RunPaths(inputs.data_root, inputs.weights, job.run_dir), ctx)


def trials_in_process(cfg: Config) -> bool:
    """Whether sweep trials run in the Tune trial rather than as Train runs: one worker, under ASHA
    or when resources.trial_runner asks for it (a demo of many short trials on a small machine)."""
    return cfg.resources.num_workers == 1 and (cfg.search.scheduler == "asha" or cfg.resources.trial_runner == "tune")


class SweepInterrupted(RuntimeError):
    """Tune stopped early on SIGINT (Ctrl-C) and saved its state; ``outcomes`` are the
    trials that had ended. Re-running the same command resumes the sweep."""

    def __init__(self, path: Path, outcomes: list):
        super().__init__(f"sweep interrupted; its state is saved in {path}: run the same command again to "
                         "resume it (ended trials are kept, the others start or continue)")
        self.outcomes = outcomes


def _search_alg(cfg: Config):
    if cfg.search.algorithm != "optuna":
        return None  # Tune's variant generator: grid_search enumerated, domains sampled num_samples times
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=cfg.search.metric, mode=cfg.search.mode, seed=cfg.seed)


def _scheduler(cfg: Config):
    if cfg.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # A run reports once per epoch, then once more with its test results: max_t counts that
    # last report too, or ASHA would stop every trial just before it writes its results.
    return ASHAScheduler(time_attr="training_iteration", max_t=max(1, cfg.schedule.epochs) + 1,
                         grace_period=cfg.search.grace_period, reduction_factor=cfg.search.reduction_factor)


def sweep_concurrency(cfg: Config, admission: Admission | None = None) -> int:
    """Trials at once: as many runs as the cluster holds, on an autoscaling cluster as many as it
    can ever hold (the others queue for the nodes it adds; unknown limits: today's), never more
    than the sweep has. With ASHA one run's worth of resources stays free: a Train run that
    ASHA stops can hold its workers a while, and with no spare room the next trial's worker
    group times out (ray issue 54305, seen on 2-CPU machines)."""
    admission = admission or admit(cluster_shape(), worker_resources(cfg), cfg.resources.num_workers)
    fits = min(admission.runs_ever or max(1, admission.runs_now), expected_trials(cfg))
    if cfg.search.scheduler == "asha" and not trials_in_process(cfg):
        if fits < 2:
            raise ResourceError("search.scheduler=asha needs room for two runs at once (one kept spare); "
                                f"this cluster fits {fits}: add resources or use scheduler=none")
        fits -= 1
    return min(fits, cfg.resources.max_concurrent_trials or fits)


def expected_trials(cfg: Config) -> int:
    """Trials in a complete sweep: Tune's variant generator runs every grid point
    num_samples times; a searcher (Optuna, no grids) runs num_samples trials."""
    grid_points = math.prod(len(spec.grid) for spec in cfg.search.space.values() if spec.grid is not None)
    return cfg.search.num_samples * grid_points


def sweep_name(cfg: Config) -> str:
    """Same config, same name: a re-run restores the sweep instead of starting another."""
    digest = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
    return f"{cfg.name}-sweep-{digest}"


def _outcome(run_dir: Path, error: Exception | None) -> tuple[dict | None, str, str | None]:
    """(summary, status, error) of one ended trial, from Tune's error and the run's own files."""
    if error is not None:
        return None, "failed", repr(error)
    failure = _failure(run_dir)  # an in-process trial that stopped on bad data
    if failure is not None:
        return None, "failed", repr(RunFailed(failure))
    summary_path = run_dir / RESULT
    if not summary_path.is_file():
        return None, "stopped", None
    summary = json.loads(summary_path.read_text())
    return summary, summary.get("status", "finished"), summary.get("error")


# What Tune adds to every result: not the run's own metrics.
_TUNE_KEYS = frozenset(ray.tune.result.AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}


class _LiveTracking(tune.Callback):
    """Feeds a tracker (harness.results.tracking.Live) from Tune's trial events, in the driver process:
    a run starts, ends an epoch (a result carrying ``epoch``), ends or fails."""

    def __init__(self, tracker, cfg: Config, inputs: Inputs, out: Path):
        self.tracker, self.base, self.space = tracker, config_mod.to_tree(cfg), list(cfg.search.space)
        self.inputs, self.out = inputs, out

    def __getstate__(self) -> dict:
        # Tune pickles its RunConfig, callbacks included, with the sweep's state; the tracker
        # (an MLflow client) stays behind, and a resumed sweep is given a new one.
        return {**self.__dict__, "tracker": None}

    def _job(self, trial) -> Job:
        cfg = config_mod.from_dict(self.base, overrides={k: trial.config[k] for k in self.space})
        return Job(cfg, self.inputs, self.out)

    def on_trial_start(self, iteration, trials, trial, **info):
        job = self._job(trial)
        self.tracker.start(run_id(job.cfg), job.cfg)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result and "train_loss" in result:
            self.tracker.epoch(run_id(self._job(trial).cfg), {k: v for k, v in result.items() if k not in _TUNE_KEYS})

    def on_trial_complete(self, iteration, trials, trial, **info):
        job = self._job(trial)
        summary, status, _ = _outcome(job.run_dir, None)
        self.tracker.end(run_id(job.cfg), summary, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.tracker.end(run_id(self._job(trial).cfg), None, "failed")


def sweep(cfg: Config, inputs: Inputs, out: Path, log=print,
          tracker=None) -> list[tuple[Config, dict | None, str, str | None]]:
    """Run (or resume) the search; returns (trial config, summary, status, error) per trial.
    ``tracker`` (harness.results.tracking.Live, optional) is told of each trial as it starts, ends an
    epoch and ends.

    status is finished, stopped (early, by ASHA), diverged (non-finite loss: reported to Tune
    like any ended trial, not an error of the sweep) or failed. An interrupted sweep with the
    same config resumes: finished and diverged trials are not run again.
    """
    base = config_mod.to_tree(cfg)
    in_process = trials_in_process(cfg)
    trainable = tune.with_parameters(_trial_in_process if in_process else _trial, base=base, inputs=inputs,
                                     out=str(out))
    if in_process:
        res = cfg.resources
        trainable = tune.with_resources(trainable, {"cpu": res.cpus_per_worker,
                                                    "gpu": res.gpus_per_worker if res.use_gpu else 0})
    else:
        # The trial function only waits on its Train run, whose workers hold the CPUs; Ray
        # refuses an all-zero request, so it asks for a little memory, which every node has.
        trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 64 * 1024 * 1024})
    path = out / "ray" / sweep_name(cfg)
    callbacks = [_LiveTracking(tracker, cfg, inputs, out)] if tracker is not None else []
    admission = admit(cluster_shape(), worker_resources(cfg), cfg.resources.num_workers)
    concurrency = sweep_concurrency(cfg, admission)
    if admission.autoscaling:  # nodes for every trial that may run at once; the rest queue
        request_nodes(cfg, runs=concurrency)
    try:
        if admission.autoscaling:
            wait_for_nodes(cfg, log=log)
        return _run_tuner(cfg, inputs, out, path, trainable, concurrency, in_process, callbacks, log)
    finally:
        if admission.autoscaling:
            request_nodes(cfg, runs=0)


def _run_tuner(cfg: Config, inputs: Inputs, out: Path, path: Path, trainable, concurrency: int, in_process: bool,
               callbacks: list, log) -> list[tuple[Config, dict | None, str, str | None]]:
    base = config_mod.to_tree(cfg)  # as the trials built theirs (a search may swap method.name)
    if tune.Tuner.can_restore(str(path)):
        log(f"resuming sweep {path.name}: finished trials are kept")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        # A restored Tuner runs with the RunConfig it saved, whose callback lost its tracker.
        tuner._local_tuner.get_run_config().callbacks = callbacks or []
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: _tune_domain(spec) for key, spec in cfg.search.space.items()},
            tune_config=tune.TuneConfig(
                metric=cfg.search.metric, mode=cfg.search.mode, num_samples=cfg.search.num_samples,
                max_concurrent_trials=concurrency, search_alg=_search_alg(cfg),
                scheduler=_scheduler(cfg),
                # An in-process trial in a fresh actor pays ~6 s of imports (torch, open_clip) first.
                reuse_actors=in_process),
            # verbose=0: the runs print one line per epoch; Tune's 5-second status tables drown them.
            run_config=tune.RunConfig(
                name=path.name, storage_path=str(out / "ray"), verbose=0, callbacks=callbacks,
                # Train runs restart their own workers (FailureConfig in fit); in-process trials restart here.
                failure_config=tune.FailureConfig(max_failures=cfg.schedule.max_failures if in_process else 0)),
        )
    outcomes, grid = [], tuner.fit()
    # Tune returns normally after Ctrl-C, having stopped the running trials (they read as
    # terminated) and never created the pending ones: so count the trials.
    interrupted = len(grid) < expected_trials(cfg)
    for result in grid:
        trial_cfg = config_mod.from_dict(base, overrides={k: result.config[k] for k in cfg.search.space})
        outcome = _outcome(Job(trial_cfg, inputs, out).run_dir, result.error)
        interrupted |= outcome[1] == "stopped" and cfg.search.scheduler == "none"  # nothing else stops a trial
        outcomes.append((trial_cfg, *outcome))
    if interrupted:
        raise SweepInterrupted(path, [o for o in outcomes if o[2] != "stopped" or o[1] is not None])
    return outcomes
