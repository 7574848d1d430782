"""Typed experiment configuration: one YAML file -> frozen, validated objects.

Every default lives here. Loose input (YAML, ``--set dotted.key=value``) is turned
into a :class:`Config` once, at the edge; everything below takes typed objects.
Unknown keys and bad values fail before anything runs, naming the key and what is
allowed.

This module owns the sections, their validation and loading. The ``--set`` / ``--space`` parsing
and the messages that name a bad key live in harness.config_input, the views of a Config (dotted
keys, run labels, its tree and YAML) in harness.config_views; their public names are re-exported
here, so ``harness.config`` stays the one name to import.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from harness.config_input import (  # noqa: F401  (re-exported: harness.config is the one name to import)
    SPACE_FORMS, ConfigError, apply_overrides, apply_space, parse_override, parse_space)
from harness.config_input import describe as _describe
from harness.config_views import (  # noqa: F401  (re-exported, as above)
    LABEL_KEYS, _short_number, dotted, flatten, is_searched, run_label, searched_values, to_tree, to_yaml)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    arch: str = "tiny-vit-32"
    """An open_clip model name (built-in, e.g. ViT-B-16, or one of harness/model_configs)."""
    pretrained: str | None = "synthetic"
    """None: random init; "synthetic": the cached pretraining on the synthetic corpus;
    a path to a local checkpoint; or an open_clip tag (e.g. "openai") found in the local cache."""
    precision: Literal["fp32", "bf16"] = "fp32"


class PretrainConfig(_Section):
    """Pretraining of the tiny model on the synthetic captioned corpus (the stand-in for CLIP's web data)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(50, ge=0)
    seed: int = 0
    """The stand-in checkpoint's own seed, apart from the run's: like a published checkpoint, every
    training seed starts from the same weights."""


class DataConfig(_Section):
    source: Literal["synthetic", "shards"] = "synthetic"
    """synthetic: the embedded world, generated (and cached) under root; shards: datasets already in root."""
    root: str | None = None
    """Directory holding one sub-directory (shards + manifest.json) per dataset.
    None: the synthetic world's cache, $HARNESS_CACHE/synthetic-<size> (default ~/.cache/harness)."""
    synthetic_size: Literal["demo", "small"] = "demo"
    """Size of the generated synthetic world: the demo's, or a few thousand images for tests."""
    train: str = "id_train"
    id_val: str = "id_val"
    ood_val: str = "ood_val"
    id_test: str = "id_test"
    ood_test: tuple[str, ...] = ("near_ood", "far_ood")
    batch_size: int = Field(128, ge=2)
    """Per worker."""
    shuffle_buffer: int = Field(1000, ge=0)
    loader_workers: int = Field(0, ge=0)
    """torch DataLoader processes per training worker (0: decode in the training process)."""
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    """Training skips bad samples (unreadable image, label outside the classes, a missing, unreadable
    or short shard) and counts them; the run fails when more than this share of what it read was bad."""


class MethodParams(_Section):
    """The ``method:`` section: ``name`` picks a registered method (harness.methods), whose own
    subclass of this types the rest (e.g. ``lam`` for cma); `harness methods` lists them."""

    name: str

    def __call__(self) -> str:
        """The method's registered name: ``cfg.method()`` is what a run records (ids, tables, MLflow)."""
        return self.name


def _method_section(value: Any) -> MethodParams:
    from harness import methods  # the registry imports this module for MethodParams

    return methods.params(value)


class OptimConfig(_Section):
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    eps: float = Field(1e-6, gt=0)


class ScheduleConfig(_Section):
    epochs: int = Field(2, ge=0)
    """0 evaluates the starting weights (the zero-shot baseline)."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up, then cosine decay to 0, stepped per iteration."""
    accumulation: int = Field(1, ge=1)
    """Micro-batches per optimiser step: global batch = data.batch_size x workers x accumulation.
    The contrastive negatives of each micro-batch are its own (workers x data.batch_size)."""
    checkpoint_every: int = Field(1, ge=0)
    """Epochs between resumable training checkpoints (0: only the final model)."""
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    """Worker failures a run survives, each time resuming from its last checkpoint."""


class EvalConfig(_Section):
    train_prompt: str = "a photo of a {}"
    eval_prompt: str = "a photo of a {}"
    noun_prompt: str = "The nice {}"
    adjective_prompt: str = "This is a {} photo"
    negatives: str = "negatives.tsv"
    """Candidate negative labels ("noun<TAB>word" / "adj<TAB>word"), relative to data.root or absolute."""
    neg_percentile: float = Field(95.0, ge=0, le=100)
    neg_ratio: float = Field(0.15, gt=0, le=1)
    """NegMining keeps this share of the least ID-like nouns and of adjectives."""
    neg_groups: int = Field(1, ge=1)
    """NegLabel's negative groups: 1 as in the CMA code (default), 100 in NegLabel's reference config."""
    neg_remainder: Literal["shuffled", "tail"] = "shuffled"
    """Negatives dropped when neg_groups does not divide their number: the last of the seeded shuffle
    (shuffled), or the last in file order before shuffling (tail, the OpenOOD-VLM code's rule)."""
    neg_temperature: float = Field(0.01, gt=0)
    mcm_temperature: float = Field(1.0, gt=0)
    gl_mcm_lambda: float = Field(1.0, ge=0)
    """GL-MCM's weight of the local (patch) term (GL-MCM's ImageNet script: 0.5, as sweeps/imagenet-*.yaml set)."""
    knn_k: int = Field(50, ge=1)
    """KNN's k (the reference's ImageNet scripts: 1000 over the full ImageNet-train bank); at most the bank's size."""
    knn_bank_fraction: float = Field(1.0, gt=0, le=1)
    """Share of data.train encoded as KNN's bank (seeded subsample of shards' samples in order)."""
    odin_temperature: float = Field(1000.0, gt=0)
    odin_epsilon: float = Field(0.0014, ge=0)
    """ODIN's step in the normalised input space, not divided by the per-channel std (OpenOOD divides it)."""
    csp_negatives: str | None = None
    """CSP's pool written by `harness negatives --mode csp` (relative to data.root or absolute); None: build
    it from eval.negatives (raw candidates): nouns, and each adjective as one "<adjective> <superclass>" phrase."""
    csp_seed: int = 0
    """Seed of CSP's superclass choice: random.Random(seed).choice once per adjective, in file order."""
    adaneg_order: Literal["shuffled", "ood-first", "id-first"] = "shuffled"
    """AdaNeg's test stream: cat([OoD, ID]) in one seeded permutation (the authors' evaluator), or one
    set after the other."""
    adaneg_seed: int = 0
    """Seed of AdaNeg's stream permutation (its NegLabel groups use seed 0, as the authors' code)."""
    adaneg_batch_size: int = Field(256, ge=1)
    adaneg_groups: int = Field(5, ge=1)
    """AdaNeg's NegLabel groups (the authors' scripts: 5; tail-drop remainder rule)."""
    adaneg_memory: int = Field(10, ge=1)
    adaneg_lambda: float = Field(0.1, ge=0)
    adaneg_threshold: float = Field(0.5, ge=0, le=1)
    adaneg_gap: float = Field(0.5, ge=0, le=1)
    # The OpenOOD v1.5 postprocessors' defaults (configs/postprocessors/<name>.yml), used as they are.
    react_percentile: float = Field(90.0, ge=0, le=100)
    """ReAct's clip threshold: this percentile of every ID-train feature value (OpenOOD: of ID-val's)."""
    ash_percentile: float = Field(90.0, ge=0, lt=100)
    """ASH-P/-B/-S: the share of each feature vector's entries pruned (OpenOOD's ash.yml: 90)."""
    scale_percentile: float = Field(85.0, ge=0, lt=100)
    """SCALE: the percentile whose top entries set the scaling (OpenOOD's scale.yml: 85)."""
    dice_p: float = Field(90.0, ge=0, lt=100)
    """DICE: the percentile of the head's weight x mean ID-train activation below which weights are zeroed."""
    gen_gamma: float = Field(0.1, gt=0)
    gen_m: int = Field(100, ge=1)
    """GEN's top M probabilities (the class count when fewer)."""
    vim_dim: int | None = Field(None, ge=1)
    """ViM's principal-space dimension; None: 1000 for a feature size >= 1500, 512 for >= 768, else half."""
    nnguide_k: int = Field(100, ge=1)
    """NNGuide's k over KNN's bank (eval.knn_bank_fraction); at most the bank's size."""
    scores: tuple[str, ...] = ("mcm", "neglabel", "msp", "energy", "max_logit")
    """The scores every run computes; ``all``: every registered score (harness/scores/)."""
    selection_score: str = "neglabel"
    """Score whose OoD-validation AUROC enters the selection objective."""
    batch_size: int = Field(256, ge=1)
    allow_bad_samples: bool = False
    """False: a bad sample in an evaluation set is an error naming its shard and key (metrics over an
    unknown subset are not comparable). True: skip it; the count is in the results (bad_samples_eval)."""

    @field_validator("scores", mode="before")
    @classmethod
    def _all_scores(cls, value: Any) -> Any:
        if value == "all" or value == ["all"]:
            from harness.scores import SCORE_SPECS

            return tuple(sorted(SCORE_SPECS))
        return value

    @model_validator(mode="after")
    def _selection_in_scores(self) -> "EvalConfig":
        if self.selection_score not in self.scores:
            raise ValueError(f"selection_score {self.selection_score!r} must be one of scores {list(self.scores)}")
        for key in ("train_prompt", "eval_prompt", "noun_prompt", "adjective_prompt"):
            if getattr(self, key).count("{}") != 1:
                raise ValueError(f"{key} must contain exactly one '{{}}' placeholder")
        return self


class TrackingConfig(_Section):
    mlflow_uri: str | None = None
    """None: a SQLite store inside the output directory."""
    experiment: str | None = None
    """MLflow experiment; None: the config's ``name`` (one experiment per sweep name)."""


class ResourcesConfig(_Section):
    num_workers: int = Field(1, ge=1)
    """Data-parallel Ray Train workers per run."""
    cpus_per_worker: int = Field(1, ge=1)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, ge=0)
    """Used only with use_gpu."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """None: as many as the cluster holds (an autoscaling cluster: as many as it can ever hold)."""
    node_wait_s: float = Field(1800.0, ge=0)
    """On an autoscaling cluster, how long a run waits for the nodes it needs before failing
    (a fixed cluster that cannot hold a run refuses it at once)."""
    trial_runner: Literal["train", "tune"] = "train"
    """How a sweep runs a one-worker trial: train, as a Ray Train run (its own controller and
    worker group); tune, inside its Tune trial (no worker group: about 15 s less per trial on a
    2-core machine; restarts and checkpoints go through Tune). Several workers always use Train;
    ASHA with one worker always uses tune (harness.orchestration.tune_sweep.trials_in_process says why)."""


class ParamSpace(_Section):
    """One searched parameter: exactly one of grid / choice / uniform / loguniform."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ParamSpace":
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        return self


