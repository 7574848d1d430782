"""Loose input at the edge: ``--set`` and ``--space`` text, the edits they make to a config's plain
tree before it is validated (harness.config turns the result into a Config), and the messages
that name a bad key when it is not valid.

Every failure is a :class:`ConfigError` naming the option or key and what is allowed.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config file or override that cannot be turned into a valid Config."""



def parse_override(text: str) -> tuple[str, Any]:
    """``"method.lam=0.1"`` -> ``("method.lam", 0.1)``; the value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    return key.strip(), value


SPACE_FORMS = ("grid", "choice", "uniform", "loguniform")


def _scalar(text: str) -> Any:
    """A YAML scalar, with 1e-4 read as a number (YAML 1.1 would keep it a string)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_space(text: str) -> tuple[str, Any]:
    """One ``--space`` entry: ``"optim.lr=loguniform:1e-5,1e-3"`` (FORM:v1,v2,...) or a YAML mapping,
    ``'optim.lr={loguniform: [1e-5, 1e-3]}'``, -> ``("optim.lr", {"loguniform": [1e-5, 1e-3]})``.
    The key may hold dots (it is a config key); the result is validated like search.space in a file."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ConfigError(f"--space expects dotted.key=FORM:v1,v2,... (FORM: {', '.join(SPACE_FORMS)}) "
                          f"or dotted.key={{FORM: [...]}}, got {text!r}")
    if raw.startswith("{"):
        try:
            spec = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--space {key}: cannot parse {raw!r} as a YAML mapping: {err}") from None
        return key, spec
    form, colon, values = raw.partition(":")
    if not colon or form.strip() not in SPACE_FORMS:
        raise ConfigError(f"--space {key}: {raw!r} has no known form (allowed: grid:v1,v2,..., choice:v1,v2,..., "
                          "uniform:low,high, loguniform:low,high, or a YAML mapping such as {grid: [0, 0.1]})")
    return key, {form.strip(): [_scalar(v) for v in values.split(",")]}


def apply_space(tree: dict, space: dict[str, Any]) -> dict:
    """``tree`` with these search.space entries added (an entry of the same key is replaced)."""
    if not space:
        return tree
    tree = copy.deepcopy(tree)
    search = tree.setdefault("search", {})
    if not isinstance(search, dict) or not isinstance(search.get("space") or {}, dict):
        raise ConfigError("--space: the config's search / search.space is not a mapping")
    search["space"] = {**(search.get("space") or {}), **space}
    return tree


def apply_overrides(tree: dict, overrides: dict[str, Any]) -> dict:
    """Return a copy of ``tree`` with dotted keys set; unknown keys are left for validation to name."""
    tree = copy.deepcopy(tree)
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
            node = child
        node[leaf] = value
    return tree


def describe(err: ValidationError, root: type[BaseModel]) -> str:
    """A validation error of ``root`` (the Config) as lines naming each bad key and, for an unknown
    one, the keys its section allows."""
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_allowed_hint(root, item['loc'])}")
        elif item["type"] == "value_error" and key in ("<top>", "method"):  # the message names its own key
            lines.append(item["msg"].removeprefix("Value error, "))
        elif item["type"] == "literal_error":
            lines.append(f"{key}: {item['msg']} (got {item['input']!r})")
        else:
            lines.append(f"{key}: {item['msg']} (got {item['input']!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _allowed_hint(root: type[BaseModel], loc: tuple) -> str:
    model: Any = root
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return f" (allowed: {', '.join(model.model_fields)})"
