"""Shared fixtures: one small synthetic world per test session, real shards on disk."""

import os
from pathlib import Path

import pytest

# Never touch the user's cache or start Ray with an auth token from a test.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def world(cache) -> Path:
    """The small synthetic world, generated once, at $HARNESS_CACHE/synthetic-small (where configs look)."""
    from harness.data import synthetic
    from harness.paths import synthetic_root

    root = synthetic_root("small")
    synthetic.generate(root, synthetic.small_spec())
    return root
