"""One run: build the model, fine-tune it, validate each epoch, evaluate on the test sets.

Plain code: it takes a RunContext (rank, world size, report hook), so it is the
body of a Ray Train worker and also runs alone in a test. Rank 0 writes the
run's outputs into ``run_dir``:

- ``checkpoint/model.pt``: the final weights (state dict, loads with weights_only=True)
- ``embeddings/<dataset>.pt``: the test-set embedding cache
- ``scores.pt``: per-sample scores {dataset: {score: tensor}}
- ``result.json``: the summary (validation metrics, ID accuracy, OoD rows, timings)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness import engine, evaluate, models
from harness.config import Config
from harness.data.pipeline import class_prompt, loader, train_pipeline
from harness.data.shards import read_manifest
from harness.losses import CMALoss


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


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temp + rename): a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def run(cfg: Config, paths: RunPaths, ctx: engine.RunContext, log=print) -> dict | None:
    """Train (cfg.schedule.epochs may be 0) and evaluate; returns the summary on rank 0."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    bundle = models.build(cfg.model.arch, str(paths.weights) if paths.weights else None)
    train_manifest = read_manifest(paths.dataset(cfg.data.train))
    classnames = train_manifest.classnames
    model = ctx.prepare_model(bundle.model)
    history = []
    global_batch = cfg.data.batch_size * ctx.world_size
    steps = train_manifest.num_samples // global_batch
    if cfg.schedule.epochs and steps == 0:
        raise ValueError(f"data.batch_size {cfg.data.batch_size} x {ctx.world_size} workers exceeds the "
                         f"{train_manifest.num_samples} training samples of {cfg.data.train}")
    if cfg.schedule.epochs:
        optimizer = engine.make_optimizer(model, cfg.optim)
        scheduler = engine.warmup_cosine(optimizer, cfg.schedule.warmup_steps, steps * cfg.schedule.epochs)
        loss_fn = CMALoss(cfg.loss.lam, rank=ctx.rank, world_size=ctx.world_size, gather=ctx.gather)
        batches = iter(loader(train_pipeline(
            train_manifest.shards, bundle.train_transform, class_prompt(classnames, cfg.eval.train_prompt),
            bundle.tokenizer, cfg.data.batch_size, ctx.rank, ctx.world_size, cfg.seed, cfg.data.shuffle_buffer),
            cfg.data.loader_workers))
        for epoch in range(1, cfg.schedule.epochs + 1):
            metrics = engine.train_epoch(model, batches, steps, loss_fn, optimizer, scheduler, ctx,
                                         cfg.model.precision)
            metrics.update(epoch=epoch, step=epoch * steps, global_batch=global_batch)
            if ctx.rank == 0:
                metrics.update(validate(cfg, paths, bundle, models.unwrap(model), classnames, ctx.device))
                log(f"[{cfg.name}] epoch {epoch}/{cfg.schedule.epochs} loss {metrics['train_loss']:.4f} "
                    f"val acc {metrics['val_id_accuracy']:.3f} val auroc {metrics['val_auroc']:.3f} "
                    f"({metrics['samples_per_s']:.0f} samples/s)")
            history.append(metrics)
            ctx.report(metrics, None)
    train_s = time.perf_counter() - started
    if ctx.rank != 0:
        ctx.report({"done": 1}, None)
        return None
    bare = models.unwrap(model)
    summary = {"epochs": history, "train_s": train_s, "global_batch": global_batch,
               "steps_per_epoch": steps, "world_size": ctx.world_size}
    summary.update(validate(cfg, paths, bundle, bare, classnames, ctx.device))
    eval_start = time.perf_counter()
    summary.update(test(cfg, paths, bundle, bare, classnames, ctx.device))
    summary["eval_s"] = time.perf_counter() - eval_start
    summary["wall_s"] = time.perf_counter() - started
    checkpoint = paths.run_dir / "checkpoint"
    models.save_weights(bare, checkpoint / "model.pt")
    summary["checkpoint"] = str(checkpoint / "model.pt")
    write_json(paths.run_dir / "result.json", summary)
    final = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    ctx.report(final, str(checkpoint))
    return summary


def _encode(cfg: Config, paths: RunPaths, bundle, model, name: str, device, cache: bool) -> evaluate.Embeddings:
    manifest = read_manifest(paths.dataset(name))
    encode = lambda: evaluate.encode_images(model, manifest.shards, bundle.eval_transform,  # noqa: E731
                                            cfg.eval.batch_size, device)
    if not cache:
        return encode()
    return evaluate.cached_embeddings(paths.run_dir / "embeddings" / f"{name}.pt", encode)


def validate(cfg: Config, paths: RunPaths, bundle, model, classnames, device) -> dict[str, float]:
    """The selection objective: ID-val accuracy and OoD-val detection; never a test OoD set."""
    text = evaluate.build_text_side(model, bundle.tokenizer, classnames, cfg.eval, paths.negatives(cfg), device)
    id_emb = _encode(cfg, paths, bundle, model, cfg.data.id_val, device, cache=False)
    ood_emb = _encode(cfg, paths, bundle, model, cfg.data.ood_val, device, cache=False)
    score = cfg.eval.selection_score
    ood_cfg = cfg.eval.model_copy(update={"scores": (score,)})
    metrics = evaluate.ood_table(evaluate.compute_scores(id_emb.features, text, ood_cfg, cfg.seed),
                                 {"ood_val": evaluate.compute_scores(ood_emb.features, text, ood_cfg, cfg.seed)})[0]
    acc = evaluate.id_accuracy(id_emb, text)
    return {"val_id_accuracy": acc, "val_auroc": metrics["auroc"], "val_fpr95": metrics["fpr95"],
            "val_objective": 0.5 * (acc + metrics["auroc"])}


def test(cfg: Config, paths: RunPaths, bundle, model, classnames, device) -> dict:
    """Encode ID test and every OoD test set once (cached), then compute every score from the cache."""
    text = evaluate.build_text_side(model, bundle.tokenizer, classnames, cfg.eval, paths.negatives(cfg), device)
    id_emb = _encode(cfg, paths, bundle, model, cfg.data.id_test, device, cache=True)
    id_scores = evaluate.compute_scores(id_emb.features, text, cfg.eval, cfg.seed)
    ood_scores = {name: evaluate.compute_scores(_encode(cfg, paths, bundle, model, name, device, True).features,
                                                text, cfg.eval, cfg.seed)
                  for name in cfg.data.ood_test}
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({cfg.data.id_test: id_scores, **ood_scores}, paths.run_dir / "scores.pt")
    return {"id_accuracy": evaluate.id_accuracy(id_emb, text), "ood": evaluate.ood_table(id_scores, ood_scores),
            "num_negatives": len(text.negative_labels), "negatives_sample": text.negative_labels[:20],
            "gap": modality_gap(id_emb, text)}


def modality_gap(emb: evaluate.Embeddings, text: evaluate.TextSide) -> dict[str, float]:
    """Two plain measures of how far ID images sit from ID text on the hypersphere.

    centroid_distance: ||mean(image features) - mean(class prompt features)||;
    pair_cosine: the mean cosine of each ID image with its own class prompt.
    """
    img = emb.features
    txt = text.class_features
    pair = (img * txt[emb.labels]).sum(dim=1).mean().item()
    return {"centroid_distance": (img.mean(0) - txt.mean(0)).norm().item(), "pair_cosine": pair}
