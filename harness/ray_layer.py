"""The Ray layer: a Ray Train worker around harness.runner, and the Tune driver (Ray 2.60, Train V2).

Only this module imports ray. Training logic lives in runner/engine; this file
maps Ray's context (rank, device, report, DDP) onto a RunContext, and a search
space onto Tune.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from harness import config as config_mod
from harness.config import Config
from harness.engine import RunContext
from harness.prepare import Inputs
from harness.runner import RunPaths, run

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
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=200 * 1024 * 1024)


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


def _report(metrics: dict, checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def _train_worker(loop_config: dict) -> None:
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs every model build at INFO
    cfg = Config.model_validate(loop_config["cfg"])
    torch.set_num_threads(loop_config["threads"])
    context = ray.train.get_context()
    world_size = context.get_world_size()
    device = ray.train.torch.get_device()
    ctx = RunContext(
        rank=context.get_world_rank(),
        world_size=world_size,
        device=device,
        report=_report,
        prepare_model=ray.train.torch.prepare_model if world_size > 1 else (lambda m: m.to(device)),
        gather=_all_gather if world_size > 1 else None,
    )
    paths = RunPaths(Path(loop_config["data_root"]),
                     Path(loop_config["weights"]) if loop_config["weights"] else None,
                     Path(loop_config["run_dir"]))
    run(cfg, paths, ctx)


def fit(job: Job, under_tune: bool = False) -> dict:
    """One data-parallel Ray Train run; returns the run's result.json summary."""
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
                                               resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_id(job.cfg),
            storage_path=str(job.out / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[TuneReportCallback()] if under_tune else None,
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # our own progress lines suffice
        ),
    )
    trainer.fit()
    return json.loads((job.run_dir / "result.json").read_text())


def _tune_domain(space: config_mod.ParamSpace):
    if space.grid is not None:
        return tune.grid_search(space.grid)
    if space.choice is not None:
        return tune.choice(space.choice)
    if space.uniform is not None:
        return tune.uniform(*space.uniform)
    return tune.loguniform(*space.loguniform)


def _trial(params: dict, base: dict, inputs: Inputs, out: str) -> None:
    cfg = config_mod.from_dict(base, overrides=params)
    fit(Job(cfg, inputs, Path(out)), under_tune=True)


def max_concurrent(cfg: Config) -> int:
    per_trial = cfg.resources.num_workers * cfg.resources.cpus_per_worker
    available = int(ray.cluster_resources().get("CPU", 1))
    if per_trial > available:
        raise RuntimeError(f"a trial needs {per_trial} CPUs (resources.num_workers x cpus_per_worker) "
                           f"but the cluster has {available}: it would wait forever")
    fits = max(1, available // per_trial)
    return min(fits, cfg.resources.max_concurrent_trials or fits)


def sweep(cfg: Config, inputs: Inputs, out: Path) -> list[tuple[Config, dict | None, str | None]]:
    """Run the search; returns (trial config, summary or None, error or None) per trial."""
    base = cfg.model_dump(mode="json")
    space = {key: _tune_domain(spec) for key, spec in cfg.search.space.items()}
    trainable = tune.with_parameters(_trial, base=base, inputs=inputs, out=str(out))
    # The trial function only waits on its Train run, whose workers hold the CPUs; Ray
    # refuses an all-zero request, so it asks for a little memory, which every node has.
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 64 * 1024 * 1024})
    # grid and random both use Tune's default variant generator: grid_search entries are
    # enumerated, sampled domains drawn num_samples times.
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric, mode=cfg.search.mode, num_samples=cfg.search.num_samples,
            max_concurrent_trials=max_concurrent(cfg),
        ),
        # verbose=0: the runs print one line per epoch; Tune's 5-second status tables drown them.
        run_config=tune.RunConfig(name=f"{cfg.name}-sweep", storage_path=str(out / "ray"), verbose=0),
    )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        trial_cfg = config_mod.from_dict(base, overrides={k: result.config[k] for k in cfg.search.space})
        summary_path = Job(trial_cfg, inputs, out).run_dir / "result.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() and not result.error else None
        outcomes.append((trial_cfg, summary, repr(result.error) if result.error else None))
    return outcomes
