"""Shared fixtures: a temporary cache so tests never depend on (or pollute) the user's cache, a
temporary folder per test for the zoo's resumable training runs (a test never resumes another's), and
torch's global generator seeded per test from its name, so a test draws the same weights and inputs
in any order (pytest-randomly shuffles the order and seeds ``random`` and numpy, not torch)."""
from __future__ import annotations

import zlib

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PRUNEKIT_CACHE", str(tmp_path_factory.mktemp("prunekit-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _torch_seed(request):
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _train_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_TRAIN_DIR", str(tmp_path / "zoo-train"))
