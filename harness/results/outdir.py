"""An output directory belongs to one experiment definition.

The definition is the config minus what does not change which experiment it is (tracking,
resources) and minus the base values of the searched keys (a ``harness train --set
method.lam=0.1`` of a sweep over ``method.lam`` is a point of that sweep). The first train, sweep
or demo into ``--out`` writes it to ``experiment.json``; a later one with another definition
(a copied sweep file that kept ``name`` but changed lr, another space) is refused with what
differs, unless ``--append`` asks to keep both: then its runs are labelled (``d2``, ``d3``, ...)
in their sweep name, which the runs table, the report and MLflow show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import config as config_mod
from harness.config import Config
from harness.paths import write_text_atomic

DEFINITION_FILE = "experiment.json"


class OutDirTaken(ValueError):
    """``--out`` holds another experiment definition; the message says what differs and what to do."""


def run_id(cfg: Config) -> str:
    """A run's id, and its directory's name under runs/. Deterministic: the same science gives the
    same id, so a re-run replaces its rows."""
    return f"{cfg.name}-{cfg.method()}-{cfg.fingerprint()}"


def definition(cfg: Config) -> dict[str, Any]:
    """The parts of ``cfg`` that make it this experiment, as dotted keys (JSON values)."""
    tree = cfg.model_dump(mode="json", exclude={"tracking", "resources"})
    flat = config_mod.dotted(tree, whole=("search.space",))
    return {k: v for k, v in flat.items() if not config_mod.is_searched(k, cfg.search.space)}


def differences(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """``key: A there, B in this config`` for every key whose value differs."""
    missing = object()
    lines = []
    for key in sorted(set(there) | set(here)):
        a, b = there.get(key, missing), here.get(key, missing)
        if a != b:
            show = lambda v: "unset" if v is missing else json.dumps(v, sort_keys=True)  # noqa: E731
            lines.append(f"{key}: {show(a)} there, {show(b)} in this config")
    return lines


def _read(out: Path) -> list[dict]:
    path = Path(out) / DEFINITION_FILE
    return json.loads(path.read_text())["definitions"] if path.is_file() else []


def claim(out: Path, cfg: Config, append: bool = False) -> str:
    """Check (and record) that ``cfg`` belongs in ``out``; returns its label: ``""`` for the
    directory's first definition, ``d2``, ``d3``, ... for definitions added with ``append``.
    Raises OutDirTaken when ``out`` holds another definition and ``append`` is false."""
    mine = definition(cfg)
    known = _read(out)
    for entry in known:
        if entry["definition"] == mine:
            return entry["label"]
    if known and not append:
        first = known[0]
        diff = differences(first["definition"], mine)
        shown = "\n  ".join(diff[:12] + ([f"... and {len(diff) - 12} more"] if len(diff) > 12 else []))
        raise OutDirTaken(
            f"--out {out} holds the results of another experiment (name {first['definition'].get('name')!r}); "
            f"this config differs in:\n  {shown}\nRecording it there would mix two experiments in one report and "
            f"one MLflow experiment. Give it a new --out, or pass --append to keep both in {out} (this config's "
            f"runs are then labelled d{len(known) + 1})")
    label = f"d{len(known) + 1}" if known else ""
    known.append({"label": label, "definition": mine})
    write_text_atomic(Path(out) / DEFINITION_FILE, json.dumps({"definitions": known}, indent=1, sort_keys=True))
    return label
