"""Fixtures shared by the widget tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def errors(monkeypatch):
    """The texts of the error notifications the widgets show (``_common.notify_error``,
    the one path every widget uses)."""
    from napari_boundary_seg._widgets import _common

    shown: list[str] = []
    monkeypatch.setattr(_common, "show_error", lambda m: shown.append(str(m)))
    return shown
