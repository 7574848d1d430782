"""harness.evaluation.embed_cache: keys, sharing, concurrent writers, size and prune."""

import json
import multiprocessing as mp
import os
import time

import pytest
import torch

from harness import models
from harness.evaluation import embed_cache


def _dataset(tmp_path, name="set-a", checksum="x"):
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"name": name, "checksums": {"s.tar": checksum}}))
    return d


def _cache(root, weights="w" * 64, **facts):
    return embed_cache.EmbeddingCache(root, weights, {"arch": "a", "preprocess": "p", **facts}, log=lambda s: None)


def test_key_follows_weights_manifest_preprocessing_and_params(tmp_path):
    d = _dataset(tmp_path)
    base = _cache(tmp_path / "c").path(d, "features")
    assert _cache(tmp_path / "c").path(d, "features") == base  # deterministic
    assert _cache(tmp_path / "c", weights="v" * 64).path(d, "features") != base
    assert _cache(tmp_path / "c", preprocess="q").path(d, "features") != base
    assert _cache(tmp_path / "c").path(d, "local_mcm", temperature=1.0) != base
    _dataset(tmp_path, checksum="y")  # the same directory, other shards
    assert _cache(tmp_path / "c").path(d, "features") != base


def test_weights_digest_is_of_the_tensors_not_the_file(tmp_path):
    torch.manual_seed(0)
    model = models.build("tiny-vit-32", None).model
    saved = models.save_weights(model, tmp_path / "m.pt")
    again = models.build("tiny-vit-32", str(saved)).model
    assert embed_cache.weights_digest(model) == embed_cache.weights_digest(again)
    with torch.no_grad():
        next(again.parameters()).add_(1e-6)
    assert embed_cache.weights_digest(model) != embed_cache.weights_digest(again)


def test_get_or_build_builds_once_then_reuses(tmp_path):
    cache, d = _cache(tmp_path / "c"), _dataset(tmp_path)
    calls = []
    path = cache.path(d, "features")
    first = cache.get_or_build(path, lambda: calls.append(1) or {"features": torch.ones(2)})
    second = cache.get_or_build(path, lambda: calls.append(1) or {"features": torch.zeros(2)})
    assert calls == [1] and torch.equal(first["features"], second["features"])
    assert (cache.hits, cache.misses) == (1, 1) and "1 reused, 1 encoded" in cache.summary()


def _build_slowly(root, dataset, marker_dir, index):
    cache = _cache(root)

    def build():
        (marker_dir / f"built-{index}").write_text("")
        time.sleep(0.5)
        return {"value": torch.tensor([float(index)])}

    return cache.get_or_build(cache.path(dataset, "features"), build)["value"].item()


def test_concurrent_writers_build_one_entry(tmp_path):
    d, markers = _dataset(tmp_path), tmp_path / "markers"
    markers.mkdir()
    with mp.get_context("spawn").Pool(3) as pool:
        values = pool.starmap(_build_slowly, [(tmp_path / "c", d, markers, i) for i in range(3)])
    assert len(list(markers.iterdir())) == 1  # one writer built it, the others waited and read it
    assert len(set(values)) == 1
    assert not list((tmp_path / "c").glob("*/.*tmp*"))  # no temp left behind


def test_size_and_prune(tmp_path):
    cache, d = _cache(tmp_path / "c"), _dataset(tmp_path)
    old = cache.path(d, "features")
    cache.get_or_build(old, lambda: {"x": torch.zeros(1000)})
    new = cache.path(d, "odin")
    cache.get_or_build(new, lambda: {"x": torch.zeros(10)})
    sizes = embed_cache.sizes(tmp_path / "c")
    assert list(sizes.values())[0][0] == 2 and list(sizes.values())[0][1] > 4000
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    assert embed_cache.prune(tmp_path / "c", older_than_days=5)[0] == 1
    assert not old.exists() and new.exists()
    assert embed_cache.prune(tmp_path / "c")[0] == 1
    assert embed_cache.sizes(tmp_path / "c") == {}


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":  # 8 bytes in the middle of the tensor data: still a loadable zip, wrong values
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    elif how == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


