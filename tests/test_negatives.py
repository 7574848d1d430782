import pytest
import torch

from harness import negatives


def unit(rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True)


def test_mining_keeps_the_least_id_like_share_per_kind():
    id_text = unit([[1, 0, 0], [0.9, 0.1, 0]])
    # candidates: nouns 0..3 with decreasing similarity to the ID prompts; adjectives 4..5
    cands = unit([[1, 0, 0], [0.7, 0.7, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0], [0, 0.2, 1]])
    kinds = ["noun"] * 4 + ["adj"] * 2
    assert negatives.mine(id_text, cands, kinds, percentile=95, ratio=0.5) == [2, 3, 5]
    assert negatives.mine(id_text, cands, kinds, percentile=95, ratio=0.25) == [3, 5]  # at least one per kind


def test_mining_uses_the_percentile_not_the_mean():
    id_text = unit([[1, 0], [0, 1], [0, 1], [0, 1]])
    # candidate 0 is close to one ID prompt only; candidate 1 is moderately close to all of them
    cands = unit([[1, 0.0], [0.6, 0.8]])
    # mean similarity would rank 0 as less ID-like (0.25 vs 0.75); the 95th percentile ranks it as more ID-like
    assert negatives.mine(id_text, cands, ["noun", "noun"], percentile=95, ratio=0.5) == [1]
    assert negatives.mine(id_text, cands, ["noun", "noun"], percentile=0, ratio=0.5) == [0]


def test_candidate_file_format(tmp_path):
    path = tmp_path / "n.tsv"
    path.write_text("# comment\nnoun\tred circle\nadj\tshiny\n\n")
    cands = negatives.read_candidates(path)
    assert cands == [negatives.Candidate("noun", "red circle"), negatives.Candidate("adj", "shiny")]
    assert negatives.prompts(cands, "The nice {}", "This is a {} photo") == ["The nice red circle", "This is a shiny photo"]
    path.write_text("verb\trun\n")
    with pytest.raises(ValueError, match="n.tsv:1: expected"):
        negatives.read_candidates(path)
    with pytest.raises(FileNotFoundError, match="negative-label file not found"):
        negatives.read_candidates(tmp_path / "missing.tsv")


def _vocabulary(path, mined: bool):
    lines = ([negatives.MINED_MARKER] if mined else []) + [f"noun\tthing{i}" for i in range(200)]
    path.write_text("\n".join(lines + [f"adj\tshade{i}" for i in range(40)]) + "\n")
    return path


def _text_side(path, csp_path=None):
    from harness import models
    from harness.evaluation import evaluate
    from harness.config import EvalConfig

    torch.manual_seed(0)
    bundle = models.build("tiny-vit-32", None)
    with torch.no_grad():
        return evaluate.build_text_side(bundle.model, bundle.tokenizer, ["dog", "cat"],
                                        EvalConfig(scores=("neglabel", "csp")), path, csp_path=csp_path)


def test_csp_never_mines_an_already_mined_list(tmp_path):
    """Issue 25: with eval.csp_negatives unset, CSP's pool was built from a mined eval.negatives plus
    its conjugates and mined again (15% of 15%). A mined source is refused before any encoding, naming
    the field."""
    mined = _vocabulary(tmp_path / "mined.tsv", True)
    with pytest.raises(ValueError, match=r"eval.csp_negatives: unset, and eval.negatives .*mined.tsv.* already "
                                         r"mined.*15% of 15%.*--mode csp"):
        _text_side(mined)
    negatives.check_csp_source(_vocabulary(tmp_path / "raw.tsv", False), None)
    negatives.check_csp_source(mined, tmp_path / "raw.tsv")


@pytest.mark.slow
def test_csp_pool_from_a_raw_list_or_its_own_file(tmp_path):
    """The same 200 nouns + 40 adjectives: raw, NegLabel keeps 15% of each kind and so does CSP (200 nouns,
    40 phrases); a mined pool of CSP's own is used as it is."""
    raw, mined = _vocabulary(tmp_path / "raw.tsv", False), _vocabulary(tmp_path / "mined.tsv", True)
    from_raw = _text_side(raw)
    assert len(from_raw.negative_labels) == 30 + 6 and from_raw.csp_features.shape[0] == 30 + 6
    own_pool = _text_side(mined, csp_path=mined)
    assert len(own_pool.negative_labels) == 240 and own_pool.csp_features.shape[0] == 240


def test_preflight_refuses_csp_over_a_mined_list_before_any_compute(tmp_path):
    from pathlib import Path

    from harness import config as config_mod
    from harness.orchestration import preflight

    _vocabulary(tmp_path / "mined.tsv", True)
    demo = Path(__file__).resolve().parent.parent / "sweeps" / "demo.yaml"
    cfg = config_mod.load(demo, ["eval.negatives=mined.tsv", "eval.scores=[neglabel,csp]"])
    with pytest.raises(preflight.PreflightError, match="eval.csp_negatives: unset"):
        preflight.check_csp_source(cfg, tmp_path)
    preflight.check_csp_source(config_mod.load(demo, ["eval.negatives=mined.tsv", "eval.csp_negatives=mined.tsv"]),
                               tmp_path)
