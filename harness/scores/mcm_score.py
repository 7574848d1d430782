"""MCM (maximum concept matching, NeurIPS 2022): max_k softmax_k(cos(f, t_k) / T)."""

from __future__ import annotations

from harness.lazy import torch
from harness.scores.common import by_chunks, check, check_features, max_softmax, work_dtype
from harness.scores import naive
from harness.scores.registry import register


def mcm(image_features: torch.Tensor, class_text_features: torch.Tensor, temperature: float = 1.0,
        *, chunk_size: int = 4096) -> torch.Tensor:
    """Maximum concept matching: max_k softmax_k(cos(f, t_k) / T).

    Args:
        image_features: (N, D) L2-normalised image embeddings.
        class_text_features: (C, D) L2-normalised ID class-prompt embeddings.
        temperature: T > 0 (MCM uses 1).

    Returns:
        (N,) scores in (1/C, 1], higher = more ID.
    """
    check(chunk_size, temperature)
    check_features(image_features, class_text_features)
    dtype = work_dtype(image_features, class_text_features)
    text = class_text_features.to(dtype)
    return by_chunks(image_features, chunk_size, lambda chunk: max_softmax(chunk.to(dtype) @ text.T / temperature))


def _reference(inputs, cfg, seed):
    return torch.tensor([naive.max_softmax(row, cfg.mcm_temperature)
                         for row in naive.logits(inputs.features, inputs.class_text)], dtype=torch.float64)


register("mcm", needs=("features", "class_text"),
         compute=lambda inputs, cfg, seed: mcm(inputs.features, inputs.class_text, cfg.mcm_temperature),
         reference=_reference)(mcm)
