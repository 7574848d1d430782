"""harness.evaluation.score_inputs (what the evaluator provides), CSP's pool, and the evaluator's score plumbing."""

import pytest
import torch

from harness import models, negatives, wordnet
from harness.evaluation import evaluate
from harness.evaluation import score_inputs
from harness.config import EvalConfig
from harness.negatives import Candidate
from harness.scores import SCORE_SPECS, get_score


class ResNetLike:
    visual = torch.nn.Identity()  # no patch tokens


def test_plan_keeps_what_the_model_provides_and_notes_the_rest():
    cfg = EvalConfig(scores=("mcm", "gl_mcm", "knn", "csp", "adaneg"), selection_score="mcm")
    kept, skipped = score_inputs.plan(cfg.scores, score_inputs.available_inputs(ResNetLike(), cfg, has_train=False))
    assert kept == ("mcm", "csp", "adaneg")
    assert set(skipped) == {"gl_mcm", "knn"} and "patches" in skipped["gl_mcm"] and "train_features" in skipped["knn"]
    vit = models.build("tiny-vit-32", None).model
    kept, skipped = score_inputs.plan(cfg.scores, score_inputs.available_inputs(vit, cfg, has_train=True))
    assert kept == cfg.scores and skipped == {}


def test_every_registered_input_is_one_the_evaluator_can_provide():
    vit = models.build("tiny-vit-32", None).model
    cfg = EvalConfig(scores=tuple(SCORE_SPECS), selection_score="mcm")
    assert set().union(*(s.needs for s in SCORE_SPECS.values())) <= score_inputs.available_inputs(vit, cfg, True)


def test_stream_scores_go_per_pair_and_into_the_table():
    gen = torch.Generator().manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, 6, generator=gen, dtype=torch.float64), dim=1)  # noqa: E731
    text = evaluate.TextSide(unit(3), unit(9), [f"n{i}" for i in range(9)], 20.0)
    cfg = EvalConfig(scores=("mcm", "adaneg"), selection_score="mcm", adaneg_batch_size=5)
    id_f, ood_f = unit(7), unit(4)
    per_set = {name: evaluate.compute_scores(f, text, cfg) for name, f in (("id", id_f), ("ood", ood_f))}
    assert set(per_set["id"]) == {"mcm"}
    paired = {"ood": evaluate.stream_scores(id_f, ood_f, text, cfg)}
    rows = evaluate.ood_table(per_set["id"], {"ood": per_set["ood"]}, paired)
    assert [(r["score"], r["n_id"], r["n_ood"]) for r in rows] == [("mcm", 7, 4), ("adaneg", 7, 4)]
    expected = get_score("adaneg").fn(id_f, ood_f, text.class_features, text.negative_features, cfg.neg_temperature,
                                      batch_size=5)
    torch.testing.assert_close(paired["ood"]["adaneg"][0], expected[0])


def test_csp_pool_replaces_each_adjective_by_one_seeded_phrase():
    import random

    pool = negatives.csp_pool([Candidate("adj", "wooden"), Candidate("noun", "rock"), Candidate("adj", "red")], seed=3)
    rng = random.Random(3)
    supers = [rng.choice(negatives.CSP_SUPERCLASSES) for _ in range(2)]
    assert pool == [Candidate("adj", f"wooden {supers[0]}"), Candidate("noun", "rock"), Candidate("adj", f"red {supers[1]}")]
    assert len(negatives.CSP_SUPERCLASSES) == 14 and {"vista", "creature"} <= set(negatives.CSP_SUPERCLASSES)


@pytest.mark.skipif(not (wordnet.DEFAULT_DIR / "data.noun").is_file(), reason="no WordNet at /usr/share/wordnet")
def test_csp_selection_drops_person_group_quantity_and_pert():
    base, csp = wordnet.select(wordnet.DEFAULT_DIR), wordnet.select(wordnet.DEFAULT_DIR, mode="csp")
    assert csp.counts["noun_synsets_selected"] < base.counts["noun_synsets_selected"]
    assert csp.counts["adj_synsets_selected"] < base.counts["adj_synsets_selected"]
    with pytest.raises(wordnet.WordNetError, match="mode"):
        wordnet.select(wordnet.DEFAULT_DIR, mode="other")


def test_selection_score_must_be_computable_every_epoch():
    from harness.orchestration import evaluate_weights
    from harness.orchestration import preflight

    preflight.check_selection_score("neglabel")
    for name in ("adaneg", "gl_mcm", "knn", "odin"):
        with pytest.raises(preflight.PreflightError, match="eval.selection_score"):
            preflight.check_selection_score(name)
    assert evaluate_weights.score_overrides(["gl_mcm,knn"]) == ["eval.scores=[gl_mcm,knn,mcm]",
                                                                "eval.selection_score=mcm"]
    assert evaluate_weights.score_overrides(["odin", "csp"])[1] == "eval.selection_score=csp"
