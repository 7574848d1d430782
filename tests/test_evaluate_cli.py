"""`harness evaluate` end to end: a checkpoint on both paper suites (made of the small synthetic world's
sets under the suites' names), the shared cache reused by a second evaluation, the run directory
re-evaluated to the same rows."""

import os

import pandas as pd
import pytest
import torch

from harness import cli, models, results, suites
from harness.evaluation import embed_cache

pytestmark = pytest.mark.slow

# suite directory name -> the synthetic world's set it stands for
STAND_INS = {"imagenet-val": "id_test", "iNaturalist": "far_ood", "SUN": "near_ood", "Places": "far_ood",
             "Textures": "near_ood", "SSB-hard": "near_ood", "NINCO": "near_ood", "Textures-openood": "far_ood",
             "OpenImage-O": "far_ood", "id_train": "id_train", "id_val": "id_val", "ood_val": "ood_val"}


@pytest.fixture(scope="module")
def suite_root(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("suites")
    for name, source in STAND_INS.items():
        os.symlink(world / source, root / name)
    os.symlink(world / "negatives.tsv", root / "negatives.tsv")
    return root


def _evaluate(capsys, *args):
    code = cli.main(["evaluate", *args])
    return code, capsys.readouterr().out


def test_checkpoint_on_both_suites_then_the_cache_then_the_run_directory(suite_root, tmp_path, capsys):
    torch.manual_seed(0)
    weights = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "w.pt")
    cache = tmp_path / "cache"
    common = ["--weights", str(weights), "--suite", "mos", "--suite", "openood-v1.5", "--cache", str(cache),
              "--set", "data.source=shards", "--set", f"data.root={suite_root}", "--set", "name=ev",
              "--set", "eval.batch_size=64", "--scores", "mcm,neglabel,gl_mcm,knn,adaneg"]
    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "first"))
    assert code == 0, out
    runs = results.read(tmp_path / "first" / "results", results.RUNS)
    assert sorted(runs["suite"]) == ["mos", "openood-v1.5"] and set(runs["method"]) == {"zero-shot"}
    ood = results.read(tmp_path / "first" / "results", results.OOD)
    assert set(ood["score"]) == {"mcm", "neglabel", "gl_mcm", "knn", "adaneg"}
    # every distinct set encoded once: iNaturalist serves both suites (features entries by set name)
    names = [p.name.split(".")[0] for p in cache.glob("*/*.features.*.pt")]
    assert sorted(names) == sorted(set(names)) and names.count("iNaturalist") == 1
    report = (tmp_path / "first" / "report.md").read_text()
    assert "mos" in report and "openood-v1.5" in report

    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "second"))
    assert code == 0 and "encoded nothing" in out
    again = results.read(tmp_path / "second" / "results", results.OOD)
    cols = ["run_id", "score", "dataset", "fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"]
    pd.testing.assert_frame_equal(ood[cols].sort_values(cols[:3]).reset_index(drop=True),
                                  again[cols].sort_values(cols[:3]).reset_index(drop=True), rtol=0, atol=1e-9)

    # the run directory as weights: its config comes along, the same rows come back
    run_dir = next((tmp_path / "first" / "runs").iterdir())
    code, out = _evaluate(capsys, "--weights", str(run_dir), "--cache", str(cache), "--out", str(tmp_path / "third"))
    assert code == 0 and "encoded nothing" in out
    third = results.read(tmp_path / "third" / "results", results.OOD)
    mine = ood[ood["run_id"] == run_dir.name]
    pd.testing.assert_frame_equal(mine[cols].sort_values(cols[:3]).reset_index(drop=True),
                                  third[cols].sort_values(cols[:3]).reset_index(drop=True), rtol=0, atol=1e-9)
    assert embed_cache.sizes(cache)


def test_unknown_suite_and_missing_weights_exit_2(suite_root, tmp_path, capsys):
    code, _ = _evaluate(capsys, "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"))
    assert code == 2
    code = cli.main(["evaluate", "--weights", "synthetic", "--suite", "nope", "--out", str(tmp_path / "o")])
    assert code == 2 and "nope" in capsys.readouterr().err
    assert set(suites.SUITES) == {"mos", "openood-v1.5"}


def test_through_ray_the_workers_split_the_shards_and_the_rows_match_in_process(world, tmp_path, capsys):
    """--address local --workers 2: a private Ray cluster whose two Train workers each encode their
    share of every set (as training's evaluation does); the rows equal an in-process evaluation's."""
    import json

    from harness.orchestration import cluster

    torch.manual_seed(1)
    weights = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "w.pt")
    common = ["--weights", str(weights), "--set", "name=evray", "--set", "data.synthetic_size=small",
              "--set", "eval.batch_size=64", "--scores", "mcm,neglabel,knn"]
    code, out = _evaluate(capsys, *common, "--cache", str(tmp_path / "c1"), "--out", str(tmp_path / "here"))
    assert code == 0, out
    try:
        code, out = _evaluate(capsys, *common, "--cache", str(tmp_path / "c2"), "--out", str(tmp_path / "ray"),
                              "--address", "local", "--workers", "2")
    finally:
        cluster.shutdown()
    assert code == 0, out
    run_dir = next((tmp_path / "ray" / "runs").iterdir())
    summary = json.loads((run_dir / "result.json").read_text())
    assert summary["world_size"] == 2
    by_rank = summary["eval_encoded_by_rank"]
    assert all(len(counts) == 2 for counts in by_rank.values())
    assert any(min(counts) > 0 for counts in by_rank.values()), by_rank  # both ranks did encode
    assert len(list((run_dir / "workers").glob("rank*.json"))) == 2
    cols = ["score", "dataset", "fpr95", "auroc", "aupr_in", "aupr_out"]
    here = results.read(tmp_path / "here" / "results", results.OOD)[cols].sort_values(cols[:2]).reset_index(drop=True)
    there = results.read(tmp_path / "ray" / "results", results.OOD)[cols].sort_values(cols[:2]).reset_index(drop=True)
    pd.testing.assert_frame_equal(here, there, rtol=0, atol=1e-6)  # float32 encodes in two processes


