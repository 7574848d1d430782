"""The scores ported from OpenOOD v1.5 against its formulas transcribed at a named commit
(tests/openood_oracles.py, commit openood_oracles.COMMIT), on small float64 inputs, to 1e-9:
ties, tiny sets, a method's head with a bias and the zero-shot classifier included."""

import numpy as np
import pytest
import torch

from harness.config import EvalConfig
from harness.scores import SCORE_SPECS, ScoreInputs, get_score
from harness.scores.ash_score import kept_count
from harness.scores.train_stats import linear_head, percentile, train_statistics
from harness.scores.vim_score import principal_dim

import openood_oracles as oracles

PORTED = sorted(name for name, spec in SCORE_SPECS.items() if spec.openood)
KINDS = ["tiny", "tied", "head", "zero-shot", "one-test", "wide", "rank-deficient"]


def rows(n, d, seed, unit=True):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) if unit else x


def case(kind: str, seed: int = 0):
    """(ScoreInputs, cfg, raw) for one kind of input; raw holds the oracle's numpy arguments.
    tiny: 6 test, 14 train, D 5, 3 classes; tied: repeated test and train rows and equal entries
    within a feature (ASH's cut falls inside a tie); head: a method head with a bias; zero-shot: no
    head (logit_scale x class prompts); one-test: a single test image, 7 train; wide: D 12, 40 train;
    rank-deficient: 4 train images in D 5 (singular covariances: the pseudo-inverse)."""
    n, b, d, c = {"tiny": (6, 14, 5, 3), "tied": (6, 14, 5, 3), "head": (6, 14, 5, 3), "zero-shot": (6, 14, 5, 3),
                  "one-test": (1, 7, 5, 2), "wide": (9, 40, 12, 4), "rank-deficient": (4, 4, 5, 2)}[kind]
    feats, train = rows(n, d, seed), rows(b, d, seed + 1)
    labels = torch.arange(b) % c
    if kind == "tied":
        feats = feats[[0, 0, 1, 1, 2, 2]]
        feats[2] = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.25], dtype=torch.float64)  # equal entries at the cut
        feats[3] = feats[2]
        train = torch.cat([train[:10], train[:4]])
    class_text = rows(c, d, seed + 2)
    inputs = ScoreInputs(features=feats, class_text=class_text, logit_scale=20.0, train_features=train)
    if kind in ("head", "one-test", "wide", "rank-deficient"):
        weight = 3 * rows(c, d, seed + 3, unit=False)
        bias = torch.randn(c, generator=torch.Generator().manual_seed(seed + 4), dtype=torch.float64)
        inputs.linear_head = (weight, bias)
        inputs.logits = feats @ weight.T + bias
    stats = train_statistics(train, labels, c, 90.0)
    inputs.train_stats = {**stats, "features": train, "labels": labels}
    cfg = EvalConfig(ash_percentile=60.0, scale_percentile=40.0, dice_p=70.0, gen_m=2, nnguide_k=4,
                     react_percentile=90.0)
    w, bias = linear_head(inputs)
    raw = dict(train_feats=train.numpy(), train_labels=labels.numpy(), num_classes=c, w=w.numpy(), b=bias.numpy(),
               feats=feats.numpy(), cfg=cfg)
    return inputs, cfg, raw


def oracle(name, raw, ties=False):
    """The reference's confidence; ``ties``: inputs with equal entries at ASH's cut, where the
    reference's choice (torch.topk's order among ties) is unspecified: lowest index first, as here."""
    fn = oracles.ORACLES[name]
    if name == "vim":
        return fn(**raw, dim=principal_dim(raw["feats"].shape[1], raw["cfg"].vim_dim))
    if ties and name in ("ash_p", "ash_b", "ash_s", "scale"):
        return fn(**raw, topk=oracles.lowest_index_topk)
    return fn(**raw)


def test_every_port_has_an_oracle_and_names_its_file():
    assert set(PORTED) == set(oracles.ORACLES), "a registered OpenOOD port without an oracle, or the reverse"
    for name in PORTED:
        assert get_score(name).openood.startswith("openood/postprocessors/"), name
    assert len(oracles.COMMIT) == 40


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", PORTED)
def test_port_equals_openood_formula(name, kind):
    if kind == "rank-deficient" and name == "vim":
        pytest.skip("ViM's reference takes np.linalg.eig's eigenvectors, not orthonormal within a repeated "
                    "(here zero) eigenvalue, so its residual norm depends on the basis; ViM needs B > D")
    inputs, cfg, raw = case(kind)
    got = get_score(name).compute(inputs, cfg, 0)
    expected = torch.from_numpy(np.asarray(oracle(name, raw, ties=kind == "tied"), dtype=np.float64))
    assert got.dtype == torch.float64 and got.shape == (raw["feats"].shape[0],)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    if kind == "tied":  # equal inputs, equal scores
        assert got[0] == got[1] and got[2] == got[3]


@pytest.mark.parametrize("name", PORTED)
def test_the_comparison_can_fail(name):
    inputs, cfg, raw = case("head")
    raw["feats"] = raw["feats"] + 1e-6  # a tiny change of the features must show
    got = get_score(name).compute(inputs, cfg, 0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, torch.from_numpy(np.asarray(oracle(name, raw))), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["mds", "rmds", "vim", "react", "dice"])
