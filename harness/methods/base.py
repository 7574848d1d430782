"""The method registry and the contract every fine-tuning method fulfils.

A method is a :class:`Method` subclass registered beside its definition with
:func:`register`. It declares, as class attributes and hooks:

- ``Params``: its typed ``method:`` config section (a :class:`harness.config.MethodParams`
  subclass whose ``name`` is ``Literal[<its name>]``);
- ``trains`` and :meth:`Method.stages`: which parameters train in which stage (prefixes of
  :class:`MethodModel` parameter names; everything else stays frozen, bit for bit);
- :meth:`Method.extend`: what it adds to the model (under ``model.extra``: a linear head,
  learned context vectors), saved with the model in every checkpoint;
- :meth:`Method.forward` + :meth:`Method.objective`: its loss;
- :meth:`Method.classifier`: the ID classifier it evaluates with (harness.classifier).

The training loop (harness.train.runner / harness.train.engine), Ray Train, checkpoints and resume,
gradient accumulation and the bad-sample accounting are the same for every method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence

from pydantic import ValidationError

from harness.classifier import Classifier
from harness.config import EvalConfig, MethodParams, ParamSpace
from harness.lazy import torch

if TYPE_CHECKING:  # open_clip takes ~3 s to import, and `harness methods` needs none of it
    from harness import models
    from harness.methods.model import MethodModel

METHOD_WEIGHTS, METHOD_INFO = "method.pt", "method.json"


class UnknownMethodError(KeyError, ValueError):
    """An unknown method name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


@dataclass(frozen=True)
class Stage:
    """``epochs`` epochs with the parameters whose names start with one of ``trainable`` training."""

    name: str
    epochs: int
    trainable: tuple[str, ...]


@dataclass(frozen=True)
class Setup:
    """What :meth:`Method.extend` may use: the built bundle, the ID class names, the config, the
    run directory (a source run is found beside it) and a tokenizer."""

    bundle: models.ClipBundle
    classnames: Sequence[str]
    cfg: Any  # harness.config.Config
    run_dir: Path


