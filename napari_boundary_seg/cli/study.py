"""``study``: the loss study. Its options and handler live with the study itself
(:func:`napari_boundary_seg.study.add_study_parser`); this module registers them."""

from __future__ import annotations

from typing import Any

from napari_boundary_seg.cli._common import drive

HELP = "loss study: GDL vs GDL+BL (two alpha schedules) vs BL alone vs CE, several seeds"
"""The one-line summary of ``napari-boundary-seg --help`` (the same as the study
parser's, which the overview does not import: it needs torch)."""


def add_parser(sub: Any) -> None:
    """Add ``study`` to the subparsers ``sub`` (its handler is the study's)."""
    from napari_boundary_seg.study import add_study_parser

    add_study_parser(sub, drive)
