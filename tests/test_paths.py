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


def test_a_failed_write_leaves_the_old_file_whole(tmp_path):
    import pytest
    import torch

    target = paths.torch_save_atomic({"w": torch.ones(3)}, tmp_path / "m.pt")

    def half(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        paths.write_atomic(target, half)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["m.pt"]
