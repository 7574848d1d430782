"""Real image collections into shards (harness.data.writers, `harness shards`) and other people's
shard layouts read by the pipelines: tiny trees of real JPEGs and PNGs on disk."""

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from harness.cli import main
from harness.data import writers
from harness.data.badsamples import BadDataError
from harness.data.pipeline import class_prompt, eval_pipeline, train_pipeline
from harness.data.shards import read_manifest, sha256, verify
from harness.data.tario import tar_samples
from harness.data.transforms import to_uint8_chw

CLASSES = ("n02000001", "n02000002", "n02000003")


def transform(image):
    return to_uint8_chw(image.resize((8, 8))).float()


def _image(path: Path, seed: int, size=(24, 20)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".webp": "WEBP"}.get(path.suffix.lower(), "JPEG")
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _tree(root: Path, per_class: int = 5) -> dict[str, int]:
    """root/<wnid>/<image>, JPEG (ImageNet's .JPEG spelling) and PNG mixed; returns rel path -> label."""
    labels = {}
    for label, wnid in enumerate(CLASSES):
        for i in range(per_class):
            name = f"{wnid}/{wnid}_{i}" + (".JPEG" if i % 2 == 0 else ".png")
            _image(root / name, seed=label * 100 + i)
            labels[name] = label
    (root / CLASSES[0] / "README.txt").write_text("not an image")  # ignored
    return labels


def _raw(manifest) -> dict[str, dict]:
    """Every sample of a dataset as stored (bytes), by key."""
    return {s["__key__"]: s for s in tar_samples([{"url": u} for u in manifest.shards])}


def _quiet(_msg):
    pass


def test_imagefolder_round_trip_keeps_bytes_labels_and_keys(tmp_path):
    labels = _tree(tmp_path / "tree")
    items, classnames = writers.imagefolder_items(tmp_path / "tree")
    assert classnames == list(CLASSES)  # not ImageNet-1k: the folder names, sorted
    summary = writers.write_items(items, tmp_path / "ds", "tree", "id", classnames, shard_size=4, log=_quiet)
    manifest = read_manifest(tmp_path / "ds")
    assert (manifest.num_samples, manifest.shard_samples, manifest.classnames) == (15, [4, 4, 4, 3], list(CLASSES))
    assert summary.written == 4 and summary.skipped == 0
    verify(tmp_path / "ds")  # checksums in the manifest are those of the files
    raw = _raw(manifest)
    assert len(raw) == 15
    for key, sample in raw.items():
        meta = json.loads(sample["json"])
        original = (tmp_path / "tree" / meta["path"]).read_bytes()
        ext = "jpg" if meta["path"].endswith(".JPEG") else "png"
        assert sample[ext] == original  # stored as is, under its extension's key
        assert int(sample["cls"]) == meta["label"] == labels[meta["path"]]
    seen = {}
    for images, batch_labels, keys in eval_pipeline(manifest.shards, transform, 5, num_classes=3,
                                                    shard_samples=manifest.shard_samples):
        assert images.shape[1:] == (3, 8, 8)
        seen.update(zip(keys, batch_labels.tolist()))
    assert seen == {k: labels[json.loads(s["json"])["path"]] for k, s in raw.items()}
    assert sorted(seen) == [f"tree-{i:08d}" for i in range(15)]
    caption = class_prompt(manifest.classnames, "a photo of a {}")
    images, tokens, batch_labels = next(iter(train_pipeline(manifest.shards, transform, caption, open_clip.tokenize,
                                                            6, shuffle_buffer=0)))
    assert images.shape == (6, 3, 8, 8) and tokens.shape[0] == 6 and batch_labels.min() >= 0


