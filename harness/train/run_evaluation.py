"""A run's evaluation: validation (each epoch and at the end), the test sets encoded across ranks
through the shared embedding cache, and every selected score on them. The one evaluation tail that a
training run (harness.train.runner.run) and an evaluation of given weights (runner.evaluate_only)
share, apart from the training loop so that each reads alone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness import gap, models, negatives
from harness.config import Config, run_label
from harness.data.shards import read_manifest
from harness.evaluation import embed_cache
from harness.evaluation import evaluate
from harness.evaluation import score_inputs
from harness.train import engine

if TYPE_CHECKING:
    from harness.train.runner import RunPaths


def evaluate_model(cfg: Config, paths: RunPaths, ctx: engine.RunContext, bundle, model, classnames,
                   head: dict, log) -> tuple[dict | None, object]:
    """The end of every run, trained or not: each rank encodes its share of the test sets (through
    the shared embedding cache), then rank 0 validates and scores them. Returns (``head`` + the
    evaluation's fields, the cache); the summary is None on the other ranks. ``eval_s`` counts
    the encoding and the scoring, not the validation (a training run's figure)."""
    eval_start = time.perf_counter()
    cache = model_cache(cfg, bundle, model, log)
    embeddings, encoded_by_rank = encode_test_sets(cfg, paths, bundle, model, ctx, cache)
    if ctx.rank != 0:
        return None, cache
    summary = dict(head)
    encode_s = time.perf_counter() - eval_start
    summary.update(validate(cfg, paths, bundle, model, classnames, ctx.device, cache))
    test_start = time.perf_counter()
    summary.update(test(cfg, paths, bundle, model, classnames, ctx.device, embeddings, cache))
    log(f"[{run_label(cfg)}] {cache.summary()}")
    summary["bad_samples_eval"] = summary["val_bad_samples"] + sum(summary["test_bad_samples"].values())
    summary.update(eval_s=encode_s + time.perf_counter() - test_start, eval_encoded_by_rank=encoded_by_rank)
    return summary, cache


def _encode_share(cfg: Config, manifest, bundle, model, device, rank: int = 0,
                  world_size: int = 1) -> evaluate.Embeddings | None:
    """This rank's shards of an evaluation set (None when it has none), under the bad-sample policy:
    every sample the manifest promises, labels within the classes for ID sets, unless
    eval.allow_bad_samples."""
    shards = manifest.shards[rank::world_size]
    if not shards:
        return None
    return evaluate.encode_images(model, shards, bundle.eval_transform, cfg.eval.batch_size, device,
                                  shard_samples=manifest.shard_samples[rank::world_size],
                                  num_classes=len(manifest.classnames) if manifest.kind == "id" else None,
                                  allow_bad=cfg.eval.allow_bad_samples)


def _missing(paths: RunPaths, name: str, emb: evaluate.Embeddings) -> int:
    """Samples of an evaluation set skipped as bad: what its manifest promises minus what was encoded."""
    return max(0, read_manifest(paths.dataset(name)).num_samples - len(emb.keys))


def _encode(cfg: Config, paths: RunPaths, bundle, model, name: str, device,
            cache: embed_cache.EmbeddingCache | None) -> evaluate.Embeddings:
    manifest = read_manifest(paths.dataset(name))
    encode = lambda: _encode_share(cfg, manifest, bundle, model, device)  # noqa: E731
    if cache is None:
        return encode()
    return evaluate.Embeddings.from_dict(cache.get_or_build(_cache_path(cfg, paths, cache, name),
                                                            lambda: encode().as_dict()))


def model_cache(cfg: Config, bundle, model, log=print) -> embed_cache.EmbeddingCache:
    """The shared embedding cache of these weights (harness.evaluation.embed_cache)."""
    return embed_cache.for_bundle(bundle, model, cfg.model.arch,
                                  models.needs_quick_gelu(cfg.model.arch, cfg.model.pretrained), log=log)


def _cache_path(cfg: Config, paths: RunPaths, cache: embed_cache.EmbeddingCache, name: str) -> Path:
    return cache.path(paths.dataset(name), "features", allow_bad=cfg.eval.allow_bad_samples)


def encode_test_sets(cfg: Config, paths: RunPaths, bundle, model, ctx: engine.RunContext,
                     cache: embed_cache.EmbeddingCache | None = None
                     ) -> tuple[dict[str, evaluate.Embeddings] | None, dict[str, list[int]]]:
    """Encode ID test and every OoD test set with the work split across ranks by shard.

    Each rank encodes the shards ``rank::world_size`` of each set (none when the set
    has fewer shards than ranks), so every sample is encoded exactly once; rank 0
    gathers the parts, in rank order, and stores each set in the shared embedding cache
    (harness.evaluation.embed_cache). A set already cached for these weights is read instead (every
    rank checks, so all skip it together). Returns (the embeddings on rank 0, else None;
    samples encoded by each rank).
    """
    cache = cache or model_cache(cfg, bundle, model)
    embeddings, counts = {}, {}
    for name in dict.fromkeys((cfg.data.id_test, *cfg.data.ood_test)):  # a set named twice is encoded once
        path = _cache_path(cfg, paths, cache, name)
        manifest = read_manifest(paths.dataset(name))
        cached = cache.lookup(path)  # None when missing or corrupt: this rank encodes its share
        part = None if cached is not None else _encode_share(cfg, manifest, bundle, model, ctx.device,
                                                             ctx.rank, ctx.world_size)
        parts = ctx.gather_objects(part) if ctx.gather_objects else [part]
        counts[name] = [len(p.keys) if p is not None else 0 for p in parts]
        if ctx.rank != 0:
            continue
        if cached is not None:
            embeddings[name] = evaluate.Embeddings.from_dict(cached)
            continue

        def whole(parts=parts, manifest=manifest):
            skipped = any(p is None and manifest.shards[r::len(parts)] for r, p in enumerate(parts))
            if skipped:  # a rank read a good entry that rank 0 did not (rebuilt meanwhile): encode it all here
                parts = [_encode_share(cfg, manifest, bundle, model, ctx.device)]
            present = [p for p in parts if p is not None]
            if not present:
                raise ValueError(f"{name}: no samples in {paths.dataset(name)}")
            return evaluate.Embeddings(torch.cat([p.features for p in present]), torch.cat([p.labels for p in present]),
                                       [k for p in present for k in p.keys]).as_dict()

        embeddings[name] = evaluate.Embeddings.from_dict(cache.get_or_build(path, whole))
    return (embeddings if ctx.rank == 0 else None), counts


def link_into_run(cache_file: Path, run_file: Path) -> None:
    """``run_file`` as a hard link to the cache entry (a copy across file systems), for readers of
    the run directory (the report's gap projection)."""
    run_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_file.with_name(f".{run_file.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(cache_file, tmp)
    except OSError:
        shutil.copyfile(cache_file, tmp)
    os.replace(tmp, run_file)


def text_side(cfg: Config, paths: RunPaths, bundle, model, classnames, device,
              cache: embed_cache.EmbeddingCache | None) -> evaluate.TextSide:
    """The class side every score uses: the method's classifier and the negative labels mined with the
    model's text encoder, from the cache of its weights when given (the digest covers a method's head
    and learned prompts)."""
    method = getattr(model, "_method", None)

    def build():  # the method's classifier (harness.classifier; a bare CLIP's class prompts) + the negatives
        classifier = method.classifier(model, bundle.tokenizer, classnames, cfg.eval, device) if method else None
        return evaluate.build_text_side(model, bundle.tokenizer, classnames, cfg.eval, paths.negatives(cfg), device,
                                        csp_path=paths.csp_negatives(cfg), classifier=classifier)

    if cache is None:
        return build()
    e = cfg.eval
    path = cache.text_path(classnames=list(classnames), prompts=[e.eval_prompt, e.noun_prompt, e.adjective_prompt],
                           negatives=embed_cache.file_checksum(paths.negatives(cfg)),
                           csp=embed_cache.file_checksum(paths.csp_negatives(cfg)) if "csp" in e.scores else None,
                           with_csp=negatives.CSP_POOL_RULE if "csp" in e.scores else False,
                           csp_seed=e.csp_seed if "csp" in e.scores else None,
                           percentile=e.neg_percentile, ratio=e.neg_ratio)
    return evaluate.TextSide.from_dict(cache.get_or_build(path, lambda: build().as_dict()))


def validate(cfg: Config, paths: RunPaths, bundle, model, classnames, device,
             cache: embed_cache.EmbeddingCache | None = None) -> dict[str, float]:
    """The selection objective: ID-val accuracy and OoD-val detection; never a test OoD set.
    ``cache``: the final weights' embedding cache (None during training: the weights change)."""
    text = text_side(cfg, paths, bundle, model, classnames, device, cache)
    id_emb = _encode(cfg, paths, bundle, model, cfg.data.id_val, device, cache)
    ood_emb = _encode(cfg, paths, bundle, model, cfg.data.ood_val, device, cache)
    score = cfg.eval.selection_score
    ood_cfg = cfg.eval.model_copy(update={"scores": (score,)})
    metrics = evaluate.ood_table(evaluate.compute_scores(id_emb.features, text, ood_cfg, cfg.seed),
                                 {"ood_val": evaluate.compute_scores(ood_emb.features, text, ood_cfg, cfg.seed)})[0]
    acc = evaluate.id_accuracy(id_emb, text)
    return {"val_id_accuracy": acc, "val_auroc": metrics["auroc"], "val_fpr95": metrics["fpr95"],
            "val_objective": 0.5 * (acc + metrics["auroc"]),
            "val_bad_samples": _missing(paths, cfg.data.id_val, id_emb) + _missing(paths, cfg.data.ood_val, ood_emb)}


def test(cfg: Config, paths: RunPaths, bundle, model, classnames, device,
         embeddings: dict[str, evaluate.Embeddings] | None = None,
         cache: embed_cache.EmbeddingCache | None = None) -> dict:
    """Encode ID test and every OoD test set once (shared cache), then compute every score from the cache.
    ``embeddings``: the sets already encoded (e.g. across ranks by :func:`encode_test_sets`).

    Writes ``scores.pt`` ({"keys": {dataset: [key, ...]}, "scores": {dataset: {score: (N,) tensor}}},
    in eval read order), with stream scores ``paired_scores.pt`` ({OoD dataset: {score: {"id": (N_id,),
    "ood": (N_ood,)}}}, the ID scores of that pair)
    and ``embeddings/text.pt`` (the TextSide), and measures the modality gap on the ID test set
    (harness.gap). ``test_bad_samples``: per set, the samples skipped as bad (eval.allow_bad_samples).
    ``skipped_scores``: selected scores this run's model cannot provide inputs for, with the reason.
    """
    cache = cache or model_cache(cfg, bundle, model)
    text = text_side(cfg, paths, bundle, model, classnames, device, cache)
    if embeddings is None:
        embeddings = {name: _encode(cfg, paths, bundle, model, name, device, cache)
                      for name in dict.fromkeys((cfg.data.id_test, *cfg.data.ood_test))}
    train_dir = paths.dataset(cfg.data.train)
    kept, skipped = score_inputs.plan(cfg.eval.scores, score_inputs.available_inputs(
        model, cfg.eval, (train_dir / "manifest.json").is_file()))
    ecfg = cfg.eval.model_copy(update={"scores": kept})
    scores = {name: evaluate.compute_scores(emb.features, text, ecfg, cfg.seed, score_inputs.provide(
        kept, cache, model, bundle, paths.dataset(name), text, ecfg, device, train_dir, cfg.seed))
        for name, emb in embeddings.items()}
    id_emb, id_scores = embeddings[cfg.data.id_test], scores[cfg.data.id_test]
    paired = {name: evaluate.stream_scores(id_emb.features, embeddings[name].features, text, ecfg, cfg.seed)
              for name in cfg.data.ood_test}
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"keys": {name: emb.keys for name, emb in embeddings.items()}, "scores": scores},
               paths.run_dir / "scores.pt")
    if any(paired.values()):
        torch.save({d: {s: {"id": i, "ood": o} for s, (i, o) in by.items()} for d, by in paired.items()},
                   paths.run_dir / "paired_scores.pt")
    text.save(paths.run_dir / "embeddings" / "text.pt")
    link_into_run(_cache_path(cfg, paths, cache, cfg.data.id_test),
                  paths.run_dir / "embeddings" / f"{cfg.data.id_test}.pt")
    ood_scores = {name: scores[name] for name in cfg.data.ood_test}
    return {"id_accuracy": evaluate.id_accuracy(id_emb, text), "ood": evaluate.ood_table(id_scores, ood_scores, paired),
            "num_negatives": len(text.negative_labels), "negatives_sample": text.negative_labels[:20],
            "test_bad_samples": {name: _missing(paths, name, emb) for name, emb in embeddings.items()},
            "skipped_scores": skipped,
            "gap": gap.measures(id_emb.features, id_emb.labels, text.class_features, seed=cfg.seed)}
