"""ODIN (Liang et al. 2018): MSP at temperature T after a small input perturbation.

The input moves by -eps x sign of the gradient of -log max_k softmax_k(logits / T), i.e. towards
a more confident prediction; the score is the max softmax at T of the perturbed input. The
perturbation is applied in the model's input space (after the preprocessing's normalisation), and
eps is not divided by the normalisation's per-channel std (OpenOOD's ODIN divides it: a step of
eps / std_c per channel; the report's conventions list says so).
ODIN's paper uses T = 1000, eps = 0.0014; CLIP papers often use eps = 0 (then ODIN is MSP at T).
On a zero-shot model the classifier is logit_scale x cosine to the class prompts (or the method's
head). Needs the model itself: the evaluator runs it over each set once per weights (cached).
"""

from __future__ import annotations

from typing import Callable

from harness.lazy import torch
from harness.scores import naive
from harness.scores.registry import register


def odin(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, temperature: float = 1000.0,
         epsilon: float = 0.0014) -> torch.Tensor:
    """ODIN scores of a batch of ``images`` under ``classifier`` (images -> (N, C) logits); (N,).

    Per image independent: batching does not change a score.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    x = images.detach().clone().requires_grad_(epsilon > 0)
    with torch.enable_grad():
        scaled = classifier(x) / temperature
        if epsilon > 0:
            # -log max softmax, summed over the batch: each image's gradient is its own.
            loss = -(scaled.amax(dim=1) - torch.logsumexp(scaled, dim=1)).sum()
            (grad,) = torch.autograd.grad(loss, x)
    if epsilon > 0:
        with torch.no_grad():
            scaled = classifier(x.detach() - epsilon * grad.sign()) / temperature
    scaled = scaled.detach().double()
    return torch.exp(scaled.amax(dim=1) - torch.logsumexp(scaled, dim=1))


def _compute(inputs, cfg, seed):
    cached = inputs.extra.get("odin")
    if cached is not None:
        return cached
    return odin(inputs.classifier, inputs.images, cfg.odin_temperature, cfg.odin_epsilon)


def _reference(inputs, cfg, seed):
    out = []
    for image in inputs.images:  # one image at a time, gradient through autograd on its own
        x = image.unsqueeze(0).detach().clone().requires_grad_(True)
        probs = torch.softmax(inputs.classifier(x).double() / cfg.odin_temperature, dim=1)
        (-torch.log(probs.max())).backward()
        moved = (x - cfg.odin_epsilon * torch.sign(x.grad)).detach()
        with torch.no_grad():
            row = inputs.classifier(moved).double()[0].tolist()
        out.append(naive.max_softmax(row, cfg.odin_temperature))
    return torch.tensor(out, dtype=torch.float64)


register("odin", needs=("model",), compute=_compute, reference=_reference)(odin)
