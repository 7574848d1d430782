"""AdaNeg equals the authors' code (YBZh/OpenOOD-VLM @ 804f3310d3045c24fdd896da6c508c919fb47f0c,
transcribed in tests/adaneg_oracle.py) on fixed small fp64 streams."""

from __future__ import annotations

import pytest
import torch

from harness.scores import adaneg
from harness.scores.adaneg_score import stream_order
from tests import adaneg_oracle


def _world(seed: int, n_id=40, n_ood=36, classes=3, negs=12, dim=8, spread=0.35):
    gen = torch.Generator().manual_seed(seed)
    unit = lambda t: torch.nn.functional.normalize(t, dim=1)  # noqa: E731
    class_text = unit(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
    negatives = unit(torch.randn(negs, dim, generator=gen, dtype=torch.float64))
    near = lambda centres, n: unit(centres[torch.randint(len(centres), (n,), generator=gen)]  # noqa: E731
                                   + spread * torch.randn(n, dim, generator=gen, dtype=torch.float64))
    return near(class_text, n_id), near(negatives, n_ood), class_text, negatives


CASES = [  # (world seed, temperature, batch, memory, groups, lam, threshold, gap)
    (0, 0.01, 16, 3, 5, 0.1, 0.5, 0.5),    # the authors' defaults but small memory and batches: slots fill up
    (1, 0.05, 7, 2, 3, 0.3, 0.4, 0.3),     # softer logits: the entropy ranking decides replacements
    (2, 0.1, 256, 10, 1, 0.1, 0.5, 0.5),   # one batch, one group
]


@pytest.mark.parametrize("seed,temperature,batch,memory,groups,lam,threshold,gap", CASES)
def test_adaneg_equals_the_authors_code(seed, temperature, batch, memory, groups, lam, threshold, gap):
    id_f, ood_f, class_text, negatives = _world(seed)
    got_id, got_ood = adaneg(id_f, ood_f, class_text, negatives, temperature, groups, seed, order="shuffled",
                             batch_size=batch, memory=memory, lam=lam, threshold=threshold, gap=gap)
    permutation = torch.randperm(len(id_f) + len(ood_f), generator=torch.Generator().manual_seed(seed))
    post_kwargs = dict(memory_size=memory, lambda_val=lam, thres=threshold, gap=gap, group_num=groups)
    want_id, want_ood = adaneg_oracle.stream_scores(id_f, ood_f, class_text, negatives, 1 / temperature,
                                                    permutation, batch, **post_kwargs)
    torch.testing.assert_close(got_id, want_id, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_ood, want_ood, rtol=0, atol=1e-9)
    # The case exercises the memory: both kinds of slot receive images, and some fill up.
    post = adaneg_oracle.Postprocessor(**post_kwargs)
    combined, text = torch.cat([ood_f, id_f]), torch.cat([class_text, negatives])
    for b in permutation.split(batch):
        post.postprocess(combined[b], text, 1 / temperature, len(class_text))
    assert (post.indice_memory[:3] > 1).any() and (post.indice_memory[3:] > 1).any()
    if memory < 10:
        assert (post.indice_memory == memory).any()


def test_the_stream_matters_and_the_comparison_can_fail():
    id_f, ood_f, class_text, negatives = _world(0)
    kwargs = dict(batch_size=16, memory=3)
    shuffled = adaneg(id_f, ood_f, class_text, negatives, 0.01, 5, 0, **kwargs)
    for order in ("ood-first", "id-first"):
        other = adaneg(id_f, ood_f, class_text, negatives, 0.01, 5, 0, order=order, **kwargs)
        assert not torch.allclose(other[0], shuffled[0], rtol=0, atol=1e-9)
    permutation = torch.randperm(len(id_f) + len(ood_f), generator=torch.Generator().manual_seed(1))  # wrong seed
    want = adaneg_oracle.stream_scores(id_f, ood_f, class_text, negatives, 100.0, permutation, 16, memory_size=3)
    assert not torch.allclose(shuffled[0], want[0], rtol=0, atol=1e-9)


def test_stream_order_is_ood_then_id_permuted():
    order = stream_order(3, 2, "shuffled", 0)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    assert order.tolist() == torch.tensor([3, 4, 0, 1, 2])[perm].tolist()
    assert stream_order(3, 2, "ood-first", 0).tolist() == [3, 4, 0, 1, 2]
    assert stream_order(3, 2, "id-first", 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="eval.adaneg_order"):
        stream_order(3, 2, "random", 0)
