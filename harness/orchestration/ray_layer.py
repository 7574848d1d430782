"""The Ray Train layer: a Ray Train worker around harness.train.runner (Ray 2.60, Train V2).

Training logic lives in runner/engine; this file maps Ray's context (rank, device, report,
DDP) onto a RunContext and runs one data-parallel Train run (:func:`fit`, :func:`evaluate`,
:func:`fit_loop`). The cluster it runs on is harness.orchestration.cluster's; a sweep of
such runs is harness.orchestration.tune_sweep's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from harness.train import checkpoint
from harness.orchestration.cluster import cluster_shape, worker_resources
from harness.results.outdir import run_id
from harness.config import Config
from harness.train.engine import RunContext
from harness.train.prepare import Inputs
from harness.train.runner import FAILED, RESULT, RunPaths, evaluate_only, run, write_json

log = logging.getLogger(__name__)


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


def _worker_setup(loop_config: dict) -> tuple[Config, RunContext, RunPaths]:
    """A Train worker's config, context and paths from its loop config (see :func:`_trainer`)."""
    cfg = Config.model_validate(loop_config["cfg"])
    ctx = _worker_context(loop_config["threads"])
    paths = RunPaths(Path(loop_config["data_root"]),
                     Path(loop_config["weights"]) if loop_config["weights"] else None,
                     Path(loop_config["run_dir"]))
    _record_placement(paths.run_dir, ctx.rank)
    return cfg, ctx, paths


def _train_worker(loop_config: dict) -> None:
    cfg, ctx, paths = _worker_setup(loop_config)
    run(cfg, paths, ctx)


def _evaluate_worker(loop_config: dict) -> None:
    cfg, ctx, paths = _worker_setup(loop_config)
    evaluate_only(cfg, paths, ctx, extra=loop_config["extra"])


def _trainer(job: Job, worker: Callable[[dict], None], weights: Path | None, name: str,
             extra: dict | None = None, **run_config) -> TorchTrainer:
    """The Train run of ``job``: resources.num_workers workers running ``worker`` on ``weights``,
    restarted up to schedule.max_failures times; ``extra``: more loop-config entries,
    ``run_config``: more RunConfig fields (checkpoints, callbacks)."""
    res = job.cfg.resources
    _patient_worker_group(job.cfg)
    return TorchTrainer(
        worker,
        train_loop_config={"cfg": job.cfg.model_dump(mode="json"), "threads": res.cpus_per_worker,
                           "data_root": str(job.inputs.data_root), "weights": str(weights) if weights else None,
                           "run_dir": str(job.run_dir), **(extra or {})},
        scaling_config=ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                               resources_per_worker=worker_resources(job.cfg)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(job.out / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=job.cfg.schedule.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own progress lines suffice
            **run_config),
    )


def evaluate(job: Job, weights: Path | None, extra: dict) -> dict:
    """``harness evaluate --address``: the weights evaluated by resources.num_workers Ray Train
    workers, each encoding its share of every test set's shards (rank 0 scores and records);
    returns the run's result.json summary. ``weights`` must be readable where the workers run."""
    (job.run_dir / RESULT).unlink(missing_ok=True)  # an earlier evaluation's: the one read below is this one's
    _trainer(job, _evaluate_worker, weights, f"{run_id(job.cfg)}-evaluate", extra={"extra": extra}).fit()
    return json.loads((job.run_dir / RESULT).read_text())


class RunFailed(RuntimeError):
    """A run that stopped itself on bad data (harness.train.runner writes failed.json instead of
    raising, so Ray does not retry what would fail the same way); the message says why."""


def _failure(run_dir: Path) -> str | None:
    """The error of a run that stopped on bad data in its latest attempt, else None."""
    failed = run_dir / FAILED
    return json.loads(failed.read_text())["error"] if failed.is_file() else None


def fit(job: Job, under_tune: bool = False) -> dict:
    """One data-parallel Ray Train run; returns the run's result.json summary (its ``status``:
    finished or diverged). Raises RunFailed when the run stopped on bad data."""
    _trainer(job, _train_worker, job.inputs.weights, run_id(job.cfg),
             checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.cfg.schedule.keep_checkpoints),
             callbacks=[TuneReportCallback()] if under_tune else None).fit()
    error = _failure(job.run_dir)
    if error is not None:
        raise RunFailed(error)
    return json.loads((job.run_dir / RESULT).read_text())


def _patient_worker_group(cfg: Config) -> None:
    """On an autoscaling cluster a Train worker group waits up to resources.node_wait_s for its
    nodes (Train's own limit, 60 s, is shorter than a cloud node's start). Train V2 passes this
    variable from the process that calls fit() to its controller."""
    if cluster_shape().autoscaler:
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(max(60.0, cfg.resources.node_wait_s))


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
