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
