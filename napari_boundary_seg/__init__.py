"""Boundary loss for highly unbalanced segmentation: torch library, CLI and napari plugin."""

from __future__ import annotations

__version__ = "0.4.0"
"""The package's version; ``setup.cfg`` reads it (``version = attr: ...``), so the
installed metadata and this string are one."""
