"""Which Ray cluster the harness runs on, and what it holds (Ray 2.60).

Starts a private local cluster or joins a given one (:func:`init`), reads the live nodes and
what the autoscaler may still add (:func:`cluster_shape`), admits a run against that shape
(harness.orchestration.admission decides) and asks the autoscaler for nodes, waiting for them.
Separate from the Train layer (ray_layer) and the Tune sweep (tune_sweep), which both use it:
nothing here runs training.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import ray

from harness.orchestration import preflight
from harness.orchestration import ray_noise
from harness.orchestration.admission import (Admission, ClusterShape, NodeType, ResourceError, admit, progress,
                               workers_now)
from harness.config import Config


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
