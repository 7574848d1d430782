"""``harness evaluate``: any weights, any suite, no training.

The weights ``W`` are one of:

- an open_clip tag (e.g. ``openai``) found in the local caches, with ``--arch``;
- a checkpoint file (a state dict, or OpenAI's TorchScript file);
- a run directory of an earlier ``--out`` (``<out>/runs/<run_id>``, holding ``checkpoint/model.pt``):
  its config (from ``<out>/results/runs.parquet``) is the base, so its method, prompts and
  evaluation settings come along and the method recorded is the source run's;
- a run id, looked up as ``<runs root>/**/runs/<run_id>``.

The evaluation writes what a training run writes (run directory, Parquet rows, MLflow run,
report section) and goes through the shared embedding cache (harness.evaluation.embed_cache): evaluating
the same weights again encodes nothing. ``--suite`` may be given more than once: every set of
every suite is encoded once (iNaturalist is in both MOS and OpenOOD v1.5), and each suite is
recorded as its own run, so the report gets one table per suite with the paper's rows beside ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import config as config_mod
from harness import suites
from harness.config import Config


class SourceError(ValueError):
    """Weights that cannot be found or read; the message says what was tried."""


@dataclass(frozen=True)
class Source:
    cfg: Config
    """The base config: the source run's, or the defaults with model.arch / model.pretrained set."""
    weights: Path | None
    """The file to load, None to resolve cfg.model.pretrained (a tag or the synthetic pretraining)."""
    origin: str
    """What ``W`` was: "tag", "checkpoint" or "run <run_id>"."""


def resolve(weights: str, arch: str | None, overrides: list[str], runs_root: Path = Path("runs")) -> Source:
    """Turn ``W`` (module docstring) and the command's ``--set`` overrides into a :class:`Source`."""
    path = Path(weights).expanduser()
    run_dir = path if path.is_dir() else _find_run(weights, runs_root) if _looks_like_run_id(weights) else None
    if run_dir is not None:
        cfg = _run_config(run_dir)
        tree = config_mod.to_tree(cfg)
        if arch:
            tree["model"]["arch"] = arch
        cfg = config_mod.from_dict(tree, dict(config_mod.parse_override(o) for o in overrides))
        rebuilt = _rebuilt_weights(cfg, run_dir)
        if rebuilt is not None:
            return rebuilt
        checkpoint = run_dir / "checkpoint" / "model.pt"
        summary = run_dir / "result.json"
        if not checkpoint.is_file() and summary.is_file():  # an evaluation's run: the weights it evaluated
            checkpoint = Path(json.loads(summary.read_text()).get("checkpoint") or checkpoint)
        if not checkpoint.is_file():
            raise SourceError(f"--weights {run_dir}: no checkpoint/model.pt (not a finished run directory)")
        return Source(cfg, _readable(checkpoint), f"run {run_dir.name}")
    base = [f"model.pretrained={weights}", "method={name: zero-shot}"] + ([f"model.arch={arch}"] if arch else [])
    cfg = config_mod.load(None, base + list(overrides))
    if path.is_file():
        return Source(cfg, _readable(path.resolve()), "checkpoint")
    return Source(cfg, None, "tag")


def _readable(checkpoint: Path) -> Path:
    """``checkpoint``, once it is known to load safely (before any compute is spent)."""
    from harness.models import check_checkpoint

    try:
        check_checkpoint(checkpoint)
    except ValueError as err:
        raise SourceError(f"--weights: {err}") from None
    return checkpoint


def _rebuilt_weights(cfg: Config, run_dir: Path) -> Source | None:
    """A run whose method makes its weights when the model is built (WiSE-FT: start and source
    interpolated) is evaluated by building them again, from the starting weights and the source run
    found beside it (its parameters made portable by the method's hook, so any --out can evaluate
    it: Method.portable): loading its saved weights as
    the start would interpolate twice. The weights, and so the cache entries, are the saved ones."""
    from harness import methods

    method = methods.get(cfg.method.name)
    if not method.sets_weights:
        return None
    try:
        section = method.portable(cfg.method, run_dir.parent)
    except FileNotFoundError as err:
        raise SourceError(f"--weights {run_dir}: {err}") from None
    tree = config_mod.to_tree(cfg)
    tree["method"] = methods.minimal(section)
    return Source(config_mod.from_dict(tree), None, f"run {run_dir.name}")


