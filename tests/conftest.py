"""Shared fixtures (keep minimal)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def _plugin_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-cache")


@pytest.fixture
def plugin_cache(_plugin_cache_dir, monkeypatch):
    """Point the plugin's cache (sample data) to a temporary folder shared by the session,
    so the sample case is generated once per test run and never in the user's cache."""
    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(_plugin_cache_dir))
    return _plugin_cache_dir
