"""``cache``: the size of the per-user cache of prepared cases, or emptying it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import out

HELP = "show the size of the per-user cache of prepared cases, or empty it"


def add_parser(sub: Any) -> None:
    """Add ``cache`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "cache",
        help=HELP,
        description="train prepares every case once (scaled intensities, labels, distance "
        "maps) into one cache per user, shared by every run on the same data and settings "
        "(entries are keyed by a content hash of the files and settings). Without an option, "
        "or with --info, print its folder and size; --clear removes its entries (nothing "
        "else in the folder). The folder is $NAPARI_BOUNDARY_SEG_CACHE/cases when that is "
        "set, else the platform's user cache folder (~/.cache/napari-boundary-seg/cases on "
        "Linux).",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--info", action="store_true", help="print the folder and its size")
    what.add_argument("--clear", action="store_true", help="remove every prepared case")
    p.add_argument(
        "--cache-dir", type=Path, help="another cache folder (as given to train --cache-dir)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the cache's folder and size, or empty it; the exit code."""
    from napari_boundary_seg.core.cache import cache_info, clear_cache, format_size

    if args.cache_dir is not None and not args.cache_dir.is_dir():
        raise FileNotFoundError(f"no such cache folder: {args.cache_dir}")
    if args.clear:
        removed = clear_cache(args.cache_dir)
        out(
            f"cache: removed {removed.entries} prepared case(s), {format_size(removed.bytes)}, "
            f"from {removed.path}"
        )
        return 0
    out(f"cache: {cache_info(args.cache_dir).describe()}")
    return 0