def _looks_like_run_id(text: str) -> bool:
    return "/" not in text and text.count("-") >= 2


def _find_run(run_id: str, runs_root: Path) -> Path | None:
    found = sorted(p for p in Path(runs_root).glob(f"**/runs/{run_id}") if p.is_dir())
    if len(found) > 1:
        raise SourceError(f"--weights {run_id}: {len(found)} run directories under {runs_root} "
                          f"({', '.join(map(str, found[:3]))}); give the directory")
    return found[0] if found else None


def _run_config(run_dir: Path) -> Config:
    """The config a run ran with, from its --out's runs.parquet row."""
    from harness import results

    out = run_dir.parent.parent
    runs = results.read(out / "results", results.RUNS)
    rows = runs[runs["run_id"] == run_dir.name] if not runs.empty else runs
    if rows.empty:
        raise SourceError(f"--weights {run_dir}: no row for run {run_dir.name} in {out / 'results' / 'runs.parquet'}")
    try:
        return Config.model_validate(json.loads(rows.iloc[-1]["config_json"]))
    except ValueError as err:  # pydantic's ValidationError is one
        raise SourceError(f"--weights {run_dir}: the config it recorded does not validate now ({err}); "
                          "give its checkpoint/model.pt with --set for the settings instead") from None


def suite_overrides(names: list[str]) -> list[list[str]]:
    """``--set`` lines for each suite named (one list per suite, in order); unknown names raise SuiteError."""
    out = []
    for name in names:
        sets = suites.get(name).overrides()
        out.append([f"data.id_test={sets['data.id_test']}", "data.ood_test=[" + ",".join(sets["data.ood_test"]) + "]"])
    return out


def score_overrides(scores: list[str] | None) -> list[str]:
    """``--scores a,b`` (or ``all``: every registered score) as overrides. The selection score (validation's) stays neglabel when selected,
    else the first one validation can compute; with none such, mcm is added for it."""
    if not scores:
        return []
    from harness.orchestration.preflight import SELECTABLE_INPUTS
    from harness.scores import SCORE_SPECS

    names = list(dict.fromkeys(n for part in scores for n in part.split(",") if n))
    if "all" in names:  # every registered score, as eval.scores: all
        names = sorted(SCORE_SPECS)
    selectable = [n for n in names if n in SCORE_SPECS and SCORE_SPECS[n].needs <= SELECTABLE_INPUTS]
    selection = "neglabel" if "neglabel" in selectable else (selectable or ["mcm"])[0]
    if selection not in names:
        names.append(selection)
    return ["eval.scores=[" + ",".join(names) + "]", f"eval.selection_score={selection}"]


def evaluate(source: Source, out: Path, log=print, address: str | None = None):
    """Evaluate ``source`` and record the run like a training run does; returns its tracking record.
    Without ``address`` in this process (no Ray); with one (HOST:PORT, ``auto``, or ``local`` for
    a private local cluster) on resources.num_workers Ray Train workers that split every test
    set's shards, as the end of a training run does."""
    from harness.orchestration import driver
    from harness.results.outdir import run_id
    from harness.train import engine
    from harness.train import prepare
    from harness.train import runner

    cfg = source.cfg
    if address is not None:
        from harness.orchestration import cluster

        cluster.init(address)
        cluster.check_fits(cfg, log=log)
    inputs = prepare.prepare_inputs(cfg, log=log)
    weights = source.weights or inputs.weights
    run_dir = out / "runs" / run_id(cfg)
    extra = {"evaluated": source.origin, "weights_file": str(weights)}
    if address is None:
        summary = runner.evaluate_only(cfg, runner.RunPaths(inputs.data_root, weights, run_dir),
                                       engine.RunContext(), log, extra=extra)
    else:
        from harness.orchestration import ray_layer

        summary = ray_layer.evaluate(ray_layer.Job(cfg, inputs, out), weights, extra)
    return driver._record(out, f"{cfg.name}-evaluate", cfg, summary, None)
