"""Prompt learning on a frozen CLIP: CoOp (M learned context vectors in the text encoder's
token-embedding sequence, "[V1] ... [VM] {class}.", cross-entropy over the ID classes, k shots a
class) and LoCoOp (CoOp + lam x an entropy regulariser on the patches whose true class is not
among their top-K classes: those are treated as OoD and pushed towards uniform).

The learned prompts are the classifier: their text features are the class features that the
text scores use, and cos x logit scale the logits of the head scores.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from harness.classifier import Classifier
from harness.config import MethodParams
from harness.lazy import torch
from harness.methods.base import Method, Setup, register
from harness.methods.head import CrossEntropyObjective
from harness.patches import global_and_local

if TYPE_CHECKING:
    from harness.methods.model import MethodModel

PROMPT = "extra.prompt."


def fitting_ctx(tokenizer, classnames, wanted: int) -> int:
    """``wanted`` context vectors, or fewer so that the longest "X.. {class}." fits the context length."""
    plain = tokenizer([f"{c}." for c in classnames])
    longest = int((plain != 0).sum(dim=1).max())  # start + class tokens + "." + end
    room = plain.shape[1] - longest
    if room < 1:
        raise ValueError(f"method.n_ctx: no room for a context vector: a class prompt fills the text "
                         f"encoder's {plain.shape[1]} tokens")
    return min(wanted, room)


def few_shot_keys(manifest, shots: int, seed: int) -> frozenset[str]:
    """``shots`` samples of each class of ``manifest``: the first by sha256(seed:key) (the same every
    run with this seed, whatever the shard order). Reads every sample's label once."""
    from harness.data.pipeline import sample_label
    from harness.data.tario import tar_samples

    by_class: dict[int, list[str]] = defaultdict(list)
    for sample in tar_samples([{"url": url} for url in manifest.shards]):
        by_class[sample_label(sample)].append(sample["__key__"])
    rank = lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()  # noqa: E731
    return frozenset(k for keys in by_class.values() for k in sorted(keys, key=rank)[:shots])


class CoopParams(MethodParams):
    name: Literal["coop"] = "coop"
    n_ctx: int = Field(16, ge=1)
    """Learned context vectors M (capped so the longest class prompt fits the text context length;
    result.json records the number used, ``n_ctx``)."""
    shots: int | None = Field(16, ge=1)
    """Training images per class, drawn deterministically from the training set (None: all)."""
    init_std: float = Field(0.02, gt=0)


@register
class Coop(Method):
    name, label, colour = "coop", "CoOp", "tab:purple"
    description = "frozen CLIP, M learned context vectors in the class prompts, cross-entropy, k shots a class"
    Params = CoopParams
    trainable = (PROMPT,)

    def extend(self, model, setup: Setup):
        from harness.methods.layers import PromptContext

        self.n_ctx = fitting_ctx(setup.bundle.tokenizer, setup.classnames, self.params.n_ctx)
        model.extra["prompt"] = PromptContext(model.clip, setup.bundle.tokenizer, setup.classnames, self.n_ctx,
                                              self.params.init_std)

    def train_keys(self, manifest, cfg):
        return None if self.params.shots is None else few_shot_keys(manifest, self.params.shots, cfg.seed)

    def forward(self, model, images, tokens):
        with torch.no_grad():
            features = model.clip.encode_image(images, normalize=True).float()
        text = model.extra["prompt"].class_features(model).float()
        return {"logits": model.clip.logit_scale.exp() * features @ text.T}

    def objective(self, ctx):
        return CrossEntropyObjective()

    def classifier(self, model, tokenizer, classnames, cfg, device):
        with torch.no_grad():
            features = model.extra["prompt"].class_features(model).float().cpu()
        return Classifier(features, float(model.clip.logit_scale.exp().item()))

    def facts(self):
        return {"n_ctx": self.n_ctx}


class LocoopParams(CoopParams):
    name: Literal["locoop"] = "locoop"
    lam: float = Field(0.25, ge=0)
    """Weight of the entropy regulariser on the patches taken for OoD."""
    top_k: int = Field(200, ge=1)
    """A patch is OoD when its true class is not among its top_k classes (capped at the number of classes)."""


def locoop_regulariser(local_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """Minus the mean entropy of the class distributions of the patches (N, P, K logits) whose
    true class (N,) is not among their ``top_k`` classes; 0 when there is no such patch."""
    top = local_logits.topk(min(top_k, local_logits.shape[-1]), dim=-1).indices
    outside = ~(top == labels[:, None, None]).any(dim=-1)  # (N, P)
    if not outside.any():
        return local_logits.sum() * 0.0  # keeps the graph (DDP expects the same parameters every step)
    log_p = torch.log_softmax(local_logits[outside].float(), dim=-1)
    return (log_p.exp() * log_p).sum(dim=-1).mean()


class LocoopObjective:
    def __init__(self, lam: float, top_k: int):
        self.lam, self.top_k = lam, top_k

    def from_output(self, out: dict, labels: torch.Tensor):
        ce = torch.nn.functional.cross_entropy(out["logits"].float(), labels)
        reg = locoop_regulariser(out["local_logits"], labels, self.top_k)
        return ce + self.lam * reg, {"ce": ce.detach(), "neg_entropy": reg.detach()}


@register
class Locoop(Coop):
    name, label, colour = "locoop", "LoCoOp", "tab:cyan"
    description = "CoOp + lam x the entropy of the patches whose class is outside their top_k (LoCoOp)"
    Params = LocoopParams
    demo = ({"top_k": 8},)  # the paper's 200 of 1,000 classes, as a share of the demo's 40 (200 would cap at 40: no patch is OoD)

    def extend(self, model, setup):
        super().extend(model, setup)
        self.top_k = min(self.params.top_k, len(setup.classnames))

    def forward(self, model, images, tokens):
        # The image tower is frozen: its global and patch features (GL-MCM's value path, which LoCoOp's
        # reference clip_w_local/model.py shares) need no gradient; the prompts' text features do.
        pooled, local = global_and_local(model.clip, images)
        text = model.extra["prompt"].class_features(model).float()
        scale = model.clip.logit_scale.exp()
        return {"logits": scale * pooled @ text.T, "local_logits": scale * local @ text.T}

    def objective(self, ctx):
        return LocoopObjective(self.params.lam, self.top_k)

    def facts(self):
        return {**super().facts(), "top_k": self.top_k}
