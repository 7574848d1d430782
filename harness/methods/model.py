"""The model a method trains: the CLIP plus what the method adds, as one torch module.

Apart from harness.methods.base so that the registry (the methods' declarations) imports no torch:
an nn.Module subclass needs torch when its class is made; this module is imported where a model is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harness.methods.base import Method


class MethodModel(torch.nn.Module):
    """The CLIP (``clip``) plus what a method adds (``extra``), as one module: DDP wraps it, the
    optimiser and checkpoints see all of it, and its forward is the method's."""

    def __init__(self, clip: torch.nn.Module, method: "Method"):
        super().__init__()
        self.clip = clip
        self.extra = torch.nn.ModuleDict()
        self._method = method  # a plain object, not a submodule

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict:
        return self._method.forward(self, images, tokens)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.clip.logit_scale
