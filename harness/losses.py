"""The CMA loss (and CLIP/FLYP, its lam = 0 case), single-process and distributed.

For a batch of B pairs (row k of the image and text features is a pair) and the
logit scale s (already exponentiated, ~100 for pretrained CLIP):

    logits = s * F @ G^T                               (B, B)
    CE_img = mean_i( lse_j logits[i, j] - logits[i, i] )   image -> text cross-entropy
    CE_txt = mean_j( lse_i logits[i, j] - logits[j, j] )   text -> image cross-entropy
    R_img  = mean_i( -lse_j logits[i, j] )
    R_txt  = mean_j( -lse_i logits[i, j] )
    L = (CE_img + lam * R_img) / 2 + (CE_txt + lam * R_txt) / 2

lam = 0 is exactly the symmetric CLIP contrastive loss used by FLYP.

Distributed use (:class:`CMALoss` with world_size > 1): each rank takes its own B_l
image rows against all W * B_l gathered texts, and its own text rows against all
gathered images, with targets offset by rank * B_l. The mean of the ranks' losses is
the single-process loss on the concatenated batch. No torch.distributed call lives
here: the caller passes ``gather``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

Gather = Callable[[torch.Tensor], torch.Tensor]


class LossTerms(NamedTuple):
    """The four scalar terms of the CMA loss (each a 0-dim tensor)."""

    ce_img: torch.Tensor
    ce_txt: torch.Tensor
    r_img: torch.Tensor
    r_txt: torch.Tensor

    def total(self, lam: float) -> torch.Tensor:
        """L = (CE_img + lam * R_img) / 2 + (CE_txt + lam * R_txt) / 2."""
        return (self.ce_img + lam * self.r_img) / 2 + (self.ce_txt + lam * self.r_txt) / 2


def _row_terms(logits: torch.Tensor, target_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and CMA regulariser over the rows of ``logits`` (n, m).

    Row i's target column is ``target_offset + i``. Returns (mean CE, mean -lse).
    Shares one logsumexp between both terms.
    """
    # bf16/fp16 logits (autocast) lose too much in logsumexp over a large batch.
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    lse = torch.logsumexp(logits, dim=1)
    target = logits[rows, rows + target_offset]
    return (lse - target).mean(), -lse.mean()


def _check_pairs(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError("image_features and text_features must both be (B, D) with equal shapes, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")


def cma_terms(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> LossTerms:
    """The four CMA terms for one (B, D) batch of L2-normalised pairs on one process.

    ``logit_scale`` is s (a float or 0-dim tensor, already exponentiated).
    """
    _check_pairs(image_features, text_features)
    logits = logit_scale * image_features @ text_features.T
    ce_img, r_img = _row_terms(logits)
    ce_txt, r_txt = _row_terms(logits.T)  # text rows: lse over images (columns of logits)
    return LossTerms(ce_img, ce_txt, r_img, r_txt)


def cma_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale, lam: float) -> torch.Tensor:
    """Scalar CMA loss of one batch; see the module docstring for the formula.

    Args:
        image_features: (B, D) L2-normalised image embeddings; row k pairs with text row k.
        text_features: (B, D) L2-normalised text embeddings.
        logit_scale: s, a float or 0-dim tensor (already exponentiated; ~100 for CLIP).
        lam: weight of the CMA regulariser; 0 gives the symmetric CLIP (FLYP) loss.
    """
    return cma_terms(image_features, text_features, logit_scale).total(lam)


def _local_terms(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale,
                 rank: int, world_size: int, gather: Gather) -> LossTerms:
    """This rank's share of the global-batch terms (their mean over ranks is the global terms)."""
    _check_pairs(image_features, text_features)
    local = image_features.shape[0]
    all_images, all_texts = gather(image_features), gather(text_features)
    expected = (world_size * local, image_features.shape[1])
    if tuple(all_images.shape) != expected or tuple(all_texts.shape) != expected:
        raise ValueError(f"gather must return (world_size * B_local, D) = {expected}, got "
                         f"{tuple(all_images.shape)} and {tuple(all_texts.shape)}; "
                         "every rank needs the same local batch size")
    offset = rank * local  # this rank's pairs sit at rows offset .. offset + local - 1
    ce_img, r_img = _row_terms(logit_scale * image_features @ all_texts.T, offset)
    ce_txt, r_txt = _row_terms(logit_scale * text_features @ all_images.T, offset)
    return LossTerms(ce_img, ce_txt, r_img, r_txt)


class CMALoss(torch.nn.Module):
    """CMA loss as a module, single-process or one rank of a data-parallel job.

    Args:
        lam: CMA weight (0 = CLIP/FLYP).
        rank, world_size: this process's place in the job.
        gather: required when world_size > 1. Maps this rank's (B_l, D) features to
            the (world_size * B_l, D) concatenation over ranks in rank order, and must
            be differentiable across ranks: its backward sends each slice's gradient
            to the rank that owns it (e.g. ``torch.cat(torch.distributed.nn.functional
            .all_gather(x))``). Then DDP's gradient average over ranks equals the
            gradient of the single-process loss on the global batch. A gather that keeps
            gradients only on the local slice (others detached) would silently drop the
            terms where this rank's features are the *columns* of another rank's rows.
            All ranks must have the same B_l (drop the last incomplete batch).
    """

    def __init__(self, lam: float = 0.0, rank: int = 0, world_size: int = 1, gather: Gather | None = None):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if world_size > 1 and gather is None:
            raise ValueError("world_size > 1 needs a gather callable (all-gather with gradients)")
        self.lam = float(lam)
        self.rank = rank
        self.world_size = world_size
        self.gather = gather

    def terms(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> LossTerms:
        """The four terms (with gradients) for this rank."""
        if self.world_size == 1:
            return cma_terms(image_features, text_features, logit_scale)
        return _local_terms(image_features, text_features, logit_scale, self.rank, self.world_size, self.gather)

    def with_parts(self, image_features: torch.Tensor, text_features: torch.Tensor,
                   logit_scale) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss, {"ce_img", "ce_txt", "r_img", "r_txt": detached 0-dim tensors}) for logging."""
        terms = self.terms(image_features, text_features, logit_scale)
        return terms.total(self.lam), {k: v.detach() for k, v in terms._asdict().items()}

    def from_output(self, out: dict, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`with_parts` on a CLIP forward's dict (image_features, text_features, logit_scale), in
        float32; ``labels`` are not used (row k of each side is a pair). The training step's contract."""
        return self.with_parts(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale) -> torch.Tensor:
        """Scalar loss for this rank (mean over ranks = the global-batch loss)."""
        return self.terms(image_features, text_features, logit_scale).total(self.lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, rank={self.rank}, world_size={self.world_size}"


class UnknownLossError(KeyError, ValueError):
    """An unknown loss name; catchable as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would print the message's repr
        return str(self.args[0])


def _clip(lam: float = 0.0, **kwargs) -> CMALoss:
    if lam != 0:
        raise ValueError(f"the 'clip' loss has lam = 0, got lam={lam}; use 'cma' for lam > 0")
    return CMALoss(0.0, **kwargs)


LOSSES: dict[str, Callable[..., CMALoss]] = {"cma": CMALoss, "clip": _clip}


def get_loss(name: str, **kwargs) -> CMALoss:
    """Build the loss registered as ``name`` with ``kwargs`` (lam, rank, world_size, gather)."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise UnknownLossError(f"unknown loss {name!r}; valid names: {sorted(LOSSES)}") from None
    return factory(**kwargs)
