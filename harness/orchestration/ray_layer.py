"""The Ray layer: a Ray Train worker around harness.train.runner, and the Tune driver (Ray 2.60, Train V2).

Only this module imports ray. Training logic lives in runner/engine; this file
maps Ray's context (rank, device, report, DDP) onto a RunContext, and a search
space onto Tune.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
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

from harness.train import checkpoint
from harness.orchestration import preflight
from harness.orchestration import ray_noise
from harness.orchestration.admission import (Admission, ClusterShape, NodeType, ResourceError, admit, progress,
                               workers_now)
from harness import config as config_mod
from harness.config import Config
from harness.train.engine import RunContext
from harness.train.prepare import Inputs
from harness.train.runner import FAILED, RESULT, RunPaths, evaluate_only, run, tune_metrics, write_json

log = logging.getLogger(__name__)


def _quiet_ray_noise() -> None:
    """Filter ray_noise.RAY_NOISE out of the worker output Ray prints on the driver (explained once each)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = next((handler for name, handler in dispatcher.handlers if name == "ray_print_logs"), None)
    if printer is None:  # log_to_driver off, or Ray changed: leave Ray's printing as it is
        return
    explained: set[str] = set()

    def filtered(data: dict) -> None:
        kept, notes = ray_noise.without_ray_noise(list(data.get("lines", [])), explained)
        for note in notes:
            print(note, file=sys.stderr)
        if kept:
            printer({**data, "lines": kept})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", filtered)


def init(address: str | None, num_cpus: int | None = None) -> None:
    """Join ``address`` (HOST:PORT, or ``auto``: the cluster registered on this machine) or,
    with None or ``local``, start a private local cluster (never joining another)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # 2.60 otherwise writes a token file
    # Train V2 reports through Tune when nested; keep the noisy per-iteration tables off.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    if address and address != "local":
        # Ray's own "auto" falls back to any Ray process it finds on the machine: resolve it ourselves.
        ray.init(address=preflight.registered_cluster() if address == "auto" else address,
                 logging_level=logging.WARNING, runtime_env=_forwarded_env())
    else:
        # A local cluster's nodes are never preempted: no watcher actor (and none of its warnings).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # address="local" always starts a private cluster: address=None would join whatever
        # cluster is registered on this machine (someone else's, or a dead one).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=200 * 1024 * 1024, runtime_env=_forwarded_env())
    _quiet_ray_noise()


def _forwarded_env() -> dict | None:
    """This process's embedding-cache override (`harness evaluate --cache`), for the job's workers:
    a joined cluster's workers do not inherit this process's environment."""
    override = os.environ.get("HARNESS_EMBED_CACHE")
    return {"env_vars": {"HARNESS_EMBED_CACHE": override}} if override else None


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


def worker_resources(cfg: Config) -> dict[str, float]:
    res = cfg.resources
    return {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}


def _autoscaler_status() -> dict | None:
    """The status the autoscaler (monitor) publishes in the GCS every few seconds, if any."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    return json.loads(raw) if raw else None


def _autoscaler_config(status: dict) -> dict | None:
    """The autoscaling config this cluster's monitor runs with: its --autoscaling-config, read on
    the head (where `ray submit` and Ray Jobs drivers run); None when not readable from here."""
    gcs = ray.get_runtime_context().gcs_address
    try:
        argv = Path(f"/proc/{int(status['monitor_pid'])}/cmdline").read_bytes().decode().split("\0")
    except (KeyError, ValueError, OSError):
        argv = []
    if f"--gcs-address={gcs}" in argv:  # the same cluster's monitor, not a reused pid
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--autoscaling-config=")), None)
    else:
        path = "~/ray_bootstrap_config.yaml"  # where `ray up` puts it on the head
    try:
        import yaml

        return yaml.safe_load(Path(path).expanduser().read_text()) if path else None
    except (OSError, ValueError):
        return None


