"""The real-data path end to end, in miniature: image trees and image lists on disk (real JPEGs and
PNGs) -> `harness shards` -> the `mos` suite's layout -> a locally saved "pretrained" checkpoint
evaluated zero-shot -> Parquet rows that the paper comparison reads. No Ray: the evaluation is the
same in-process step `harness sweep` runs for its zero-shot baseline."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import config, models, paper, results, suites
from harness.orchestration import driver
from harness.train import prepare
from harness.cli import main

CLASSES = ("n01000001", "n01000002", "n01000003")
MOS_OOD = ("iNaturalist", "SUN", "Places", "Textures")


def _image(path: Path, seed: int) -> None:
    # Each class (and each OoD set) gets its own colour, so the images are not all alike.
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(40 + 60 * (seed // 100 % 4), 30, (20, 24, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels_img = Image.fromarray(pixels)
    pixels_img.save(path, format="PNG" if path.suffix == ".png" else "JPEG")


def _imagefolder(root: Path, per_class: int, offset: int) -> None:
    for label, wnid in enumerate(CLASSES):
        for i in range(per_class):
            _image(root / wnid / f"{wnid}_{i}{'.JPEG' if i % 2 else '.png'}", label * 100 + offset + i)


def _shards(*args: str) -> None:
    assert main(["shards", *args, "--shard-size", "4"]) == 0


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory) -> Path:
    src, root = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("root")
    for name, per_class, offset in (("imagenet-train", 4, 0), ("imagenet-holdout", 2, 10), ("imagenet-val", 3, 20)):
        _imagefolder(src / name, per_class, offset)
        _shards("imagefolder", str(src / name), str(root / name), "--name", name)
    # Two OoD sets as OpenOOD-style image lists (path + label), two as MOS folders, one validation folder.
    for k, name in enumerate(("iNaturalist", "SUN")):
        lines = []
        for i in range(5):
            rel = f"images_largescale/{name}/{i:03d}.jpg"
            _image(src / "benchmark_imglist" / ".." / rel, 300 + 7 * k + i)
            lines.append(f"{rel} -1")
        listing = src / "benchmark_imglist" / f"test_{name}.txt"
        listing.write_text("\n".join(lines) + "\n")
        _shards("imagelist", str(listing), str(root / name), "--name", name, "--root", str(src))
    for k, name in enumerate(("Places", "Textures", "ood-val")):
        for i in range(5):
            _image(src / name / f"sub{i % 2}" / f"{i}.jpg", 300 + 50 * k + i)
        _shards("mos", str(src / name), str(root / name), "--name", name)
    (root / "negatives.tsv").write_text("".join(f"noun\t{w}\n" for w in
                                                ("rock", "cloud", "table", "river", "spoon", "lamp", "road")))
    return root


def test_converted_trees_read_back_through_the_mos_suite(suite_root):
    with pytest.raises(suites.SuiteError, match="iNaturalist: expected 10000 samples for suite mos, found 5"):
        suites.check_counts("mos", suite_root)
    warnings = suites.check_counts("mos", suite_root, allow_mismatch=True)  # every set present, all tiny
    assert len(warnings) == 1 + len(MOS_OOD)


@pytest.mark.slow
def test_a_locally_saved_checkpoint_is_evaluated_end_to_end_on_the_suite(suite_root, tmp_path):
    torch.manual_seed(0)
    checkpoint = models.save_weights(models.build("tiny-vit-32", None).model, tmp_path / "pretrained.pt")
    suite = suites.get("mos")
    cfg = config.load(None, [
        "name=real-path", "data.source=shards", f"data.root={suite_root}", "data.train=imagenet-train",
        "data.id_val=imagenet-holdout", "data.ood_val=ood-val", f"data.id_test={suite.id_test[0]}",
        "data.ood_test=[" + ",".join(name for name, _ in suite.ood_test) + "]", f"model.pretrained={checkpoint}",
        "data.batch_size=4", "eval.batch_size=4", "eval.neg_ratio=0.5"])
    inputs = prepare.prepare_inputs(cfg, log=lambda line: None)
    assert inputs.weights == checkpoint
    out = tmp_path / "out"
    record = driver.zero_shot(cfg, inputs, out, "real-path")
    assert record.status == "finished"

    runs = results.read(out / "results", results.RUNS)
    assert runs["suite"].tolist() == ["mos"] and runs["status"].tolist() == ["finished"]
    ood = results.read(out / "results", results.OOD)
    assert sorted(ood["dataset"].unique()) == sorted(MOS_OOD)
    assert (ood["n_id"] == 9).all() and (ood["n_ood"] == 5).all()  # every converted sample, none lost
    assert ood["auroc"].between(0, 1).all()

    # The paper's table beside ours: every MOS column and the average, for both text scores.
    table = paper.comparison("mos", ood.assign(method="zero-shot"))
    for score in ("mcm", "neglabel"):
        assert set(table[table["score"] == score]["dataset"]) == {*MOS_OOD, "avg"}
