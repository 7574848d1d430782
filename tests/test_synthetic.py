"""The synthetic world: splits, sample layout read back through plain webdataset, determinism, caching."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import webdataset as wds

from harness.data import drawing, synthetic
from harness.data.shards import read_manifest, sha256

TINY = synthetic.WorldSpec(pretrain=120, id_train_per_class=3, id_val_per_class=1, id_test_per_class=2,
                           ood_val=24, near_ood=30, far_ood=20, shard_size=25)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A world of about 300 images, generated once for this module."""
    root = tmp_path_factory.mktemp("synthetic") / "world"
    synthetic.generate(root, TINY)
    return root


def read_all(dataset_dir):
    return list(wds.WebDataset(read_manifest(dataset_dir).shards, shardshuffle=False).decode("pil"))


def checksums(root):
    return {name: read_manifest(root / name).checksums for name in synthetic.DATASETS}


def test_concept_splits_partition_the_grid_and_need_both_attributes():
    splits = synthetic.concept_splits(seed=0)
    groups = [set(v) for v in splits.values()]
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(synthetic.SHAPES) * len(synthetic.COLOURS)
    assert [len(splits[k]) for k in ("id", "ood_val", "near_ood")] == [20, 10, 20]
    assert {c.split()[1] for c in splits["id"]} == set(synthetic.SHAPES)
    assert {c.split()[0] for c in splits["id"]} == set(synthetic.COLOURS)
    assert synthetic.concept_splits(seed=0) == splits and synthetic.concept_splits(seed=1) != splits


def test_texture_splits_keep_far_ood_apart_from_validation():
    for seed in range(5):
        textures = synthetic.texture_splits(seed)
        assert textures["far_ood"] and textures["ood_val"] and not set(textures["far_ood"]) & set(textures["ood_val"])
        assert set(textures["far_ood"]) | set(textures["ood_val"]) == {f"{t} texture" for t in synthetic.TEXTURES}


def test_world_json_describes_splits_and_datasets(tiny_world):
    meta = json.loads((tiny_world / "world.json").read_text())
    assert meta["generator_version"] == synthetic.GENERATOR_VERSION and meta["spec"]["seed"] == TINY.seed
    assert meta["id_classes"] == synthetic.id_classes(TINY.seed) and len(meta["concepts"]) == 80 + len(synthetic.TEXTURES)
    # every ID concept once per fill: a pair of classes that only the fill tells apart
    assert sorted(c.split(" ", 1)[1] for c in meta["id_classes"]) == sorted(meta["splits"]["id"] * len(synthetic.ID_FILLS))
    datasets = meta["datasets"]
    assert {k: v["kind"] for k, v in datasets.items()} == {k: v[0] for k, v in synthetic.DATASETS.items()}
    assert set(datasets["pretrain"]["concepts"]) == set(meta["concepts"])  # pretraining saw everything
    ood_val, near, far = (set(datasets[n]["concepts"]) for n in ("ood_val", "near_ood", "far_ood"))
    assert not (ood_val & near) and not (ood_val & far) and not (near & far)
    assert not {c.split(" ", 1)[1] for c in meta["id_classes"]} & (ood_val | near | far)
    assert far and all(c.endswith(" texture") for c in far)


def test_every_dataset_reads_back_as_its_manifest_says(tiny_world):
    meta = json.loads((tiny_world / "world.json").read_text())
    for name, (kind, _role) in synthetic.DATASETS.items():
        manifest = read_manifest(tiny_world / name)
        rows = read_all(tiny_world / name)
        assert manifest.kind == kind and manifest.image_key == "png"
        assert manifest.num_samples == len(rows) == sum(manifest.shard_samples) == meta["datasets"][name]["num_samples"]
        assert [r["__key__"] for r in rows] == [f"{name}-{i:06d}" for i in range(len(rows))]
        assert all(r["png"].size == (32, 32) and r["png"].mode == "RGB" for r in rows)
        assert {r["json"]["concept"] for r in rows} <= set(meta["datasets"][name]["concepts"])
        labels = [r["cls"] for r in rows]
        if kind == "id":
            assert manifest.classnames == meta["id_classes"]
            assert set(labels) == set(range(len(manifest.classnames)))  # every class, each in range
            assert all(r["json"]["concept"] == manifest.classnames[r["cls"]] for r in rows)
        elif kind == "ood":
            assert set(labels) == {-1} and not manifest.classnames
        else:
            assert all(meta["concepts"][r["cls"]] == r["json"]["concept"] for r in rows)
            assert all(r["json"]["concept"] in r["txt"] for r in rows)  # captions name what was drawn
            assert all(len(r["txt"].split()) <= 10 for r in rows)  # short enough for a 16-token text tower
        assert ("txt" in rows[0]) == (kind == "pretrain")


def test_metadata_matches_the_concept(tiny_world):
    for row in read_all(tiny_world / "pretrain") + read_all(tiny_world / "far_ood"):
        info, (first, second) = row["json"], row["json"]["concept"].split()
        if second == "texture":
            assert info["texture"] == first and info["shape"] is None and info["colour"] != info["second_colour"]
        else:
            assert (info["colour"], info["shape"]) == (first, second)
            assert info["pattern"] in drawing.PATTERNS and info["background"] in drawing.BACKGROUNDS


