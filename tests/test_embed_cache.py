"""harness.embed_cache: keys, sharing, concurrent writers, size and prune."""

import json
import multiprocessing as mp
import os
import time

import torch

from harness import embed_cache, models


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