def cluster_shape() -> ClusterShape:
    """The live nodes' resources, and the node types the autoscaler may still start."""
    from ray.autoscaler._private.util import format_readonly_node_type

    alive = [n for n in ray.nodes() if n["Alive"]]
    nodes = tuple({k: float(v) for k, v in n["Resources"].items()} for n in alive)
    status = _autoscaler_status() or {}
    report = status.get("autoscaler_report")
    if report is None:  # no v1 monitor report; autoscaler v2 may grow the cluster, limits unknown
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return ClusterShape(nodes, autoscaler=is_autoscaler_v2(fetch_from_server=True))
    if set(report.get("active_nodes") or {}) <= {format_readonly_node_type(n["NodeID"]) for n in alive}:
        return ClusterShape(nodes)  # Ray's read-only provider: started without --autoscaling-config, fixed
    running = dict(report.get("active_nodes") or {})
    for _, kind, _ in report.get("pending_nodes") or []:
        running[kind] = running.get(kind, 0) + 1
    for kind, count in (report.get("pending_launches") or {}).items():
        running[kind] = running.get(kind, 0) + count
    pending = tuple([f"{n} x {k} launching" for k, n in (report.get("pending_launches") or {}).items()]
                    + [f"{k} {status_} ({ip})" for ip, k, status_ in report.get("pending_nodes") or []]
                    + [f"{k} failed ({ip})" for ip, k in report.get("failed_nodes") or []])
    config = _autoscaler_config(status) or {}
    head = config.get("head_node_type")
    kinds = tuple(NodeType(name, {k: float(v) for k, v in spec["resources"].items()}, int(spec.get("max_workers", 0)),
                           running.get(name, 0))
                  for name, spec in (config.get("available_node_types") or {}).items()
                  if name != head and "resources" in spec)  # no resources given: the cloud fills them in, unknown here
    workers = sum(n for kind, n in running.items() if kind != head)
    return ClusterShape(nodes, autoscaler=True, node_types=kinds, max_workers=config.get("max_workers"),
                        workers_running=workers, pending=pending)


def check_fits(cfg: Config, log=print) -> Admission:
    """Admit a run of ``cfg`` or raise ResourceError: at once on a fixed cluster that does not hold
    it, and on an autoscaling one only when even its largest size is too small. An admitted run
    that must wait for nodes says what for, and asks the autoscaler for them now."""
    admission = admit(cluster_shape(), worker_resources(cfg), cfg.resources.num_workers)
    if admission.must_wait:
        log(f"admitted, waiting for nodes: {admission.waiting_for}")
        request_nodes(cfg, runs=1)  # the nodes start while data and weights are prepared
    return admission


def request_nodes(cfg: Config, runs: int) -> None:
    """Ask the autoscaler to hold ``runs`` runs of ``cfg`` (0: withdraw the request, so idle
    nodes can go). Overrides the previous request (one per cluster); the first request also
    withdraws it when this process exits, however the command ends."""
    from ray.autoscaler.sdk import request_resources

    global _withdraw_at_exit
    if runs and not _withdraw_at_exit:
        # Registered after ray.init's own exit hook, so it runs first, while still connected.
        atexit.register(lambda: ray.is_initialized() and request_resources(bundles=[]))
        _withdraw_at_exit = True
    request_resources(bundles=[worker_resources(cfg)] * (cfg.resources.num_workers * runs))


_withdraw_at_exit = False


def wait_for_nodes(cfg: Config, log=print, poll_s: float = 2.0, every_s: float = 15.0) -> None:
    """Block until the cluster holds one run of ``cfg``, printing progress while the autoscaler
    adds nodes; raise ResourceError after ``resources.node_wait_s``."""
    bundle, workers, started, said = worker_resources(cfg), cfg.resources.num_workers, time.monotonic(), ""
    last = -math.inf
    while True:
        shape = cluster_shape()
        if workers_now(shape, bundle) >= workers:
            if said:
                log(f"nodes ready after {time.monotonic() - started:.0f} s: {len(shape.nodes)} node(s)")
            return
        waited = time.monotonic() - started
        if waited > cfg.resources.node_wait_s:
            raise ResourceError(f"waited {waited:.0f} s (resources.node_wait_s) for the autoscaler to add nodes for "
                                f"{workers} worker(s) x {bundle}; the cluster now places {workers_now(shape, bundle)}. "
                                "Raise resources.node_wait_s, or see the autoscaler's log (`ray monitor cluster.yaml`)")
        line = progress(shape, bundle, workers, waited)
        if line.split(": ", 1)[1] != said.split(": ", 1)[-1] or time.monotonic() - last > every_s:
            log(line)
            said, last = line, time.monotonic()
        time.sleep(poll_s)


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
