"""CSP's pool equals the authors' construction (MengyuanChen21/NeurIPS2024-CSP @ 3a7bdab, transcribed in
tests/csp_oracle.py) on a small slice of WordNet 3.0 with a tiny random model."""

from __future__ import annotations

import functools

import pytest
import torch

from harness import models, negatives, wordnet
from harness.models import encode_texts
from tests import csp_oracle

requires_wordnet = pytest.mark.skipif(not (wordnet.DEFAULT_DIR / "data.noun").is_file(),
                                      reason="no WordNet at /usr/share/wordnet: `apt-get install wordnet-base`")
CLASSES = ["volcano", "computer", "umbrella"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.build("tiny-vit-32", None)


@functools.lru_cache(maxsize=1)
def _slice(nouns=80, adjectives=60):
    cands = wordnet.select(wordnet.DEFAULT_DIR, exclude=CLASSES, mode="csp").candidates
    return ([c for c in cands if c.kind == "noun"][:nouns], [c for c in cands if c.kind == "adj"][:adjectives])


@requires_wordnet
@pytest.mark.parametrize("seed", [0, pytest.param(5, marks=pytest.mark.slow)])
def test_csp_pool_equals_the_authors_construction(model, seed):
    nouns, adjs = _slice()
    with torch.no_grad():
        feats, kept = negatives.csp_negatives(model.model, model.tokenizer, CLASSES,
                                              negatives.csp_pool(nouns + adjs, seed), False, 95.0, 0.15)
        encode = lambda texts: encode_texts(model.model, model.tokenizer, texts, normalize=False)  # noqa: E731
        want_nouns, want_phrases, want_feats, maximum = csp_oracle.pool(encode, CLASSES, [c.word for c in nouns],
                                                                        [c.word for c in adjs], seed=seed)
    assert len(want_nouns) == 12 and len(want_phrases) == 9  # int(n x 0.15) of each kind
    assert {c.word for c in kept if c.kind == "noun"} == set(want_nouns)
    assert {c.word for c in kept if c.kind == "adj"} == set(want_phrases)
    by_word = {c.word: f for c, f in zip(kept, feats)}
    got = torch.stack([by_word[w] for w in want_nouns + want_phrases])
    torch.testing.assert_close(got, want_feats, rtol=0, atol=1e-6)
    # The slice exercises the exclusion: some candidates are near-duplicates of an ID class (ranked last), and
    # more than the 21 kept are not.
    assert 0 < int((maximum > 0.95).sum()) < len(maximum) - 21
    assert all(len(p.split()) >= 2 and p.split()[-1] in negatives.CSP_SUPERCLASSES for p in want_phrases)


def test_near_duplicates_of_an_id_class_rank_last():
    id_text = torch.eye(3)
    # candidate 0 is nearly ID class 0 (cos 0.985) and far from the others: its median is the lowest
    cands = torch.nn.functional.normalize(torch.tensor([[0.985, -0.17, 0.0], [0.5, 0.5, 0.7], [0.3, 0.3, 0.9]]), dim=1)
    assert negatives.mine(id_text, cands, ["noun"] * 3, 50.0, 0.34) == [0]
    assert negatives.mine(id_text, cands, ["noun"] * 3, 50.0, 0.34, near_duplicate=0.95) == [2]
