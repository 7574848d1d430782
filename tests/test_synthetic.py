import json

import numpy as np
import webdataset as wds

from harness.data import synthetic
from harness.data.shards import read_manifest


def read_all(dataset_dir):
    return list(wds.WebDataset(read_manifest(dataset_dir).shards, shardshuffle=False).decode("pil"))


def test_concept_splits_are_disjoint_and_cover_every_attribute():
    splits = synthetic.concept_splits(seed=0)
    groups = [set(v) for v in splits.values()]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == len(synthetic.SHAPES) * len(synthetic.COLOURS)
    id_shapes = {c.split()[1] for c in splits["id"]}
    id_colours = {c.split()[0] for c in splits["id"]}
    assert id_shapes == set(synthetic.SHAPES) and id_colours == set(synthetic.COLOURS)
    assert synthetic.concept_splits(seed=1) != splits


def test_manifests_match_what_is_read_back(world):
    meta = json.loads((world / "world.json").read_text())
    for name, (kind, _) in synthetic.DATASETS.items():
        manifest = read_manifest(world / name)
        samples = read_all(world / name)
        assert manifest.num_samples == len(samples) == sum(manifest.shard_samples)
        assert len({s["__key__"] for s in samples}) == len(samples)
        assert all(s["png"].size == (32, 32) and s["png"].mode == "RGB" for s in samples)
        labels = {s["cls"] for s in samples}
        if kind == "id":
            assert manifest.classnames == meta["id_classes"]
            assert labels == set(range(len(manifest.classnames)))
            assert all(s["json"]["concept"] == manifest.classnames[s["cls"]] for s in samples)
        elif kind == "ood":
            assert labels == {-1}
        else:
            assert all(s["txt"] and s["json"]["concept"].split()[0] in s["txt"] for s in samples)


def test_ood_sets_hold_the_right_concepts(world):
    meta = json.loads((world / "world.json").read_text())
    concepts = {name: {s["json"]["concept"] for s in read_all(world / name)} for name in ("ood_val", "near_ood", "far_ood")}
    assert concepts["ood_val"] <= set(meta["splits"]["ood_val"])
    assert concepts["near_ood"] <= set(meta["splits"]["near_ood"])
    assert all(c.endswith("texture") for c in concepts["far_ood"])
    assert not concepts["ood_val"] & (concepts["near_ood"] | concepts["far_ood"])
    assert not set(meta["id_classes"]) & set().union(*concepts.values())


def test_colours_are_visible_in_pixels(world):
    means = {}
    for s in read_all(world / "id_train"):
        colour = s["json"]["colour"]
        pixels = np.asarray(s["png"], dtype=float).reshape(-1, 3)
        bright = pixels[pixels.sum(1) > pixels.sum(1).mean()]  # the object is brighter than most backgrounds
        means.setdefault(colour, []).append(bright.mean(0))
    red, blue = np.mean(means["red"], 0), np.mean(means["blue"], 0)
    assert red[0] > red[2] + 40 and blue[2] > blue[0] + 40


def test_generation_is_deterministic_and_cached(tmp_path):
    spec = synthetic.WorldSpec(pretrain=60, id_train_per_class=2, id_val_per_class=1, id_test_per_class=1,
                               ood_val=8, near_ood=8, far_ood=8, shard_size=20)
    synthetic.generate(tmp_path / "a", spec)
    synthetic.generate(tmp_path / "b", spec)
    for name in synthetic.DATASETS:
        assert read_manifest(tmp_path / "a" / name).checksums == read_manifest(tmp_path / "b" / name).checksums
    stamp = (tmp_path / "a" / "world.json").stat().st_mtime_ns
    synthetic.generate(tmp_path / "a", spec)
    assert (tmp_path / "a" / "world.json").stat().st_mtime_ns == stamp  # cache hit: nothing rewritten
    synthetic.generate(tmp_path / "a", spec, force=True)
    assert (tmp_path / "a" / "world.json").stat().st_mtime_ns != stamp
    assert not (tmp_path / "a.partial").exists()


def test_negative_vocabulary_is_larger_than_the_id_classes_and_unique(world):
    lines = (world / "negatives.tsv").read_text().splitlines()
    meta = json.loads((world / "world.json").read_text())
    assert len(lines) == len(set(lines)) > 5 * len(meta["id_classes"])
    kinds = {line.split("\t")[0] for line in lines}
    assert kinds == {"noun", "adj"}
