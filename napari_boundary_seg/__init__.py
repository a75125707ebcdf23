"""Boundary loss for highly unbalanced segmentation: torch library, CLI and napari plugin."""

from __future__ import annotations

__version__ = "0.1.0"
