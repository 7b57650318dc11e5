"""Shared fixtures: a temporary cache so tests never depend on (or pollute) the user's cache."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEKIT_CACHE", str(tmp_path_factory.mktemp("prunekit-cache")))
    yield
    mp.undo()
