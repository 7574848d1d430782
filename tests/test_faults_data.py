"""Bad input data, injected for real into tar shards written by our shard writer.

Training skips and counts bad samples (per reason, across DataLoader processes) and fails
past data.max_bad_fraction; evaluation refuses a bad sample, naming shard and key, unless
eval.allow_bad_samples, and then counts it; ID datasets whose class lists differ are refused
before training.
"""

import io
import itertools
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from PIL import Image

from harness import config, models, results
from harness.train import engine
from harness.train import runner
from harness.data.badsamples import BadDataError
from harness.data.pipeline import CountedBatches, class_prompt, eval_pipeline, loader, train_pipeline
from harness.data.shards import check_class_lists, read_manifest, write_dataset, write_manifest

CLASSES = ["a", "b", "c"]
N, PER_SHARD = 40, 10  # shards x-000000 .. x-000003, sample s00KK in shard KK // 10


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (i * 6 % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def write_id(directory: Path, label=lambda i: i % 3):
    return write_dataset(({"__key__": f"s{i:04d}", "png": png(i), "cls": label(i)} for i in range(N)),
                         directory, "x", "id", PER_SHARD, classnames=CLASSES)


def members(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return tar.getmembers()


def replace_member(shard: Path, name: str, data: bytes) -> None:
    """Rewrite ``shard`` with member ``name`` holding ``data`` (every other member as it was)."""
    with tarfile.open(shard) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, content in kept:
            content = data if member.name == name else content
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))


def cut(shard: Path, at: int) -> None:
    shard.write_bytes(shard.read_bytes()[:at])


def member_named(shard: Path, name: str) -> tarfile.TarInfo:
    return next(m for m in members(shard) if m.name == name)


