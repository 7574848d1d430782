"""harness.scores against direct, naive computations."""

import math

import pytest
import torch

from harness import scores
from harness.scores import SCORES, ScoreSpec, energy, get_score, max_logit, mcm, msp, neglabel, register


def unit_rows(n, d, seed, dtype=torch.float64):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


def naive_mcm(images, texts, temperature):
    """Per image: explicit cosines, explicit softmax with math.exp, max."""
    out = []
    for f in images.tolist():
        logits = [sum(a * b for a, b in zip(f, t)) / temperature for t in texts.tolist()]
        top = max(logits)
        denom = sum(math.exp(v - top) for v in logits)
        out.append(max(math.exp(v - top) / denom for v in logits))
    return torch.tensor(out, dtype=torch.float64)


def naive_neglabel(images, id_texts, negatives, temperature, groups, seed):
    """Full softmax over [ID ; group] for each group separately, then the mean over groups."""
    k = negatives.shape[0]
    if groups == 1:
        group_rows = [torch.arange(k)]
    else:
        perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
        size = k // groups
        group_rows = [perm[g * size:(g + 1) * size] for g in range(groups)]
    per_group = []
    for rows in group_rows:
        texts = torch.cat([id_texts, negatives[rows]])
        probs = torch.softmax(images @ texts.T / temperature, dim=1)
        per_group.append(probs[:, : id_texts.shape[0]].sum(dim=1))
    return torch.stack(per_group).mean(dim=0)


IMAGES = unit_rows(37, 8, seed=0)
CLASSES = unit_rows(5, 8, seed=1)
NEGATIVES = unit_rows(23, 8, seed=2)
LOGITS = 5 * torch.randn(37, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.01])
def test_mcm_matches_explicit_softmax(temperature):
    got = mcm(IMAGES, CLASSES, temperature=temperature)
    assert got.shape == (37,) and got.dtype == torch.float64
    torch.testing.assert_close(got, naive_mcm(IMAGES, CLASSES, temperature), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 3, 7, 23])
def test_neglabel_matches_naive(groups):
    got = neglabel(IMAGES, CLASSES, NEGATIVES, temperature=0.05, groups=groups, seed=11)
    expected = naive_neglabel(IMAGES, CLASSES, NEGATIVES, 0.05, groups, seed=11)
    assert got.shape == (37,)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_neglabel_groups_use_the_seed():
    a = neglabel(IMAGES, CLASSES, NEGATIVES, temperature=0.05, groups=3, seed=0)
    b = neglabel(IMAGES, CLASSES, NEGATIVES, temperature=0.05, groups=3, seed=1)
    assert not torch.allclose(a, b)  # different shuffles, different dropped negatives
    torch.testing.assert_close(a, neglabel(IMAGES, CLASSES, NEGATIVES, temperature=0.05, groups=3, seed=0))


def test_neglabel_one_group_ignores_negative_order():
    shuffled = NEGATIVES[torch.randperm(23, generator=torch.Generator().manual_seed(5))]
    torch.testing.assert_close(neglabel(IMAGES, CLASSES, shuffled, temperature=0.05),
                               neglabel(IMAGES, CLASSES, NEGATIVES, temperature=0.05), rtol=1e-12, atol=1e-12)


def test_neglabel_stable_in_float32_at_low_temperature():
    # cos / 0.01 reaches 100: exp(100) overflows float32, so a plain softmax sum would give inf/nan.
    images, classes, negatives = IMAGES.float(), CLASSES.float(), NEGATIVES.float()
    got = neglabel(images, classes, negatives, temperature=0.01)
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    assert ((got > 0) & (got <= 1)).all()
    expected = naive_neglabel(IMAGES, CLASSES, NEGATIVES, 0.01, 1, 0).float()
    torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("groups", [0, 24])
def test_neglabel_rejects_bad_groups(groups):
    with pytest.raises(ValueError, match="groups"):
        neglabel(IMAGES, CLASSES, NEGATIVES, groups=groups)


