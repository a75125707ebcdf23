"""``evaluate``: compare a folder of predictions with a folder of labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import (
    CommandError,
    add_affine_option,
    check_affine,
    check_option,
    check_output_file,
    out,
    progress_bar,
    read_labels,
    warn,
)

HELP = "compare a folder of predictions with a folder of labels (DSC, HD, HD95, ASSD ...)"


def add_parser(sub: Any) -> None:
    """Add ``evaluate`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate",
        help=HELP,
        description="Match <case>.nii.gz files of --pred and --labels by name, compute every "
        "case metric in 3D with the labels' voxel spacing (mm), write a CSV with one row per "
        "case plus mean and std rows, and print a table. In the mean and std rows an "
        "infinite distance (one mask empty) counts as the image diagonal. Every labelled "
        "case needs a prediction, unless --subset scores only the cases predicted (a "
        "held-out subset of a labelled folder).",
    )
    p.add_argument("--pred", required=True, type=Path, help="folder of predicted label files")
    p.add_argument("--labels", required=True, type=Path, help="folder of reference label files")
    p.add_argument("--out", required=True, type=Path, help="CSV file to write")
    p.add_argument(
        "--label",
        type=int,
        default=None,
        help="evaluate this class only (default: every nonzero label is foreground)",
    )
    p.add_argument(
        "--subset",
        action="store_true",
        help="score only the labelled cases that have a prediction (the others are counted "
        "and named, not scored)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    add_affine_option(p, "a prediction and a reference")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Match the cases, score each, write the CSV and print the table; the exit code."""
    check_option(args.label, "--label", 1)
    preds, refs = _label_files(args.pred), _label_files(args.labels)
    check_output_file(args.out, args.overwrite, [*preds.values(), *refs.values()], "--out")
    missing = sorted(set(refs) - set(preds))
    extra = sorted(set(preds) - set(refs))
    if missing and not args.subset:
        raise CommandError(
            f"{args.pred}: {len(missing)} of {len(refs)} labelled cases have no prediction: "
            f"{', '.join(missing)}; pass --subset to score only the "
            f"{len(refs) - len(missing)} predicted"
        )
    if extra:
        warn(
            f"{len(extra)} prediction(s) without labels in {args.labels}, "
            f"not scored: {', '.join(extra)}"
        )
    if missing:
        refs = {case: path for case, path in refs.items() if case in preds}
        if not refs:
            raise CommandError(f"{args.pred}: no prediction matches a case of {args.labels}")
        out(
            f"evaluate: scoring {len(refs)} predicted case(s) of {len(refs) + len(missing)} "
            f"labelled; {len(missing)} without a prediction: {', '.join(missing)}"
        )
    rows, finite_rows = _score(args, preds, refs)
    summary = _summary(finite_rows)
    _write_csv(args.out, [*rows, summary["mean"], summary["std"]])
    shown = ("dice", "hd", "hd95", "assd")
    width = max(len(r["case"]) for r in [*rows, summary["mean"]])
    out(f"{'case':<{width}}  " + "  ".join(f"{k:>9}" for k in shown))
    for row in [*rows, summary["mean"], summary["std"]]:
        out(f"{row['case']:<{width}}  " + "  ".join(f"{row[k]:>9.4g}" for k in shown))
    out(f"wrote {args.out} ({len(rows)} cases, distances in mm)")
    return 0


def _label_files(folder: Path) -> dict[str, Path]:
    """The label files of ``folder`` by case name (hidden, temporary and ``_probs``
    files left out)."""
    from napari_boundary_seg.core.io import is_hidden_or_temp, is_nifti_path, nifti_stem

    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    files = {
        nifti_stem(p): p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and is_nifti_path(p)
        and not is_hidden_or_temp(p)  # hidden and temporary files are no cases
        and not nifti_stem(p).endswith("_probs")
    }
    if not files:
        raise CommandError(f"{folder}: no .nii/.nii.gz files")
    return files


def _score(args: argparse.Namespace, preds: dict, refs: dict) -> tuple[list, list]:
    """Each case's figures, and the same with infinite distances replaced by the
    image diagonal (for the mean and std rows)."""
    from napari_boundary_seg.core.metrics import case_metrics, replace_inf

    rows: list[dict[str, Any]] = []
    finite_rows: list[dict[str, float]] = []
    bar = progress_bar(len(refs), "evaluate", "case")
    try:
        for case, ref_path in refs.items():
            ref = read_labels(ref_path)
            pred = read_labels(preds[case])
            if pred.data.shape != ref.data.shape:
                raise CommandError(
                    f"{preds[case]} has shape {pred.data.shape} but {ref_path} has {ref.data.shape}"
                )
            check_affine(ref_path, ref, preds[case], pred, args.allow_affine_mismatch, case)
            spacing = ref.spacing[: ref.data.ndim]
            figures = case_metrics(pred.data, ref.data, spacing, label=args.label)
            rows.append({"case": case, **figures})
            finite = dict(figures)
            for key in ("hd", "hd95", "assd"):
                finite[key] = replace_inf(figures[key], ref.data.shape, spacing)
            finite_rows.append(finite)
            bar.update(1)
    finally:
        bar.close()
    return rows, finite_rows


def _summary(finite_rows: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The ``mean`` and ``std`` rows (NaN where no case has the figure)."""
    import math

    import numpy as np

    from napari_boundary_seg.core.metrics import CASE_METRIC_COLUMNS

    summary = {}
    for stat, func in (("mean", np.nanmean), ("std", np.nanstd)):
        row: dict[str, Any] = {"case": stat}
        for key in CASE_METRIC_COLUMNS:
            values = np.array([r.get(key, math.nan) for r in finite_rows], dtype=np.float64)
            row[key] = float(func(values)) if np.any(~np.isnan(values)) else math.nan
        summary[stat] = row
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    from napari_boundary_seg.core.io import atomic_path
    from napari_boundary_seg.core.metrics import CASE_METRIC_COLUMNS

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["case", *CASE_METRIC_COLUMNS], extrasaction="ignore"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
