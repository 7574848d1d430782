"""One training step and the training loop: plain PyTorch, no Ray, no MLflow.

The loop takes a ``report(metrics, checkpoint_dir)`` callable and the distributed
facts as parameters, so the same code runs in a test, in a benchmark, or inside a
Ray Train worker (which passes ``ray.train.report`` and its rank).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import torch

from harness.config import OptimConfig
from harness.models import unwrap

Report = Callable[[dict, "str | None"], None]


class Objective(Protocol):
    """A training loss: (scalar loss, detached parts) from the model's forward output and the labels."""

    def from_output(self, out: dict, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass
class RunContext:
    """Distributed facts and hooks, given by whoever runs the loop."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Report = lambda metrics, checkpoint_dir=None: None
    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None
    """All-gather with gradients to the local part; None on one process."""
    restore: Callable[[], dict | None] = lambda: None
    """The latest training state reported with a checkpoint (after a restart), or None."""
    gather_objects: Callable[[object], list] | None = None
    """All-gather of a picklable object from every rank (a list in rank order); None on one process."""


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: the run stops (status ``diverged``).

    Raised before the optimiser applies the step, on every rank at the same step (ranks
    agree through ``gather``), so a data-parallel run stops together."""

    def __init__(self, loss: float, step: int | None = None):
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"non-finite training loss ({loss}){where}")
        self.loss, self.step = loss, step


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # The reference recipe decays all parameters (logit scale, norms and biases included); frozen
    # ones (a method's, requires_grad False) are not the optimiser's at all.
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, precision: str):
    """bf16 autocast on GPU when asked; fp32 elsewhere (bf16 on CPU is slower here)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: torch.nn.Module, batches: Sequence[tuple], loss_fn: Objective, optimizer: torch.optim.Optimizer,
               scheduler, device: torch.device, precision: str = "fp32",
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """One optimiser step over ``batches`` (micro-batches of (images, tokens, labels), gradients
    accumulated); returns the mean loss and its parts. ``loss_fn.from_output(model(images, tokens),
    labels)`` gives each micro-batch's (loss, parts): CMALoss for the contrastive methods, a
    method's own objective otherwise (harness.methods).

    Raises :class:`Diverged`, without stepping, when the loss is not finite on this rank or,
    with ``gather`` (an all-gather over ranks), on any rank."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for index, batch in enumerate(batches):
        images, tokens = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        labels = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
        last = index == len(batches) - 1
        # DDP all-reduces on every backward; only the last micro-batch needs it.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                out = model(images, tokens)
            loss, parts = loss_fn.from_output(out, labels)
            (loss / len(batches)).backward()
        for key, value in {"loss": loss, **parts}.items():
            totals[key] = totals.get(key, 0.0) + value.item() / len(batches)
    finite = math.isfinite(totals["loss"])
    if gather is not None:  # each rank's loss covers its own rows: one rank may overflow alone
        finite = bool(gather(torch.tensor([float(finite)], device=device)).min().item() > 0)
    if not finite:
        raise Diverged(totals["loss"])
    optimizer.step()
    scheduler.step()
    scale = unwrap(model).logit_scale
    if scale.requires_grad:  # CLIP clamps the learnable temperature at 100
        with torch.no_grad():
            scale.clamp_(0, math.log(100))
    return totals


def train_epoch(model, batches: Iterator, steps: int, loss_fn: Objective, optimizer, scheduler,
                ctx: RunContext, precision: str = "fp32", accumulation: int = 1, log_every: int = 0,
                log: Callable[[str], None] = print) -> dict[str, float]:
    """Run exactly ``steps`` optimiser steps of ``accumulation`` micro-batches each from ``batches``;
    returns mean loss parts and throughput (samples/s on this worker and in total).
    A non-finite loss raises :class:`Diverged` (with the 1-based step of this epoch) at once."""
    totals: dict[str, float] = {}
    samples = 0
    start = time.perf_counter()
    for step in range(steps):
        micro = [next(batches) for _ in range(accumulation)]
        try:
            parts = train_step(model, micro, loss_fn, optimizer, scheduler, ctx.device, precision, ctx.gather)
        except Diverged as err:
            raise Diverged(err.loss, step + 1) from None
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        samples += sum(len(b[0]) for b in micro)
        if log_every and (step + 1) % log_every == 0:
            log(f"  step {step + 1}/{steps} loss {parts['loss']:.4f}")
    elapsed = time.perf_counter() - start
    out = {f"train_{k}": v / max(1, steps) for k, v in totals.items()}
    out["samples_per_s_worker"] = samples / elapsed if elapsed > 0 else 0.0
    out["samples_per_s"] = out["samples_per_s_worker"] * ctx.world_size
    out["lr"] = scheduler.get_last_lr()[0]
    out["train_s"] = elapsed
    return out