def test_logit_scores_match_direct_formulas():
    for t in (1.0, 2.5):
        expected_msp = torch.tensor([max(math.exp(v / t) for v in row) / sum(math.exp(v / t) for v in row)
                                     for row in LOGITS.tolist()], dtype=torch.float64)
        expected_energy = torch.tensor([t * math.log(sum(math.exp(v / t) for v in row)) for row in LOGITS.tolist()],
                                       dtype=torch.float64)
        torch.testing.assert_close(msp(LOGITS, temperature=t), expected_msp, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(energy(LOGITS, temperature=t), expected_energy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(max_logit(LOGITS), torch.tensor([max(r) for r in LOGITS.tolist()], dtype=torch.float64))


def test_energy_stable_for_large_logits():
    big = torch.tensor([[1000.0, 999.0], [-1000.0, -1001.0]])
    torch.testing.assert_close(energy(big), torch.tensor([1000 + math.log1p(math.exp(-1)),
                                                          -1000 + math.log1p(math.exp(-1))]))


@pytest.mark.parametrize("chunk_size", [1, 5, 36])
def test_chunking_matches_one_chunk(chunk_size):
    cases = [
        (mcm, (IMAGES, CLASSES), {"temperature": 0.5}),
        (neglabel, (IMAGES, CLASSES, NEGATIVES), {"temperature": 0.05, "groups": 4, "seed": 2}),
        (msp, (LOGITS,), {}),
        (energy, (LOGITS,), {}),
        (max_logit, (LOGITS,), {}),
    ]
    for fn, args, kwargs in cases:
        whole = fn(*args, **kwargs, chunk_size=4096)
        chunked = fn(*args, **kwargs, chunk_size=chunk_size)
        torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-13, msg=fn.__name__)


def test_chunks_bound_the_similarity_matrix(monkeypatch):
    # Record the rows handed to each per-chunk computation: none may exceed chunk_size.
    seen = []
    real = scores._by_chunks

    def recording(rows, size, fn):
        def fn_recorded(chunk):
            seen.append(chunk.shape[0])
            return fn(chunk)
        return real(rows, size, fn_recorded)

    monkeypatch.setattr(scores, "_by_chunks", recording)
    neglabel(IMAGES, CLASSES, NEGATIVES, chunk_size=10)
    assert seen == [10, 10, 10, 7]


def test_registry_names_and_needs():
    assert set(SCORES) == {"mcm", "neglabel", "msp", "energy", "max_logit"}
    needs = {name: get_score(name).needs for name in SCORES}
    assert needs == {"mcm": "text", "neglabel": "text+negatives", "msp": "logits", "energy": "logits",
                     "max_logit": "logits"}
    spec = get_score("mcm")
    assert isinstance(spec, ScoreSpec) and spec.fn is mcm and SCORES["mcm"] is mcm
    torch.testing.assert_close(spec(IMAGES, CLASSES), mcm(IMAGES, CLASSES))


def test_unknown_score_lists_valid_names():
    for error in (KeyError, ValueError):
        with pytest.raises(error) as info:
            get_score("odin")
        message = str(info.value)
        assert "odin" in message and all(name in message for name in SCORES)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("mcm", needs="text")(lambda *a: None)
    assert SCORES["mcm"] is mcm


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="temperature"):
        mcm(IMAGES, CLASSES, temperature=0.0)
    with pytest.raises(ValueError, match="text features"):
        mcm(IMAGES, unit_rows(5, 7, seed=0))
    with pytest.raises(ValueError, match="logits"):
        msp(torch.zeros(3))


def test_neglabel_keeps_near_certain_images_apart():
    # ID log-odds of 20 and 25 (in T = 0.01 units): float32 would round both masses to exactly 1.0 (a tie).
    classes = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[0.0, 1.0]])
    angles = torch.tensor([0.62, 0.64])  # cos(a) - sin(a) = 0.233, 0.205 -> log-odds 23.3, 20.5
    images = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    got = neglabel(images, classes, negatives, temperature=0.01)
    expected_log_odds = (torch.cos(angles) - torch.sin(angles)) / 0.01
    assert expected_log_odds.min() > 17  # beyond float32's resolution near 1
    assert got[0] > got[1] and torch.allclose(torch.log(got / (1 - got)), expected_log_odds.double(), rtol=1e-4)
