"""harness.paths: the cache location and the atomic text write."""

from harness import paths


def test_the_cache_follows_harness_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "c"))
    assert paths.cache_dir() == (tmp_path / "c").resolve()
    assert paths.synthetic_root("small") == (tmp_path / "c" / "synthetic-small").resolve()


def test_write_text_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    target = paths.write_text_atomic(tmp_path / "sub" / "x.txt", "old")
    paths.write_text_atomic(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]
