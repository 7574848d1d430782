"""harness.train.run_evaluation: the evaluation tail every run shares (its end-to-end behaviour is
covered by the training and `harness evaluate` tests; here the parts that stand alone)."""

import os

from harness.train.run_evaluation import link_into_run


def test_a_cache_entry_is_linked_into_the_run_and_a_second_link_replaces_the_first(tmp_path):
    entry = tmp_path / "cache" / "id_test.features.pt"
    entry.parent.mkdir()
    entry.write_bytes(b"first")
    run_file = tmp_path / "run" / "embeddings" / "id_test.pt"
    link_into_run(entry, run_file)
    assert run_file.read_bytes() == b"first" and os.path.samefile(entry, run_file)  # a hard link, no copy
    other = tmp_path / "cache" / "rebuilt.pt"
    other.write_bytes(b"second")
    link_into_run(other, run_file)
    assert run_file.read_bytes() == b"second" and os.path.samefile(other, run_file)
    assert sorted(p.name for p in run_file.parent.iterdir()) == ["id_test.pt"]  # no temp file left
