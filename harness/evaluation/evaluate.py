"""Evaluation: encode each dataset once, cache the embeddings, compute every score from the cache.

Embedding caches are keyed by dataset and by the weights that produced them
(a run directory holds one model), so new scores need no re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from harness import metrics, models, negatives
from harness.evaluation import allocator
from harness.classifier import Classifier
from harness.config import EvalConfig
from harness.data.badsamples import BadDataError
from harness.data.pipeline import eval_pipeline
from harness.paths import torch_save_atomic
from harness.scores import ScoreInputs, get_score


@dataclass(frozen=True)
class Embeddings:
    """L2-normalised image features (N, D) float32, labels (N,) long (-1 for OoD), sample keys."""

    features: torch.Tensor
    labels: torch.Tensor
    keys: list[str]

    def as_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels, "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, data: dict) -> "Embeddings":
        return cls(data["features"], data["labels"], list(data["keys"]))

    def save(self, path: Path) -> None:
        torch_save_atomic(self.as_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "Embeddings":
        return cls.from_dict(torch.load(path, weights_only=True))


@dataclass(frozen=True)
class TextSide:
    """Everything text-derived that the scores need, for one model.

    Saved beside the image embeddings (``embeddings/text.pt``) so that gap measures
    and projections can be computed from a run directory without re-encoding.
    """

    class_features: torch.Tensor  # (C, D) ID class prompts, L2-normalised, row k = class k
    negative_features: torch.Tensor  # (M, D) mined negative prompts
    negative_labels: list[str]
    logit_scale: float
    classnames: tuple[str, ...] = ()
    head_weight: torch.Tensor | None = None  # (C, D) the method's linear head, when it has one
    head_bias: torch.Tensor | None = None  # (C,)
    csp_features: torch.Tensor | None = None  # (M', D) CSP's conjugated pool, when the csp score is selected

    @property
    def classifier(self) -> Classifier:
        """The method's ID classifier (harness.classifier): class_features and logits()."""
        return Classifier(self.class_features, self.logit_scale, self.head_weight, self.head_bias)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, C) ID logits: the method's head, else the cosine logits x the logit scale."""
        return self.classifier.logits(image_features)

    def as_dict(self) -> dict:
        head = {} if self.head_weight is None else {"head_weight": self.head_weight, "head_bias": self.head_bias}
        return {"class_features": self.class_features, "negative_features": self.negative_features,
                "negative_labels": list(self.negative_labels), "logit_scale": self.logit_scale,
                "classnames": list(self.classnames), "csp_features": self.csp_features, **head}

    @classmethod
    def from_dict(cls, data: dict) -> "TextSide":
        return cls(data["class_features"], data["negative_features"], list(data["negative_labels"]),
                   float(data["logit_scale"]), tuple(data["classnames"]), data.get("head_weight"),
                   data.get("head_bias"), data.get("csp_features"))

    def save(self, path: Path) -> None:
        torch_save_atomic(self.as_dict(), path)

    @classmethod
    def load(cls, path: Path) -> "TextSide":
        return cls.from_dict(torch.load(path, weights_only=True))


@torch.no_grad()
def encode_images(model, urls: Sequence[str], transform: Callable, batch_size: int,
                  device: torch.device | str = "cpu", shard_samples: Sequence[int] | None = None,
                  num_classes: int | None = None, allow_bad: bool = False) -> Embeddings:
    """Every sample of ``urls``, in order; a bad one raises BadDataError naming its shard and key
    unless ``allow_bad`` (harness.data.pipeline.eval_pipeline has the rules and arguments)."""
    allocator.fix_mmap_threshold()  # else the heap, not the data, grows with the number of batches
    model.eval()
    feats, labels, keys = [], [], []
    for images, batch_labels, batch_keys in eval_pipeline(urls, transform, batch_size, shard_samples=shard_samples,
                                                          num_classes=num_classes, allow_bad=allow_bad):
        feats.append(model.encode_image(images.to(device), normalize=True).float().cpu())
        labels.append(batch_labels)
        keys.extend(batch_keys)
    if not keys:
        raise BadDataError(f"no samples read from {len(urls)} shard(s): {list(urls)[:3]}")
    return Embeddings(torch.cat(feats), torch.cat(labels), keys)


