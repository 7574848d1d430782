"""harness.scores against direct, naive computations."""

import math

import pytest
import torch

from harness import scores
from harness.config import EvalConfig
from harness.scores import (INPUTS, SCORE_SPECS, SCORES, ScoreInputs, ScoreSpec, energy, get_score, gl_mcm, knn,
                            max_logit, mcm, msp, neglabel, odin, register)
from harness.scores import neglabel_score


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
    real = neglabel_score.by_chunks

    def recording(rows, size, fn):
        def fn_recorded(chunk):
            seen.append(chunk.shape[0])
            return fn(chunk)
        return real(rows, size, fn_recorded)

    monkeypatch.setattr(neglabel_score, "by_chunks", recording)
    neglabel(IMAGES, CLASSES, NEGATIVES, chunk_size=10)
    assert seen == [10, 10, 10, 7]


def test_registry_holds_the_public_scores():
    assert {"mcm", "neglabel", "msp", "energy", "max_logit", "gl_mcm", "knn", "odin", "csp", "adaneg"} <= set(SCORES)
    assert get_score("neglabel").needs == {"features", "class_text", "negatives"}
    assert get_score("adaneg").stream and not get_score("mcm").stream
    spec = get_score("mcm")
    assert isinstance(spec, ScoreSpec) and spec.fn is mcm and SCORES["mcm"] is mcm
    torch.testing.assert_close(spec(IMAGES, CLASSES), mcm(IMAGES, CLASSES))
    for spec in SCORE_SPECS.values():
        assert spec.needs <= set(INPUTS), spec.name


def test_unknown_score_lists_valid_names():
    for error in (KeyError, ValueError):
        with pytest.raises(error) as info:
            get_score("no_such_score")
        message = str(info.value)
        assert "no_such_score" in message and all(name in message for name in SCORES)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("mcm", needs=("features",), compute=None, reference=None)(lambda *a: None)
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


# ---- every registered score against its independent reference (ScoreSpec.reference) ----

class TinyClassifier(torch.nn.Module):
    """images (N, 3, 4, 4) -> logits (N, C) through a small non-linear map (so ODIN's gradient varies)."""

    def __init__(self, classes, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(48, 16, generator=gen, dtype=torch.float64)
        self.w2 = torch.randn(16, classes, generator=gen, dtype=torch.float64)

    def forward(self, x):
        return 3 * torch.tanh(x.flatten(1) @ self.w1) @ self.w2


def score_case(kind: str, seed: int = 0):
    """(inputs, eval config) for one kind of tiny input: "tiny", "tied" (repeated rows: equal scores
    and equal distances), "unbalanced" (3 ID vs 11 OoD, 2 classes, groups not dividing the negatives),
    "head" (a method head's logits instead of the zero-shot classifier)."""
    n, c, m = {"tiny": (6, 3, 8), "tied": (6, 3, 8), "unbalanced": (11, 2, 7), "head": (6, 3, 8)}[kind]
    d, p = 5, 4
    feats = unit_rows(n, d, seed)
    local = unit_rows(n * p, d, seed + 1).reshape(n, p, d)
    train = unit_rows(9, d, seed + 2)
    id_feats = unit_rows(3 if kind == "unbalanced" else n, d, seed + 3)
    negatives = unit_rows(m, d, seed + 4)
    if kind == "tied":
        feats, local, train = feats[[0, 0, 1, 1, 2, 2]], local[[0, 0, 1, 1, 2, 2]], train[[0, 0, 0, 1, 1, 2, 3, 4, 5]]
        id_feats, negatives = id_feats[[0, 1, 1, 2, 2, 2]], negatives[[0, 0, 1, 2, 3, 4, 5, 6]]
    images = torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed + 5), dtype=torch.float64)
    if kind == "tied":
        images = images[[0, 0, 1, 1, 2, 2]]
    inputs = ScoreInputs(features=feats, class_text=unit_rows(c, d, seed + 6), logit_scale=30.0, negatives=negatives,
                         csp_negatives=unit_rows(m + 3, d, seed + 7), train_features=train, id_features=id_feats,
                         local_features=local, classifier=TinyClassifier(c, seed), images=images)
    if kind == "head":
        inputs.logits = 4 * torch.randn(n, c, generator=torch.Generator().manual_seed(seed + 8), dtype=torch.float64)
    cfg = EvalConfig(neg_temperature=0.1, neg_groups=3 if kind == "unbalanced" else 2, knn_k=3, odin_temperature=2.0,
                     odin_epsilon=0.05, gl_mcm_lambda=0.7, mcm_temperature=0.5, adaneg_batch_size=4,
                     adaneg_threshold=0.5, adaneg_gap=0.2, adaneg_memory=2, adaneg_lambda=0.3,
                     neg_remainder="tail" if kind == "unbalanced" else "shuffled")
    return inputs, cfg


