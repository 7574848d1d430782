"""One run: build the model, fine-tune it, validate each epoch, evaluate on the test sets.

Plain code: it takes a RunContext (rank, world size, report hook), so it is the
body of a Ray Train worker and also runs alone in a test. Rank 0 writes the
run's outputs into ``run_dir``:

- ``checkpoint/model.pt``: the final weights (state dict, loads with weights_only=True)
- ``embeddings/<id test set>.pt``: a link to the ID test set's entry in the shared embedding
  cache (harness.evaluation.embed_cache: one cache per weights digest, shared by runs and `harness
  evaluate`); ``embeddings/text.pt``: the class-prompt and negative-label features (evaluate.TextSide)
- ``scores.pt``: per-sample scores and sample keys (see harness.train.run_evaluation.test)
- ``result.json``: the summary (validation metrics, ID accuracy, OoD rows, timings, bad-sample
  counts, ``status``)

A run that cannot give a model worth evaluating stops early with a status instead of
crashing (which Ray would retry, to the same end): ``diverged`` when the training loss
is not finite (``result.json``: the same config diverges again, so a re-run reuses it),
``failed`` when the data is too bad (``failed.json``: a re-run tries again, the data may
have been fixed). Both are reported to Tune and returned; the driver records them.
"""

from __future__ import annotations

import json
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import methods, models
from harness.train import checkpoint
from harness.train import engine
from harness.train.run_evaluation import evaluate_model, validate
from harness.config import Config, SearchConfig, run_label
from harness.data.badsamples import REASONS, BadDataError, BadSamples
from harness.data.pipeline import CountedBatches, loader, train_pipeline
from harness.data.shards import check_class_lists, read_manifest
from harness.paths import write_text_atomic

RESULT, FAILED = "result.json", "failed.json"
SEARCH_METRICS = typing.get_args(SearchConfig.model_fields["metric"].annotation)


@dataclass(frozen=True)
class RunPaths:
    """Everything a run reads or writes, resolved to absolute paths by the driver."""

    data_root: Path
    weights: Path | None
    run_dir: Path

    def dataset(self, name: str) -> Path:
        return self.data_root / name

    def negatives(self, cfg: Config) -> Path:
        path = Path(cfg.eval.negatives).expanduser()
        return path if path.is_absolute() else self.data_root / path

    def csp_negatives(self, cfg: Config) -> Path | None:
        if cfg.eval.csp_negatives is None:
            return None
        path = Path(cfg.eval.csp_negatives).expanduser()
        return path if path.is_absolute() else self.data_root / path


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp + rename): a crash leaves the old file or the new one."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))


class RunStopped(Exception):
    """A run ending early with ``status`` diverged or failed; ``history``: the epochs it completed.
    ``collective``: every rank stops at the same point (so all of them can end cleanly)."""

    def __init__(self, status: str, cause: Exception, history: list[dict], collective: bool):
        super().__init__(str(cause))
        self.status, self.history, self.collective = status, history, collective


def tune_metrics(summary: dict) -> dict[str, float]:
    """What a run reports last: its numeric summary values, with NaN for the searchable
    metrics a stopped run has none of (Tune refuses a result without the searched metric;
    NaN is no number, so no searcher or table takes it for one)."""
    out = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    return {**{m: float("nan") for m in SEARCH_METRICS}, **out}


