"""``distmap``: a NIfTI label file to a NIfTI signed distance map (mm)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import (
    CommandError,
    check_axis,
    check_option,
    check_output_file,
    drive,
    out,
)

HELP = "NIfTI label file -> NIfTI signed distance map (mm)"


def add_parser(sub: Any) -> None:
    """Add ``distmap`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "distmap",
        help=HELP,
        description="Signed distance maps of a label volume, in mm with the file's voxel "
        "spacing: negative inside, 0 on the boundary, positive outside. All classes give "
        "a 4D file with one map per class on the last axis; --class gives one map.",
    )
    p.add_argument("labels", type=Path, help="input label file (.nii or .nii.gz)")
    p.add_argument("output", type=Path, help="output file (.nii or .nii.gz)")
    p.add_argument(
        "--class",
        dest="class_index",
        type=int,
        default=None,
        help="write the map of this class only (default: every class, 4D output)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="number of classes, background included (default: largest label + 1)",
    )
    p.add_argument(
        "--slice-axis",
        type=int,
        default=None,
        help="compute independent 2D maps of the slices along this axis "
        "(default: one map of the whole volume)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the options and the labels, then write the maps; the exit code."""
    import numpy as np

    from napari_boundary_seg.core.distance import iter_class_distance_maps, signed_distance_map
    from napari_boundary_seg.core.io import read_nifti, write_nifti

    check_option(args.num_classes, "--num-classes", 2)
    check_option(args.class_index, "--class", 0)
    check_output_file(args.output, args.overwrite, [args.labels], "OUTPUT")
    volume = read_nifti(args.labels, as_labels=True)
    labels = volume.data
    if labels.ndim not in (2, 3):
        raise CommandError(
            f"{args.labels}: expected a 2D or 3D label volume, got shape {labels.shape}"
        )
    check_axis(args.slice_axis, "--slice-axis", labels.ndim)
    if labels.size and labels.min() < 0:
        raise CommandError(f"{args.labels}: negative label values ({labels.min()})")
    num_classes = args.num_classes if args.num_classes is not None else int(labels.max()) + 1
    num_classes = max(num_classes, 2)
    if labels.max() >= num_classes:
        raise CommandError(
            f"{args.labels}: label values up to {labels.max()} but --num-classes {num_classes}"
        )
    spacing = volume.spacing[: labels.ndim]
    if args.class_index is not None:
        if args.class_index >= num_classes:
            raise CommandError(
                f"--class {args.class_index} is outside 0..{num_classes - 1} for {args.labels}"
            )
        maps = signed_distance_map(labels == args.class_index, spacing, axis=args.slice_axis)
    else:
        maps = drive(
            iter_class_distance_maps(labels, num_classes, spacing, axis=args.slice_axis),
            "distmap",
        )
        maps = np.moveaxis(maps, 0, -1)  # NIfTI: the class axis last
    write_nifti(
        args.output, maps.astype(np.float32), affine=volume.affine, overwrite=args.overwrite
    )
    out(f"wrote {args.output} {tuple(maps.shape)} (mm, spacing {tuple(spacing)})")
    return 0
