"""``predict``: segment NIfTI images with a trained checkpoint, as it was trained."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import (
    CommandError,
    NewFolders,
    add_affine_option,
    add_threads_option,
    check_affine,
    check_device,
    check_option,
    drive,
    out,
    set_threads,
)
from napari_boundary_seg.core.config import FLIPS_HELP

HELP = "segment NIfTI images with a trained checkpoint or model package"


def add_parser(sub: Any) -> None:
    """Add ``predict`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "predict",
        help=HELP,
        description="Segment NIfTI files (or folders of them) as the checkpoint was trained: "
        "slice by slice (2D) or by overlapping Gaussian-weighted windows (3D). Files named "
        "<case>_0000.nii.gz, <case>_0001.nii.gz ... are the modalities of one case. Writes "
        "<out>/<case>.nii.gz labels with the input's affine.",
    )
    p.add_argument("inputs", type=Path, nargs="+", help="image files or folders")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        help="best.pt or last.pt of a run; given again (--checkpoint A --checkpoint B, "
        "e.g. the folds of train --folds) the models predict as an ensemble, their "
        "probabilities averaged",
    )
    model.add_argument(
        "--model",
        type=Path,
        metavar="PACKAGE",
        help="a bioimage.io model package (.zip) written by export, instead of --checkpoint: "
        "its TorchScript weights predict, with the preprocessing it records",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write <case>_probs.nii.gz (float, one channel per class on the last axis)",
    )
    p.add_argument(
        "--modalities",
        nargs="+",
        metavar="NAME",
        help="names of each case's modality files in file order (_0000 first); the model's "
        "modalities are then picked by name (default: the folder's dataset.json, else by "
        "position)",
    )
    p.add_argument(
        "--flips",
        action="store_true",
        help=FLIPS_HELP,
    )
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add_threads_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_affine_option(p, "modalities")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the options and every case, then predict them; the exit code."""
    import functools

    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.io import check_not_input, ensure_writable_dir, fit_name

    check_option(args.batch_size, "--batch-size", 1)
    check_device(args.device)
    package = fits = None
    if args.model is not None:
        from napari_boundary_seg.core.model_package import read_package

        package = read_package(args.model)  # checked; its weights load after the cases
        checkpoint, in_channels = dict(package.inference_checkpoint), package.in_channels
        args.checkpoint = [args.model]
    else:
        ensemble = [load_checkpoint(path) for path in args.checkpoint]
        _check_ensemble(args.checkpoint, ensemble)
        model, checkpoint = ensemble[0]
        in_channels = model.in_channels
    cases = _match_modalities(_group_inputs(args.inputs), checkpoint, args.modalities, args.inputs)
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} is a file, not a folder")
    folder = args.out if args.out.is_dir() else None
    targets = {case: args.out / fit_name(case, ".nii.gz", folder) for case, _ in cases}
    prob_targets = {case: args.out / fit_name(case, "_probs.nii.gz", folder) for case, _ in cases}
    outputs = [*targets.values(), *(prob_targets.values() if args.probabilities else [])]
    inputs = [*args.checkpoint, *(p for _, paths in cases for p in paths)]
    check_not_input(outputs, inputs, "--out")
    if len(set(outputs)) != len(outputs):
        raise CommandError(f"two cases would write the same file in {args.out}")
    if not args.overwrite:
        for path in outputs:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    # every case is checked before anything is written
    checked = None
    for case, paths in cases:
        if package is not None:
            fits = functools.partial(package.check_fits, what=f"case {case}")
        checked = _read_case(
            case, paths, in_channels, args.checkpoint[0], args.allow_affine_mismatch, fits=fits
        )
    if package is not None:
        ensemble = [package.predictor()]
    set_threads(args, "predict")
    with NewFolders(args.out):
        ensure_writable_dir(args.out)
        _predict_cases(args, cases, checked, ensemble, targets, prob_targets)
    return 0


def _check_ensemble(paths: Sequence[Path], loaded: Sequence[tuple[Any, Mapping[str, Any]]]) -> None:
    """Several checkpoints predict together only when they take the same inputs
    (channels, modality names) and give the same classes."""
    if len(set(paths)) != len(paths):
        raise CommandError("--checkpoint names the same file twice")
    (first, first_ckpt), first_path = loaded[0], paths[0]
    for path, (model, ckpt) in zip(paths[1:], loaded[1:], strict=True):
        for what, ours, theirs in (
            ("input channels", model.in_channels, first.in_channels),
            ("classes", getattr(model, "num_classes", None), getattr(first, "num_classes", None)),
            (
                "modalities",
                list(ckpt.get("modalities") or []),
                list(first_ckpt.get("modalities") or []),
            ),
        ):
            if ours != theirs:
                raise CommandError(
                    f"{path} has {what} {ours} but {first_path} has {theirs}: "
                    "an ensemble needs models of the same inputs and classes"
                )


def _group_inputs(paths: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Group NIfTI files into cases: ``<case>_<XXXX>`` names are modalities of one case."""
    import re

    from napari_boundary_seg.core.io import is_hidden_or_temp, is_nifti_path, nifti_stem

    def nifti_files(folder: Path) -> list[Path]:  # hidden and temporary files are no cases
        return sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and is_nifti_path(p) and not is_hidden_or_temp(p)
        )

    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            folder = path
            for sub in ("imagesTs", "imagesTr"):
                if not nifti_files(folder) and (folder / sub).is_dir():
                    folder = folder / sub
                    break
            found = nifti_files(folder)
            if not found:
                raise CommandError(f"{path}: no .nii/.nii.gz files")
            files.extend(found)
        elif is_nifti_path(path):
            files.append(path)
        else:
            raise CommandError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
    groups: dict[str, dict[int, Path]] = {}
    for path in files:
        stem = nifti_stem(path)
        match = re.fullmatch(r"(.+)_(\d{4})", stem)
        case, mod = (match.group(1), int(match.group(2))) if match else (stem, 0)
        if mod in groups.setdefault(case, {}):
            raise CommandError(f"{path}: a second file for modality {mod} of case {case}")
        groups[case][mod] = path
    cases = []
    for case, mods in groups.items():
        if sorted(mods) != list(range(len(mods))):
            raise CommandError(
                f"case {case}: modality files {sorted(mods)} are not 0..{len(mods) - 1}"
            )
        cases.append((case, [mods[m] for m in range(len(mods))]))
    return cases


def _read_case(
    case: str,
    paths: Sequence[Path],
    in_channels: int,
    checkpoint: Path,
    allow_affine: bool,
    check_affines: bool = True,
    fits: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """Read and check the modality files of one case (count, finite values, shapes,
    dimensions and, with ``check_affines``, affines); returns the volumes.
    ``fits(spatial_ndim, modalities)``, when given, checks the case against a
    model package's input axes first."""
    from napari_boundary_seg.core.io import check_finite, read_nifti

    volumes = [read_nifti(p, as_labels=False) for p in paths]
    ref = volumes[0]
    if ref.data.ndim not in (2, 3):
        raise CommandError(f"{paths[0]}: expected a 2D or 3D image, got shape {ref.data.shape}")
    if fits is not None:
        fits(ref.data.ndim, len(paths))
    for path, vol in zip(paths, volumes, strict=True):
        check_finite(vol.data, path)
    for path, vol in zip(paths[1:], volumes[1:], strict=True):
        if vol.data.shape != ref.data.shape:
            raise CommandError(
                f"case {case}: {path} has shape {vol.data.shape}, {paths[0]} {ref.data.shape}"
            )
        if check_affines:
            check_affine(paths[0], ref, path, vol, allow_affine, case)
    if len(paths) != in_channels:
        raise CommandError(
            f"case {case}: {len(paths)} modality file(s) ({paths[0].name} ...) but "
            f"{checkpoint} takes {in_channels}"
        )
    return volumes


def _input_channel_names(inputs: Sequence[Path], count: int) -> list[str] | None:
    """The modality names of a data folder's ``dataset.json`` (nnU-Net's
    ``channel_names``), when the inputs are one folder that has one."""
    from napari_boundary_seg.core.data import _generic_modality_names

    if len(inputs) != 1 or not inputs[0].is_dir():
        return None
    for folder in (inputs[0], inputs[0].parent):
        if (folder / "dataset.json").is_file():
            names = list(_generic_modality_names(folder, count))
            return None if names == [f"{i:04d}" for i in range(count)] else names
    return None


def _match_modalities(
    cases: list[tuple[str, list[Path]]],
    checkpoint: Mapping[str, Any],
    given: Sequence[str] | None,
    inputs: Sequence[Path],
) -> list[tuple[str, list[Path]]]:
    """Each case's modality files in the order the model takes them, matched by
    name (``--modalities`` or the folder's dataset.json) when names are known."""
    from napari_boundary_seg.core.predict import select_modalities

    trained = [str(m) for m in checkpoint.get("modalities") or []]
    if not cases:
        return cases
    count = len(cases[0][1])
    names = list(given) if given else _input_channel_names(inputs, count)
    if not names or not trained:
        return cases
    if all(name.isdigit() for name in trained):  # a model that never knew its names
        return cases
    order = select_modalities(trained, names)
    if order is None:
        raise CommandError(
            f"the model takes the modalities {', '.join(trained)}; the inputs are "
            f"{', '.join(names)} (give their names in file order with --modalities)"
        )
    matched = []
    for case, paths in cases:
        if len(paths) != len(names):
            raise CommandError(
                f"case {case}: {len(paths)} modality file(s) but {len(names)} names "
                f"({', '.join(names)})"
            )
        matched.append((case, [paths[i] for i in order]))
    if order != list(range(len(names))):
        out(
            "modalities matched by name: " + ", ".join(f"{names[i]} (file _{i:04d})" for i in order)
        )
    return matched


def _predict_cases(args, cases, checked, ensemble, targets, prob_targets) -> None:
    import numpy as np

    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.predict import iter_predict_ensemble

    for case, paths in cases:
        if len(cases) == 1 and checked is not None:
            volumes = checked
        else:  # checked above: read again, case by case (memory stays that of one case)
            volumes = _read_case(
                case, paths, ensemble[0][0].in_channels, args.checkpoint[0], True, False
            )
        ref = volumes[0]
        images = np.stack([v.data for v in volumes])
        probs, labels = drive(
            iter_predict_ensemble(
                ensemble,
                images,
                ref.spacing[: ref.data.ndim],
                batch_size=args.batch_size,
                device=args.device,
                affine=ref.affine,
                flips=args.flips,
            ),
            f"predict {case}",
            "batch",
        )
        write_nifti(
            targets[case], labels.astype(np.int64), affine=ref.affine, overwrite=args.overwrite
        )
        if args.probabilities:
            write_nifti(
                prob_targets[case],
                np.moveaxis(probs, 0, -1),
                affine=ref.affine,
                overwrite=args.overwrite,
                as_labels=False,
            )
        out(f"{case}: wrote {targets[case]} ({int((labels > 0).sum())} foreground voxels)")