def test_every_score_has_an_oracle():
    """A reference here, or an OpenOOD file whose transcribed formula tests/test_scores_openood.py checks."""
    for name, spec in SCORE_SPECS.items():
        assert (spec.reference is None) != (spec.openood is None), name


@pytest.mark.parametrize("kind", ["tiny", "tied", "unbalanced", "head"])
@pytest.mark.parametrize("name", sorted(name for name, spec in SCORE_SPECS.items() if spec.reference is not None))
def test_every_score_matches_its_reference(name, kind):
    spec = get_score(name)
    inputs, cfg = score_case(kind)
    got, expected = spec.compute(inputs, cfg, 4), spec.reference(inputs, cfg, 4)
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.ndim == 1 and torch.isfinite(g).all()
        # rtol 1e-6: torch's vectorised float64 exp on some CPUs is ~1e-8 off math.exp
        torch.testing.assert_close(g.double(), e.double(), rtol=1e-6, atol=1e-9)
    if kind == "tied" and not spec.stream:  # equal inputs, equal scores
        assert torch.equal(got[0][0], got[0][1]) or name == "odin" or torch.isclose(got[0][0], got[0][1], rtol=1e-12)


def test_reference_tests_can_fail():
    # A perturbed score must not pass the comparison above: the oracle is not the code under test.
    inputs, cfg = score_case("tiny")
    shifted = get_score("mcm").compute(inputs, cfg, 0) * (1 + 1e-4)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(shifted, get_score("mcm").reference(inputs, cfg, 0), rtol=1e-6, atol=1e-9)


def test_gl_mcm_public_signature():
    inputs, cfg = score_case("tiny")
    got = gl_mcm(inputs.features, inputs.local_features, inputs.class_text, temperature=0.5, lam=0.7)
    torch.testing.assert_close(got, get_score("gl_mcm").reference(inputs, cfg, 0), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="local_features"):
        gl_mcm(inputs.features, inputs.local_features[:2], inputs.class_text)


def test_knn_by_hand_and_k_too_large():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    # distances 0, sqrt 2, 2: k-th nearest is the k-th of those
    for k, dist in ((1, 0.0), (2, math.sqrt(2)), (3, 2.0)):
        torch.testing.assert_close(knn(query, bank, k=k), torch.tensor([-dist]))
    with pytest.raises(ValueError, match="bank size"):
        knn(query, bank, k=4)


def test_odin_without_perturbation_is_msp_at_temperature():
    inputs, _ = score_case("tiny")
    got = odin(inputs.classifier, inputs.images, temperature=2.0, epsilon=0.0)
    torch.testing.assert_close(got, msp(inputs.classifier(inputs.images).detach(), temperature=2.0))
    # the perturbation raises each image's confidence (a small step along the gradient)
    assert (odin(inputs.classifier, inputs.images, temperature=2.0, epsilon=1e-3) >= got - 1e-12).all()


def test_neglabel_tail_remainder_drops_the_last_negatives():
    # groups=2 over 23 negatives: "tail" never uses the 23rd, whatever the seed.
    moved = NEGATIVES.clone()
    moved[22] = -moved[22]
    for seed in range(3):
        torch.testing.assert_close(neglabel(IMAGES, CLASSES, moved, 0.05, groups=2, seed=seed, remainder="tail"),
                                   neglabel(IMAGES, CLASSES, NEGATIVES, 0.05, groups=2, seed=seed, remainder="tail"))
