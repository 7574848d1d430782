"""Pretraining the tiny CLIP on the synthetic captioned corpus: the stand-in for OpenAI's weights.

Runs once per (architecture, pretraining settings, world, seed) and is cached, so
every later run starts from the same weights, as real runs start from a
published checkpoint. Plain PyTorch in this process; no Ray.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from harness import models
from harness.train import engine
from harness.config import Config, OptimConfig
from harness.data.pipeline import CountedBatches, decoded_captions, train_pipeline
from harness.data.shards import read_manifest
from harness.losses import CMALoss
from harness.paths import cache_dir

CORPUS = "pretrain"


def checkpoint_path(cfg: Config, data_root: Path) -> Path:
    """Cache key: architecture, pretraining settings (their own seed among them) and the world that
    made the corpus; not the run's seed, so every training seed starts from the same weights."""
    world = (data_root / "world.json").read_bytes() if (data_root / "world.json").is_file() else b""
    key = json.dumps({"arch": cfg.model.arch, "pretrain": cfg.pretrain.model_dump(),
                      "world": hashlib.sha256(world).hexdigest()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "pretrained" / f"{cfg.model.arch}-synthetic-{digest}.pt"


def ensure_pretrained(cfg: Config, data_root: Path, log=print) -> Path:
    """Return the cached pretrained checkpoint, pretraining it first when missing."""
    path = checkpoint_path(cfg, data_root)
    if path.is_file():
        log(f"pretrained weights: {path} (cached)")
        return path
    log(f"pretraining {cfg.model.arch} on the synthetic corpus ({cfg.pretrain.epochs} epochs) ...")
    start = time.perf_counter()
    model = pretrain(cfg, data_root, log)
    models.save_weights(model, path)
    log(f"pretrained weights: {path} ({time.perf_counter() - start:.0f} s)")
    return path


def pretrain(cfg: Config, data_root: Path, log=print) -> torch.nn.Module:
    settings = cfg.pretrain
    torch.manual_seed(settings.seed)
    bundle = models.build(cfg.model.arch, None)
    manifest = read_manifest(data_root / CORPUS)
    steps = manifest.num_samples // settings.batch_size
    optim_cfg = OptimConfig(lr=settings.lr, weight_decay=settings.weight_decay)
    optimizer = engine.make_optimizer(bundle.model, optim_cfg)
    scheduler = engine.warmup_cosine(optimizer, settings.warmup_steps, steps * settings.epochs)
    # Bad samples are skipped (they only slow pretraining down); a mostly unreadable corpus fails.
    batches = CountedBatches(train_pipeline(manifest.shards, bundle.train_transform, decoded_captions, bundle.tokenizer,
                                            settings.batch_size, seed=settings.seed, shard_samples=manifest.shard_samples),
                             give_up_after=steps * settings.epochs * settings.batch_size, where=CORPUS)
    ctx = engine.RunContext()
    for epoch in range(1, settings.epochs + 1):
        metrics = engine.train_epoch(bundle.model, batches, steps, CMALoss(0.0), optimizer, scheduler, ctx)
        log(f"  pretrain epoch {epoch}/{settings.epochs}: loss {metrics['train_loss']:.3f} "
            f"({metrics['samples_per_s']:.0f} samples/s, {batches.take_bad().total} bad samples skipped)")
    return bundle.model
