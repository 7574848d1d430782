"""GL-MCM (Miyai et al. 2023): MCM of the global feature plus lam x the largest local softmax.

Local features are the patch tokens projected into the joint space and L2-normalised; GL-MCM's
reference code takes them from the last block's value path (harness.patches). The evaluator
caches the per-image patch-level result (:func:`local_mcm`, one float per image) instead of the
(N, P, D) tokens (~20 GB for ImageNet-val at ViT-B/16).
"""

from __future__ import annotations

from harness.lazy import torch
from harness.scores import naive
from harness.scores.common import check, check_features, max_softmax, work_dtype
from harness.scores.mcm_score import mcm
from harness.scores.registry import register


def local_mcm(local_features: torch.Tensor, class_text_features: torch.Tensor, temperature: float = 1.0,
              *, chunk_size: int = 256) -> torch.Tensor:
    """max over patches p and classes k of softmax_k(cos(l_p, t_k) / T); (N,).

    Args:
        local_features: (N, P, D) L2-normalised patch features.
        class_text_features: (C, D) L2-normalised ID class-prompt features.
    """
    check(chunk_size, temperature)
    if local_features.ndim != 3:
        raise ValueError(f"local_features must be (N, P, D), got shape {tuple(local_features.shape)}")
    check_features(local_features[:, 0], class_text_features)
    dtype = work_dtype(local_features, class_text_features)
    text = class_text_features.to(dtype)
    if local_features.shape[0] == 0:
        return local_features.new_empty((0,), dtype=dtype)
    return torch.cat([max_softmax(chunk.to(dtype) @ text.T / temperature).amax(dim=1)
                      for chunk in local_features.split(chunk_size)])


def gl_mcm(image_features: torch.Tensor, local_features: torch.Tensor, class_text_features: torch.Tensor,
           temperature: float = 1.0, lam: float = 1.0) -> torch.Tensor:
    """MCM(global) + lam x :func:`local_mcm`; (N,), higher = more ID.

    Args:
        image_features: (N, D) L2-normalised global image features.
        local_features: (N, P, D) L2-normalised patch features of the same images.
        class_text_features: (C, D) L2-normalised ID class-prompt features.
        temperature: T > 0 of both softmaxes (GL-MCM uses 1).
        lam: weight of the local term (GL-MCM uses 1).
    """
    if local_features.ndim != 3 or local_features.shape[0] != image_features.shape[0]:
        raise ValueError(f"local_features must be (N={image_features.shape[0]}, P, D), "
                         f"got shape {tuple(local_features.shape)}")
    return mcm(image_features, class_text_features, temperature) + lam * local_mcm(
        local_features, class_text_features, temperature)


def _compute(inputs, cfg, seed):
    local = inputs.extra.get("local_mcm")
    if local is None:
        local = local_mcm(inputs.local_features, inputs.class_text, cfg.mcm_temperature)
    return mcm(inputs.features, inputs.class_text, cfg.mcm_temperature) + cfg.gl_mcm_lambda * local


def _reference(inputs, cfg, seed):
    t = cfg.mcm_temperature
    out = []
    for glob, patches in zip(naive.logits(inputs.features, inputs.class_text),
                             [naive.logits(p, inputs.class_text) for p in inputs.local_features]):
        out.append(naive.max_softmax(glob, t) + cfg.gl_mcm_lambda * max(naive.max_softmax(p, t) for p in patches))
    return torch.tensor(out, dtype=torch.float64)


register("gl_mcm", needs=("features", "class_text", "patches"), compute=_compute, reference=_reference)(gl_mcm)