def build_text_side(model, tokenizer: Callable, classnames: Sequence[str], cfg: EvalConfig,
                    negatives_path: Path, device: torch.device | str = "cpu", csp_path: Path | None = None,
                    classifier: Classifier | None = None) -> TextSide:
    """Encode the ID class prompts (or take a method's ``classifier``: its class features and head)
    and mine the negative labels with this model's text encoder (and CSP's pool when the csp score is
    selected: ``csp_path``, else harness.negatives.csp_pool of the candidates)."""
    if "csp" in cfg.scores:  # before any encoding
        negatives.check_csp_source(negatives_path, csp_path)
    if classifier is None:
        class_features = models.encode_texts(model, tokenizer, [cfg.eval_prompt.format(c) for c in classnames],
                                      device=device)
        classifier = Classifier(class_features, float(model.logit_scale.exp().item()))
    class_features = classifier.class_features
    candidates = negatives.read_candidates(negatives_path)
    mined = negatives.is_mined(negatives_path)
    features, labels = _mined_pool(model, tokenizer, classnames, cfg, class_features, candidates, mined, device)
    csp = None
    if "csp" in cfg.scores:  # CSP's pool: eval.csp_negatives as written, else built from eval.negatives here
        pool = negatives.read_candidates(csp_path) if csp_path else negatives.csp_pool(candidates, cfg.csp_seed)
        mined = bool(csp_path) and negatives.is_mined(csp_path)
        csp, _ = negatives.csp_negatives(model, tokenizer, classnames, pool, mined, cfg.neg_percentile, cfg.neg_ratio,
                                         device)
    return TextSide(class_features, features, labels, classifier.logit_scale, tuple(classnames),
                    classifier.head_weight, classifier.head_bias, csp)


def _mined_pool(model, tokenizer, classnames, cfg: EvalConfig, class_features, candidates, mined: bool, device):
    """(features, words) of the negatives NegMining keeps from ``candidates`` (all of them when the
    file was already mined by `harness negatives`); an ID class name is never a negative."""
    id_words = {c.lower() for c in classnames}
    candidates = [c for c in candidates if c.word.lower() not in id_words]
    cand_features = models.encode_texts(model, tokenizer,
                                 negatives.prompts(candidates, cfg.noun_prompt, cfg.adjective_prompt), device=device)
    keep = list(range(len(candidates))) if mined else negatives.mine(
        class_features, cand_features, [c.kind for c in candidates], cfg.neg_percentile, cfg.neg_ratio)
    return cand_features[keep], [candidates[i].word for i in keep]


def score_inputs(features: torch.Tensor, text: TextSide, provided: dict | None = None) -> ScoreInputs:
    """What every set offers the scores, plus what the evaluator ``provided`` (logits, train_features,
    extra per-image results)."""
    provided = dict(provided or {})
    if text.head_weight is not None:  # head scores on the method's own head (else logit_scale x cosine)
        provided.setdefault("logits", text.logits(features))
        provided.setdefault("linear_head", (text.head_weight, text.head_bias))
    return ScoreInputs(features=features, class_text=text.class_features, logit_scale=text.logit_scale,
                       negatives=text.negative_features, csp_negatives=text.csp_features, **provided)


def compute_scores(features: torch.Tensor, text: TextSide, cfg: EvalConfig, seed: int = 0,
                   provided: dict | None = None) -> dict[str, torch.Tensor]:
    """Every configured per-set score for every image (higher = more ID); stream scores (which
    need the ID/OoD pair) are left to :func:`stream_scores`, skipped ones to the caller's notes."""
    inputs = score_inputs(features, text, provided)
    out = {}
    for name in cfg.scores:
        spec = get_score(name)
        if not spec.stream:
            out[name] = spec.compute(inputs, cfg, seed)
    return out


def stream_scores(id_features: torch.Tensor, ood_features: torch.Tensor, text: TextSide, cfg: EvalConfig,
                  seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every configured test-time score of one (ID, OoD) pair: score -> (ID scores, OoD scores)."""
    inputs = score_inputs(ood_features, text, {"id_features": id_features})
    return {name: get_score(name).compute(inputs, cfg, seed) for name in cfg.scores if get_score(name).stream}


def id_accuracy(emb: Embeddings, text: TextSide) -> float:
    return metrics.accuracy(text.logits(emb.features), emb.labels)


def ood_table(id_scores: dict[str, torch.Tensor], ood_scores: dict[str, dict[str, torch.Tensor]],
              paired: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> list[dict]:
    """One row per (score, OoD dataset) with every metric of harness.metrics.ood_metrics;
    ``paired``: stream scores, OoD dataset -> score -> (ID scores, OoD scores) of that pair."""
    rows = []
    for dataset, by_score in ood_scores.items():
        pairs = [(score, id_scores[score], values) for score, values in by_score.items()]
        pairs += [(score, ids, oods) for score, (ids, oods) in (paired or {}).get(dataset, {}).items()]
        for score, ids, values in pairs:
            row = {"score": score, "dataset": dataset, "n_id": len(ids), "n_ood": len(values)}
            row.update(metrics.ood_metrics(ids, values))
            rows.append(row)
    return rows