def test_rerun_skips_finished_shards_and_rewrites_missing_partial_or_stale_ones(tmp_path):
    _tree(tmp_path / "tree")
    items, classnames = writers.imagefolder_items(tmp_path / "tree")
    out = tmp_path / "ds"

    def run(**kw):
        return writers.write_items(items, out, "tree", "id", classnames, shard_size=4, log=_quiet, **kw)

    first = run()
    before = dict(first.manifest.checksums)
    again = run()
    assert (again.written, again.skipped) == (0, 4)
    (out / "tree-000001.tar").unlink()  # lost
    with open(out / "tree-000002.tar", "r+b") as handle:  # cut short (a crash while copying)
        handle.truncate(1000)
    mtime = (out / "tree-000000.tar").stat().st_mtime_ns
    redo = run()
    assert (redo.written, redo.skipped) == (2, 2)
    assert redo.manifest.checksums == before  # deterministic: the same bytes as the first time
    assert (out / "tree-000000.tar").stat().st_mtime_ns == mtime  # a finished shard is not touched
    verify(out)
    # A shard without its sidecar is not known to be finished: rewritten.
    (out / writers.PROGRESS / "tree-000003.tar.json").unlink()
    assert run().written == 1
    # A source image that changed changes its shard's plan: that shard alone is rewritten.
    _image(Path(items[5].path), seed=999, size=(30, 30))
    changed = run()
    assert changed.written == 1 and changed.manifest.checksums["tree-000001.tar"] != before["tree-000001.tar"]
    assert not (out / writers.PARTIAL).exists()


def test_two_workers_write_the_same_shards_as_one(tmp_path):
    _tree(tmp_path / "tree")
    items, classnames = writers.imagefolder_items(tmp_path / "tree")
    one = writers.write_items(items, tmp_path / "a", "t", "id", classnames, shard_size=3, log=_quiet)
    two = writers.write_items(items, tmp_path / "b", "t", "id", classnames, shard_size=3, workers=2, log=_quiet)
    assert one.manifest == two.manifest and len(one.manifest.shards) == 5


def test_resize_reencodes_with_the_shorter_side_bounded(tmp_path):
    _tree(tmp_path / "tree", per_class=2)
    items, classnames = writers.imagefolder_items(tmp_path / "tree")
    summary = writers.write_items(items, tmp_path / "ds", "small", "id", classnames, resize=10, log=_quiet)
    for sample in _raw(read_manifest(tmp_path / "ds")).values():
        ext = "jpg" if "jpg" in sample else "png"
        image = Image.open(io.BytesIO(sample[ext]))
        assert min(image.size) == 10 and image.format == {"jpg": "JPEG", "png": "PNG"}[ext]
    assert summary.manifest.num_samples == 6


def test_imagenet_wnid_folders_get_open_clip_classnames(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    wnids = sorted(f"n{10_000_000 + 37 * i:08d}" for i in range(1000))
    for wnid in wnids:
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "a.png").write_bytes(png.getvalue())
    items, classnames = writers.imagefolder_items(tmp_path)
    assert classnames == list(open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES)
    assert classnames[:2] == ["tench", "goldfish"] and len(items) == 1000
    assert [i.label for i in items[:3]] == [0, 1, 2] and items[1].rel.startswith(wnids[1])


def test_imagelist_and_mos_folders(tmp_path):
    root = tmp_path / "images_largescale"
    for i in range(6):
        _image(root / "ssb_hard" / f"cls {i % 2}" / f"img{i}.jpg", seed=i)  # spaces in paths
    listing = tmp_path / "test_ssb_hard.txt"
    listing.write_text("".join(f"ssb_hard/cls {i % 2}/img{i}.jpg {i % 2}\n" for i in range(6)) + "\n")
    items = writers.imagelist_items(listing, root)
    assert [i.label for i in items] == [0, 1, 0, 1, 0, 1]
    writers.write_items(items, tmp_path / "ssb", "ssb_hard", "ood", shard_size=4, log=_quiet)
    manifest = read_manifest(tmp_path / "ssb")
    raw = _raw(manifest)
    assert manifest.kind == "ood" and manifest.classnames == [] and manifest.shard_samples == [4, 2]
    assert {int(s["cls"]) for s in raw.values()} == {-1}  # OoD: no class; the list's label stays in json
    assert [json.loads(s["json"])["label"] for _, s in sorted(raw.items())] == [0, 1, 0, 1, 0, 1]
    # MOS: every image below the folder, nested or flat, label -1
    _image(tmp_path / "Places" / "a" / "x.jpg", seed=1)
    _image(tmp_path / "Places" / "b.webp", seed=2)
    writers.write_items(writers.mos_items(tmp_path / "Places"), tmp_path / "places", "places", "ood", log=_quiet)
    mos = read_manifest(tmp_path / "places")
    labels = [label for _, batch, _ in eval_pipeline(mos.shards, transform, 4) for label in batch.tolist()]
    assert labels == [-1, -1] and mos.image_key in ("jpg", "webp")
    # bad lists name the line
    listing.write_text("ssb_hard/cls 0/img0.jpg 0\nssb_hard/cls 1/img1.jpg\n")
    with pytest.raises(writers.SourceError, match=r"test_ssb_hard.txt:2: expected 'relative/path label'"):
        writers.imagelist_items(listing, root)
    listing.write_text("ssb_hard/missing.jpg 0\n")
    with pytest.raises(writers.SourceError, match=r":1: .*missing.jpg does not exist"):
        writers.imagelist_items(listing, root)