class Objective(Protocol):
    def from_output(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss with gradients, detached parts for logging) of one micro-batch."""


class Method:
    """Base of every registered method: by default the CLIP trained whole with FLYP's loss and
    evaluated with its class prompts. Subclasses override what differs."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    """Name in reports and plots."""
    colour: ClassVar[str] = "tab:gray"
    """Matplotlib colour in plots."""
    description: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    trains: ClassVar[bool] = True
    trainable: ClassVar[tuple[str, ...]] = ("clip.",)
    sets_weights: ClassVar[bool] = False
    """The weights are computed from another run's (WiSE-FT), not trained: none is frozen."""
    baseline: ClassVar[bool] = False
    """The report pairs every other method against each baseline (zero-shot, FLYP)."""
    demo: ClassVar[tuple[dict, ...]] = ({},)
    """What `harness demo` runs of this method: one run per entry, each a partial ``method:``
    section over the defaults (CMA: a small lam grid); () runs none (zero-shot, every sweep's baseline)."""
    demo_seeds: ClassVar[int] = 1
    """Training seeds the demo gives this method's validation-selected entry (a real seed spread)."""
    demo_source: ClassVar[str | None] = None
    """A method whose validation-selected demo run this one's entries take as ``source`` (WiSE-FT:
    FLYP); they run after it."""

    def __init__(self, params: MethodParams):
        self.params = params

    @classmethod
    def example(cls, checkpoint: str) -> dict:
        """A ``method:`` section for a smoke run of this method (tests run every registered method
        with it); ``checkpoint``: a finished run's checkpoint directory, for methods that need one."""
        return {"name": cls.name}

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ValueError when the rest of ``cfg`` does not suit this method's parameters."""

    @classmethod
    def portable(cls, params: MethodParams, runs: Path) -> MethodParams:
        """``params`` with what names a place relative to the run (``runs``: the <out>/runs it sits
        in) made absolute, so that any --out can rebuild the run (`harness evaluate --weights <run>`).
        Raise FileNotFoundError when such a place is gone."""
        return params

    def stages(self, cfg) -> list[Stage]:
        if not self.trains or not cfg.schedule.epochs:
            return []
        return [Stage("train", cfg.schedule.epochs, self.trainable)]

    def extend(self, model: MethodModel, setup: Setup) -> None:
        """Add the method's modules to ``model.extra`` (before any checkpoint is restored)."""

    def train_keys(self, manifest, cfg) -> frozenset[str] | None:
        """The training samples' keys to train on (None: all of the training set)."""
        return None

    def caption(self, classnames: Sequence[str], cfg, rank: int) -> Callable[[dict], str]:
        from harness.data.pipeline import class_prompt

        return class_prompt(classnames, cfg.eval.train_prompt)

    def forward(self, model: MethodModel, images: torch.Tensor, tokens: torch.Tensor) -> dict:
        return model.clip(images, tokens)

    def objective(self, ctx) -> Objective:
        raise NotImplementedError(f"method {self.name} does not train")

    def classifier(self, model: MethodModel, tokenizer: Callable, classnames: Sequence[str], cfg: EvalConfig,
                   device) -> Classifier:
        return text_classifier(model, tokenizer, classnames, cfg.eval_prompt, device)

    def contrastive_lam(self) -> float:
        """The CMA weight lam this run trained with (0 for FLYP), NaN for a method without one: the
        report's λ column and λ-sweep plot."""
        return float("nan")

    def facts(self) -> dict:
        """Values the method settled at run time (e.g. a capped setting), recorded in result.json."""
        return {}


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method under ``cls.name``; a duplicate name, or a ``Params`` whose
    ``name`` default is not the method's, is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} is already registered (by {REGISTRY[cls.name].__qualname__})")
    if cls.Params.model_fields["name"].default != cls.name:
        raise ValueError(f"method {cls.name!r}: its Params must declare name: Literal[{cls.name!r}] = {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered method names, in registration order (the report's reading order)."""
    return list(REGISTRY)


def get(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownMethodError(f"method.name: unknown method {name!r}; registered: {', '.join(REGISTRY)}") from None


def build(params: MethodParams) -> Method:
    return get(params.name)(params)


def label(name: str) -> str:
    return REGISTRY[name].label if name in REGISTRY else name


def colour(name: str) -> str:
    return REGISTRY[name].colour if name in REGISTRY else "black"


def describe() -> str:
    """Every registered method with its parameters (type, default, what it does): `harness methods`."""
    lines = ["Methods (config section `method:`, e.g. --set method.name=cma --set method.lam=0.01):", ""]
    for name, cls in REGISTRY.items():
        kind = "trains" if cls.trains else "no training"
        lines.append(f"{name}  ({cls.label}; {kind}{'; baseline' if cls.baseline else ''}): {cls.description}")
        for field, info in cls.Params.model_fields.items():
            if field == "name":
                continue
            default = "required" if info.is_required() else f"default {info.default!r}"
            kind = info.annotation.__name__ if isinstance(info.annotation, type) else \
                str(info.annotation).replace("typing.", "")
            doc = " ".join((info.description or "").split())
            lines.append(f"    method.{field}: {kind}, {default}" + (f" - {doc}" if doc else ""))
        lines.append("")
    return "\n".join(lines).rstrip()


def params(value: Any, where: str = "method") -> MethodParams:
    """A ``method:`` section (mapping or MethodParams) validated against its method's ``Params``;
    ValueError naming the key otherwise."""
    if isinstance(value, MethodParams):
        if type(value) is get(value.name).Params:
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping with a name (one of {', '.join(REGISTRY)}), got {value!r}")
    if "name" not in value:
        raise ValueError(f"{where}.name is required (one of {', '.join(REGISTRY)})")
    section = get(value["name"]).Params
    try:
        return section.model_validate(value)
    except ValidationError as err:
        raise ValueError(_describe(value["name"], section, err, where)) from None


def _describe(name: str, section: type[MethodParams], err: ValidationError, where: str) -> str:
    takes = ", ".join(section.model_fields)
    lines = []
    for item in err.errors():
        key = f"{where}." + ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: method {name} takes no parameter {item['loc'][-1]!r} ({name} takes: {takes})")
        else:
            lines.append(f"{key}: {item['msg']} (got {item['input']!r})")
    return "; ".join(lines)


def minimal(section: MethodParams) -> dict:
    """The section as the user would write it: its name and the parameters off their defaults."""
    return {"name": section.name, **section.model_dump(mode="json", exclude_defaults=True)}


def renamed(section: dict, name: str) -> dict:
    """``section`` given the method ``name``: unchanged for its own name, else that method's defaults
    (a section's parameters belong to the method they were written for)."""
    return section if section.get("name", name) == name else {"name": name}


def check_space(base: MethodParams, space: dict[str, ParamSpace]) -> None:
    """Every method section a search can produce must be valid: a ``method`` space lists whole
    sections, ``method.name`` swaps the name, ``method.<param>`` must be a parameter of every
    method searched. Raises ValueError naming the key."""
    def values(key: str) -> list:
        spec = space[key]
        if spec.grid is None and spec.choice is None:
            if key in ("method", "method.name"):
                raise ValueError(f"search.space: {key} takes a grid or a choice")
            return []
        return list(spec.grid if spec.grid is not None else spec.choice)

    candidates = [minimal(base)]
    if "method" in space:
        candidates = values("method")
    if "method.name" in space:
        candidates = [renamed(c, n) for c in candidates if isinstance(c, dict) for n in values("method.name")]
    for candidate in candidates:
        params(candidate, where="search.space: method")
    for key in space:
        if not key.startswith("method.") or key == "method.name":
            continue
        param = key.split(".", 1)[1]
        for candidate in candidates:
            section = get(candidate["name"]).Params
            if param not in section.model_fields:
                raise ValueError(f"search.space: {key}: method {candidate['name']} takes no parameter {param!r} "
                                 f"({candidate['name']} takes: {', '.join(section.model_fields)})")
            for value in values(key):
                params({**candidate, param: value}, where="search.space: method")


def text_classifier(model, tokenizer: Callable, classnames: Sequence[str], prompt: str, device) -> Classifier:
    """The zero-shot classifier: the class prompts through the model's text encoder, no head."""
    from harness.models import encode_texts

    features = encode_texts(model, tokenizer, [prompt.format(c) for c in classnames], device=device)
    return Classifier(features, float(model.logit_scale.exp().item()))


def set_trainable(model: torch.nn.Module, prefixes: tuple[str, ...]) -> list[str]:
    """requires_grad on exactly the parameters whose names start with one of ``prefixes``; returns them."""
    chosen = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            chosen.append(name)
    if not chosen:
        raise ValueError(f"no parameter matches the trainable prefixes {prefixes}")
    return chosen


def save(model: MethodModel, directory: Path) -> Path:
    """The final checkpoint: ``model.pt`` (the CLIP alone, loadable as model.pretrained),
    ``method.pt`` (what the method added) and ``method.json`` (which method, with its parameters)."""
    from harness import models

    directory.mkdir(parents=True, exist_ok=True)
    path = models.save_weights(model, directory / "model.pt")
    extra = {k: v.detach().cpu() for k, v in model.extra.state_dict().items()}
    from harness.paths import torch_save_atomic, write_text_atomic

    torch_save_atomic(extra, directory / METHOD_WEIGHTS)

    write_text_atomic(directory / METHOD_INFO, json.dumps(minimal(model._method.params), sort_keys=True))
    return path


def load_saved(directory: Path) -> tuple[MethodParams, dict, dict]:
    """(the method's section, the CLIP state dict, the extras' state dict) of a :func:`save` directory."""
    info = directory / METHOD_INFO
    if not info.is_file():
        raise FileNotFoundError(f"{directory}: no {METHOD_INFO}: not a finished run's checkpoint directory")
    section = params(json.loads(info.read_text()))
    clip = torch.load(directory / "model.pt", weights_only=True, map_location="cpu")
    extra = torch.load(directory / METHOD_WEIGHTS, weights_only=True, map_location="cpu")
    return section, clip, extra
