"""``demo``: napari with the sample lesion case and every widget docked, or a
headless demo where there is no display (the logic lives in
:mod:`napari_boundary_seg._demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from napari_boundary_seg.cli._common import add_threads_option, out

HELP = (
    "open napari with the sample lesion case and every widget docked "
    "(a headless demo where there is no display)"
)


def add_parser(sub: Any) -> None:
    """Add ``demo`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "demo",
        help=HELP,
        description="Open napari with a synthetic lesion case (FLAIR, T1, lesions) and the "
        "plugin's widgets docked, and start the Train widget's Quick start on it (a UNet of "
        "width 16, 15 epochs; a live preview shows the lesions forming). Without a display "
        "(no DISPLAY/WAYLAND_DISPLAY on Linux, or Qt cannot start) run a headless demo "
        "instead: the sample case, its signed distance maps, the same Quick start training "
        "on the slices outside a held-out block, and the DSC on that block.",
    )
    p.add_argument(
        "--headless", action="store_true", help="run the headless demo even with a display"
    )
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; the exit code."""
    from napari_boundary_seg._demo import run_demo
    from napari_boundary_seg.core.threads import choose_threads

    choose_threads(args.threads)  # a bad --threads is refused before any work
    return run_demo(headless=args.headless, echo=out, threads=args.threads)
