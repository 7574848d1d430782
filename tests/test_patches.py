"""harness.patches: GL-MCM's local features from an open_clip ViT."""

import torch
import torch.nn.functional as F

from harness import models
from harness.patches import global_and_local


def test_global_is_the_models_own_and_local_is_the_value_path():
    torch.manual_seed(0)
    model = models.build("tiny-vit-32", None).model.eval()
    images = torch.randn(3, 3, 32, 32)
    pooled, local = global_and_local(model, images)
    torch.testing.assert_close(pooled, model.encode_image(images, normalize=True))
    grid = (32 // 8) ** 2
    assert local.shape == (3, grid, pooled.shape[1])
    torch.testing.assert_close(local.norm(dim=-1), torch.ones(3, grid))
    # Direct: run the blocks by hand, then the last block without attention mixing (value path).
    v = model.visual
    x = v.ln_pre(torch.cat([v.class_embedding.expand(3, 1, -1),
                            v.conv1(images).flatten(2).transpose(1, 2)], dim=1) + v.positional_embedding)
    for block in v.transformer.resblocks[:-1]:
        x = block(x)
    last = v.transformer.resblocks[-1]
    w, b = last.attn.in_proj_weight, last.attn.in_proj_bias
    width = x.shape[-1]
    value = last.ln_1(x) @ w[2 * width:].T + b[2 * width:]
    y = x + value @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
    y = y + last.mlp(last.ln_2(y))
    expected = F.normalize(v.ln_post(y[:, 1:]) @ v.proj, dim=-1)
    torch.testing.assert_close(local, expected, rtol=1e-5, atol=1e-6)
    # attention mixes tokens: the model's own patch tokens are not the value path
    with torch.no_grad():
        mixed = last(x)
    assert not torch.allclose(F.normalize(v.ln_post(mixed[:, 1:]) @ v.proj, dim=-1), local, atol=1e-3)
