"""NegLabel's corpus from the real WordNet 3.0 files (Debian's wordnet-base; .ci/run installs it)
and `harness negatives` end to end with a tiny random model."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness import cli, models, negatives, wordnet
from harness.evaluation import evaluate
from harness.config import EvalConfig
from harness.data.writers import imagenet_classnames

requires_wordnet = pytest.mark.skipif(
    not (wordnet.DEFAULT_DIR / "data.noun").is_file(),
    reason="no WordNet at /usr/share/wordnet: `apt-get install wordnet-base` (CI's .ci/run does)")


@pytest.fixture(scope="module")
def selection():
    return wordnet.select(wordnet.DEFAULT_DIR, exclude=imagenet_classnames())


@requires_wordnet
def test_selection_matches_neglabels_corpus(selection):
    words = {kind: {c.word.lower() for c in selection.candidates if c.kind == kind} for kind in negatives.KINDS}
    counts = selection.counts
    # WordNet 3.0 has 82,115 noun and 18,156 adjective synsets; noun.animal + noun.food hold ~10,000.
    assert (counts["noun_synsets"], counts["adj_synsets"]) == (82115, 18156)
    assert counts["noun_synsets_selected"] == 72033 and counts["adj_synsets_selected"] == 18156
    # method.md: about 10,000 negatives for ImageNet-1k at 15% -> ~70,000 candidates (the paper's figure).
    assert 55_000 < len(words["noun"]) < 62_000 and 12_000 < len(words["adj"]) < 16_000
    assert 9_500 < sum(int(len(w) * 0.15) for w in words.values()) < 11_500
    assert len(selection.candidates) == sum(len(w) for w in words.values())  # de-duplicated within a kind
    assert {"entity", "computer", "sky", "natural object"} <= words["noun"]  # underscores became spaces
    assert {"able", "abaxial", "dorsal", "beautiful"} <= words["adj"]  # adj.all and satellites
    assert not {"pizza", "hot dog", "goldfish", "tench"} & words["noun"]  # noun.food, noun.animal
    assert not any(w.endswith(("(a)", "(p)", "(ip)")) or "_" in w for w in words["adj"] | words["noun"])
    # ImageNet class names are never candidates (they would be in otherwise: noun.artifact, noun.object).
    assert not {"balloon", "volcano", "umbrella"} & words["noun"]
    assert counts["noun_id_names_dropped"] > 400
    assert {"balloon", "volcano"} <= {c.word for c in wordnet.select(wordnet.DEFAULT_DIR).candidates}


def test_a_malformed_or_missing_database_is_named(tmp_path):
    with pytest.raises(wordnet.WordNetError, match="database file missing: .*data.noun.*wordnet-base"):
        wordnet.select(tmp_path)
    (tmp_path / "data.noun").write_text("  1 licence header\n00001740 03 n 01 entity 0 000 | x\n00001741 03 n zz\n")
    (tmp_path / "data.adj").write_text("00001740 00 a 01 able 0 000 | x\n")
    with pytest.raises(wordnet.WordNetError, match=r"data.noun:3: not a WordNet synset line"):
        wordnet.select(tmp_path)


@requires_wordnet
def test_negatives_cli_mines_with_provenance_and_evaluation_uses_both_kinds_of_file(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("volcano\ncomputer\n")
    out = tmp_path / "neg" / "mined.txt"
    code = cli.main(["negatives", str(out), "--arch", "tiny-vit-32", "--pretrained", "none",
                     "--classnames", str(tmp_path / "classes.txt"), "--limit", "100", "--ratio", "0.2",
                     "--percentile", "90"])
    assert code == 0, capsys.readouterr().err
    cand_path = out.with_name("mined.txt.candidates.tsv")
    candidates = negatives.read_candidates(cand_path)
    assert [c.kind for c in candidates] == ["noun"] * 100 + ["adj"] * 100
    assert not {"volcano", "computer"} & {c.word for c in candidates}
    mined = negatives.read_candidates(out)
    assert negatives.is_mined(out) and not negatives.is_mined(cand_path)
    assert [c.kind for c in mined] == ["noun"] * 20 + ["adj"] * 20  # ratio x candidates, per kind
    assert {(c.kind, c.word) for c in mined} <= {(c.kind, c.word) for c in candidates}
    prov = negatives.read_provenance(out)
    assert prov["wordnet_dir"] == "/usr/share/wordnet" and prov["wordnet_version"] == "3.0"
    assert (prov["percentile"], prov["ratio"], prov["limit"]) == (90.0, 0.2, 100)
    assert (prov["model_arch"], prov["model_pretrained"]) == ("tiny-vit-32", None)
    assert prov["candidates"] == {"noun": 100, "adj": 100} and prov["mined"] == {"noun": 20, "adj": 20}
    assert prov["counts"]["noun_id_names_dropped"] >= 2 and prov["date"].startswith("20")

    # Evaluation: a mined file is used as it is; a plain list (the candidates) is mined with eval.neg_*.
    torch.manual_seed(0)
    bundle = models.build("tiny-vit-32", None)
    cfg = EvalConfig(neg_ratio=0.2, neg_percentile=90.0)
    with torch.no_grad():
        as_is = evaluate.build_text_side(bundle.model, bundle.tokenizer, ["volcano", "computer"], cfg, out)
        plain_copy = tmp_path / "my_list.tsv"
        shutil.copy(cand_path, plain_copy)
        remined = evaluate.build_text_side(bundle.model, bundle.tokenizer, ["volcano", "computer"], cfg, plain_copy)
    assert as_is.negative_labels == [c.word for c in mined]
    assert len(remined.negative_labels) == 40


def test_negatives_cli_says_where_the_weights_go_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "mined.txt"
    assert cli.main(["negatives", str(out), "--wordnet", str(tmp_path / "nowhere")]) == 2  # ViT-B-16 openai
    err = capsys.readouterr().err
    assert "--pretrained: " in err and "models--timm--vit_base_patch16_clip_224.openai" in err
    assert "--pretrained /path/to/file" in err and not out.exists()
    assert cli.main(["negatives", str(out), "--ratio", "0", "--pretrained", "none"]) == 2
    assert "--ratio must be in (0, 1]" in capsys.readouterr().err


@requires_wordnet
@pytest.mark.slow
def test_negatives_cli_csp_mode_writes_csp_pool_and_evaluation_uses_it_as_is(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("volcano\ncomputer\n")
    out = tmp_path / "csp.txt"
    code = cli.main(["negatives", str(out), "--arch", "tiny-vit-32", "--pretrained", "none", "--mode", "csp",
                     "--classnames", str(tmp_path / "classes.txt"), "--limit", "40", "--csp-seed", "3"])
    assert code == 0, capsys.readouterr().err
    pool = negatives.read_candidates(out.with_name("csp.txt.candidates.tsv"))
    assert pool == negatives.csp_pool([c for c in wordnet.select(mode="csp", exclude=["volcano", "computer"]).candidates
                                       if c.kind == "noun"][:40]
                                      + [c for c in wordnet.select(mode="csp").candidates if c.kind == "adj"][:40], 3)
    mined = negatives.read_candidates(out)
    assert [c.kind for c in mined] == ["noun"] * 6 + ["adj"] * 6  # 15% of each kind
    assert all(c.word.split()[-1] in negatives.CSP_SUPERCLASSES for c in mined if c.kind == "adj")
    prov = negatives.read_provenance(out)
    assert prov["csp_seed"] == 3 and prov["near_duplicate"] == 0.95 and len(prov["noun_templates"]) == 8
    torch.manual_seed(0)
    bundle = models.build("tiny-vit-32", None)
    with torch.no_grad():
        text = evaluate.build_text_side(bundle.model, bundle.tokenizer, ["volcano", "computer"],
                                        EvalConfig(scores=("neglabel", "csp")), out.with_name("csp.txt.candidates.tsv"),
                                        csp_path=out)
    assert text.csp_features.shape[0] == 12
