"""What `harness demo` runs: every registered method, read from the method registry.

Each method declares its demo entries (``Method.demo``: partial ``method:`` sections), how many
training seeds its validation-selected entry gets (``demo_seeds``) and whether it builds on
another method's selected run (``demo_source``: WiSE-FT interpolates towards FLYP's). The plan
is rounds of ordinary sweeps over whole method sections in one output directory:

1. every entry of every method that needs no other run, at the config's seed;
2. then, from round 1's validation-selected runs (test sets never enter): one sweep per extra
   seed over the selected entries of the methods with ``demo_seeds`` > 1, and one sweep of
   the entries that take a ``source``.

Plain functions of configs and finished records; the driver runs the sweeps.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from harness import config as config_mod
from harness import methods
from harness.config import Config
from harness.report.stats import select_runs
from harness.results.tracking import Record


def _sweep_of(cfg: Config, sections: list[dict], seed: int | None = None) -> Config:
    tree = config_mod.to_tree(cfg)
    tree["search"] = {**tree["search"], "algorithm": "grid", "num_samples": 1, "space": {"method": {"grid": sections}}}
    return config_mod.from_dict({**tree, "seed": cfg.seed if seed is None else seed})


def _planned(only: Sequence[str] | None) -> list[type[methods.Method]]:
    return [m for m in methods.REGISTRY.values() if m.demo and (only is None or m.name in only)]


def first_round(cfg: Config, only: Sequence[str] | None = None) -> Config:
    """The sweep of the demo entries that need no other run, of every registered method (or of
    those named in ``only``)."""
    sections = [{"name": m.name, **entry} for m in _planned(only) if m.demo_source is None for entry in m.demo]
    if not sections:
        raise ValueError(f"the demo has nothing to run for methods {list(only or [])}: each needs another's run "
                         "or has no demo entries (`harness methods` lists them)")
    return _sweep_of(cfg, sections)


def selected(records: Sequence[Record]) -> dict[str, Record]:
    """Per method, the finished record the report would select (best validation objective)."""
    rows = pd.DataFrame([{"run_id": r.run_id, "method": r.cfg.method.name, "status": r.status,
                          "val_objective": (r.summary or {}).get("val_objective"),
                          "id_accuracy": (r.summary or {}).get("id_accuracy")} for r in records])
    by_id = {r.run_id: r for r in records}
    return {name: by_id[row["run_id"]] for name, row in select_runs(rows).items()} if len(rows) else {}


def later_rounds(cfg: Config, first: Sequence[Record], only: Sequence[str] | None = None) -> list[tuple[str, Config]]:
    """(what it adds, its sweep) after round 1: extra seeds of the selected entries, and the
    entries built on another method's selected run. Methods whose round-1 runs all failed get none."""
    chosen = selected(first)
    rounds = []
    planned = _planned(only)
    seeded = {m.name: m.demo_seeds for m in planned if m.demo_seeds > 1 and m.name in chosen}
    for extra in range(1, max(seeded.values(), default=1)):
        sections = [chosen[name].cfg.method.model_dump() for name, seeds in seeded.items() if extra < seeds]
        rounds.append((f"seed {cfg.seed + extra}", _sweep_of(cfg, sections, seed=cfg.seed + extra)))
    built = [{"name": m.name, **entry, "source": chosen[m.demo_source].run_id}
             for m in planned if m.demo_source in chosen for entry in m.demo]
    if built:
        rounds.append(("runs built on selected runs", _sweep_of(cfg, built)))
    return rounds
