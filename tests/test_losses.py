"""harness.losses against explicit loops, and the simulated distributed case."""

import math

import pytest
import torch

from harness.losses import LOSSES, CMALoss, cma_loss, cma_terms, get_loss


def unit_rows(n, d, seed, dtype=torch.float64):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


def loop_terms(images, texts, scale):
    """CE_img, CE_txt, R_img, R_txt with Python loops and math.exp/log (no torch reductions)."""
    f, g = images.tolist(), texts.tolist()
    b = len(f)
    logits = [[scale * sum(x * y for x, y in zip(f[i], g[j])) for j in range(b)] for i in range(b)]
    row_sums = [sum(math.exp(logits[i][j]) for j in range(b)) for i in range(b)]
    col_sums = [sum(math.exp(logits[i][j]) for i in range(b)) for j in range(b)]
    ce_img = sum(-math.log(math.exp(logits[i][i]) / row_sums[i]) for i in range(b)) / b
    ce_txt = sum(-math.log(math.exp(logits[j][j]) / col_sums[j]) for j in range(b)) / b
    r_img = sum(-math.log(row_sums[i]) for i in range(b)) / b
    r_txt = sum(-math.log(col_sums[j]) for j in range(b)) / b
    return ce_img, ce_txt, r_img, r_txt


IMAGES = unit_rows(6, 4, seed=0)
TEXTS = unit_rows(6, 4, seed=1)


@pytest.mark.parametrize("lam", [0.0, 0.001, 0.5, 2.0])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_cma_loss_matches_loops(lam, scale):
    ce_img, ce_txt, r_img, r_txt = loop_terms(IMAGES, TEXTS, scale)
    expected = (ce_img + lam * r_img) / 2 + (ce_txt + lam * r_txt) / 2
    got = cma_loss(IMAGES, TEXTS, scale, lam)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    terms = cma_terms(IMAGES, TEXTS, torch.tensor(scale, dtype=torch.float64))
    assert [t.item() for t in terms] == pytest.approx([ce_img, ce_txt, r_img, r_txt], rel=1e-12, abs=1e-12)


def test_lam_zero_is_symmetric_clip_loss():
    # By hand: mean over pairs of -log p(text k | image k) and -log p(image k | text k).
    b, scale = 6, 30.0
    sims = [[scale * sum(x * y for x, y in zip(fi, gj)) for gj in TEXTS.tolist()] for fi in IMAGES.tolist()]
    i2t = [-math.log(math.exp(sims[k][k]) / sum(math.exp(v) for v in sims[k])) for k in range(b)]
    t2i = [-math.log(math.exp(sims[k][k]) / sum(math.exp(sims[i][k]) for i in range(b))) for k in range(b)]
    expected = (sum(i2t) / b + sum(t2i) / b) / 2
    assert cma_loss(IMAGES, TEXTS, scale, 0.0).item() == pytest.approx(expected, rel=1e-12)
    assert get_loss("clip")(IMAGES, TEXTS, scale).item() == pytest.approx(expected, rel=1e-12)


def test_regulariser_changes_the_loss():
    # lam > 0 must add lam * (R_img + R_txt) / 2; guards against a dropped or sign-flipped term.
    ce_img, ce_txt, r_img, r_txt = loop_terms(IMAGES, TEXTS, 10.0)
    delta = cma_loss(IMAGES, TEXTS, 10.0, 1.0) - cma_loss(IMAGES, TEXTS, 10.0, 0.0)
    assert delta.item() == pytest.approx((r_img + r_txt) / 2, rel=1e-12)
    assert delta.item() < 0  # R = -lse, and lse > 0 here


def test_gradients_match_finite_differences():
    images = unit_rows(5, 3, seed=4).requires_grad_()
    texts = unit_rows(5, 3, seed=5).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, g, s: cma_loss(f, g, s, 0.3), (images, texts, scale))


def test_float_and_tensor_scale_agree():
    scale = torch.tensor(50.0, dtype=torch.float64)
    assert cma_loss(IMAGES, TEXTS, scale, 0.1).item() == cma_loss(IMAGES, TEXTS, 50.0, 0.1).item()


def test_low_precision_features_give_float32_loss():
    loss = cma_loss(IMAGES.bfloat16(), TEXTS.bfloat16(), 100.0, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cma_loss(IMAGES, TEXTS, 100.0, 0.1).item(), rel=0.05)


