"""Views of a validated Config: its plain tree and YAML, dotted keys (MLflow params, Parquet
columns, an experiment's identity), its searched values and a run's short label."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from harness.config import Config


def to_tree(cfg: Config) -> dict:
    """The config as a plain tree that overrides apply to: its method section as written (name and the
    parameters off their defaults), so that a search may swap ``method.name``."""
    from harness import methods

    return {**cfg.model_dump(mode="json"), "method": methods.minimal(cfg.method)}


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def dotted(tree: dict, whole: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted-key view of a nested mapping: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping and
    a key in ``whole`` (e.g. ``search.space``, compared as one value) stay single values."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node and prefix not in whole:
            for key, value in node.items():
                walk(f"{prefix}.{key}", value)
        else:
            out[prefix] = node

    for key, value in tree.items():
        walk(str(key), value)
    return out


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted-key view of the config (for MLflow params and Parquet columns): lists and mappings as JSON."""
    flat = dotted(cfg.model_dump(mode="json", exclude={"search"}))
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()}


# What a run's label names besides its method when nothing is searched (e.g. `harness train`).
LABEL_KEYS = ("method.lam", "optim.lr")


def _short_number(value: Any) -> str:
    """2e-4 rather than 0.0002 (below 0.01 or from 1e5 on, when shorter), else the plain spelling."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    plain = f"{value:g}"
    mantissa, _, exponent = f"{value:.2e}".partition("e")
    scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    small_or_large = value != 0 and not 1e-2 <= abs(value) < 1e5
    return scientific if small_or_large and len(scientific) < len(plain) else plain


def is_searched(dotted: str, space: dict) -> bool:
    """``dotted`` is a searched key or lies in a searched section (``method.lam`` when ``method`` is searched)."""
    return any(dotted == key or dotted.startswith(f"{key}.") for key in space)


def searched_values(cfg: Config) -> dict[str, Any]:
    """This config's value of every searched leaf key (a searched section gives each of its leaves)."""
    return {key: value for key, value in flatten(cfg).items() if is_searched(key, cfg.search.space)}


def run_label(cfg: Config) -> str:
    """A run's short name for people: its method and searched values, ``cma lam=0.01 lr=2e-4``
    (the last part of each dotted key); ``zero-shot`` for the untrained baseline."""
    method = cfg.method()
    if method == "zero-shot":
        return method
    flat = flatten(cfg)
    values = searched_values(cfg) if cfg.search.space else {k: flat[k] for k in LABEL_KEYS if k in flat}
    values.pop("method.name", None)  # the label's first word already
    return " ".join([method] + [f"{key.rsplit('.', 1)[-1]}={_short_number(value)}" for key, value in values.items()])