def test_id_images_have_their_class_fill_and_captions_rarely_name_fills(tiny_world):
    for name in ("id_train", "id_test", "near_ood"):
        for row in read_all(tiny_world / name):
            fill, colour, shape = synthetic.parse_concept(row["json"]["concept"])
            assert (row["json"]["colour"], row["json"]["shape"]) == (colour, shape)
            assert row["json"]["pattern"] == (synthetic.ID_FILLS[fill] if fill else row["json"]["pattern"])
            assert row["json"]["pattern"] in synthetic.ID_FILLS.values()  # OoD objects share the ID fills
    fill_words = {"plain", *drawing.PATTERNS}
    rng = np.random.default_rng(0)
    attrs = drawing.render_object(rng, "star", "red", 32, "striped")[1]
    named = [bool(fill_words & set(synthetic.caption(rng, attrs, 0.05).split())) for _ in range(4000)]
    assert 0.03 < np.mean(named) < 0.07  # the share the spec asks for, and nothing names a fill otherwise
    assert not any(fill_words & set(synthetic.caption(rng, attrs, 0.0).split()) for _ in range(200))
    assert all(fill_words & set(synthetic.caption(rng, attrs, 1.0).split()) for _ in range(200))


def test_same_spec_gives_identical_bytes_serial_or_parallel(tiny_world, tmp_path):
    synthetic.generate(tmp_path / "again", TINY, workers=2)
    assert checksums(tmp_path / "again") == checksums(tiny_world)
    assert all(sha256(p) == read_manifest(p.parent).checksums[p.name] for p in (tmp_path / "again").glob("*/*.tar"))
    for name in ("world.json", "negatives.tsv", "id_train/manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_world / name).read_bytes()
    other = synthetic.generate(tmp_path / "seed1", dataclasses.replace(TINY, seed=1))
    assert other["id_classes"] != json.loads((tiny_world / "world.json").read_text())["id_classes"]
    assert checksums(tmp_path / "seed1")["far_ood"] != checksums(tiny_world)["far_ood"]


def test_cached_world_is_returned_without_rewriting(tmp_path):
    root = tmp_path / "w"
    first = synthetic.generate(root, TINY)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synthetic.generate(root, TINY) == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps  # cache hit: nothing touched
    synthetic.generate(root, TINY, force=True)
    assert (root / "world.json").stat().st_mtime_ns != stamps[root / "world.json"]
    next(root.glob("near_ood/*.tar")).unlink()  # an incomplete world is regenerated
    synthetic.generate(root, TINY)
    assert read_manifest(root / "near_ood").num_samples == TINY.near_ood
    bigger = synthetic.generate(root, TINY.scaled(2))  # another spec replaces the world
    assert bigger["spec"]["pretrain"] == 2 * TINY.pretrain == read_manifest(root / "pretrain").num_samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary directories left


def test_negative_vocabulary_is_larger_than_the_id_classes_and_unique(tiny_world):
    lines = (tiny_world / "negatives.tsv").read_text().splitlines()
    meta = json.loads((tiny_world / "world.json").read_text())
    assert lines == sorted(set(lines)) and len(lines) > 5 * len(meta["id_classes"])
    pairs = [tuple(line.split("\t")) for line in lines]
    assert {kind for kind, _ in pairs} == {"noun", "adj"}
    nouns, adjectives = {w for k, w in pairs if k == "noun"}, {w for k, w in pairs if k == "adj"}
    assert set(meta["concepts"]) | set(synthetic.SHAPES) <= nouns and set(synthetic.COLOURS) <= adjectives
    assert len(nouns - set(meta["concepts"]) - set(synthetic.SHAPES)) >= 100 and len(adjectives) >= 40


def test_colours_differ_in_mean_colour():
    """Rendered from the same seeds, images differ only in the object's colour."""
    def mean_colour(colour):
        images = [drawing.render_object(np.random.default_rng(i), "square", colour, 32)[0] for i in range(30)]
        return np.mean(images, axis=(0, 1, 2))

    means = {c: mean_colour(c) for c in synthetic.COLOURS}
    for a, b in itertools.combinations(means, 2):
        assert np.linalg.norm(means[a] - means[b]) > 10, (a, b)
    assert np.argmax(means["red"]) == 0 and np.argmax(means["green"]) == 1 and np.argmax(means["blue"]) == 2


def test_shapes_differ_in_outline():
    masks = {s: drawing.shape_mask(s, 16, 16, 12, math.pi / 7, 32) for s in synthetic.SHAPES}
    assert all(0.1 < m.mean() < 0.8 for m in masks.values())
    for a, b in itertools.combinations(masks, 2):
        assert np.abs(masks[a] - masks[b]).mean() > 0.03, (a, b)


def test_specs_are_validated_and_sized_for_their_users():
    with pytest.raises(ValueError, match="near_ood"):
        synthetic.WorldSpec(near_ood=0)
    small = synthetic.describe_world(synthetic.small_spec())["datasets"]
    shard = synthetic.small_spec().shard_size
    assert small["id_train"]["num_samples"] > 2 * shard  # several training shards for two workers
    assert small["near_ood"]["num_samples"] <= shard  # one shard: a second rank gets none
    assert shard < small["id_test"]["num_samples"] <= 2 * shard and shard < small["far_ood"]["num_samples"] <= 2 * shard