def run(cfg: Config, paths: RunPaths, ctx: engine.RunContext, log=print) -> dict | None:
    """Train (cfg.schedule.epochs may be 0) and evaluate; returns the summary on rank 0.

    A non-finite loss or too many bad training samples (data.max_bad_fraction), or a bad
    evaluation sample (unless eval.allow_bad_samples), ends the run early with status
    diverged / failed (see the module docstring) rather than an exception, where all ranks
    stop together; otherwise the error propagates and Ray ends the worker group.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if ctx.rank == 0:
        (paths.run_dir / FAILED).unlink(missing_ok=True)  # an earlier attempt's
    train_manifest = read_manifest(paths.dataset(cfg.data.train))
    method = methods.build(cfg.method)
    trains = bool(method.stages(cfg))
    keys = method.train_keys(train_manifest, cfg) if trains else None
    samples = len(keys) if keys is not None else train_manifest.num_samples
    global_batch = cfg.data.batch_size * ctx.world_size * cfg.schedule.accumulation
    steps = samples // global_batch
    if trains and steps == 0:
        raise ValueError(f"global batch {global_batch} (data.batch_size x {ctx.world_size} workers x "
                         f"accumulation) exceeds the {samples} training samples of {cfg.data.train}")
    facts = {"global_batch": global_batch, "steps_per_epoch": steps, "world_size": ctx.world_size,
             "device": ctx.device.type,  # cpu / cuda: what the cost section charges accelerator-hours for
             "method": method.name, "train_samples": samples}
    try:
        return _train_and_evaluate(cfg, paths, ctx, method, train_manifest, keys, facts, started, log)
    except RunStopped as stop:
        if ctx.world_size > 1 and not stop.collective:
            raise  # only this rank knows: the others would wait for it forever
        return _stopped(cfg, paths, ctx, stop, facts, started, log)


def _train_and_evaluate(cfg: Config, paths: RunPaths, ctx: engine.RunContext, method: methods.Method,
                        train_manifest, keys: frozenset[str] | None, facts: dict, started: float,
                        log) -> dict | None:
    history: list[dict] = []
    try:
        classnames, bundle = _classes_and_model(cfg, paths)
        bare = methods.MethodModel(bundle.model, method)
        method.extend(bare, methods.Setup(bundle, classnames, cfg, paths.run_dir))
        resumed_from = None
        if method.stages(cfg):
            history, resumed_from = train(cfg, paths, ctx, bundle, bare, train_manifest, facts["steps_per_epoch"],
                                          log, keys)
        else:
            bare.to(ctx.device)
        facts.update(method.facts())
        train_s = time.perf_counter() - started
        head = {"status": "finished", "epochs": history, "train_s": train_s, "resumed_from_epoch": resumed_from,
                **facts, **train_bad_counts(cfg, history)}
        summary, _ = evaluate_model(cfg, paths, ctx, bundle, bare, classnames, head, log)
        if summary is None:  # another rank: its share of the test sets is encoded
            ctx.report({"done": 1}, None)
            return None
    except BadDataError as err:
        raise RunStopped("failed", err, history, err.collective) from err
    summary["wall_s"] = time.perf_counter() - started
    final_dir = paths.run_dir / "checkpoint"
    summary["checkpoint"] = str(methods.save(bare, final_dir))
    write_json(paths.run_dir / RESULT, summary)
    ctx.report(tune_metrics(summary), str(final_dir))
    return summary


def evaluate_only(cfg: Config, paths: RunPaths, ctx: engine.RunContext, log=print,
                  extra: dict | None = None) -> dict | None:
    """Evaluate the weights at ``paths.weights`` without training (``harness evaluate``): the same
    validation, test scores, result.json and checkpoint as the end of :func:`run`, through the
    shared embedding cache. Under several ranks each encodes its share of the shards (as at the end
    of training) and rank 0 returns the summary; the others return None. ``extra``: summary fields
    to add (e.g. where the weights came from)."""
    started = time.perf_counter()
    classnames, bundle = _classes_and_model(cfg, paths)
    model = _with_method(cfg, paths, bundle, classnames)
    model.to(ctx.device)
    head = {"status": "finished", "epochs": [], "train_s": 0.0, "world_size": ctx.world_size,
            "device": ctx.device.type, **(extra or {})}
    summary, cache = evaluate_model(cfg, paths, ctx, bundle, model, classnames, head, log)
    if summary is None:
        return None
    # Here the evaluation is the whole run: eval_s counts from the model's build, validation included.
    summary.update(eval_s=time.perf_counter() - started, wall_s=time.perf_counter() - started,
                   cache_reused=cache.misses == 0, cache_encoded=cache.misses)
    if paths.weights:
        summary["checkpoint"] = str(paths.weights)
    write_json(paths.run_dir / RESULT, summary)
    return summary


def _classes_and_model(cfg: Config, paths: RunPaths):
    """(the class names the train, validation and test sets agree on, the CLIP at ``paths.weights``)."""
    classnames = check_class_lists({name: read_manifest(paths.dataset(name))
                                    for name in (cfg.data.train, cfg.data.id_val, cfg.data.id_test)})
    bundle = models.build(cfg.model.arch, str(paths.weights) if paths.weights else None,
                          quick_gelu=models.needs_quick_gelu(cfg.model.arch, cfg.model.pretrained))
    return classnames, bundle


def _with_method(cfg: Config, paths: RunPaths, bundle, classnames) -> methods.MethodModel:
    """The CLIP inside its method's model; a final checkpoint directory's method.pt (a head, learned
    prompts) is loaded into it when the weights come from one."""
    method = methods.build(cfg.method)
    model = methods.MethodModel(bundle.model, method)
    method.extend(model, methods.Setup(bundle, classnames, cfg, paths.run_dir))
    extra = paths.weights.parent / "method.pt" if paths.weights else None
    if extra is not None and extra.is_file():
        model.extra.load_state_dict(torch.load(extra, weights_only=True, map_location="cpu"))
    return model


def _stopped(cfg: Config, paths: RunPaths, ctx: engine.RunContext, stop: RunStopped, facts: dict,
             started: float, log) -> dict | None:
    """End a run early: report it to Tune (every rank reports, as at the end of a run) and, on
    rank 0, write its summary (result.json when diverged, failed.json when failed)."""
    if ctx.rank != 0:
        ctx.report({"done": 1}, None)
        return None
    summary = {"status": stop.status, "error": str(stop), "epochs": stop.history, **facts,
               **train_bad_counts(cfg, stop.history), "train_s": time.perf_counter() - started,
               "wall_s": time.perf_counter() - started}
    log(f"[{run_label(cfg)}] {stop.status}: {stop}")
    write_json(paths.run_dir / (RESULT if stop.status == "diverged" else FAILED), summary)
    ctx.report({**tune_metrics(summary), stop.status: 1}, None)
    return summary


def train_bad_counts(cfg: Config, history: list[dict]) -> dict[str, int]:
    """Bad training samples skipped over the epochs of ``history``, in total and per reason
    (none for a run that does not train)."""
    if not methods.build(cfg.method).stages(cfg):
        return {}
    out = {"bad_samples_train": sum(int(h.get("bad_samples", 0)) for h in history)}
    out.update({f"bad_samples_train_{r}": sum(int(h.get(f"bad_samples_{r}", 0)) for h in history) for r in REASONS})
    return out


def train(cfg: Config, paths: RunPaths, ctx: engine.RunContext, bundle, model: methods.MethodModel, manifest,
          steps: int, log=print, keys: frozenset[str] | None = None) -> tuple[list[dict], int | None]:
    """The method's stages (harness.methods: which parameters train for how many epochs), resuming
    from ``ctx.restore()`` when a checkpoint exists, in either stage; ``model``: the bare model
    (each stage wraps it with ``ctx.prepare_model``); ``keys``: the training samples to use (None:
    all). Returns (per-epoch metrics, the epoch resumed from or None)."""
    method, stages = model._method, model._method.stages(cfg)
    history, done, state = [], 0, ctx.restore()
    if state is not None:
        checkpoint.restore(state, model)
        history, done = list(state["history"]), int(state["epoch"])
        log(f"[{run_label(cfg)}] resuming after epoch {done} (step {state['step']})")
    total = sum(stage.epochs for stage in stages)
    planned = steps * total * cfg.data.batch_size * cfg.schedule.accumulation  # this rank's samples
    batches = CountedBatches(loader(train_pipeline(
        manifest.shards, bundle.train_transform, method.caption(manifest.classnames, cfg, ctx.rank),
        bundle.tokenizer, cfg.data.batch_size, ctx.rank, ctx.world_size, cfg.seed, cfg.data.shuffle_buffer,
        start_epoch=done, shard_samples=manifest.shard_samples, keys=keys), cfg.data.loader_workers),
        give_up_after=planned, where=f"{cfg.data.train} (rank {ctx.rank})")
    loop = _EpochLoop(cfg, paths, ctx, bundle, model, manifest, batches, steps, total, history, log)
    first = 1
    for index, stage in enumerate(stages):
        last = first + stage.epochs - 1
        if last > done:
            resume = state if state is not None and int(state.get("stage", 0)) == index and done >= first else None
            loop.stage(index, stage, range(max(first, done + 1), last + 1), resume)
        first = last + 1
    return history, (done or None)


@dataclass
class _EpochLoop:
    """The epochs of one run, stage by stage: every method's training goes through :meth:`stage`."""

    cfg: Config
    paths: RunPaths
    ctx: engine.RunContext
    bundle: typing.Any
    model: methods.MethodModel
    manifest: typing.Any
    batches: CountedBatches
    steps: int
    total: int
    history: list[dict]
    log: typing.Callable

    def stage(self, index: int, stage: methods.Stage, epochs: range, resume: dict | None) -> None:
        """Train ``stage``'s parameters (the rest frozen) over ``epochs``; ``resume``: a checkpoint of this
        stage whose optimiser and schedule continue."""
        cfg, ctx, steps = self.cfg, self.ctx, self.steps
        methods.set_trainable(self.model, stage.trainable)
        wrapped = ctx.prepare_model(self.model)  # DDP tracks the parameters that train now
        optimizer = engine.make_optimizer(wrapped, cfg.optim)
        scheduler = engine.warmup_cosine(optimizer, cfg.schedule.warmup_steps, steps * stage.epochs)
        if resume is not None:
            checkpoint.restore_optimizer(resume, optimizer, scheduler)
        objective = self.model._method.objective(ctx)
        every, seen, epoch = cfg.schedule.checkpoint_every, BadSamples(), epochs.start - 1
        where = f" ({stage.name})" if len(self.model._method.stages(cfg)) > 1 else ""
        try:
            for epoch in epochs:
                metrics = engine.train_epoch(wrapped, self.batches, steps, objective, optimizer, scheduler, ctx,
                                             cfg.model.precision, cfg.schedule.accumulation)
                metrics.update(epoch=epoch, step=epoch * steps,
                               global_batch=cfg.data.batch_size * ctx.world_size * cfg.schedule.accumulation)
                bad = _gathered_bad(self.batches, ctx)
                seen.add(bad)
                metrics.update(bad_samples=bad.total, **{f"bad_samples_{r}": n for r, n in bad.by_reason().items()})
                self.history.append(metrics)
                check_bad_fraction(cfg, self.history, steps * metrics["global_batch"], seen)  # same on every rank
                if ctx.rank == 0:
                    metrics.update(validate(cfg, self.paths, self.bundle, self.model, self.manifest.classnames,
                                            ctx.device))
                    self.log(f"[{run_label(cfg)}] epoch {epoch}/{self.total}{where} loss {metrics['train_loss']:.4f} "
                             f"val acc {metrics['val_id_accuracy']:.3f} val auroc {metrics['val_auroc']:.3f} "
                             f"({metrics['samples_per_s']:.0f} samples/s, {metrics['bad_samples']} bad samples skipped)")
                resumable = ctx.rank == 0 and every and epoch % every == 0 and epoch < self.total
                with tempfile.TemporaryDirectory() as tmp:  # the report hook copies it to run storage
                    saved = checkpoint.save(Path(tmp), wrapped, optimizer, scheduler, epoch, epoch * steps,
                                            self.history, stage=index) if resumable else None
                    ctx.report(metrics, str(saved) if saved else None)
        except engine.Diverged as err:  # every rank diverges at the same step (train_step agrees across ranks)
            raise RunStopped("diverged", ValueError(f"{err} of epoch {epoch}"), self.history, collective=True) from err
        except BadDataError as err:
            raise RunStopped("failed", err, self.history, err.collective) from err


def _gathered_bad(batches: CountedBatches, ctx: engine.RunContext) -> BadSamples:
    """The bad samples every rank skipped since the last call (all ranks call it together)."""
    mine = batches.take_bad()
    return BadSamples.merged(ctx.gather_objects(mine) if ctx.gather_objects else [mine])


def check_bad_fraction(cfg: Config, history: list[dict], good_per_epoch: int, seen: BadSamples) -> None:
    """BadDataError (collective) when more than data.max_bad_fraction of the training samples read
    over ``history`` were bad; ``good_per_epoch``: the samples an epoch trains on, all ranks."""
    bad = sum(int(h["bad_samples"]) for h in history)
    read = bad + good_per_epoch * len(history)
    if bad > cfg.data.max_bad_fraction * read:
        raise BadDataError(f"{cfg.data.train}: {bad} of the {read} training samples read were bad ({bad / read:.2%}), "
                           f"more than data.max_bad_fraction={cfg.data.max_bad_fraction}: {seen.describe()}",
                           collective=True)
