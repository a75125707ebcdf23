"""Fixtures shared by the widget tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors(monkeypatch):
    """The texts of the error notifications the widgets show (``_layers.notify_error``,
    the one path every widget uses)."""
    from napari_boundary_seg._widgets import _layers

    shown: list[str] = []
    monkeypatch.setattr(_layers, "show_error", lambda m: shown.append(str(m)))
    return shown
