"""The Ray layer: a Ray Train worker around harness.runner, and the Tune driver (Ray 2.60, Train V2).

Only this module imports ray. Training logic lives in runner/engine; this file
maps Ray's context (rank, device, report, DDP) onto a RunContext, and a search
space onto Tune.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from harness import checkpoint
from harness import config as config_mod
from harness.config import Config
from harness.engine import RunContext
from harness.prepare import Inputs
from harness.runner import FAILED, RESULT, RunPaths, run, tune_metrics, write_json

log = logging.getLogger(__name__)


def init(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (an existing cluster) or start a local one."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # 2.60 otherwise writes a token file
    # Train V2 reports through Tune when nested; keep the noisy per-iteration tables off.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # address="local" always starts a private cluster: address=None would join whatever
        # cluster is registered on this machine (someone else's, or a dead one).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=200 * 1024 * 1024)


def shutdown() -> None:
    """Stop the local cluster started by :func:`init` (or disconnect from a remote one)."""
    ray.shutdown()


def run_id(cfg: Config) -> str:
    """Deterministic: the same science gives the same id, so a re-run replaces its rows."""
    return f"{cfg.name}-{cfg.method()}-{cfg.fingerprint()}"


@dataclass(frozen=True)
class Job:
    """What one Ray Train run needs, in plain picklable values."""

    cfg: Config
    inputs: Inputs
    out: Path

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / run_id(self.cfg)


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed.nn.functional as dist_fn  # gradients flow back to each rank's part
    return torch.cat(dist_fn.all_gather(tensor))


def _all_gather_objects(obj: object) -> list:
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def _report(metrics: dict, checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def _restore(get_checkpoint: Callable = ray.train.get_checkpoint) -> dict | None:
    """The training state of the latest reported checkpoint, after Ray restarted the workers."""
    latest = get_checkpoint()
    if latest is None:
        return None
    with latest.as_directory() as directory:
        if not (Path(directory) / checkpoint.STATE_FILE).is_file():
            return None  # the final model checkpoint: nothing to resume
        return checkpoint.load(directory)


def _record_placement(run_dir: Path, rank: int) -> None:
    """Where each rank ran (node, host, pid), for the user and for placement tests."""
    where = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(),
             "hostname": socket.gethostname(), "pid": os.getpid()}
    write_json(run_dir / "workers" / f"rank{rank}.json", where)


def _worker_context(threads: int) -> RunContext:
    """This Train worker's RunContext (rank, device, DDP wrapping, all-gather, report, restore)."""
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs every model build at INFO
    torch.set_num_threads(threads)
    context = ray.train.get_context()
    world_size = context.get_world_size()
    device = ray.train.torch.get_device()
    return RunContext(
        rank=context.get_world_rank(),
        world_size=world_size,
        device=device,
        report=_report,
        prepare_model=ray.train.torch.prepare_model if world_size > 1 else (lambda m: m.to(device)),
        gather=_all_gather if world_size > 1 else None,
        restore=_restore,
        gather_objects=_all_gather_objects if world_size > 1 else None,
    )


def _train_worker(loop_config: dict) -> None:
    cfg = Config.model_validate(loop_config["cfg"])
    ctx = _worker_context(loop_config["threads"])
    paths = RunPaths(Path(loop_config["data_root"]),
                     Path(loop_config["weights"]) if loop_config["weights"] else None,
                     Path(loop_config["run_dir"]))
    _record_placement(paths.run_dir, ctx.rank)
    run(cfg, paths, ctx)


class RunFailed(RuntimeError):
    """A run that stopped itself on bad data (harness.runner writes failed.json instead of
    raising, so Ray does not retry what would fail the same way); the message says why."""


def _failure(run_dir: Path) -> str | None:
    """The error of a run that stopped on bad data in its latest attempt, else None."""
    failed = run_dir / FAILED
    return json.loads(failed.read_text())["error"] if failed.is_file() else None