def test_a_flipped_truncated_or_empty_entry_is_reported_by_name_and_rebuilt(tmp_path):
    d, said = _dataset(tmp_path), []
    cache = embed_cache.EmbeddingCache(tmp_path / "c", "w" * 64, {"arch": "a"}, log=said.append)
    right = {"features": torch.arange(20000, dtype=torch.float32)}
    for how in ("flip", "truncate", "empty"):
        path = cache.path(d, how)
        cache.get_or_build(path, lambda: right)
        _corrupt(path, how)
        with pytest.raises(embed_cache.CorruptEntry):
            embed_cache.read_entry(path)
        got = cache.get_or_build(path, lambda: {"features": right["features"].clone()})
        assert torch.equal(got["features"], right["features"]), how
        assert str(path) in said[-1] and "corrupt" in said[-1]
        assert torch.equal(embed_cache.read_entry(path)["features"], right["features"])  # the rebuilt one is good
    assert cache.rebuilt == 3 and "3 corrupt entries rebuilt" in cache.summary()
    path = cache.path(d, "undigested")
    torch.save({"x": torch.ones(1)}, path)  # an entry with no digest beside it (older harness) is not trusted
    assert torch.equal(cache.get_or_build(path, lambda: {"x": torch.zeros(1)})["x"], torch.zeros(1))


def test_prune_skips_held_entries_and_a_build_recreates_its_folder(tmp_path):
    import threading

    cache, d = _cache(tmp_path / "c"), _dataset(tmp_path)
    held = cache.path(d, "held")
    cache.get_or_build(held, lambda: {"x": torch.ones(3)})
    with embed_cache._locked(held.with_name(held.name + ".lock")):  # a repair of it in progress
        assert embed_cache.prune(tmp_path / "c") == (0, 0)
        assert held.is_file() and held.with_name(held.name + ".lock").is_file()
    assert embed_cache.prune(tmp_path / "c")[0] == 1  # let go: pruned, lock and folder with it
    assert embed_cache.sizes(tmp_path / "c") == {} and not list((tmp_path / "c").iterdir())

    building, done, errors = threading.Event(), [], []
    path = cache.path(d, "slow")

    def build():
        building.set()
        time.sleep(0.5)
        return {"x": torch.full((100,), 7.0)}

    def worker():
        try:
            done.append(cache.get_or_build(path, build))
        except Exception as err:  # noqa: BLE001 - the test reports it
            errors.append(err)

    thread = threading.Thread(target=worker)
    thread.start()
    building.wait(10)
    assert embed_cache.prune(tmp_path / "c") == (0, 0)  # the build holds the entry's lock
    thread.join(30)
    assert not errors and torch.equal(done[0]["x"], torch.full((100,), 7.0)) and path.is_file()

    stale = path.with_name(f".{path.name}.tmp99999")  # a killed build's leftover
    stale.write_bytes(b"x" * 5000)
    entries, size = embed_cache.sizes(tmp_path / "c")[path.parent.name]
    assert entries == 1 and size > 5000  # counted
    with embed_cache._locked(path.with_name(path.name + ".lock")):  # a live build's temp file is kept
        embed_cache.prune(tmp_path / "c", older_than_days=5)
        assert stale.exists()
    assert embed_cache.prune(tmp_path / "c", older_than_days=5) == (0, 5000)
    assert not stale.exists() and path.is_file()


def test_the_key_follows_the_shards_on_disk(tmp_path):
    d = tmp_path / "set-s"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"name": "set-s", "shards": ["s.tar"], "checksums": {"s.tar": "x"}}))
    shard = d / "s.tar"
    shard.write_bytes(b"a" * 1000)
    stamp = (1_700_000_000, 1_700_000_000)
    os.utime(shard, stamp)
    cache = _cache(tmp_path / "c")
    good = cache.path(d, "features", allow_bad=True)
    shard.write_bytes(b"a" * 400)  # truncated: read with eval.allow_bad_samples it gives fewer samples
    assert cache.path(d, "features", allow_bad=True) != good
    shard.write_bytes(b"a" * 1000)  # repaired, even to the same size
    assert cache.path(d, "features", allow_bad=True) != good  # same size, another modification time
    os.utime(shard, stamp)  # restored as it was (cp -p): the same bytes at the same time, the old entry serves
    assert cache.path(d, "features", allow_bad=True) == good
