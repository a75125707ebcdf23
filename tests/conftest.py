"""Shared fixtures (keep minimal)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests use tiny tensors: one thread avoids OpenMP oversubscription on a
    2-core machine (about 5x faster here under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def _plugin_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-cache")


@pytest.fixture
def plugin_cache(_plugin_cache_dir, monkeypatch):
    """Point the plugin's cache (sample data) to a temporary folder shared by the session,
    so the sample case is generated once per test run and never in the user's cache."""
    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(_plugin_cache_dir))
    return _plugin_cache_dir