def fit(job: Job, under_tune: bool = False) -> dict:
    """One data-parallel Ray Train run; returns the run's result.json summary (its ``status``:
    finished or diverged). Raises RunFailed when the run stopped on bad data."""
    res = job.cfg.resources
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "cfg": job.cfg.model_dump(mode="json"),
            "threads": res.cpus_per_worker,
            "data_root": str(job.inputs.data_root),
            "weights": str(job.inputs.weights) if job.inputs.weights else None,
            "run_dir": str(job.run_dir),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=worker_resources(job.cfg)),
        run_config=ray.train.RunConfig(
            name=run_id(job.cfg),
            storage_path=str(job.out / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.cfg.schedule.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=job.cfg.schedule.max_failures),
            callbacks=[TuneReportCallback()] if under_tune else None,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own progress lines suffice
        ),
    )
    trainer.fit()
    error = _failure(job.run_dir)
    if error is not None:
        raise RunFailed(error)
    return json.loads((job.run_dir / RESULT).read_text())


def _loop_worker(loop: Callable[[dict, RunContext], None], loop_config: dict) -> None:
    loop(loop_config, _worker_context(loop_config["threads"]))


def fit_loop(loop: Callable[[dict, RunContext], None], loop_config: dict, storage: Path, name: str,
             num_workers: int = 1, cpus_per_worker: int = 1, use_gpu: bool = False) -> None:
    """Run ``loop(loop_config, ctx)`` on ``num_workers`` Ray Train workers, each with the
    RunContext a harness run gets (its rank, device, DDP wrapping, all-gather, report) and
    ``cpus_per_worker`` torch threads. ``loop`` must be importable (a module-level function);
    what it measures travels back in files it writes (a Train result carries no metrics
    unless a checkpoint was reported). For benchmarks and custom loops."""
    resources = {"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    TorchTrainer(
        functools.partial(_loop_worker, loop),
        train_loop_config={**loop_config, "threads": cpus_per_worker},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage),
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    ).fit()


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
    """Whether sweep trials run in the Tune trial (ASHA, one worker) rather than as Train runs."""
    return cfg.search.scheduler == "asha" and cfg.resources.num_workers == 1


class ResourceError(RuntimeError):
    """A run that asks for more than the cluster has: failing beats waiting forever."""


class SweepInterrupted(RuntimeError):
    """Tune stopped early on SIGINT (Ctrl-C) and saved its state; ``outcomes`` are the
    trials that had ended. Re-running the same command resumes the sweep."""

    def __init__(self, path: Path, outcomes: list):
        super().__init__(f"sweep interrupted; its state is saved in {path}: run the same command again to "
                         "resume it (ended trials are kept, the others start or continue)")
        self.outcomes = outcomes


def worker_resources(cfg: Config) -> dict[str, float]:
    res = cfg.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}


def check_fits(cfg: Config) -> int:
    """How many runs of ``cfg`` fit on the cluster at once; raises when not even one can,
    since Ray would otherwise wait forever for resources that never come."""
    total = ray.cluster_resources()
    fits = None
    for name, per_worker in worker_resources(cfg).items():
        need = per_worker * cfg.resources.num_workers
        have = total.get(name, 0.0)
        if need > have:
            raise ResourceError(f"a run needs {need:g} {name} (resources.num_workers={cfg.resources.num_workers} x "
                               f"{per_worker:g} per worker) but the cluster has {have:g}: it would wait forever")
        fits = min(fits or 10**9, int(have // need))
    return max(1, fits or 1)


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


def sweep_concurrency(cfg: Config) -> int:
    """Trials at once. With ASHA one run's worth of resources stays free: a Train run that
    ASHA stops can hold its workers a while, and with no spare room the next trial's worker
    group times out (ray issue 54305, seen on 2-CPU machines)."""
    fits = check_fits(cfg)
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


def sweep(cfg: Config, inputs: Inputs, out: Path, log=print) -> list[tuple[Config, dict | None, str, str | None]]:
    """Run (or resume) the search; returns (trial config, summary, status, error) per trial.

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
    if tune.Tuner.can_restore(str(path)):
        log(f"resuming sweep {path.name}: finished trials are kept")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={key: _tune_domain(spec) for key, spec in cfg.search.space.items()},
            tune_config=tune.TuneConfig(
                metric=cfg.search.metric, mode=cfg.search.mode, num_samples=cfg.search.num_samples,
                max_concurrent_trials=sweep_concurrency(cfg), search_alg=_search_alg(cfg),
                scheduler=_scheduler(cfg),
                # An in-process trial in a fresh actor pays ~6 s of imports (torch, open_clip) first.
                reuse_actors=in_process),
            # verbose=0: the runs print one line per epoch; Tune's 5-second status tables drown them.
            run_config=tune.RunConfig(
                name=path.name, storage_path=str(out / "ray"), verbose=0,
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