def test_cli_writes_resumes_and_refuses_bad_input(tmp_path, capsys):
    _tree(tmp_path / "tree", per_class=2)
    args = ["shards", "imagefolder", str(tmp_path / "tree"), str(tmp_path / "ds"), "--name", "cli", "--shard-size", "2"]
    assert main(args) == 0
    assert "6 images in 3 shards of 2; 0 already written, 3 to write" in capsys.readouterr().out
    assert main(args) == 0
    assert "3 skipped" in capsys.readouterr().out
    assert read_manifest(tmp_path / "ds").classnames == list(CLASSES)
    assert main(["shards", "mos", str(tmp_path / "nowhere"), str(tmp_path / "x"), "--name", "x"]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    assert main(args[:4] + ["--name", "a.b"]) == 2
    assert "--name 'a.b'" in capsys.readouterr().err


def _foreign_shard(path: Path, samples: list[dict]) -> None:
    """A tar written by hand (no webdataset), as other people's tools do."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample.pop("__key__")
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _encoded(fmt: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_foreign_layouts_are_read_without_conversion_and_indexed(tmp_path):
    ds = tmp_path / "imagenet-wds"
    (ds / "val").mkdir(parents=True)
    # jpeg + json {"label"} (keys in folders); webp + cls; jpg + json {"cls"} with extra fields
    _foreign_shard(ds / "val" / "part-0.tar", [
        {"__key__": f"n0144/ILSVRC_{i}", "jpeg": _encoded("JPEG", i), "json": json.dumps({"label": i}).encode()}
        for i in range(3)])
    _foreign_shard(ds / "val" / "part-1.tar", [
        {"__key__": f"webp_{i}", "webp": _encoded("WEBP", 10 + i), "cls": f"{i + 3}\n".encode()} for i in range(2)])
    _foreign_shard(ds / "part-2.tar", [
        {"__key__": "j0", "jpg": _encoded("JPEG", 20), "json": json.dumps({"cls": 5, "width": 12}).encode()}])
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {k}\n" for k in range(6)))
    assert main(["shards", "index", str(ds), "--name", "foreign", "--classnames", str(names)]) == 0
    manifest = read_manifest(ds)
    assert (manifest.kind, manifest.num_samples, manifest.shard_samples) == ("id", 6, [1, 3, 2])
    assert manifest.shards[0].endswith("part-2.tar") and manifest.image_key == "jpg"
    assert manifest.checksums["val/part-0.tar"] == sha256(ds / "val" / "part-0.tar")
    got = {}
    for _, labels, keys in eval_pipeline(manifest.shards, transform, 4, num_classes=6,
                                         shard_samples=manifest.shard_samples):
        got.update(zip(keys, labels.tolist()))
    assert got == {"j0": 5, "n0144/ILSVRC_0": 0, "n0144/ILSVRC_1": 1, "n0144/ILSVRC_2": 2, "webp_0": 3, "webp_1": 4}
    caption = class_prompt(manifest.classnames, "{}")
    _, tokens, labels = next(iter(train_pipeline(manifest.shards, transform, caption, open_clip.tokenize, 6,
                                                 shuffle_buffer=0)))
    assert sorted(labels.tolist()) == sorted(got.values()) and tokens.shape[0] == 6


def test_foreign_labels_that_do_not_parse_are_bad_samples(tmp_path):
    _foreign_shard(tmp_path / "bad.tar", [
        {"__key__": "ok", "jpg": _encoded("JPEG", 1), "json": b'{"label": 1}'},
        {"__key__": "float", "jpg": _encoded("JPEG", 2), "json": b'{"label": 1.5}'},
        {"__key__": "broken", "jpg": _encoded("JPEG", 3), "json": b'{"label": '}])
    url = str(tmp_path / "bad.tar")
    with pytest.raises(BadDataError, match=r"bad.tar: sample float: unparsable label"):
        list(eval_pipeline([url], transform, 4, num_classes=2))
    kept = [k for _, _, keys in eval_pipeline([url], transform, 4, num_classes=2, allow_bad=True) for k in keys]
    assert kept == ["ok"]
    # no json and no cls: an OoD-style sample, label -1
    _foreign_shard(tmp_path / "ood.tar", [{"__key__": "o", "png": _encoded("PNG", 4)}])
    assert [lab.tolist() for _, lab, _ in eval_pipeline([str(tmp_path / "ood.tar")], transform, 4)] == [[-1]]


def test_index_refuses_what_it_cannot_describe(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["shards", "index", str(tmp_path / "empty"), "--name", "e"]) == 2
    assert main(["shards", "index", str(tmp_path / "empty"), "--name", "e", "--classnames", "nope.txt"]) == 2
    with pytest.raises(writers.SourceError, match="ID dataset needs class names"):
        writers.index_shards(tmp_path / "empty", "e", "id")
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.slow
def test_ray_tasks_write_the_same_shards_as_one_process(tmp_path):
    """--address: one Ray task per shard (here a local Ray started and stopped by the writer)."""
    _tree(tmp_path / "tree", per_class=2)
    items, classnames = writers.imagefolder_items(tmp_path / "tree")
    one = writers.write_items(items, tmp_path / "a", "t", "id", classnames, shard_size=2, log=_quiet)
    ray = writers.write_items(items, tmp_path / "b", "t", "id", classnames, shard_size=2, address="local",
                              log=_quiet)
    assert ray.manifest == one.manifest and ray.written == 3


def test_holdout_is_carved_per_class_the_same_way_every_run(tmp_path, capsys):
    labels = _tree(tmp_path / "tree", per_class=5)
    args = ["shards", "imagefolder", str(tmp_path / "tree"), str(tmp_path / "train"), "--name", "train",
            "--shard-size", "4", "--holdout-per-class", "2", "--holdout-out", str(tmp_path / "imagenet-holdout")]
    assert main(args) == 0
    train, held = read_manifest(tmp_path / "train"), read_manifest(tmp_path / "imagenet-holdout")
    assert (train.num_samples, held.num_samples) == (9, 6) and held.classnames == train.classnames == list(CLASSES)
    train_paths = {json.loads(s["json"])["path"] for s in _raw(train).values()}
    held_samples = list(_raw(held).values())
    held_paths = {json.loads(s["json"])["path"] for s in held_samples}
    assert not train_paths & held_paths and len(train_paths | held_paths) == len(labels)
    assert Counter(int(s["cls"]) for s in held_samples) == {0: 2, 1: 2, 2: 2}
    # Adding an image to one class moves no held-out image of the others: the split is by each path alone.
    before = {Path(i.path).name for i in writers.split_holdout(writers.imagefolder_items(tmp_path / "tree")[0], 2)[1]}
    assert before == {Path(p).name for p in held_paths}
    _image(tmp_path / "tree" / CLASSES[1] / "extra.png", seed=999)
    after = {Path(i.path).name for i in writers.split_holdout(writers.imagefolder_items(tmp_path / "tree")[0], 2)[1]}
    assert {n for n in after if not n.startswith(CLASSES[1])} == {n for n in before if not n.startswith(CLASSES[1])}
    capsys.readouterr()
    assert main(args[:-4] + ["--holdout-per-class", "5", "--holdout-out", str(tmp_path / "h2")]) == 2
    assert "would leave class 0 with no training images" in capsys.readouterr().err
    assert main(args[:-2]) == 2
    assert "go together" in capsys.readouterr().err
