"""Patch-level features of an open_clip ViT, projected into the joint space as GL-MCM does.

GL-MCM's reference code (AtsuMiyai/GL-MCM, clip/model.py) takes the local features from the last
block's *value* path: the value projection and the attention's output projection applied to each
token alone (no attention mixing), plus the residual and the MLP, then ln_post and the image
projection. The global feature is the model's own pooled output. LoCoOp's reference
(AtsuMiyai/LoCoOp, clip_w_local/model.py) computes its local features the same way, so this is
the one patch-level path: the evaluator's ``patches`` input (GL-MCM) and LoCoOp's training loss.
"""

from __future__ import annotations

from harness.lazy import torch


class NoPatchTokens(ValueError):
    """The model's image tower is not a ViT with patch tokens (e.g. a ResNet)."""


def global_and_local(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) pooled and (N, P, D) patch features, both L2-normalised, without autograd."""
    with torch.no_grad():  # here, not as a decorator: that would import torch with the registry
        return _global_and_local(model, images)


def _global_and_local(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    visual = model.visual
    if not hasattr(visual, "_embeds") or not hasattr(visual, "transformer"):
        raise NoPatchTokens(f"{type(visual).__name__} has no patch tokens (GL-MCM needs a ViT)")
    x = visual._embeds(images)
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = x if batch_first else x.transpose(0, 1)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    pooled, _ = visual._pool(_seq_first(last(x), batch_first))
    pooled = pooled @ visual.proj if visual.proj is not None else pooled
    local = _value_path(last, x)
    local = visual.ln_post(_seq_first(local, batch_first)[:, 1:])
    local = local @ visual.proj if visual.proj is not None else local
    return torch.nn.functional.normalize(pooled.float(), dim=-1), torch.nn.functional.normalize(local.float(), dim=-1)


def _seq_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


def _value_path(block, x: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    width = x.shape[-1]
    y = block.ln_1(x)
    value = torch.nn.functional.linear(y, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    value = torch.nn.functional.linear(value, attn.out_proj.weight, attn.out_proj.bias)
    out = x + block.ls_1(value)
    return out + block.ls_2(block.mlp(block.ln_2(out)))
