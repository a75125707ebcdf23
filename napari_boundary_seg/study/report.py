"""The loss study's outputs: tables (markdown, CSV), calibration, figures, ``study.json``.

Plotting uses matplotlib's Agg backend, so the study lives outside ``core``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.io import atomic_path
from napari_boundary_seg.study.config import (
    ARMS,
    CALIBRATION_BAR,
    TABLE_METRICS,
    StudyArm,
    StudyConfig,
    run_name,
    size_bins,
)

__all__ = [
    "calibration_of",
    "figure_case",
    "plot_test_slice",
    "summarise",
    "versions_of",
    "write_outputs",
]


def versions_of(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the trainer's library versions) with the study's other libraries and
    the machine (platform, processor, CPU count, GPU)."""
    out = dict(base)
    from importlib.metadata import PackageNotFoundError, version

    for name in ("scipy", "edt", "connected-components-3d", "nibabel", "nilearn", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    out["platform"] = platform.platform()
    out["processor"] = platform.processor() or platform.machine()
    out["cpu_count"] = str(os.cpu_count())
    try:
        import torch

        out["torch_threads"] = str(torch.get_num_threads())
        out["cuda"] = str(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out


def summarise(
    arms: Sequence[StudyArm], per_run: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per arm: ``n_runs`` and the mean and std over its runs of every
    :data:`TABLE_METRICS` figure."""
    summary = []
    for arm in arms:
        rows = [r for r in per_run if r["arm"] == arm.key]
        row: dict[str, Any] = {"arm": arm.key, "label": arm.label, "n_runs": len(rows)}
        for key, _ in TABLE_METRICS:
            values = np.array([r[key] for r in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            row[f"{key}_mean"] = float(values.mean()) if values.size else math.nan
            row[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else math.nan
        summary.append(row)
    return summary


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def calibration_of(summary: Sequence[Mapping[str, Any]], config: StudyConfig) -> dict[str, Any]:
    """GDL's figures against :data:`CALIBRATION_BAR` (empty when GDL did not run)."""
    row = next((r for r in summary if r["arm"] == "gdl" and r["n_runs"] > 0), None)
    if row is None:
        return {}
    out: dict[str, Any] = {"small_voxels": config.small_voxels, "n_runs": row["n_runs"]}
    for key, (low, high) in CALIBRATION_BAR.items():
        value = float(row[f"{key}_mean"])
        out[key] = value
        # DSC in [0.60, 0.82]; small-lesion recall strictly below 0.8 (the "below")
        upper_ok = value < high if key == "lesion_recall_small" else value <= high
        out[f"{key}_meets_bar"] = bool(not math.isnan(value) and low <= value and upper_ok)
    return out


def _calibration_text(calibration: Mapping[str, Any]) -> str:
    if not calibration:
        return ""
    dice, recall = calibration["dice"], calibration["lesion_recall_small"]
    dice_low, dice_high = CALIBRATION_BAR["dice"]
    recall_high = CALIBRATION_BAR["lesion_recall_small"][1]

    def verdict(ok: bool) -> str:
        return "meets the bar" if ok else "MISSES the bar"

    return (
        f"Calibration (GDL, test cases, mean over {calibration['n_runs']} seed(s)): "
        f"DSC {dice:.3f} (bar {dice_low:.2f}–{dice_high:.2f}: "
        f"{verdict(calibration['dice_meets_bar'])}); "
        f"recall of lesions <= {calibration['small_voxels']:g} voxels {recall:.3f} "
        f"(bar < {recall_high:g}: {verdict(calibration['lesion_recall_small_meets_bar'])}).\n"
    )


def _markdown_table(summary: Sequence[Mapping[str, Any]], complete: bool) -> str:
    digits = {"hd": 1, "hd95": 1, "assd": 2, "avd": 1}
    head = ["loss", "runs", *[title for _, title in TABLE_METRICS]]
    lines = []
    if not complete:
        lines.append("**PARTIAL: not every run had finished; see study.json.**\n")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * len(head)) + "|")
    for row in summary:
        cells = [row["label"], str(row["n_runs"])]
        for key, _ in TABLE_METRICS:
            cells.append(_fmt(row[f"{key}_mean"], row[f"{key}_std"], digits.get(key, 3)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def figure_case(test_cases: Sequence[Any]) -> Any:
    """The test case of median lesion volume (ties by name), the case of the slice figure."""
    loads = sorted(test_cases, key=lambda c: (int((c.labels > 0).sum()), str(c.case_id)))
    return loads[(len(loads) - 1) // 2]


def plot_test_slice(
    path: Path,
    runs_path: Path,
    arms: Sequence[StudyArm],
    config: StudyConfig,
    test_cases: Sequence[Any],
    checkpoint_name: str = "best.pt",
) -> Path | None:
    """The paper's Fig. 1: one test slice, ground truth, GDL, GDL+BL, BL alone.

    The case is the test case of median lesion volume, the slice the one with the
    most lesion voxels in it; the models are the first seed's best checkpoints
    (``checkpoint_name``).
    Returns the path, or None when no shown arm has a finished run.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from napari_boundary_seg.core.predict import load_checkpoint, predict_volume

    keys = [
        k for k in ("gdl", "gdl-bl-paper", "gdl-bl-refcode", "bl") if k in {a.key for a in arms}
    ]
    if "gdl-bl-paper" in keys and "gdl-bl-refcode" in keys:
        keys.remove("gdl-bl-refcode")
    case = figure_case(test_cases)
    axis = config.train.axis % 3
    other = tuple(a for a in range(3) if a != axis)
    per_slice = (case.labels > 0).sum(axis=other)
    index = int(np.argmax(per_slice))
    take = lambda v: np.take(v, index, axis=axis)  # noqa: E731
    preds: dict[str, np.ndarray] = {}
    for key in keys:
        for seed in config.seeds:
            best = runs_path / run_name(key, seed) / checkpoint_name
            if best.exists():
                model, checkpoint = load_checkpoint(best)
                _, pred = predict_volume(
                    (model, checkpoint),
                    case.images,
                    case.spacing,
                    batch_size=config.eval_batch_size,
                    device=config.train.device,
                    affine=case.affine,
                )
                preds[key] = take(pred)
                break
    if not preds:
        return None
    flair = take(case.images[0]).astype(np.float32)
    lo, hi = np.percentile(flair, [1, 99.5])
    truth = take(case.labels) > 0
    labels = {a.key: a.label for a in ARMS}
    panels = [("ground truth", truth)] + [(labels[k], preds[k] > 0) for k in keys if k in preds]
    fig = Figure(figsize=(3.0 * len(panels), 3.4), dpi=110)
    axes = fig.subplots(1, len(panels))
    spacing = [case.spacing[a] for a in other]
    extent = (0, flair.shape[0] * spacing[0], 0, flair.shape[1] * spacing[1])
    for ax, (title, mask) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(flair.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent)
        overlay = np.ma.masked_where(~mask, mask.astype(float))
        ax.imshow(
            overlay.T, cmap="autumn", alpha=0.55, origin="lower", extent=extent, vmin=0, vmax=1
        )
        if truth.any():
            ax.contour(
                truth.T.astype(float),
                levels=[0.5],
                colors="cyan",
                linewidths=0.6,
                origin="lower",
                extent=extent,
            )
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(
        f"{case.case_id}, slice {index} (axis {axis}); cyan: ground-truth outline", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_curves(
    path: Path,
    arms: Sequence[StudyArm],
    histories: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]],
    epochs: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    axes = fig.subplots(1, 2)
    for arm in arms:
        runs = histories.get(arm.key, {})
        if not runs:
            continue
        for ax, key in zip(axes, ("val_dice", "val_hd"), strict=True):
            curves = np.full((len(runs), epochs), np.nan)
            for i, history in enumerate(runs.values()):
                for row in history:
                    e = int(row["epoch"]) - 1  # metrics.csv counts epochs from 1
                    if 0 <= e < epochs:
                        curves[i, e] = row.get(key, math.nan)
            x = np.arange(1, epochs + 1)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # no validation: all NaN
                mean = np.nanmean(curves, axis=0)
                low, high = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
            (line,) = ax.plot(x, mean, label=f"{arm.label} (n={len(runs)})")
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    axes[0].set_title("validation DSC (3D), mean over seeds, min–max shaded")
    axes[0].set_ylabel("DSC")
    axes[1].set_title("validation Hausdorff distance (3D), mean over seeds")
    axes[1].set_ylabel("HD (mm)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[0].get_lines():
        axes[0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(
    config: StudyConfig,
    out: Path,
    arms: Sequence[StudyArm],
    summary: Sequence[Mapping[str, Any]],
    per_case: Sequence[Mapping[str, Any]],
    per_run: Sequence[Mapping[str, Any]],
    histories: Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]],
    *,
    complete: bool,
    extra: Mapping[str, Any],
    summary_held: Sequence[Mapping[str, Any]] = (),
    per_run_held: Sequence[Mapping[str, Any]] = (),
    per_fold: Sequence[Mapping[str, Any]] = (),
    stats_md: str = "",
    calibration: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Write the tables, CSVs, figures and ``study.json`` to ``out``; returns the
    written paths by role."""
    from napari_boundary_seg.core.metrics import case_metric_columns

    files = {
        "table_md": out / "results.md",
        "table_csv": out / "results.csv",
        "per_run_csv": out / "per_run.csv",
        "per_case_csv": out / "per_case.csv",
        "figure": out / "validation_curves.png",
        "config_json": out / "study.json",
    }
    text = _markdown_table(summary, complete)
    if summary_held:
        text += (
            f"\n### Held-out site `{config.held_out_site}` (never trained or validated on)\n\n"
            + _markdown_table(summary_held, complete)
        )
    if calibration:
        text += "\n" + _calibration_text(calibration)
    if stats_md:
        text += "\n## Paired statistics\n\n" + stats_md
    files["table_md"].write_text(text)
    summary_cols = ["arm", "label", "n_runs"]
    for key, _ in TABLE_METRICS:
        summary_cols += [f"{key}_mean", f"{key}_std"]
    _write_csv(files["table_csv"], summary, summary_cols)
    run_cols = [
        "arm",
        "seed",
        "best_epoch",
        "best_val_dice",
        *[k for k, _ in TABLE_METRICS],
        "n_small_lesions",
        "n_inf_hd",
        "train_seconds",
    ]
    _write_csv(files["per_run_csv"], per_run, run_cols)
    if per_run_held:
        files["per_run_held_csv"] = out / "per_run_heldout.csv"
        _write_csv(files["per_run_held_csv"], per_run_held, run_cols)
    if per_fold:
        files["per_fold_csv"] = out / "per_fold.csv"
        _write_csv(
            files["per_fold_csv"], per_fold, ["fold", *run_cols[:2], "test_cases", *run_cols[2:]]
        )
    bins = size_bins(config.small_voxels)
    case_cols = ["arm", "seed", "case", *case_metric_columns(bins), "hd95_capped"]
    if config.folds is not None:
        case_cols.insert(0, "fold")
    if any("set" in r and r["set"] != "test" for r in per_case):
        case_cols.insert(0, "set")
    _write_csv(files["per_case_csv"], per_case, case_cols)
    _plot_curves(files["figure"], arms, histories, config.train.epochs)
    record = {"config": config.to_dict(), "complete": complete, **extra}
    files["config_json"].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return {k: str(v) for k, v in files.items()}
