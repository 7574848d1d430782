"""Shard and manifest helpers: round trip through plain webdataset, determinism, clear errors."""

import io
import json
import time

import pytest
import webdataset as wds
from PIL import Image

from harness.data import shards
from harness.data.shards import (
    Manifest,
    read_manifest,
    shard_urls,
    write_dataset,
    write_manifest,
    write_shards,
)


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def samples(n):
    for i in range(n):
        yield {"__key__": f"s{i:04d}", "png": png(i), "cls": i % 3, "json": {"i": i, "b": [1, 2]},
               "txt": f"caption {i}"}


def test_round_trip_through_webdataset(tmp_path):
    manifest = write_dataset(samples(25), tmp_path, "x", "id", maxcount=10, classnames=["a", "b", "c"])
    assert manifest.shards == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    assert manifest.shard_samples == [10, 10, 5] and manifest.num_samples == 25

    back_manifest = read_manifest(tmp_path)
    assert all(s.startswith(str(tmp_path)) for s in back_manifest.shards)
    assert shard_urls(tmp_path) == back_manifest.shards
    assert back_manifest.classnames == ["a", "b", "c"] and set(back_manifest.checksums) == set(manifest.shards)

    back = list(wds.WebDataset(back_manifest.shards, shardshuffle=False).decode("pil"))
    assert len(back) == back_manifest.num_samples
    assert [s["__key__"] for s in back] == [f"s{i:04d}" for i in range(25)]
    assert [s["cls"] for s in back] == [i % 3 for i in range(25)]
    assert back[7]["json"] == {"i": 7, "b": [1, 2]} and back[7]["txt"] == "caption 7"
    assert back[7]["png"].size == (8, 8) and back[7]["png"].getpixel((0, 0)) == (7, 0, 0)


def test_counts_read_from_files_match_the_writer(tmp_path):
    manifest = write_dataset(samples(23), tmp_path, "x", "pretrain", maxcount=7)
    described = shards.describe_shards(tmp_path, "x", "pretrain", manifest.shards)  # counts read from the tars
    assert described == manifest
    assert [shards.count_samples(tmp_path / s) for s in manifest.shards] == [7, 7, 7, 2]


def test_same_samples_give_byte_identical_shards(tmp_path, monkeypatch):
    first = write_shards(samples(12), tmp_path / "a", "x", maxcount=5)
    monkeypatch.setattr(time, "time", lambda: 1e9)  # a different "now" must not leak into the tar headers
    second = write_shards(samples(12), tmp_path / "b", "x", maxcount=5)
    assert first == second
    assert [shards.sha256(tmp_path / "a" / n) for n in first] == [shards.sha256(tmp_path / "b" / n) for n in second]


def test_start_shard_and_empty_input(tmp_path):
    assert write_shards(samples(3), tmp_path, "x", maxcount=5, start_shard=4) == ["x-000004.tar"]
    assert write_shards(iter([]), tmp_path / "e", "e", maxcount=5) == ["e-000000.tar"]
    assert shards.count_samples(tmp_path / "e" / "e-000000.tar") == 0
    with pytest.raises(ValueError, match="maxcount"):
        write_shards(samples(1), tmp_path, "x", maxcount=0)


def test_values_are_encoded_by_type():
    assert shards.encode_value("cls", -1) == b"-1"
    assert shards.encode_value("json", {"b": 1, "a": None}) == b'{"a":null,"b":1}'  # sorted: reproducible
    assert shards.encode_value("txt", "héllo") == "héllo".encode()
    assert shards.encode_value("png", b"\x00\x01") == b"\x00\x01"
    with pytest.raises(TypeError, match="'flag'"):
        shards.encode_value("flag", True)
    with pytest.raises(TypeError, match="cannot encode float"):
        shards.encode_value("x", 1.5)
    with pytest.raises(ValueError, match="__key__"):
        shards.encode_sample({"cls": 1})


def test_missing_and_corrupt_manifests_name_the_path(tmp_path):
    path = tmp_path / "manifest.json"
    with pytest.raises(FileNotFoundError, match=str(path)):
        read_manifest(tmp_path)
    for text, message in [("{not json", "not a valid manifest"),
                          ("[]", "not a valid manifest"),
                          (json.dumps({"name": "x", "kind": "id"}), "not a valid manifest"),
                          (json.dumps({"name": "x", "kind": "weird", "num_samples": 0, "shards": [],
                                       "shard_samples": []}), "kind 'weird'"),
                          (json.dumps({"name": "x", "kind": "ood", "num_samples": 3, "shards": ["a.tar"],
                                       "shard_samples": [2]}), "num_samples 3"),
                          (json.dumps({"name": "x", "kind": "ood", "num_samples": 0, "shards": [],
                                       "shard_samples": [], "extra": 1}), "unknown fields"),
                          (json.dumps({"name": "x", "kind": "ood", "num_samples": 1, "shards": ["a.tar"],
                                       "shard_samples": ["1"]}), "not a valid manifest")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            read_manifest(tmp_path)
        assert str(path) in str(err.value)


def test_manifest_writes_are_atomic_and_checked(tmp_path):
    good = Manifest("x", "ood", 2, ["x-000000.tar", "s3://bucket/x-000001.tar"], [1, 1])
    write_manifest(tmp_path, good)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind
    assert read_manifest(tmp_path).shards == [str(tmp_path / "x-000000.tar"), "s3://bucket/x-000001.tar"]
    with pytest.raises(ValueError, match="needs classnames"):
        write_manifest(tmp_path, Manifest("x", "id", 0, [], []))
    assert read_manifest(tmp_path) == Manifest("x", "ood", 2, [str(tmp_path / "x-000000.tar"),
                                                                "s3://bucket/x-000001.tar"], [1, 1])


def test_verify_finds_missing_and_altered_shards(tmp_path):
    manifest = write_dataset(samples(6), tmp_path, "x", "ood", maxcount=3)
    shards.verify(tmp_path)
    (tmp_path / manifest.shards[1]).write_bytes(b"changed")
    with pytest.raises(ValueError, match="x-000001.tar: sha256 differs"):
        shards.verify(tmp_path)
    (tmp_path / manifest.shards[1]).unlink()
    with pytest.raises(ValueError, match="x-000001.tar: shard listed in the manifest is missing"):
        shards.verify(tmp_path)