def test_a_class_without_train_samples_is_dropped(name):
    # OpenOOD's mean of an empty class is NaN (every Mahalanobis score NaN); here the class is left out,
    # which equals the reference run on the labels renumbered without it.
    inputs, cfg, raw = case("tiny")
    labels = torch.where(torch.arange(14) % 3 == 1, 0, torch.arange(14) % 3)  # class 1 empty
    stats = train_statistics(inputs.train_features, labels, 3, 90.0)
    assert stats["classes"].tolist() == [0, 2]
    inputs.train_stats = {**stats, "features": inputs.train_features, "labels": labels}
    raw.update(train_labels=torch.where(labels == 2, 1, labels).numpy(), num_classes=2)
    torch.testing.assert_close(get_score(name).compute(inputs, cfg, 0),
                               torch.from_numpy(np.asarray(oracle(name, raw))), rtol=1e-9, atol=1e-9)


def test_percentile_is_numpys_linear_rule():
    values = torch.tensor([[3.0, -1.0, 2.0], [2.0, 7.0, 0.5]], dtype=torch.float64)
    for q in (0, 10, 33.3, 50, 85, 90, 100):
        assert abs(float(percentile(values, q)) - np.percentile(values.numpy(), q)) < 1e-12, q
    assert float(percentile(torch.tensor([4.0]), 90)) == 4.0


def test_kept_count_rounds_half_to_even_as_numpy():
    for n in (1, 5, 10, 12, 512, 768, 2048):
        for p in (0, 25, 50, 65, 85, 90, 95, 100):
            assert kept_count(n, p) == n - int(np.round(n * p / 100.0)), (n, p)


def test_vim_principal_dimension_rule():
    assert [principal_dim(d) for d in (2048, 1500, 1024, 768, 512, 64, 5)] == [1000, 1000, 512, 512, 256, 32, 2]
    assert principal_dim(64, 10) == 10
    with pytest.raises(ValueError, match="vim_dim"):
        principal_dim(8, 8)


def test_ported_scores_reduce_to_energy_when_they_change_nothing():
    # ReAct above every value, ASH-P keeping everything: the head's energy.
    from harness.scores import energy
    from harness.scores.ash_score import ash
    from harness.scores.react_score import react
    from harness.scores.scale_score import scale

    inputs, cfg, _ = case("head")
    w, b = inputs.linear_head
    want = energy(inputs.logits)
    torch.testing.assert_close(react(inputs.features, w, b, 10.0), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ash(inputs.features, w, b, 0.0, "p"), want, rtol=1e-12, atol=1e-12)
    # SCALE keeping everything multiplies the feature by e (sum / sum = 1)
    torch.testing.assert_close(scale(inputs.features, w, b, 0.0), energy(torch.e * inputs.features @ w.T + b),
                               rtol=1e-12, atol=1e-12)


def test_bad_head_names_the_field():
    from harness.scores.react_score import react

    with pytest.raises(ValueError, match="linear_head"):
        react(rows(3, 5, 0), rows(2, 4, 1), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="train_stats"):
        train_statistics(rows(3, 5, 0), torch.tensor([0, 1]), 2)


def test_harness_scores_lists_every_score_with_inputs_and_defaults(capsys):
    from harness import cli

    assert cli.main(["scores"]) == 0
    shown = capsys.readouterr().out
    for name, spec in SCORE_SPECS.items():
        assert f"\n{name}  (" in shown, name
        if spec.openood:
            assert spec.openood in shown
    assert "eval.ash_percentile: default 90.0" in shown and "eval.gen_m: default 100" in shown
    assert "inputs: features, linear_head, train_stats" in shown  # vim, react, dice


def test_scores_all_selects_every_registered_score():
    from harness.orchestration import evaluate_weights

    overrides = evaluate_weights.score_overrides(["all"])
    assert overrides[0] == "eval.scores=[" + ",".join(sorted(SCORE_SPECS)) + "]"
    assert overrides[1] == "eval.selection_score=neglabel"
    assert set(PORTED) <= set(EvalConfig(scores="all").scores)


def test_a_run_without_id_train_data_skips_the_statistics_scores_saying_why():
    from harness.evaluation import score_inputs

    class NoPatches:
        visual = torch.nn.Identity()

    cfg = EvalConfig(scores=tuple(PORTED), selection_score="gen")
    kept, skipped = score_inputs.plan(cfg.scores, score_inputs.available_inputs(NoPatches(), cfg, has_train=False))
    assert set(kept) == {"ash_b", "ash_p", "ash_s", "gen", "scale"}
    assert set(skipped) == {"mds", "rmds", "vim", "react", "dice", "nnguide"}
    assert "train_stats" in skipped["mds"] and "train_features" in skipped["nnguide"]


def test_the_evaluator_hands_a_methods_head_to_the_head_scores():
    # A method with a linear head: the ported scores read its W and b, not the class prompts.
    from harness.evaluation import evaluate

    inputs, cfg, raw = case("head")
    w, b = inputs.linear_head
    text = evaluate.TextSide(inputs.class_text, rows(4, 5, 9), [f"n{i}" for i in range(4)], 20.0,
                             head_weight=w, head_bias=b)
    cfg = cfg.model_copy(update={"scores": ("ash_p", "gen", "scale", "energy")})
    got = evaluate.compute_scores(inputs.features, text, cfg, 0)
    for name in ("ash_p", "gen", "scale"):
        torch.testing.assert_close(got[name], torch.from_numpy(np.asarray(oracle(name, raw))), rtol=1e-9, atol=1e-9)
