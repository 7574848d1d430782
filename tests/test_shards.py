import json

import pytest
import webdataset as wds

from harness.data.shards import Manifest, read_manifest, sha256, write_manifest, write_shards


def samples(n):
    for i in range(n):
        yield {"__key__": f"s{i:04d}", "png": b"\x89PNG fake " + bytes([i % 256]), "cls": i % 3,
               "json": {"i": i}, "txt": f"caption {i}"}


def test_round_trip_through_webdataset(tmp_path):
    names, counts = write_shards(samples(25), tmp_path, "x", maxcount=10)
    assert names == ["x-000000.tar", "x-000001.tar", "x-000002.tar"] and counts == [10, 10, 5]
    write_manifest(tmp_path, Manifest("x", "id", 25, names, counts, classnames=["a", "b", "c"],
                                      checksums={n: sha256(tmp_path / n) for n in names}))
    manifest = read_manifest(tmp_path)
    assert all(s.startswith(str(tmp_path)) for s in manifest.shards)
    back = list(wds.WebDataset(manifest.shards, shardshuffle=False).decode())
    assert [s["__key__"] for s in back] == [f"s{i:04d}" for i in range(25)]
    assert [s["cls"] for s in back] == [i % 3 for i in range(25)]
    assert back[7]["json"] == {"i": 7} and back[7]["txt"] == "caption 7"


def test_missing_and_corrupt_manifests_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "manifest.json")):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x", "kind": "weird", "num_samples": 0,
                                                        "shards": [], "shard_samples": []}))
    with pytest.raises(ValueError, match="kind 'weird'"):
        read_manifest(tmp_path)
