"""The ID classifier a method evaluates with: the contract between methods and evaluation.

A method leaves behind (a) the class features its text side gives, ``class_features``
(K, D), L2-normalised, row k = class k (from the text encoder as the method left it, or
from its learned prompts), used by the text scores (MCM, NegLabel, GL-MCM, ...); and
(b) ``logits(image_features)`` (N, K), used by the classifier-head scores (MSP, Energy,
MaxLogit, ...): its linear head when it has one, else the cosine logits x the logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.lazy import torch


@dataclass(frozen=True)
class Classifier:
    """class_features (K, D) L2-normalised; logit_scale (exponentiated); an optional linear head
    on the L2-normalised image features (weight (K, D), bias (K,))."""

    class_features: torch.Tensor
    logit_scale: float
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None

    @property
    def has_head(self) -> bool:
        return self.head_weight is not None

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """(N, K) ID logits of (N, D) L2-normalised image features."""
        if self.head_weight is None:
            return self.logit_scale * image_features @ self.class_features.T
        weight = self.head_weight.to(image_features.dtype)
        bias = self.head_bias.to(image_features.dtype) if self.head_bias is not None else None
        return torch.nn.functional.linear(image_features, weight, bias)