class SearchConfig(_Section):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1)
    """Random / optuna: number of trials; grid: repeats of the whole grid."""
    scheduler: Literal["none", "asha"] = "none"
    """asha: stop weak trials early (at epochs grace_period, x reduction_factor, ...)."""
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    space: dict[str, ParamSpace] = Field(default_factory=dict)
    """Dotted config keys (e.g. method.lam, method.name, or method: whole sections) -> their distribution."""
    metric: Literal["val_objective", "val_auroc", "val_fpr95", "val_id_accuracy"] = "val_objective"
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _algorithm_fits_space(self) -> "SearchConfig":
        grids = [k for k, v in self.space.items() if v.grid is not None]
        if self.algorithm == "optuna" and grids:
            raise ValueError(f"algorithm optuna samples its space: use choice instead of grid for {grids}")
        if self.algorithm == "random" and grids and len(grids) == len(self.space):
            raise ValueError("algorithm random needs at least one sampled parameter (choice, uniform, loguniform)")
        return self


class Config(_Section):
    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    data: DataConfig = DataConfig()
    method: SerializeAsAny[MethodParams] = Field(default_factory=lambda: _method_section({"name": "flyp"}))
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_loss_section(cls, data: Any) -> Any:
        if isinstance(data, dict) and "loss" in data:
            raise ValueError(_LOSS_GONE.format(**_loss_advice(data["loss"])))
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _typed_method(cls, value: Any) -> MethodParams:
        return _method_section(value)

    @model_validator(mode="after")
    def _space_keys_exist(self) -> "Config":
        from harness import methods

        for key in self.search.space:
            if key.startswith("search.") or key == "name":
                raise ValueError(f"search.space: {key!r} cannot be searched")
            if key != "method" and not key.startswith("method."):
                _check_path(self.model_dump(), key, where="search.space")
        methods.check_space(self.method, self.search.space)
        methods.get(self.method.name).check_config(self)
        return self

    def fingerprint(self) -> str:
        """Short hash of everything that changes the science (not tracking or resources; nor the
        schedule and optimiser for a method that does not train, so its runs share one id)."""
        from harness import methods

        exclude = {"tracking", "resources", "search", "name"}
        if not methods.get(self.method.name).trains:
            exclude |= {"schedule", "optim"}
        data = self.model_dump(mode="json", exclude=exclude)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


