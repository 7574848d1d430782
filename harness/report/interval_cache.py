"""Bootstrap intervals computed once per input: within a report and across reports.

A report bootstraps the same score arrays several times: a selected run's (run, score)
interval, then that run again in every paired comparison it enters (zero-shot and FLYP are
the baseline of most). And a warm re-render (same samples, another --out or a second
`harness report`) would bootstrap everything again. So:

- in this process, the replicates of one (ID scores, OoD sets, n_boot, seed) are computed
  once and shared by its own interval and by every paired difference that uses the same
  arrays (uncertainty.paired resamples both sides with the same draws, so a side's
  replicates do not depend on the other side);
- on disk (``$HARNESS_CACHE/intervals``), each result is kept under a digest of exactly
  what it was computed from: the score bytes, the OoD set names, n_boot, seed, level and
  this module's FORMAT. Any changed sample, size, set or setting is another digest, so a
  stale interval can never be returned; a hit is the float64 values written, bit-identical.

The arithmetic is uncertainty's own (replicates, _with_average, _estimates, intervals_of,
difference_intervals; aligned_pair checks a pair), so a
cached or shared interval equals uncertainty.bootstrap / uncertainty.paired exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from harness.paths import cache_dir, write_text_atomic
from harness.report import uncertainty
from harness.report.uncertainty import Interval

FORMAT = 1  # bump when uncertainty's definitions change: older entries then never match


def default_root() -> Path:
    return cache_dir() / "intervals"


def _side_digest(id_scores, ood_sets: Mapping[str, object]) -> str:
    """Digest of one method's arrays: ID scores, then each OoD set's name and scores, in order
    (order matters: the resample indices address positions)."""
    h = hashlib.sha256()
    for name, values in [("", id_scores), *ood_sets.items()]:
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
        h.update(f"{name}\0{arr.size}\0".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _encode(found: dict[str, dict[str, Interval]]) -> str:
    # json writes floats with repr, which round-trips float64 exactly
    return json.dumps({d: {m: [iv.estimate, iv.low, iv.high] for m, iv in by.items()} for d, by in found.items()})


def _decode(text: str) -> dict[str, dict[str, Interval]]:
    return {d: {m: Interval(*v) for m, v in by.items()} for d, by in json.loads(text).items()}


class Bootstraps:
    """uncertainty.bootstrap / uncertainty.paired, each input computed once (see the module docstring).

    ``root=None`` keeps nothing on disk. ``computed`` lists what was actually resampled, as
    ("bootstrap" | "paired", digest) in order, and ``replicated`` counts replicate sets drawn:
    tests read both to check that a hit computes nothing and a change recomputes.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.computed: list[tuple[str, str]] = []
        self.replicated = 0
        self._reps: dict[str, dict[str, dict[str, np.ndarray]]] = {}

    def _replicates(self, side: str, id_scores, ood_sets: Mapping[str, object], n_boot: int, seed: int):
        key = f"{side}:{n_boot}:{seed}"
        if key not in self._reps:
            self._reps[key] = uncertainty._with_average(uncertainty.replicates(id_scores, ood_sets, n_boot, seed))
            self.replicated += 1
        return self._reps[key]

    def _stored(self, kind: str, key: str):
        path = self.root / kind / f"{key}.json" if self.root is not None else None
        if path is not None and path.is_file():
            try:
                return path, _decode(path.read_text())
            except (ValueError, TypeError):  # a torn or foreign file: recompute and overwrite it
                pass
        return path, None

    def _lookup(self, kind: str, *parts) -> tuple[Path | None, dict | None]:
        """(where the result of ``kind`` over ``parts`` is kept, the result when it is there); a miss
        is recorded in ``computed``."""
        key = hashlib.sha256(":".join(str(p) for p in (FORMAT, kind, *parts)).encode()).hexdigest()
        path, found = self._stored(kind, key)
        if found is None:
            self.computed.append((kind, key))
        return path, found

    def _keep(self, path: Path | None, found) -> None:
        if path is not None:
            write_text_atomic(path, _encode(found))

    def bootstrap(self, id_scores, ood_sets: Mapping[str, object], n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, dict[str, Interval]]:
        side = _side_digest(id_scores, ood_sets)
        path, found = self._lookup("bootstrap", side, n_boot, seed, level)
        if found is not None:
            return found
        reps = self._replicates(side, id_scores, ood_sets, n_boot, seed)
        found = uncertainty.intervals_of(reps, uncertainty._estimates(id_scores, ood_sets), level)
        self._keep(path, found)
        return found

    def paired(self, a: tuple[object, Mapping[str, object]], b: tuple[object, Mapping[str, object]],
               n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, Interval]]:
        (id_a, sets_a), (id_b, _) = a, b
        sets_b = uncertainty.aligned_pair(a, b)
        side_a, side_b = _side_digest(id_a, sets_a), _side_digest(id_b, sets_b)
        path, found = self._lookup("paired", side_a, side_b, n_boot, seed, level)
        if found is not None:
            return found
        reps_a = self._replicates(side_a, id_a, sets_a, n_boot, seed)
        reps_b = self._replicates(side_b, id_b, sets_b, n_boot, seed)
        found = uncertainty.difference_intervals(reps_a, reps_b, uncertainty._estimates(id_a, sets_a),
                                                 uncertainty._estimates(id_b, sets_b), level)
        self._keep(path, found)
        return found
