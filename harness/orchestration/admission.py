"""Admission: can a run's workers ever be placed on this cluster, and how many runs at once?

Plain logic over a :class:`ClusterShape` (what the cluster holds now, and what its
autoscaler may add), so it is tested without Ray; harness.orchestration.cluster reads the shape from
Ray. A worker is one bundle (e.g. ``{"CPU": 8, "GPU": 1}``) that must fit on one node.

- A fixed cluster (no autoscaler): a run that does not fit now never will, so it is
  refused at once (the message names the field and what the cluster has).
- An autoscaling cluster: a run is admitted when the nodes that exist plus the nodes the
  autoscaler may still add (each node type's ``max_workers``, capped by the cluster's)
  hold it; the driver then waits for the nodes, with progress, up to
  ``resources.node_wait_s``. Refused at once only when even the largest cluster is too small.
- An autoscaler whose node types cannot be read (the driver is not on the head): admitted,
  and the wait decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class ResourceError(RuntimeError):
    """A run that asks for more than the cluster has or can grow to: failing beats waiting forever."""


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node type: what one node holds, and how many more of it may start."""

    name: str
    resources: dict[str, float]
    max_workers: int
    running: int = 0  # active, pending and being launched


@dataclass(frozen=True)
class ClusterShape:
    """The live nodes' total resources, and the autoscaler's node types (None: no autoscaler).

    ``node_types`` is None on a fixed cluster; an empty tuple with ``autoscaler`` True means an
    autoscaler runs but its node types could not be read. ``max_workers`` is the cluster-wide cap
    on worker nodes (None: no cap beyond each type's); ``workers_running`` counts worker nodes
    up or coming up."""

    nodes: tuple[dict[str, float], ...]
    autoscaler: bool = False
    node_types: tuple[NodeType, ...] = ()
    max_workers: int | None = None
    workers_running: int = 0
    pending: tuple[str, ...] = field(default=())  # "2 x gpu_a10g launching": what the autoscaler is doing

    @property
    def limits_known(self) -> bool:
        return not self.autoscaler or bool(self.node_types)


def per_node(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many ``bundle``s one node with these total resources holds."""
    counts = [math.floor(node.get(name, 0.0) / need + 1e-9) for name, need in bundle.items() if need > 0]
    return min(counts) if counts else 0


def workers_now(shape: ClusterShape, bundle: dict[str, float]) -> int:
    """Workers the live nodes hold (by their totals: what runs there now frees up later)."""
    return sum(per_node(node, bundle) for node in shape.nodes)


def workers_ever(shape: ClusterShape, bundle: dict[str, float]) -> int | None:
    """Workers the cluster holds at its largest: the live nodes plus every node the autoscaler
    may still start (largest holders first, within the cluster-wide cap). None: unknown."""
    if not shape.limits_known:
        return None
    total = workers_now(shape, bundle)
    room = math.inf if shape.max_workers is None else max(0, shape.max_workers - shape.workers_running)
    for kind in sorted(shape.node_types, key=lambda t: -per_node(t.resources, bundle)):
        more = min(max(0, kind.max_workers - kind.running), room)
        total += more * per_node(kind.resources, bundle)
        room -= more
    return total


@dataclass(frozen=True)
class Admission:
    """How many runs fit now and at most (None: unknown), and what the run waits for."""

    runs_now: int
    runs_ever: int | None
    waiting_for: str = ""
    autoscaling: bool = False

    @property
    def must_wait(self) -> bool:
        return self.runs_now < 1


def _describe(bundle: dict[str, float], num_workers: int) -> str:
    each = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
    return f"{num_workers} worker(s) x {{{each}}}"


def _totals(shape: ClusterShape) -> dict[str, float]:
    out: dict[str, float] = {}
    for node in shape.nodes:
        for name, value in node.items():
            out[name] = out.get(name, 0.0) + value
    return out


def _refusal(shape: ClusterShape, bundle: dict[str, float], num_workers: int) -> ResourceError:
    have = _totals(shape)
    for name, per_worker in bundle.items():
        need = per_worker * num_workers
        if need > have.get(name, 0.0):
            return ResourceError(
                f"a run needs {need:g} {name} (resources.num_workers={num_workers} x {per_worker:g} per worker) "
                f"but the cluster has {have.get(name, 0.0):g} and no autoscaler to add nodes: it would wait forever")
    return ResourceError(
        f"a run needs {_describe(bundle, num_workers)}, each on one node, but the cluster's "
        f"{len(shape.nodes)} node(s) hold only {workers_now(shape, bundle)} such worker(s) and no autoscaler "
        "can add nodes: it would wait forever (lower resources.cpus_per_worker / gpus_per_worker)")


def admit(shape: ClusterShape, bundle: dict[str, float], num_workers: int) -> Admission:
    """Admit a run of ``num_workers`` x ``bundle`` or raise :class:`ResourceError` with why not."""
    now = workers_now(shape, bundle) // num_workers
    if not shape.autoscaler:
        if now < 1:
            raise _refusal(shape, bundle, num_workers)
        return Admission(now, now)
    ever_workers = workers_ever(shape, bundle)
    ever = None if ever_workers is None else ever_workers // num_workers
    if ever is not None and ever < 1:
        kinds = ", ".join(f"{t.name} ({per_node(t.resources, bundle)} per node, max_workers {t.max_workers})"
                          for t in shape.node_types)
        raise ResourceError(
            f"a run needs {_describe(bundle, num_workers)}, each on one node, but this cluster holds at most "
            f"{ever_workers} even with every node its autoscaler may add ({kinds}"
            f"{'' if shape.max_workers is None else f'; cluster max_workers {shape.max_workers}'}): "
            "it would wait forever (raise max_workers in the cluster config or lower resources.num_workers)")
    waiting = "" if now >= 1 else (
        f"{_describe(bundle, num_workers)}: the cluster holds {workers_now(shape, bundle)} now; "
        + ("the autoscaler can add the rest" if ever is not None else
           "an autoscaler runs but its node types are not readable from here, so only waiting tells"))
    return Admission(now, ever, waiting, autoscaling=True)


def progress(shape: ClusterShape, bundle: dict[str, float], num_workers: int, waited_s: float) -> str:
    """One line while waiting for nodes: what is up, what the autoscaler is doing."""
    doing = "; ".join(shape.pending) or "no launch reported yet"
    return (f"waiting for nodes ({waited_s:.0f} s): {workers_now(shape, bundle)}/{num_workers} worker(s) placeable "
            f"on {len(shape.nodes)} node(s); autoscaler: {doing}")
