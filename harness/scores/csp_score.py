"""CSP (Chen et al. NeurIPS 2024): NegLabel over the conjugated semantic pool.

The pool (harness.negatives.csp_pool / csp_negatives, `harness negatives --mode csp`) is built as the
authors' code builds it: the nouns, and each adjective replaced by one phrase "<adjective>
<superclass>" (a seeded choice of 14 superclass words); template-averaged prompts; near-duplicates
of an ID class excluded; nouns and phrases mined separately. The score is NegLabel's formula,
group count and remainder rule over that pool, against the run's own class features."""

from __future__ import annotations

from harness.lazy import torch
from harness.scores import naive
from harness.scores.neglabel_score import from_config, neglabel
from harness.scores.registry import register


def csp(image_features: torch.Tensor, class_text_features: torch.Tensor, pool_text_features: torch.Tensor,
        temperature: float = 0.01, groups: int = 1, seed: int = 0, *, remainder: str = "shuffled") -> torch.Tensor:
    """NegLabel (harness.scores.neglabel) with CSP's conjugated pool as the negatives; (N,)."""
    return neglabel(image_features, class_text_features, pool_text_features, temperature, groups, seed,
                    remainder=remainder)


def _reference(inputs, cfg, seed):
    return naive.neglabel(inputs.features, inputs.class_text, inputs.csp_negatives, cfg.neg_temperature,
                          cfg.neg_groups, seed, cfg.neg_remainder)


register("csp", needs=("features", "class_text", "csp_negatives"), reference=_reference,
         compute=lambda inputs, cfg, seed: from_config(inputs, cfg, seed, inputs.csp_negatives))(csp)
