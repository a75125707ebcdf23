"""``export``: a checkpoint as a bioimage.io model package (TorchScript, ONNX, model card)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import CommandError, check_output_file, out

HELP = "write a checkpoint as a bioimage.io model package (TorchScript + ONNX, model card)"


def add_parser(sub: Any) -> None:
    """Add ``export`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "export",
        help=HELP,
        description="Write a bioimage.io model package (spec 0.5, a .zip) of a checkpoint: "
        "TorchScript and ONNX weights, a test input and output from a real case, a cover "
        "image, the model card README.md (training data, loss and alpha schedule, "
        "validation per epoch, lineage, versions, intended use and limits) and the "
        "checkpoint itself for fine-tuning. The weights are checked to give the "
        "checkpoint's probabilities before anything is written. Needs the 'export' extra "
        "(pip install 'napari-boundary-seg[export]').",
    )
    p.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run")
    p.add_argument("--out", required=True, type=Path, help="the package to write (.zip)")
    p.add_argument(
        "--image",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="the modality files of the case for the test tensor and cover, in the model's "
        "order (default: a validation case of the checkpoint's data folder)",
    )
    p.add_argument("--labels", type=Path, help="that case's label file (picks the slice shown)")
    p.add_argument("--name", help="the package's name (default: from the run folder)")
    p.add_argument(
        "--author", nargs="+", metavar="NAME", help="authors (default: napari-boundary-seg user)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing package")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.export import export_package

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no such checkpoint: {args.checkpoint}")
    if args.out.suffix != ".zip":
        raise CommandError(f"--out {args.out}: a model package is a .zip file")
    inputs = [args.checkpoint, *(args.image or []), *([args.labels] if args.labels else [])]
    check_output_file(args.out, args.overwrite, inputs, "--out")
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    try:
        path, check = export_package(
            args.checkpoint,
            args.out,
            overwrite=args.overwrite,
            images=args.image,
            labels=args.labels,
            name=args.name,
            authors=tuple(args.author or ("napari-boundary-seg user",)),
        )
    except (ImportError, RuntimeError) as exc:
        raise CommandError(str(exc)) from exc
    out(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); weights checked against the checkpoint: {check}"
    )
    return 0
