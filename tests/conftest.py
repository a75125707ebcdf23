"""Shared fixtures (keep minimal)."""

from __future__ import annotations

import pytest


@pytest.fixture
def plugin_cache(tmp_path, monkeypatch):
    """Point the plugin's cache (sample data) to a fresh temporary folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_BOUNDARY_SEG_CACHE", str(folder))
    return folder