# fault -> (inject into a dataset dir, reason, samples lost per pass, words the message must hold)
FAULTS = {
    "corrupt_image": (lambda d: replace_member(d / "x-000001.tar", "s0012.png", b"\x89PNG\r\n\x1a\n garbage"),
                      "image", 1, ["x-000001.tar", "s0012", "unreadable image"]),
    "truncated_mid_member": (lambda d: cut(d / "x-000002.tar", (m := member_named(d / "x-000002.tar", "s0025.png"))
                                           .offset_data + m.size // 2),
                             "shard", 5, ["x-000002.tar", "after sample s0024", "truncated"]),
    "truncated_at_member_boundary": (lambda d: cut(d / "x-000002.tar",
                                                   member_named(d / "x-000002.tar", "s0027.cls").offset),
                                     "shard", 3, ["x-000002.tar", "holds 7 samples but its manifest says 10"]),
    "zero_byte_shard": (lambda d: (d / "x-000003.tar").write_bytes(b""),
                        "shard", 10, ["x-000003.tar", "holds 0 samples"]),
    "empty_tar": (lambda d: tarfile.open(d / "x-000003.tar", "w").close(),  # a valid archive with no members
                  "shard", 10, ["x-000003.tar", "holds 0 samples"]),
    "missing_shard": (lambda d: (d / "x-000000.tar").unlink(),
                      "shard", 10, ["x-000000.tar", "FileNotFoundError"]),
    "label_out_of_range": (lambda d: write_id(d, label=lambda i: 7 if i == 12 else i % 3),
                           "label", 1, ["x-000001.tar", "s0012", "class 7"]),
}


@pytest.fixture(scope="module")
def bundle():
    return models.build("tiny-vit-32", None)


@pytest.fixture(params=sorted(FAULTS))
def faulty(request, tmp_path):
    """(dataset dir with the fault injected, reason, lost samples per pass, message words)."""
    inject, reason, lost, words = FAULTS[request.param]
    write_id(tmp_path)
    inject(tmp_path)
    return tmp_path, reason, lost, words


def test_training_skips_and_counts_each_fault(faulty, bundle):
    directory, reason, lost, words = faulty
    manifest = read_manifest(directory)
    per_pass = N - lost  # a batch of exactly one pass's good samples: batch k ends pass k
    batches = CountedBatches(train_pipeline(manifest.shards, bundle.train_transform, class_prompt(CLASSES, "{}"),
                                            bundle.tokenizer, per_pass, shuffle_buffer=0,
                                            shard_samples=manifest.shard_samples))
    for images, tokens, labels in itertools.islice(batches, 3):
        assert len(images) == per_pass and labels.min() >= 0 and labels.max() < len(CLASSES)
    assert batches.good == 3 * per_pass
    # passes 1 and 2 are counted whole; pass 3's fault too unless it came after its last good sample
    assert batches.bad.counts == {reason: 3 * lost} or batches.bad.counts == {reason: 2 * lost}
    assert all(word in batches.bad.examples[0] for word in words), batches.bad.examples


def test_evaluation_names_the_shard_and_key_unless_allowed(faulty, bundle):
    directory, reason, lost, words = faulty
    manifest = read_manifest(directory)
    args = (manifest.shards, bundle.eval_transform, 16)
    counts = {"shard_samples": manifest.shard_samples, "num_classes": len(CLASSES)}
    with pytest.raises(BadDataError) as refused:
        list(eval_pipeline(*args, **counts))
    assert all(word in str(refused.value) for word in words + ["eval.allow_bad_samples"]), str(refused.value)

    keys = [k for _, _, batch_keys in eval_pipeline(*args, **counts, allow_bad=True) for k in batch_keys]
    assert len(keys) == len(set(keys)) == N - lost  # the caller counts the rest against the manifest
    if reason != "shard":
        assert "s0012" not in keys


@pytest.mark.slow
def test_counts_survive_dataloader_worker_processes(tmp_path, bundle):
    """Decoding in DataLoader processes: the counts ride in the stream to the training process."""
    write_id(tmp_path)
    replace_member(tmp_path / "x-000001.tar", "s0012.png", b"not a png")
    (tmp_path / "x-000003.tar").unlink()
    manifest = read_manifest(tmp_path)
    stream = loader(train_pipeline(manifest.shards, bundle.train_transform, class_prompt(CLASSES, "{}"),
                                   bundle.tokenizer, 8, shuffle_buffer=0, shard_samples=manifest.shard_samples), 2)
    batches = CountedBatches(stream)
    assert sum(len(b[0]) for b in itertools.islice(batches, 20)) == 160  # 5+ passes of the 29 good samples
    assert batches.bad.counts["image"] >= 4 and batches.bad.counts["shard"] >= 40
    assert batches.bad.counts["shard"] % PER_SHARD == 0  # a missing shard counts all of its samples


def test_mostly_unreadable_training_data_fails_instead_of_waiting(tmp_path, bundle):
    write_id(tmp_path)
    manifest = read_manifest(tmp_path)
    for shard in manifest.shards:
        Path(shard).unlink()
    batches = CountedBatches(train_pipeline(manifest.shards, bundle.train_transform, class_prompt(CLASSES, "{}"),
                                            bundle.tokenizer, 8, shard_samples=manifest.shard_samples),
                             give_up_after=100, where="x")
    with pytest.raises(BadDataError, match=r"x: \d+ bad samples against 0 good ones, more than the 100 .*x-0000"):
        next(batches)


def test_id_datasets_must_share_one_class_list(tmp_path):
    train = write_id(tmp_path / "train")
    assert check_class_lists({"id_train": train, "id_test": train}) == CLASSES
    cases = {
        "id_test has 2 classes but id_train has 3": replace(train, classnames=["a", "b"]),
        "id_test names class 0 'b' but id_train names it 'a'": replace(train, classnames=["b", "a", "c"]),
        "id_test: class names ['a'] appear more than once": replace(train, classnames=["a", "a", "c"]),
        "id_test: kind 'ood', but it is used as an ID dataset": replace(train, kind="ood", classnames=[]),
    }
    for message, other in cases.items():
        with pytest.raises(BadDataError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_class_lists({"id_train": train, "id_test": other})


# ---- whole runs (harness.train.runner, in this process; no Ray) on a copy of the small world ----

@pytest.fixture
def root(world, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(world, out, ignore=shutil.ignore_patterns("pretrain"))
    return out


def run_cfg(root: Path, *overrides: str):
    return config.load(None, [f"data.root={root}", "data.source=shards", "model.pretrained=null", "schedule.epochs=1",
                              "data.batch_size=64", "schedule.warmup_steps=2", "eval.neg_ratio=0.3", *overrides])


def first_key(dataset: Path) -> tuple[Path, str]:
    shard = Path(read_manifest(dataset).shards[0])
    return shard, next(m.name for m in members(shard) if m.name.endswith(".png"))


def run(cfg, root: Path, tmp_path: Path) -> dict:
    return runner.run(cfg, runner.RunPaths(root, None, tmp_path / "run"), engine.RunContext(), log=lambda line: None)


@pytest.mark.slow
def test_a_run_counts_bad_training_samples_into_its_results_row(root, tmp_path):
    shard, member = first_key(root / "id_train")
    replace_member(shard, member, b"garbage")
    cfg = run_cfg(root, "data.shuffle_buffer=0")
    summary = run(cfg, root, tmp_path)
    assert summary["status"] == "finished"
    assert summary["bad_samples_train"] == summary["bad_samples_train_image"] == 1  # one pass, unshuffled
    assert summary["bad_samples_train_label"] == summary["bad_samples_train_shard"] == 0
    assert summary["epochs"][0]["bad_samples"] == 1 and summary["bad_samples_eval"] == 0

    results.record_run(tmp_path / "results", "r1", "s", cfg, summary, summary["status"])
    row = results.read(tmp_path / "results", results.RUNS).iloc[0]
    assert row["bad_samples_train"] == 1 and row["bad_samples_train_image"] == 1 and row["bad_samples_eval"] == 0


@pytest.mark.slow
def test_a_run_fails_past_the_bad_fraction_naming_what_was_bad(root, tmp_path):
    shard, member = first_key(root / "id_train")
    replace_member(shard, member, b"garbage")
    summary = run(run_cfg(root, "data.max_bad_fraction=0"), root, tmp_path)
    assert summary["status"] == "failed"
    assert "were bad" in summary["error"] and "more than data.max_bad_fraction=0.0" in summary["error"]
    assert str(shard) in summary["error"] and member.split(".")[0] in summary["error"]
    saved = json.loads((tmp_path / "run" / runner.FAILED).read_text())  # not result.json: a re-run tries again
    assert saved["error"] == summary["error"] and not (tmp_path / "run" / runner.RESULT).exists()


def test_max_bad_fraction_is_validated():
    with pytest.raises(config.ConfigError, match="data.max_bad_fraction: Input should be less than or equal to 1"):
        config.load(None, ["data.max_bad_fraction=1.5"])


@pytest.mark.slow
def test_evaluation_refuses_a_bad_sample_unless_allowed_then_counts_it(root, tmp_path):
    shard, member = first_key(root / "id_test")
    replace_member(shard, member, b"garbage")
    refused = run(run_cfg(root, "schedule.epochs=0"), root, tmp_path)
    assert refused["status"] == "failed"
    assert f"{shard}: sample {member.split('.')[0]}: unreadable image" in refused["error"]
    assert "eval.allow_bad_samples" in refused["error"]

    allowed = run(run_cfg(root, "schedule.epochs=0", "eval.allow_bad_samples=true"), root, tmp_path / "allowed")
    assert allowed["status"] == "finished" and allowed["bad_samples_eval"] == 1
    assert allowed["test_bad_samples"] == {"id_test": 1, "near_ood": 0, "far_ood": 0}
    expected = read_manifest(root / "id_test").num_samples - 1
    assert {row["n_id"] for row in allowed["ood"]} == {expected}  # the metrics say over how many


@pytest.mark.slow
def test_an_id_set_with_other_classes_is_refused_before_training(root, tmp_path):
    from harness.train import prepare

    manifest = read_manifest(root / "id_test")
    on_disk = replace(manifest, classnames=manifest.classnames[:-1],
                      shards=[Path(s).name for s in manifest.shards])
    write_manifest(root / "id_test", on_disk)
    cfg = run_cfg(root)
    message = f"id_test has {len(manifest.classnames) - 1} classes but id_train has {len(manifest.classnames)}"
    with pytest.raises(BadDataError, match=message):  # the driver's check, before Ray or any compute
        prepare.prepare_inputs(cfg, log=lambda line: None)
    summary = run(cfg, root, tmp_path)  # and the worker's own, should it be started anyway
    assert summary["status"] == "failed" and message in summary["error"] and summary["epochs"] == []


# ---- through the command line and a real local Ray cluster ----

@pytest.fixture(scope="module")
def ray_session():
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_harness_train_records_bad_samples_and_fails_clearly_past_the_limit(root, tmp_path, ray_session):
    from harness import cli

    shard, member = first_key(root / "id_train")
    replace_member(shard, member, b"garbage")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "model": {"pretrained": None},
                                    "data": {"source": "shards", "root": str(root), "batch_size": 64,
                                             "shuffle_buffer": 0},
                                    "schedule": {"epochs": 1, "warmup_steps": 2}, "eval": {"neg_ratio": 0.3}}))
    out = tmp_path / "out"
    assert cli.main(["train", str(path), "--out", str(out)]) == 0
    row = results.read(out / "results", results.RUNS).iloc[0]
    assert row["status"] == "finished" and row["bad_samples_train"] == row["bad_samples_train_image"] == 1

    with pytest.raises(RuntimeError, match=r"more than data.max_bad_fraction=0.0: image 1; e\.g\. .*id_train-0000"):
        # another experiment definition (max_bad_fraction), recorded beside the first one
        cli.main(["train", str(path), "--out", str(out), "--set", "data.max_bad_fraction=0", "--append"])
    rows = results.read(out / "results", results.RUNS).set_index("status")
    assert sorted(rows.index) == ["failed", "finished"]
    assert "RunFailed" in rows.loc["failed", "error"] and "were bad" in rows.loc["failed", "error"]
