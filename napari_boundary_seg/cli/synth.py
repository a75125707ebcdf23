"""``synth``: write the built-in unbalanced lesion benchmark (generic NIfTI layout)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import CommandError, NewFolders, check_option, drive, out

HELP = "write the built-in unbalanced lesion benchmark (generic NIfTI layout)"


def add_parser(sub: Any) -> None:
    """Add ``synth`` to the subparsers ``sub``."""
    from napari_boundary_seg.core import synthetic

    p = sub.add_parser(
        "synth",
        help=HELP,
        description="Write synthetic brain-like volumes with small lesions "
        "(imagesTr/, labelsTr/, dataset.json) to a folder. --preset easy (default) is the "
        "original benchmark; --preset wmh is the harder WMH-2017-like one (several simulated "
        "sites with their own grids, partial volume, punctate and confluent periventricular "
        "lesions, hyperintense mimics; each case's site is recorded in dataset.json).",
    )
    p.add_argument(
        "--preset",
        choices=synthetic.PRESETS,
        default="easy",
        help="generator preset (default easy; wmh: grids come from its sites, so --shape "
        "and --spacing do not apply)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="volume shape in voxels, easy preset "
        f"(default {' '.join(map(str, synthetic.DEFAULT_SHAPE))})",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm, easy preset "
        f"(default {' '.join(map(str, synthetic.DEFAULT_SPACING))})",
    )
    p.add_argument(
        "--anatomy",
        choices=("auto", "mni", "phantom"),
        default="auto",
        help="anatomy source: the MNI152 templates of nilearn, a procedural phantom, "
        "or auto (MNI when nilearn is installed; default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out that does not hold a data set written by synth",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every option, then write the cases; the exit code."""
    from napari_boundary_seg.core import synthetic
    from napari_boundary_seg.core.io import ensure_writable_dir
    from napari_boundary_seg.core.validate import check_synth_size

    if args.preset != "easy" and (args.shape is not None or args.spacing is not None):
        raise CommandError(
            f"--shape/--spacing apply to the easy preset; the {args.preset} preset's grids "
            "come from its sites"
        )
    check_option(args.cases, "--cases", 1)
    shape = tuple(args.shape or synthetic.DEFAULT_SHAPE)
    spacing = tuple(args.spacing or synthetic.DEFAULT_SPACING)
    for size in shape:
        check_option(size, "--shape", 8)
    for size in spacing:
        check_option(size, "--spacing", positive=True)
    if args.preset == "easy":
        check_synth_size(shape, "--shape")
    folder = args.out
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"--out {folder} is a file, not a folder")
    if (
        folder.is_dir()
        and any(folder.iterdir())
        and not _is_synth_folder(folder)
        and not args.force
    ):
        raise CommandError(
            f"--out {folder} is not empty and holds no data set written by synth (its "
            "dataset.json); choose an empty folder, or pass --force to write into it"
        )
    with NewFolders(folder / "imagesTr", folder / "labelsTr"):
        for sub in (folder, folder / "imagesTr", folder / "labelsTr"):
            ensure_writable_dir(sub)
        written = drive(
            synthetic.iter_write_benchmark(
                folder,
                n_cases=args.cases,
                seed=args.seed,
                shape=shape,
                spacing=spacing,
                anatomy=args.anatomy,
                overwrite=args.overwrite,
                preset=args.preset,
            ),
            "synth",
            "case",
            skip=1,  # the anatomy is built first: one step that is not a case
        )
    out(f"wrote {args.cases} cases ({len(written)} files) to {args.out}")
    return 0


def _is_synth_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a data set written by ``synth`` (its dataset.json says so)."""
    import json

    from napari_boundary_seg.core.synthetic import DATASET_NAME

    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and str(meta.get("name", "")).startswith(DATASET_NAME)  # easy and wmh presets
        and "generator" in meta
    )
