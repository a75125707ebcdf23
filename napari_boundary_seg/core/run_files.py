"""The files of a training run's folder: ``config.json`` and ``metrics.csv``.

:func:`check_out_dir` refuses a folder that holds another run; :func:`write_run_start`
writes the config and the history so far when a run starts (or resumes);
:func:`append_metrics_row` adds an epoch's row; :func:`read_metrics_csv` reads
the file back. Checkpoints (``best.pt``, ``last.pt``) are written by
:mod:`napari_boundary_seg.core.checkpoint`. ``metrics.csv`` counts ``epoch``
from 1, as every message does; history entries and events count from 0.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_boundary_seg.core.events import METRICS_COLUMNS
from napari_boundary_seg.core.io import atomic_path, write_text_atomic

__all__ = [
    "append_metrics_row",
    "check_out_dir",
    "read_metrics_csv",
    "write_run_start",
]


def check_out_dir(config: Any) -> Path | None:
    """The run's folder, made if needed (None without ``out_dir``).

    Raises
    ------
    ValueError
        ``out_dir`` is a file.
    FileExistsError
        It already holds a run (``last.pt`` or ``best.pt``) that this run does
        not resume and may not overwrite.
    """
    if config.out_dir is None:
        return None
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # a run killed before its first checkpoint left only config.json and metrics.csv:
    # nothing to lose, so the folder does not block a new run
    existing = [n for n in ("last.pt", "best.pt") if (out / n).exists()]
    resuming_here = config.resume_from is not None and (
        Path(config.resume_from).resolve().parent == out.resolve()
    )
    if existing and not config.overwrite and not resuming_here:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); resume from its last.pt, "
            "choose another out_dir, or allow overwrite"
        )
    return out


def write_run_start(out_dir: Path, config: Mapping[str, Any], history: Sequence[Any]) -> None:
    """``config.json`` (the run's config dict) and ``metrics.csv`` (the rows of
    ``history``, those of the run a resume continues), both written atomically."""
    write_text_atomic(out_dir / "config.json", json.dumps(dict(config), indent=2) + "\n")
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow(_csv_row(row))


def append_metrics_row(path: Path, row: Mapping[str, Any]) -> None:
    """Add one epoch's history entry to ``metrics.csv`` (with the header if new)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(_csv_row(row))


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history entry as a ``metrics.csv`` row: ``epoch`` counted from 1, as every
    message counts (history entries and events count from 0)."""
    out = {k: row.get(k, "") for k in METRICS_COLUMNS}
    if out["epoch"] != "":
        out["epoch"] = int(out["epoch"]) + 1
    return out


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as numbers (``is_best`` as 0/1), with
    ``epoch`` counted from 1. Files of earlier versions, whose ``epoch`` column
    counted from 0 (their first row says 0), are read the same way."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, float] = {}
            for key, value in row.items():
                if value in ("True", "False"):
                    parsed[key] = float(value == "True")
                elif value:
                    parsed[key] = float(value)
            rows.append(parsed)
    if rows and rows[0].get("epoch") == 0:  # an earlier version's file: counted from 0
        for row in rows:
            if "epoch" in row:
                row["epoch"] += 1
    return rows