def test_a_corrupt_cache_entry_or_a_repaired_shard_never_gives_other_numbers(world, tmp_path, capsys):
    """Faults a user meets: a flipped bit in a cached near-OoD entry, a truncated and an empty one, all
    rebuilt (named) to the same rows; a truncated shard evaluated with eval.allow_bad_samples, then
    restored: the cache reads it again instead of answering with the short set."""
    import shutil

    root = tmp_path / "world"
    for name in ("id_test", "near_ood", "far_ood", "id_train", "id_val", "ood_val"):
        shutil.copytree(world / name, root / name)
    shutil.copy(world / "negatives.tsv", root)
    torch.manual_seed(0)
    weights = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "w.pt")
    cache = tmp_path / "cache"
    common = ["--weights", str(weights), "--cache", str(cache), "--set", "data.source=shards",
              "--set", f"data.root={root}", "--set", "eval.batch_size=64", "--set", "eval.allow_bad_samples=true",
              "--scores", "mcm,msp"]
    cols = ["score", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out"]

    def rows(out):
        ood = results.read(out / "results", results.OOD)
        return ood[cols].sort_values(cols[:2]).reset_index(drop=True)

    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "clean"))
    assert code == 0, out
    clean = rows(tmp_path / "clean")
    entries = {p.name.split(".")[0]: p for p in cache.glob("*/*.features.*.pt")}
    for name, how in (("near_ood", "flip"), ("far_ood", "truncate"), ("id_test", "empty")):
        data = bytearray(entries[name].read_bytes())
        if how == "flip":
            data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 8])
        entries[name].write_bytes(bytes(data[: len(data) // 2] if how == "truncate" else b"" if how == "empty" else data))
    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "repaired"))
    assert code == 0, out
    for name in ("near_ood", "far_ood", "id_test"):
        assert f"{entries[name]} is corrupt" in out, out[-3000:]
    pd.testing.assert_frame_equal(rows(tmp_path / "repaired"), clean, rtol=0, atol=0)

    shard = next((root / "near_ood").glob("*.tar"))
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 3])
    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "short"))
    assert code == 0, out
    runs = results.read(tmp_path / "short" / "results", results.RUNS)
    assert runs["bad_samples_eval"].iloc[0] > 0
    shard.write_bytes(original)  # repaired
    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "again"))
    assert code == 0, out
    runs = results.read(tmp_path / "again" / "results", results.RUNS)
    assert runs["bad_samples_eval"].iloc[0] == 0
    pd.testing.assert_frame_equal(rows(tmp_path / "again"), clean, rtol=0, atol=0)


def test_unsafe_weights_and_a_bad_shard_exit_2_naming_the_file(world, tmp_path, capsys):
    import pickle
    import shutil

    class Runs:  # what a malicious checkpoint carries: code torch.load(weights_only=True) must refuse
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Runs()}, evil, pickle_module=pickle)
    torch.manual_seed(0)
    weights = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "w.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(weights.read_bytes()[:5000])
    for bad, why in ((evil, "unsupported GLOBAL"), (truncated, "not a readable checkpoint")):
        code = cli.main(["evaluate", "--weights", str(bad), "--arch", "tiny-vit-32", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and str(bad) in err and why in err and "Traceback" not in err, err

    root = tmp_path / "world"
    shutil.copytree(world, root, ignore=shutil.ignore_patterns("pretrain"))
    shard = next((root / "near_ood").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:20000])
    code = cli.main(["evaluate", "--weights", str(weights), "--set", "data.source=shards", "--set", f"data.root={root}",
                     "--scores", "mcm", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and str(shard) in err and "unreadable shard" in err, err


def test_scores_all_gives_every_registered_score_and_again_from_the_warm_cache(suite_root, tmp_path, capsys):
    # the OpenOOD ports included: their ID-train statistics are one cache entry, reused by the second run
    from harness.scores import SCORE_SPECS

    torch.manual_seed(0)
    weights = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "w.pt")
    cache = tmp_path / "cache"
    common = ["--weights", str(weights), "--suite", "mos", "--cache", str(cache), "--set", "data.source=shards",
              "--set", f"data.root={suite_root}", "--set", "name=all", "--set", "eval.batch_size=64",
              "--scores", "all"]
    before = os.environ.get("HARNESS_EMBED_CACHE")
    code, out = _evaluate(capsys, *common, "--out", str(tmp_path / "first"))
    assert code == 0, out
    # --cache is this command's: later work in the process (and Ray clusters it starts) keeps its own
    assert os.environ.get("HARNESS_EMBED_CACHE") == before
    ood = results.read(tmp_path / "first" / "results", results.OOD)
    assert set(ood["score"]) == set(SCORE_SPECS)
    assert len(list(cache.glob("*/*.train_stats.*.pt"))) == 1
    run_dir = next((tmp_path / "first" / "runs").iterdir())
    code, out = _evaluate(capsys, "--weights", str(run_dir), "--cache", str(cache), "--scores", "all",
                          "--out", str(tmp_path / "second"))
    assert code == 0 and "encoded nothing" in out, out
    again = results.read(tmp_path / "second" / "results", results.OOD)
    cols = ["score", "dataset", "fpr95", "auroc"]
    pd.testing.assert_frame_equal(ood[cols].sort_values(cols[:2]).reset_index(drop=True),
                                  again[cols].sort_values(cols[:2]).reset_index(drop=True), rtol=0, atol=1e-9)