def test_module_single_process_and_parts():
    module = CMALoss(0.25)
    loss, parts = module.with_parts(IMAGES, TEXTS, 20.0)
    assert loss.item() == cma_loss(IMAGES, TEXTS, 20.0, 0.25).item() == module(IMAGES, TEXTS, 20.0).item()
    assert set(parts) == {"ce_img", "ce_txt", "r_img", "r_txt"}
    assert all(not p.requires_grad for p in parts.values())
    recombined = (parts["ce_img"] + 0.25 * parts["r_img"]) / 2 + (parts["ce_txt"] + 0.25 * parts["r_txt"]) / 2
    assert recombined.item() == pytest.approx(loss.item(), rel=1e-14)


def simulate_ranks(world_size, lam, local_batch=3, dim=5, grads_to_all=True):
    """Run CMALoss on every simulated rank in one process; return everything to compare.

    Each rank owns leaf tensors for its slice. The fake gather concatenates the real
    leaf tensors of all ranks, so (like torch.distributed.nn.functional.all_gather)
    gradients flow back to the owner; grads_to_all=False detaches other ranks' slices.
    """
    images = unit_rows(world_size * local_batch, dim, seed=10)
    texts = unit_rows(world_size * local_batch, dim, seed=11)
    image_parts = [p.clone().requires_grad_() for p in images.split(local_batch)]
    text_parts = [p.clone().requires_grad_() for p in texts.split(local_batch)]
    scale = torch.tensor(12.0, dtype=torch.float64, requires_grad=True)

    def make_gather(rank):
        def gather(x):
            parts = image_parts if any(x is p for p in image_parts) else text_parts
            assert x is parts[rank]
            return torch.cat([p if grads_to_all or r == rank else p.detach() for r, p in enumerate(parts)])
        return gather

    losses = []
    for rank in range(world_size):
        module = CMALoss(lam, rank=rank, world_size=world_size, gather=make_gather(rank))
        loss = module(image_parts[rank], text_parts[rank], scale)
        loss.backward()  # gradients of all ranks accumulate on the shared leaves: the sum over ranks
        losses.append(loss.item())

    full_images, full_texts = images.clone().requires_grad_(), texts.clone().requires_grad_()
    full_scale = scale.detach().clone().requires_grad_()
    full_loss = cma_loss(full_images, full_texts, full_scale, lam)
    full_loss.backward()
    summed = (torch.cat([p.grad for p in image_parts]), torch.cat([p.grad for p in text_parts]), scale.grad)
    full = (full_images.grad, full_texts.grad, full_scale.grad)
    return losses, full_loss.item(), summed, full


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_distributed_mean_equals_global_loss(world_size, lam):
    losses, full_loss, summed, full = simulate_ranks(world_size, lam)
    assert sum(losses) / world_size == pytest.approx(full_loss, rel=1e-12)
    assert len(set(losses)) == world_size  # each rank really computes its own share
    # DDP averages gradients over ranks: summed per-rank gradients / world_size = global gradient.
    for got, expected in zip(summed, full):
        torch.testing.assert_close(got / world_size, expected, rtol=1e-12, atol=1e-12)


def test_distributed_needs_gradients_through_the_gather():
    # A gather that detaches other ranks' slices loses cross-rank gradient terms.
    _, _, summed, full = simulate_ranks(2, 0.5, grads_to_all=False)
    assert not torch.allclose(summed[0] / 2, full[0])


def test_distributed_argument_errors():
    with pytest.raises(ValueError, match="gather"):
        CMALoss(0.1, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        CMALoss(0.1, rank=2, world_size=2, gather=lambda x: x)
    module = CMALoss(0.1, rank=0, world_size=2, gather=lambda x: x)  # returns only the local rows
    with pytest.raises(ValueError, match="world_size"):
        module(IMAGES, TEXTS, 10.0)
    with pytest.raises(ValueError, match="lam"):
        CMALoss(-1.0)


def test_loss_registry():
    assert set(LOSSES) == {"cma", "clip"}
    cma = get_loss("cma", lam=0.3)
    assert isinstance(cma, CMALoss) and cma.lam == 0.3
    assert get_loss("clip").lam == 0.0
    with pytest.raises(ValueError, match="lam"):
        get_loss("clip", lam=0.3)
    for error in (KeyError, ValueError):
        with pytest.raises(error) as info:
            get_loss("siglip")
        assert "siglip" in str(info.value) and "cma" in str(info.value) and "clip" in str(info.value)