_LOSS_GONE = ("the loss: section is gone; the method: section names the method and takes its parameters. "
              "Write instead:  method: {{name: {name}{extra}}}  (or --set method.name={name}{set_extra}); "
              "`harness methods` lists every method with its parameters")


def _loss_advice(loss: Any) -> dict[str, str]:
    lam = loss.get("lam", 0) if isinstance(loss, dict) else 0
    if not lam:
        return {"name": "flyp", "extra": "", "set_extra": ""}
    return {"name": "cma", "extra": f", lam: {lam}", "set_extra": f" --set method.lam={lam}"}


def _check_path(tree: dict, dotted: str, where: str) -> None:
    node: Any = tree
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            prefix = ".".join(parts[:depth]) or "<top>"
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ValueError(f"{where}: unknown key {dotted!r} ({prefix} allows: {', '.join(allowed)})")
        node = node[part]



def swap_method(tree: dict, overrides: dict[str, Any]) -> dict:
    """``tree`` without its method's parameters when ``overrides`` set another ``method.name``
    (a --set or a searched name): the new method starts from its own defaults, plus whatever the
    overrides give it (so ``--set method.name=flyp --set method.lam=0.5`` still names ``lam``)."""
    from harness import methods

    name, method = overrides.get("method.name"), tree.get("method")
    if name is None or not isinstance(method, dict):
        return tree
    return {**tree, "method": methods.renamed(method, name)}


def from_dict(tree: dict, overrides: dict[str, Any] | None = None) -> Config:
    overrides = overrides or {}
    try:
        return Config.model_validate(apply_overrides(swap_method(tree, overrides), overrides))
    except ValidationError as err:
        raise ConfigError(_describe(err, Config)) from None


def load(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
         space: list[str] | None = None) -> Config:
    """Read a YAML experiment (None: all defaults), apply ``--set`` overrides and add ``--space`` entries."""
    tree: dict = {}
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return from_dict(apply_space(tree, dict(parse_space(s) for s in space or [])), overrides)

