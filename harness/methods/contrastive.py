"""Zero-shot (no training), FLYP (the CLIP contrastive loss, image paired with its class prompt)
and CMA (FLYP + lam x the CMA regulariser): both encoders train, the class prompts classify."""

from __future__ import annotations

import random
from typing import Callable, Literal, Sequence

from pydantic import Field

from harness.config import MethodParams
from harness.lazy import torch
from harness.methods.base import Method, register


class ContrastiveObjective:
    """The gathered CMA loss (harness.losses.CMALoss) on the model's paired features."""

    def __init__(self, lam: float, ctx):
        from harness.losses import CMALoss  # an nn.Module: torch, which the registry does without

        self.loss = CMALoss(lam, rank=ctx.rank, world_size=ctx.world_size, gather=ctx.gather)

    def from_output(self, out: dict, labels: torch.Tensor):
        return self.loss.from_output(out, labels)


class ZeroShotParams(MethodParams):
    name: Literal["zero-shot"] = "zero-shot"


@register
class ZeroShot(Method):
    name, label, colour = "zero-shot", "zero-shot", "tab:gray"
    description = "the starting weights, no training; class prompts classify"
    Params = ZeroShotParams
    trains, baseline = False, True
    demo = ()  # the baseline of every sweep


class FlypParams(MethodParams):
    name: Literal["flyp"] = "flyp"
    templates: Literal["single", "openai"] = "single"
    """single: eval.train_prompt for every image (the CMA code); openai: one of open_clip's 80
    OpenAI ImageNet templates drawn per image (FLYP's own paper)."""


def _openai_captions(classnames: Sequence[str], seed: int) -> Callable[[dict], str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from harness.data.pipeline import sample_label

    rng = random.Random(seed)

    def caption(sample: dict) -> str:
        label = sample_label(sample)
        if not 0 <= label < len(classnames):
            raise ValueError(f"label {label} outside the {len(classnames)} classes")
        return rng.choice(OPENAI_IMAGENET_TEMPLATES)(classnames[label])
    return caption


@register
class Flyp(Method):
    name, label, colour = "flyp", "FLYP", "tab:blue"
    description = "both encoders, the CLIP contrastive loss with the class prompt as each image's caption"
    Params = FlypParams
    baseline = True
    demo_seeds = 2

    def caption(self, classnames, cfg, rank):
        if self.params.templates == "openai":
            return _openai_captions(classnames, cfg.seed * 1000 + rank)
        return super().caption(classnames, cfg, rank)

    def objective(self, ctx):
        return ContrastiveObjective(0.0, ctx)

    def contrastive_lam(self) -> float:
        return 0.0


class CmaParams(MethodParams):
    name: Literal["cma"] = "cma"
    lam: float = Field(0.001, gt=0)
    """Weight of the CMA regulariser (the paper's 0.001 on ImageNet); lam = 0 is flyp."""


@register
class Cma(Method):
    name, label, colour = "cma", "CMA", "tab:red"
    description = "FLYP's loss + lam x the CMA regulariser (method.md)"
    Params = CmaParams
    demo = ({"lam": 0.001}, {"lam": 0.01}, {"lam": 0.1})
    demo_seeds = 2

    def objective(self, ctx):
        return ContrastiveObjective(self.params.lam, ctx)

    def contrastive_lam(self) -> float:
        return self.params.lam
