"""The torch modules that methods add to a model (under ``model.extra``): LP/FFT/LP-FT's head and
CoOp/LoCoOp's learned prompt context.

Apart from the methods' declarations (harness.methods.head, harness.methods.prompts) because an
nn.Module subclass needs torch when its class is made; the hooks that build a model import this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from harness.methods.model import MethodModel


class ScaledHead(torch.nn.Linear):
    """``scale`` x Linear(D, K): the weight in cosine units, the zero-shot logit scale a fixed buffer."""

    def __init__(self, class_features: torch.Tensor, scale: float):
        super().__init__(class_features.shape[1], class_features.shape[0])
        with torch.no_grad():
            self.weight.copy_(class_features)
            self.bias.zero_()
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * super().forward(features)


class PromptContext(torch.nn.Module):
    """``ctx`` (M, width): the learned vectors; the rest of each class's sequence (start token, the
    class name's tokens, ".", end token, padding) is the frozen token embedding, kept as buffers
    (rebuilt from the class names, so the checkpoint holds ``ctx`` alone)."""

    def __init__(self, clip, tokenizer, classnames, n_ctx: int, init_std: float):
        super().__init__()
        width = clip.token_embedding.embedding_dim
        tokens = tokenizer([" ".join(["X"] * n_ctx) + f" {c}." for c in classnames])
        with torch.no_grad():
            embedded = clip.token_embedding(tokens)
        self.ctx = torch.nn.Parameter(torch.randn(n_ctx, width) * init_std)  # CoOp's generic context init
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n_ctx:].clone(), persistent=False)

    def class_features(self, model: MethodModel) -> torch.Tensor:
        """(K, D) L2-normalised text features of the learned prompts (gradients to ``ctx``)."""
        from harness import models  # here, not at the top: the registry is listed without open_clip

        k = self.tokens.shape[0]
        sequence = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(k, -1, -1).to(self.prefix.dtype),
                              self.suffix], dim=1)
        return models.encode_text_embeddings(model.clip, sequence, self.tokens)
