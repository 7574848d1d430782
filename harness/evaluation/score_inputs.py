"""What the evaluator provides to the selected scores beyond pooled features and prompts.

A score declares its inputs (harness.scores.INPUTS); :func:`plan` keeps the selected scores
whose inputs this run can provide and notes why the others are skipped (a score that does not
apply to the run's model is a note in the results, not an error). :func:`provide` builds, per
evaluation set, the model-derived inputs the kept scores need, through the shared embedding
cache (harness.evaluation.embed_cache): GL-MCM's per-image patch term, ODIN's per-image score, KNN's bank
of ID-train features. Per-image results are cached, never the (N, P, D) patch tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from harness.data.pipeline import eval_pipeline
from harness.data.shards import read_manifest
from harness.scores import get_score, local_mcm, odin

ALWAYS = {"features", "class_text", "negatives", "logits", "stream", "linear_head"}


def available_inputs(model, cfg_eval, has_train: bool) -> set[str]:
    """The inputs a run with ``model`` can provide (patch tokens only from a ViT image tower)."""
    out = set(ALWAYS) | {"model"}
    if "csp" in cfg_eval.scores:
        out.add("csp_negatives")
    visual = getattr(model, "clip", model).visual  # a methods.MethodModel holds the CLIP as .clip
    if hasattr(visual, "_embeds") and hasattr(visual, "transformer"):
        out.add("patches")
    if has_train:
        out |= {"train_features", "train_stats"}
    return out


def plan(scores, available: set[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the scores that can run, {skipped score: why})."""
    keep, skipped = [], {}
    for name in scores:
        missing = sorted(get_score(name).needs - available)
        if missing:
            skipped[name] = f"needs {', '.join(missing)}, which this run's model does not provide"
        else:
            keep.append(name)
    return tuple(keep), skipped


def _batches(dataset_dir: Path, bundle, cfg_eval):
    manifest = read_manifest(dataset_dir)
    return eval_pipeline(manifest.shards, bundle.eval_transform, cfg_eval.batch_size,
                         shard_samples=manifest.shard_samples, allow_bad=cfg_eval.allow_bad_samples)


def _per_image(dataset_dir: Path, bundle, cfg_eval, device, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return torch.cat([fn(images.to(device)).detach().double().cpu()
                      for images, _, _ in _batches(dataset_dir, bundle, cfg_eval)])


def method_classifier(model, text) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> the run's classifier logits (the method's head, else logit_scale x cosine)."""
    def classify(images):
        return text.logits(F.normalize(model.encode_image(images).float(), dim=-1))

    return classify


def provide(scores, cache, model, bundle, dataset_dir: Path, text, cfg_eval, device, train_dir: Path | None = None,
            seed: int = 0) -> dict:
    """The ``provided`` dict of harness.evaluation.evaluate.compute_scores for one set (model in eval mode)."""
    needs = set().union(*(get_score(n).needs for n in scores)) if scores else set()
    out: dict = {"extra": {}}
    text_key = cache_key_of(text)
    model.eval()
    if "patches" in needs:
        from harness.patches import global_and_local

        path = cache.path(dataset_dir, "local_mcm", text=text_key, temperature=cfg_eval.mcm_temperature)
        out["extra"]["local_mcm"] = cache.get_or_build(path, lambda: _per_image(
            dataset_dir, bundle, cfg_eval, device,
            lambda x: local_mcm(global_and_local(getattr(model, "clip", model), x)[1], text.class_features.to(x.device),
                                cfg_eval.mcm_temperature)))
    if "model" in needs and "odin" in scores:
        path = cache.path(dataset_dir, "odin", text=text_key, temperature=cfg_eval.odin_temperature,
                          epsilon=cfg_eval.odin_epsilon)
        classify = method_classifier(model, text)
        out["extra"]["odin"] = cache.get_or_build(path, lambda: _per_image(
            dataset_dir, bundle, cfg_eval, device,
            lambda x: odin(classify, x, cfg_eval.odin_temperature, cfg_eval.odin_epsilon)))
    if "train_features" in needs and train_dir is not None:
        out["train_features"] = train_bank(cache, model, bundle, train_dir, cfg_eval, device, seed)
    if "train_stats" in needs and train_dir is not None:
        out["train_stats"] = train_stats(cache, model, bundle, train_dir, cfg_eval, device, text.class_features.shape[0])
    return out


def train_embeddings(cache, model, bundle, train_dir: Path, cfg_eval, device) -> dict:
    """Every ID-train image's features and label (one cache entry, shared by KNN's bank and train_stats)."""
    from harness.evaluation.evaluate import encode_images

    manifest = read_manifest(train_dir)
    path = cache.path(train_dir, "features", allow_bad=cfg_eval.allow_bad_samples)
    return cache.get_or_build(path, lambda: encode_images(
        model, manifest.shards, bundle.eval_transform, cfg_eval.batch_size, device,
        shard_samples=manifest.shard_samples, allow_bad=cfg_eval.allow_bad_samples).as_dict())


def train_stats(cache, model, bundle, train_dir: Path, cfg_eval, device, num_classes: int) -> dict:
    """The ID-train statistics (harness.scores.train_stats), cached per weights digest beside the
    ID-train features, plus those features and labels (ViM fits its residual space to them)."""
    from harness.scores.train_stats import train_statistics

    data = train_embeddings(cache, model, bundle, train_dir, cfg_eval, device)
    path = cache.path(train_dir, "train_stats", allow_bad=cfg_eval.allow_bad_samples, classes=num_classes,
                      react_percentile=cfg_eval.react_percentile)
    stats = cache.get_or_build(path, lambda: train_statistics(data["features"], data["labels"], num_classes,
                                                              cfg_eval.react_percentile))
    return {**stats, "features": data["features"], "labels": data["labels"]}


def train_bank(cache, model, bundle, train_dir: Path, cfg_eval, device, seed: int) -> torch.Tensor:
    """KNN's bank: the ID-train features (cached whole), a seeded eval.knn_bank_fraction of them."""
    feats = train_embeddings(cache, model, bundle, train_dir, cfg_eval, device)["features"]
    if cfg_eval.knn_bank_fraction < 1:
        count = max(1, int(len(feats) * cfg_eval.knn_bank_fraction))
        feats = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:count]]
    return feats


def cache_key_of(text) -> str:
    from harness.evaluation.embed_cache import tensor_digest

    return tensor_digest(text.class_features, torch.tensor([text.logit_scale]))
