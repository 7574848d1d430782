"""Classifier-head methods: LP (a linear head on the frozen image encoder), FFT (image encoder +
head) and LP-FT (LP, then FFT from the learned head), all with cross-entropy over the ID classes.

The head acts on the L2-normalised image embedding: logits = s x (W f + b), with W starting as
the class-prompt embeddings, b as 0 and s the logit scale (fixed), so before any step its logits
are the zero-shot cosine logits. W is trained in cosine units, not s x W: with s ~ 100 an
optimiser step of lr 2e-4 on s x W would move the logits by nothing (the head stayed at zero-shot
for a whole demo run). It is the classifier the head scores (MSP, Energy, MaxLogit) read. The text encoder never trains:
the text scores use the original class prompts against the method's image features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from harness.classifier import Classifier
from harness.config import MethodParams
from harness.lazy import torch
from harness.methods.base import Method, Setup, Stage, register, text_classifier

if TYPE_CHECKING:
    from harness.methods.model import MethodModel


HEAD, VISUAL = "extra.head.", "clip.visual."


class CrossEntropyObjective:
    """Mean cross-entropy of the ``logits`` in a forward's output (DDP averages it over ranks)."""

    def from_output(self, out: dict, labels: torch.Tensor):
        loss = torch.nn.functional.cross_entropy(out["logits"].float(), labels)
        return loss, {"ce": loss.detach()}


def add_head(model: MethodModel, setup: Setup) -> None:
    """``model.extra.head``: the class-prompt embeddings (eval.eval_prompt) x the logit scale, bias 0."""
    zero_shot = text_classifier(model, setup.bundle.tokenizer, setup.classnames, setup.cfg.eval.eval_prompt, "cpu")
    from harness.methods.layers import ScaledHead

    model.extra["head"] = ScaledHead(zero_shot.class_features, zero_shot.logit_scale)


def head_logits(model: MethodModel, images: torch.Tensor) -> dict:
    """The head's logits; the image encoder runs without autograd while it is frozen."""
    trains = next(model.clip.visual.parameters()).requires_grad
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
        features = model.clip.encode_image(images, normalize=True)
    return {"logits": model.extra["head"](features.float())}


class HeadMethod(Method):
    """Shared by lp, fft and lp-ft: the head, its loss and its classifier."""

    def extend(self, model, setup):
        add_head(model, setup)

    def forward(self, model, images, tokens):
        return head_logits(model, images)

    def objective(self, ctx):
        return CrossEntropyObjective()

    def classifier(self, model, tokenizer, classnames, cfg, device):
        text = text_classifier(model, tokenizer, classnames, cfg.eval_prompt, device)
        head = model.extra["head"]
        scale = head.scale.detach().float().cpu()
        return Classifier(text.class_features, text.logit_scale, scale * head.weight.detach().float().cpu(),
                          scale * head.bias.detach().float().cpu())


class LpParams(MethodParams):
    name: Literal["lp"] = "lp"


@register
class LinearProbe(HeadMethod):
    name, label, colour = "lp", "LP", "tab:olive"
    description = "a linear head (zero-shot initialised) on the frozen image encoder, cross-entropy"
    Params = LpParams
    trainable = (HEAD,)


class FftParams(MethodParams):
    name: Literal["fft"] = "fft"


@register
class FullFineTune(HeadMethod):
    name, label, colour = "fft", "FFT", "tab:brown"
    description = "image encoder + the zero-shot initialised head, cross-entropy"
    Params = FftParams
    trainable = (VISUAL, HEAD)


class LpFtParams(MethodParams):
    name: Literal["lp-ft"] = "lp-ft"
    lp_epochs: int = Field(1, ge=1)
    """Epochs of the LP stage (head only); the FT stage (image encoder + head) gets the rest of
    schedule.epochs. Each stage warms up and decays its own learning rate."""


@register
class LpFt(HeadMethod):
    name, label, colour = "lp-ft", "LP-FT", "tab:pink"
    description = "LP for method.lp_epochs, then FFT from the learned head for the rest of schedule.epochs"
    Params = LpFtParams

    @classmethod
    def check_config(cls, cfg) -> None:
        epochs, lp = cfg.schedule.epochs, cfg.method.lp_epochs
        if epochs and lp >= epochs:
            raise ValueError(f"method.lp_epochs ({lp}) must be less than schedule.epochs ({epochs}): "
                             "the FT stage trains for the rest")

    def stages(self, cfg):
        if not cfg.schedule.epochs:
            return []
        lp = self.params.lp_epochs
        return [Stage("lp", lp, (HEAD,)), Stage("ft", cfg.schedule.epochs - lp, (VISUAL, HEAD))]
