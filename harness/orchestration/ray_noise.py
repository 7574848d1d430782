"""Ray's own warnings that ask nothing of the user on the harness's clusters, and why they
appear: the Ray layer hides them from the worker output Ray prints on the driver, after
explaining each kind once (plain code: no Ray import)."""

from __future__ import annotations

import re

# Ray's own warnings that ask nothing of the user on these clusters: the first of each kind is
# replaced by one line saying why it appears; the rest (and their tracebacks) are dropped.
RAY_NOISE = {
    "Failed to query Ray Train Controller actor state":
        "Ray Train's PlacementGroupCleaner polls the State API, which needs the Ray dashboard; local "
        "clusters run without it (no listener), so it warns each poll. Harmless: it only frees the "
        "placement group of a crashed Train controller",
    "PreemptionWatcher":
        "Ray Train's watch for preempted (spot) nodes could not poll; harmless on nodes that are never preempted",
    "PlacementGroupCleaner":
        "Ray Train's helper that frees a crashed run's placement group; its start and stop are internal",
    "Failed to send resource request":
        "Ray Train asks an autoscaler for its workers' resources; a fixed cluster has none to ask and a busy "
        "CPU times the request out. Harmless: the run waits for resources as usual",
    "worker processes have been started on node":
        "Ray started more Python workers at once than it expects (a busy machine, or many trials); harmless",
}
# Ray's log monitor sometimes splits a warning across two records (seen: "Failed to query Ray Tra" /
# "in Controller actor state. State API may be ..."): the head is matched as a prefix of a key (at
# least _MIN_HEAD characters, so short lines stay), the tail by these fragments of the same warning.
_TAILS = {"State API may be temporarily unavailable": "Failed to query Ray Train Controller actor state"}
_MIN_HEAD = 16
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")


def _kind(line: str) -> str | None:
    """The RAY_NOISE key ``line`` belongs to, whole or split, else None."""
    hit = next((key for key in RAY_NOISE if key in line), None)
    if hit is None:
        hit = next((key for tail, key in _TAILS.items() if tail in line), None)
    head = line.strip()
    if hit is None and len(head) >= _MIN_HEAD:
        hit = next((key for key in RAY_NOISE if key.startswith(head)), None)
    return hit


def without_ray_noise(lines: list[str], explained: set[str]) -> tuple[list[str], list[str]]:
    """(the lines that are not RAY_NOISE, one explanation per kind not yet in ``explained``, which
    it updates). A dropped warning's traceback lines (indented, or ``Traceback``) go with it."""
    kept, notes, dropping = [], [], False
    for line in lines:
        hit = _kind(line)
        if hit is None and dropping and (line[:1].isspace() or line.startswith("Traceback")
                                         or _EXCEPTION_LINE.match(line)):
            continue
        dropping = hit is not None
        if hit is None:
            kept.append(line)
        elif hit not in explained:
            explained.add(hit)
            notes.append(f"harness: Ray warns \"{hit} ...\" (shown once, then hidden): {RAY_NOISE[hit]}")
    return kept, notes


