"""The loss study: GDL, GDL + boundary loss, boundary loss alone and CE, compared.

Reproduces the experiment of Kervadec et al. (MIDL 2019, Table 1 and Fig. 3) on
any labelled data set the trainer reads, by default the built-in benchmark:

1. the cases are split once, patient-wise, into training, validation and test
   cases (the test cases are never seen during training or model selection);
2. the same UNet is trained with every *arm* (loss and alpha schedule) and every
   seed, with the same split, slices, distance maps (built once and shared) and
   budget (epochs × steps per epoch); each run lives in its own folder
   (``best.pt``, ``last.pt``, ``metrics.csv``), so a rerun skips finished runs
   and resumes unfinished ones from ``last.pt``;
3. each run's best checkpoint (by validation DSC) segments the test cases in 3D
   and :func:`napari_boundary_seg.core.metrics.case_metrics` measures them;
4. the results are written as a table (mean ± std over seeds, markdown and CSV),
   a per-case CSV, a figure of the validation DSC and HD per epoch (mean over
   seeds) and a JSON record of the settings, the split and the library versions.

With ``folds`` (``study --folds K`` or ``--folds loo``) step 1 becomes a
cross-validation by patient: fold ``k`` tests the ``k``-th patient group of
:func:`~napari_boundary_seg.core.folds.fold_splits` and trains (and validates,
by the same rule on the remaining patients) on the others; every arm and seed
runs in every fold (``runs/fold_<k>/<arm>-seed<s>/``), writes its test
predictions there (``test/<case>.nii.gz``, native grid and affine), and the
per-case test figures of all folds are pooled, so the table and the paired
statistics see every patient once per arm and seed (``per_fold.csv`` keeps
the figures of each fold).

The alpha schedules are rescaled to the budget: the paper lowers alpha by 0.01
per epoch over 100 epochs, so that it reaches its floor (0.01) at the last
epoch; here the step is ``(1 - floor) / (epochs - 1)``, and the reference
code's schedule uses the same step.

``iter_study`` is a generator of :class:`~napari_boundary_seg.core.progress.Progress`
events (one per training step of the whole study) that returns a
:class:`StudyResult`; ``run_study`` drives it. Plotting uses matplotlib's Agg
backend, so this module lives outside ``core``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.folds import LEAVE_ONE_OUT, check_folds, fold_splits
from napari_boundary_seg.core.io import atomic_path
from napari_boundary_seg.core.losses import LossKind
from napari_boundary_seg.core.progress import Progress, run_to_end
from napari_boundary_seg.core.synthetic import PRESETS
from napari_boundary_seg.study_stats import compare_arms, comparisons_markdown

logger = logging.getLogger(__name__)

__all__ = [
    "ARMS",
    "CALIBRATION_BAR",
    "COMPARISONS",
    "MAIN_ARMS",
    "SIZE_BINS_VOXELS",
    "TABLE_METRICS",
    "StudyArm",
    "StudyConfig",
    "StudyResult",
    "arm_schedule",
    "fold_study_cases",
    "iter_study",
    "run_study",
    "size_bins",
    "split_study_cases",
]


@dataclass(frozen=True)
class StudyArm:
    """One compared objective.

    Attributes
    ----------
    key
        Identifier used on the command line and in folder names.
    label
        Name in tables and figures.
    loss
        The trainer's loss kind.
    schedule
        Alpha schedule kind for ``gdl+bl`` (``"paper"`` or ``"reference-code"``);
        ``None`` for the other losses.
    distance
        ``"3d"``: φ of the whole volume with its spacing, sliced (the default);
        ``"2d"``: φ per 2D slice (the ablation).
    """

    key: str
    label: str
    loss: LossKind
    schedule: str | None = None
    distance: str = "3d"


ARMS: tuple[StudyArm, ...] = (
    StudyArm("gdl", "GDL", LossKind.GDL),
    StudyArm("gdl-bl-paper", "GDL+BL (paper α)", LossKind.GDL_BL, "paper"),
    StudyArm("gdl-bl-refcode", "GDL+BL (reference-code α)", LossKind.GDL_BL, "reference-code"),
    StudyArm("bl", "BL alone", LossKind.BL),
    StudyArm("ce", "CE", LossKind.CE),
    StudyArm("gdl-bl-paper-2d", "GDL+BL (paper α, 2D φ)", LossKind.GDL_BL, "paper", "2d"),
)
"""The study's arms, in table order; the last is the 2D-φ ablation (not run by default)."""

MAIN_ARMS: tuple[str, ...] = ("gdl", "gdl-bl-paper", "gdl-bl-refcode", "bl", "ce")
"""The default arms: the paper's comparison (the ablation arm is opt-in)."""

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("gdl", "gdl-bl-paper", "GDL+BL vs GDL"),
    ("gdl", "gdl-bl-refcode", "GDL+BL vs GDL"),
    ("gdl-bl-paper", "gdl-bl-paper-2d", "Ablation, φ per 2D slice vs 3D φ with spacing"),
)
"""Paired comparisons ``(a, b, heading)`` reported as ``b - a`` when both arms ran."""

CALIBRATION_BAR: Mapping[str, tuple[float, float]] = {
    "dice": (0.60, 0.82),
    "lesion_recall_small": (-math.inf, 0.8),
}
"""The wmh preset's calibration bar for GDL on the test cases: DSC in [0.60, 0.82],
recall of small lesions (<= ``small_voxels``) below 0.8 (issue 13)."""

SIZE_BINS_VOXELS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 8.0),
    ("medium", 8.0, 64.0),
    ("large", 64.0, math.inf),
)
"""Lesion size bins in voxels (``low < size <= high``), converted to mm³ per case.

"small" is at most 8 voxels: the generator's tiny lesions (2-8 voxels), the ones
a Dice loss tends to miss. The metrics module's mm³ defaults (small <= 10 mm³)
would hold only single voxels at the benchmark's 2 mm spacing.
"""


def size_bins(small_voxels: float = 8.0) -> tuple[tuple[str, float, float], ...]:
    """Lesion size bins in voxels: small ``<= small_voxels``, medium ``<= 64``, large."""
    if not 0 < small_voxels < 64:
        raise ValueError(f"small_voxels must be in (0, 64), got {small_voxels!r}")
    return (
        ("small", 0.0, float(small_voxels)),
        ("medium", float(small_voxels), 64.0),
        ("large", 64.0, math.inf),
    )


TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "DSC"),
    ("hd", "HD (mm)"),
    ("hd95", "HD95 (mm)"),
    ("assd", "ASSD (mm)"),
    ("avd", "AVD (%)"),
    ("lesion_recall", "lesion recall"),
    ("lesion_f1", "lesion F1"),
    ("lesion_recall_small", "small-lesion recall"),
)
"""Per-run figures of the results table (key, column title)."""

_DISTANCE_KEYS = ("hd", "hd95", "assd")
_RUN_FILES = ("best.pt", "last.pt", "metrics.csv")


@dataclass(frozen=True)
class StudyConfig:
    """Settings of a loss study (JSON round trip with :meth:`to_dict`).

    Parameters
    ----------
    data
        Dataset folder (any layout :func:`~napari_boundary_seg.core.data.find_cases`
        reads). When it does not exist and ``synth_cases`` is set, the built-in
        benchmark is written there first.
    out
        Folder for the results (table, per-case CSV, figure, JSON).
    runs_dir
        Folder of the per-run folders (default ``<out>/runs``).
    arms
        Keys of :data:`ARMS` to run, in order.
    seeds
        Training seeds (initialisation and slice order); the split is fixed.
    epochs, max_steps_per_epoch, batch_size, lr, lr_patience
        The identical budget and optimiser of every run.
    slice_size, depth, base_channels, axis
        Network input size and UNet shape; slicing axis.
    test_fraction, val_fraction
        Patient-wise fractions of all cases held out for testing and for
        validation (model selection). With ``folds``, ``test_fraction`` is not
        used and ``val_fraction`` is a fraction of each fold's training
        patients; ``0`` there means no validation (``last.pt`` is tested).
    split_seed
        Seed of the split.
    alpha_floor
        Floor of the paper schedule (0.01 in the paper).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    synth_cases, synth_seed, synth_shape, synth_spacing
        Write the built-in benchmark (this many cases, this seed, this grid;
        ``None``: the generator's defaults) into ``data`` when the folder does
        not exist; ``synth_cases=None``: never.
    eval_batch_size
        Slices per forward pass at test time.
    synth_preset
        Generator preset of the written benchmark: ``"easy"`` (default) or
        ``"wmh"`` (its grids come from its sites; ``synth_shape`` and
        ``synth_spacing`` must then be ``None``).
    held_out_site
        A site (``dataset.json``'s per-case ``site``) whose cases are kept out of
        training, validation and test entirely, and reported as a separate test
        set; ``None``: no site is held out.
    small_voxels
        Lesions of at most this many voxels are "small" (the small-lesion recall).
    folds
        ``None`` (default): one train/validation/test split. An integer >= 2,
        or ``"loo"`` (one fold per patient): cross-validation by patient with
        :func:`~napari_boundary_seg.core.folds.fold_splits`; every arm and seed
        runs in every fold (``<runs_dir>/fold_<k>/<arm>-seed<s>``), each fold's
        test patients are predicted (NIfTI, native grid and affine, in the run's
        ``test/`` folder) and the test figures of all folds are pooled, so every
        patient is tested once per arm and seed.
    dims, patch_size
        ``2`` (default, the paper): slices of ``slice_size``; ``3``: 3D patches of
        ``patch_size`` voxels (``None``: the trainer's default) from the volumes
        at their own spacing, prepared once into ``<runs_dir>/cache`` and shared
        by the runs, with the trainer's 3D defaults (augmentation on,
        foreground oversampling). The 2D-φ ablation is a 2D arm.
    """

    data: str
    out: str
    runs_dir: str | None = None
    arms: tuple[str, ...] = MAIN_ARMS
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 40
    max_steps_per_epoch: int | None = 30
    batch_size: int = 8
    lr: float = 1e-3
    lr_patience: int = 20
    slice_size: int | None = 128
    depth: int = 4
    base_channels: int = 8
    axis: int = 2
    test_fraction: float = 0.25
    val_fraction: float = 0.1
    split_seed: int = 0
    alpha_floor: float = 0.01
    device: str = "auto"
    synth_cases: int | None = None
    synth_seed: int = 0
    synth_shape: tuple[int, int, int] | None = None
    synth_spacing: tuple[float, float, float] | None = None
    eval_batch_size: int = 16
    synth_preset: str = "easy"
    held_out_site: str | None = None
    small_voxels: float = 8.0
    dims: int = 2
    patch_size: tuple[int, int, int] | None = None
    folds: int | str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "data", os.fspath(self.data))
        set_(self, "out", os.fspath(self.out))
        if self.runs_dir is not None:
            set_(self, "runs_dir", os.fspath(self.runs_dir))
        known = {a.key for a in ARMS}
        arms = tuple(str(a) for a in self.arms)
        unknown = [a for a in arms if a not in known]
        if unknown or not arms:
            raise ValueError(f"unknown study arms {unknown or arms}; choose from {sorted(known)}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"study arms repeat: {arms}")
        set_(self, "arms", arms)
        seeds = tuple(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds must be a non-empty sequence of integers, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        set_(self, "seeds", seeds)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        folds = self.folds
        if folds is not None and folds != LEAVE_ONE_OUT:
            if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
                raise ValueError(
                    f"folds must be an integer >= 2 or '{LEAVE_ONE_OUT}', got {folds!r}"
                )
            set_(self, "folds", int(folds))
        for name in ("test_fraction", "val_fraction"):
            value = getattr(self, name)
            if name == "val_fraction" and folds is not None:  # 0: no validation
                if not isinstance(value, int | float) or not 0 <= value < 1:
                    raise ValueError(f"{name} must be in [0, 1) with folds, got {value!r}")
            elif not isinstance(value, int | float) or not 0 < value < 1:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if folds is not None and self.held_out_site is not None:
            raise ValueError("a held-out site and folds cannot be combined: choose one test design")
        if folds is None and self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be below 1, got "
                f"{self.test_fraction} + {self.val_fraction}"
            )
        if not 0 < self.alpha_floor < 1:
            raise ValueError(f"alpha_floor must be in (0, 1), got {self.alpha_floor!r}")
        if self.synth_preset not in PRESETS:
            raise ValueError(f"synth_preset must be one of {PRESETS}, got {self.synth_preset!r}")
        if self.synth_preset == "wmh" and (
            self.synth_shape is not None or self.synth_spacing is not None
        ):
            raise ValueError(
                "synth_shape/synth_spacing apply to the easy preset; the wmh preset's "
                "grids come from its sites"
            )
        size_bins(self.small_voxels)
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims!r}")
        if self.patch_size is not None:
            patch = tuple(self.patch_size)
            if self.dims != 3 or len(patch) != 3 or any(int(p) < 1 for p in patch):
                raise ValueError(
                    f"patch_size takes 3 positive sizes and dims=3, got {self.patch_size!r} "
                    f"with dims={self.dims}"
                )
            set_(self, "patch_size", tuple(int(p) for p in patch))
        flat = [a for a in arms if next(x for x in ARMS if x.key == a).distance == "2d"]
        if self.dims == 3 and flat:
            raise ValueError(
                f"arms {flat} compute φ per 2D slice, which a 3D study cannot train; "
                "leave them out with --dims 3"
            )
        if self.synth_cases is not None and (
            isinstance(self.synth_cases, bool)
            or not isinstance(self.synth_cases, int)
            or self.synth_cases < 3
        ):
            raise ValueError(
                f"synth_cases must be an integer >= 3 (train, validation and test), "
                f"got {self.synth_cases!r}"
            )

    @property
    def runs_path(self) -> Path:
        """The folder holding one folder per run."""
        return Path(self.runs_dir) if self.runs_dir is not None else Path(self.out) / "runs"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "folds" and value is None:
                continue  # a study without folds records the settings it always did
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class StudyResult:
    """What a study wrote and measured.

    Attributes
    ----------
    summary
        One row per arm: ``arm``, ``label``, ``n_runs`` and ``<metric>_mean`` /
        ``<metric>_std`` over seeds for every :data:`TABLE_METRICS` key.
    per_case
        One row per (arm, seed, test case) with every ``case_metrics`` figure.
    files
        Written paths by role (``table_md``, ``table_csv``, ``per_case_csv``,
        ``per_run_csv``, ``figure``, ``config_json``; with folds ``per_fold_csv``).
    complete
        False when some runs had not finished (the table then says PARTIAL).
    summary_held
        As ``summary``, on the held-out site's cases (empty without one).
    calibration
        GDL's test DSC and small-lesion recall (means over seeds) and whether
        each meets :data:`CALIBRATION_BAR`; empty when GDL did not run.
    """

    summary: list[dict[str, Any]]
    per_case: list[dict[str, Any]]
    files: dict[str, str]
    complete: bool
    summary_held: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# schedules, split, run folders


def arm_schedule(arm: StudyArm, epochs: int, floor: float = 0.01) -> dict[str, Any]:
    """The alpha schedule of an arm, rescaled so alpha reaches its floor at the last epoch.

    The paper: ``step = 0.01`` per epoch over 100 epochs, ``alpha(99) = 0.01``.
    Here ``step = (1 - floor) / (epochs - 1)`` (``1 - floor`` for one epoch).
    The reference-code schedule takes the same step.

    Returns
    -------
    dict
        A schedule dict for :class:`~napari_boundary_seg.core.train.TrainConfig`
        (the paper schedule for arms that do not use one; it is ignored there).
    """
    step = (1.0 - floor) / max(epochs - 1, 1)
    if arm.schedule == "reference-code":
        return {"kind": "reference-code", "step": step, "region_floor": 0.1, "boundary_start": 0.01}
    return {"kind": "paper", "start": 1.0, "step": step, "floor": floor}


def split_study_cases(
    cases: Sequence[Any], test_fraction: float, val_fraction: float, seed: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """Patient-wise split into ``(train, val, test)``, independent of input order.

    Test cases are drawn first with ``round(test_fraction * n)`` (at least one),
    then ``round(val_fraction * n)`` (at least one) validation cases from the
    rest, both with :func:`~napari_boundary_seg.core.data.split_cases`.
    """
    from napari_boundary_seg.core.data import split_cases

    n = len(cases)
    if n < 3:
        raise ValueError(f"a study needs at least 3 cases (train, validation, test), got {n}")
    rest, test = split_cases(cases, test_fraction, seed)
    n_val = max(1, int(round(val_fraction * n)))
    if n_val >= len(rest):
        raise ValueError(f"{n} cases leave no training case after the test and validation split")
    train, val = split_cases(rest, n_val / len(rest), seed + 1)
    return list(train), list(val), list(test)


def fold_study_cases(
    cases: Sequence[Any], folds: int | str, val_fraction: float, seed: int
) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """``(train, val, test)`` per fold of a cross-validation by patient.

    The test cases of fold ``k`` are the ``k``-th patient group of
    :func:`~napari_boundary_seg.core.folds.fold_splits` (``folds``: an integer
    >= 2 or ``"loo"``); the others are split as :func:`split_study_cases` splits
    the rest: ``round(val_fraction * n)`` (at least one) of those ``n`` patients
    validate, with seed ``seed + 1``. ``val_fraction = 0``: no validation.
    """
    from napari_boundary_seg.core.data import split_cases

    out = []
    for index, (rest, test) in enumerate(fold_splits(cases, folds, seed), start=1):
        if val_fraction == 0:
            out.append((list(rest), [], list(test)))
            continue
        n_val = max(1, int(round(val_fraction * len(rest))))
        if n_val >= len(rest):
            raise ValueError(
                f"fold {index}: {len(rest)} training case(s) leave none after {n_val} for "
                f"validation; lower the validation fraction {val_fraction:g} (0: no validation)"
            )
        train, val = split_cases(rest, n_val / len(rest), seed + 1)
        out.append((list(train), list(val), list(test)))
    return out


def _run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


@dataclass(frozen=True, eq=False)
class _Fold:
    """One train/validation/test split of the study and the folder of its runs;
    ``index`` is None for the single split of a study without folds."""

    index: int | None
    train: list[Any]
    val: list[Any]
    test: list[Any]
    runs_path: Path

    def run_label(self, arm: str, seed: int) -> str:
        name = _run_name(arm, seed)
        return name if self.index is None else f"fold_{self.index}/{name}"


def _run_position(run_dir: Path) -> int | None:
    """Epochs done by the run in ``run_dir`` (from ``last.pt``), None without one."""
    from napari_boundary_seg.core.checkpoint import read_checkpoint

    last = run_dir / "last.pt"
    if not last.exists():
        return None
    checkpoint = read_checkpoint(last)
    return int(checkpoint["position"]["epoch"])


def _read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    from napari_boundary_seg.core.train import read_metrics_csv

    return read_metrics_csv(path)  # epoch counted from 1


# ---------------------------------------------------------------------------
# the study


def _train_config(config: StudyConfig, arm: StudyArm, seed: int, run_dir: Path) -> Any:
    from napari_boundary_seg.core.modes import mode_for
    from napari_boundary_seg.core.train import TrainConfig

    return TrainConfig(
        data=config.data,
        out_dir=str(run_dir),
        num_classes=2,
        loss=arm.loss,
        schedule=arm_schedule(arm, config.epochs, config.alpha_floor),
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        lr_patience=config.lr_patience,
        slice_size=config.slice_size,
        axis=config.axis,
        # the study keeps the paper's recipe on its generated cases (stored order,
        # min-max, no resampling or cropping), as its committed results were run
        normalize="minmax",
        canonical=False,
        slice_spacing=None,
        crop_to_head=False,
        distance=arm.distance,
        val_fraction=config.val_fraction,
        seed=seed,
        split_seed=config.split_seed,
        device=config.device,
        depth=config.depth,
        base_channels=config.base_channels,
        max_steps_per_epoch=config.max_steps_per_epoch,
        dims=config.dims,
        patch_size=config.patch_size,
        # without a shared data set (3D) the volumes are prepared once into a cache
        # that every run reads
        cache_dir=None if mode_for(config).shares_dataset else str(config.runs_path / "cache"),
    )


def _evaluate_run(
    run_dir: Path,
    test_cases: Sequence[Any],
    eval_batch_size: int,
    device: str,
    bins: Sequence[tuple[str, float, float]] = SIZE_BINS_VOXELS,
    cache_name: str = "test_metrics.csv",
    checkpoint_name: str = "best.pt",
    predictions_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Every case metric of the run's checkpoint (best by default) on the test cases
    (cached in CSV); with ``predictions_dir``, each prediction is also written there
    as ``<case>.nii.gz`` on the case's own grid with its affine."""
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.metrics import case_metric_columns, case_metrics
    from napari_boundary_seg.core.predict import predict_volume

    best = run_dir / checkpoint_name
    cache = run_dir / cache_name
    if not test_cases:
        return []
    case_ids = [str(c.case_id) for c in test_cases]
    written = predictions_dir is None or all(
        (predictions_dir / f"{c}.nii.gz").is_file() for c in case_ids
    )
    if written and cache.exists() and cache.stat().st_mtime >= best.stat().st_mtime:
        with open(cache, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if [r["case"] for r in rows] == case_ids and set(rows[0]) >= set(case_metric_columns(bins)):
            return [
                {"case": r["case"], **{k: float(v) for k, v in r.items() if k != "case"}}
                for r in rows
            ]
    model, checkpoint = load_checkpoint(best)
    rows = []
    for case in test_cases:
        _, pred = predict_volume(
            (model, checkpoint),
            case.images,
            case.spacing,
            batch_size=eval_batch_size,
            device=device,
            affine=case.affine,
        )
        if predictions_dir is not None:
            predictions_dir.mkdir(parents=True, exist_ok=True)
            write_nifti(
                predictions_dir / f"{case.case_id}.nii.gz",
                pred.astype(np.uint8 if int(pred.max(initial=0)) < 256 else np.int64),
                affine=case.affine,
                overwrite=True,
            )
        figures = case_metrics(pred, case.labels, case.spacing, size_bins=bins, unit="voxels")
        rows.append({"case": str(case.case_id), **figures})
    columns = ["case", *case_metric_columns(bins)]
    with atomic_path(cache) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _run_figures(rows: Sequence[Mapping[str, Any]], test_cases: Sequence[Any]) -> dict[str, float]:
    """One run's table figures: means over test cases (inf distances -> image diagonal);
    small-lesion recall pooled over the test cases' small lesions."""
    from napari_boundary_seg.core.metrics import replace_inf

    out: dict[str, float] = {}
    shapes = {str(c.case_id): (c.labels.shape, c.spacing) for c in test_cases}
    for key, _ in TABLE_METRICS:
        if key == "lesion_recall_small":
            n_target = sum(float(r["n_target_small"]) for r in rows)
            n_detected = sum(float(r["n_detected_small"]) for r in rows)
            out[key] = n_detected / n_target if n_target > 0 else math.nan
            out["n_small_lesions"] = n_target
            continue
        values = []
        for r in rows:
            value = float(r[key])
            if key in _DISTANCE_KEYS:
                shape, spacing = shapes[r["case"]]
                value = float(replace_inf(value, shape, spacing))
            values.append(value)
        finite = [v for v in values if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else math.nan
    out["n_inf_hd"] = float(sum(math.isinf(float(r["hd"])) for r in rows))
    return out


def iter_study(
    config: StudyConfig,
    *,
    report_only: bool = False,
    command: str | None = None,
) -> Generator[Progress, None, StudyResult]:
    """Run (or resume) the loss study; yields ``Progress`` per training step.

    Parameters
    ----------
    config
        The study's settings.
    report_only
        Train nothing: evaluate and report the runs that have finished (the
        outputs are marked partial when some have not).
    command
        The command line that started the study, recorded in the JSON.

    Returns
    -------
    StudyResult
    """
    from napari_boundary_seg.core import data as data_mod
    from napari_boundary_seg.core.modes import mode_for
    from napari_boundary_seg.core.train import (
        DoneEvent,
        EpochEvent,
        StepEvent,
        epoch_steps,
        library_versions,
        preprocess_config,
        train,
    )

    started = time.time()
    data_dir = Path(config.data)
    if config.folds is not None and not data_dir.exists() and config.synth_cases is not None:
        check_folds(config.folds, config.synth_cases)  # before anything is written
    if not data_dir.exists():
        if config.synth_cases is None:
            raise FileNotFoundError(
                f"no such data folder: {data_dir} (pass synth_cases / --synth N to write "
                "the built-in benchmark there)"
            )
        from napari_boundary_seg.core.synthetic import iter_write_benchmark

        logger.info(
            "writing %d synthetic cases (%s preset) to %s",
            config.synth_cases,
            config.synth_preset,
            data_dir,
        )
        grid: dict[str, Any] = {}
        if config.synth_shape is not None:
            grid["shape"] = tuple(config.synth_shape)
        if config.synth_spacing is not None:
            grid["spacing"] = tuple(config.synth_spacing)
        if config.synth_preset != "easy":
            grid["preset"] = config.synth_preset
        for event in iter_write_benchmark(data_dir, config.synth_cases, config.synth_seed, **grid):
            yield Progress(0, 0, f"synth: {event.message}")
    files = data_mod.find_cases(data_dir)
    if config.folds is not None:
        check_folds(config.folds, len({str(f.case_id) for f in files}))
    cases = yield from data_mod.iter_load_cases(files)
    held_out: list[Any] = []
    sites: dict[str, str] = {}
    if config.held_out_site is not None:
        from napari_boundary_seg.core.synthetic import read_sites

        sites = read_sites(data_dir)
        known = sorted(set(sites.values()))
        if config.held_out_site not in known:
            raise ValueError(
                f"held-out site {config.held_out_site!r} is not among the sites of "
                f"{data_dir / 'dataset.json'}: {known}"
            )
        held_out = [c for c in cases if sites.get(str(c.case_id)) == config.held_out_site]
        cases = [c for c in cases if sites.get(str(c.case_id)) != config.held_out_site]
    if config.folds is None:
        train_cases, val_cases, test_cases = split_study_cases(
            cases, config.test_fraction, config.val_fraction, config.split_seed
        )
        folds = [_Fold(None, train_cases, val_cases, test_cases, config.runs_path)]
        logger.info(
            "split: %d train, %d validation, %d test cases%s",
            len(train_cases),
            len(val_cases),
            len(test_cases),
            f", {len(held_out)} of held-out site {config.held_out_site}" if held_out else "",
        )
    else:
        splits = fold_study_cases(cases, config.folds, config.val_fraction, config.split_seed)
        folds = [
            _Fold(k, train_, val_, test_, config.runs_path / f"fold_{k}")
            for k, (train_, val_, test_) in enumerate(splits, start=1)
        ]
        for fold in folds:
            logger.info(
                "fold %d/%d: %d train, %d validation, test %s",
                fold.index,
                len(folds),
                len(fold.train),
                len(fold.val),
                ", ".join(str(c.case_id) for c in fold.test),
            )
    # pooled over the folds: every case is tested once per arm and seed
    test_cases = [c for fold in folds for c in fold.test]
    # without validation, best.pt would be chosen by the training loss: test last.pt
    checkpoint_name = "best.pt" if config.val_fraction > 0 else "last.pt"
    arms = [next(a for a in ARMS if a.key == key) for key in config.arms]
    bins = size_bins(config.small_voxels)
    suffix = "" if bins == SIZE_BINS_VOXELS else f"_small{config.small_voxels:g}"
    # seed-major: an interrupted study has every arm at its first seed(s)
    runs = [(arm, seed) for seed in config.seeds for arm in arms]
    runs_path = config.runs_path
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path.mkdir(parents=True, exist_ok=True)
    for fold in folds:
        fold.runs_path.mkdir(parents=True, exist_ok=True)

    done_epochs = {
        (fold.index, arm.key, seed): (_run_position(fold.runs_path / _run_name(arm.key, seed)) or 0)
        for fold in folds
        for arm, seed in runs
    }
    order = [(fold, arm, seed) for seed in config.seeds for fold in folds for arm in arms]
    todo = [(f, a, s) for f, a, s in order if done_epochs[(f.index, a.key, s)] < config.epochs]
    # the slices and distance maps, built per fold and distance mode and shared by the runs
    # (with several folds, again for each seed: the order is seed-major)
    datasets: dict[str, Any] = {}
    shares_dataset = mode_for(config).shares_dataset  # 2D: one in-memory data set per arm
    built_for: _Fold | None = None
    base = _train_config(config, arms[0], config.seeds[0], runs_path / "unused")
    # every slice along the axis is kept, so the count does not depend on the mode
    slices = [sum(int(c.images.shape[1 + config.axis % 3]) for c in f.train) for f in folds]
    fold_steps = [epoch_steps(n, config.batch_size, config.max_steps_per_epoch) for n in slices]
    steps = {fold.index: (n or 1) for fold, n in zip(folds, fold_steps, strict=True)}
    total = len(runs) * config.epochs * sum(steps.values())
    done = sum(min(e, config.epochs) * steps[key[0]] for key, e in done_epochs.items())
    run_seconds: dict[str, float] = {}
    if not report_only:
        for fold, arm, seed in todo:
            if built_for is not fold:
                datasets.clear()
                built_for = fold
            if shares_dataset and arm.distance not in datasets:
                where = "" if fold.index is None else f" of fold {fold.index}"
                yield Progress(0, 0, f"building slices and {arm.distance} distance maps{where}")
                datasets[arm.distance] = yield from data_mod.iter_build_dataset(
                    fold.train, 2, preprocess_config(base), distance=arm.distance
                )
            name = fold.run_label(arm.key, seed)
            run_dir = fold.runs_path / _run_name(arm.key, seed)
            train_config = _train_config(config, arm, seed, run_dir)
            position = done_epochs[(fold.index, arm.key, seed)]
            if (run_dir / "last.pt").exists():
                train_config = train_config.replace(resume_from=str(run_dir / "last.pt"))
                logger.info("%s: resuming at epoch %d", name, position)
            else:
                train_config = train_config.replace(overwrite=True)
                logger.info("%s: starting", name)
            tic = time.perf_counter()
            dataset = datasets.get(arm.distance)  # None: the run reads the cache
            for event in train(train_config, fold.train, val_cases=fold.val, dataset=dataset):
                if isinstance(event, StepEvent):
                    done += 1
                    yield Progress(
                        done,
                        total,
                        f"{name} epoch {event.epoch + 1}/{config.epochs} loss {event.loss:.4f}",
                    )
                elif isinstance(event, EpochEvent):
                    logger.info(
                        "%s epoch %d/%d: loss %.4f (alpha %.3f), val DSC %.4f, HD %.1f mm%s",
                        name,
                        event.epoch + 1,
                        config.epochs,
                        event.train_loss,
                        event.w_region,
                        event.val_dice,
                        event.val_hd,
                        " *best*" if event.is_best else "",
                    )
                elif isinstance(event, DoneEvent) and event.stopped:
                    logger.warning("%s stopped: %s", name, event.reason)
            run_seconds[name] = time.perf_counter() - tic
            done_epochs[(fold.index, arm.key, seed)] = _run_position(run_dir) or 0
        datasets.clear()

    # evaluation of the finished runs on the test cases (and the held-out site)
    per_case: list[dict[str, Any]] = []
    per_run: list[dict[str, Any]] = []
    per_fold: list[dict[str, Any]] = []
    per_run_held: list[dict[str, Any]] = []
    histories: dict[str, dict[Any, list[dict[str, float]]]] = {}
    finished = [
        (a, s)
        for a, s in runs
        if all(done_epochs[(f.index, a.key, s)] >= config.epochs for f in folds)
    ]
    eval_seconds = 0.0
    for i, (arm, seed) in enumerate(finished):
        name = _run_name(arm.key, seed)
        yield Progress(i, len(finished), f"evaluating {name} on {len(test_cases)} test cases")
        rows: list[dict[str, Any]] = []
        held_rows: list[dict[str, Any]] = []
        bests: list[dict[str, float]] = []
        seconds = 0.0
        for fold in folds:
            run_dir = fold.runs_path / name
            tic = time.perf_counter()
            fold_rows = _evaluate_run(
                run_dir,
                fold.test,
                config.eval_batch_size,
                config.device,
                bins,
                f"test_metrics{suffix}.csv",
                checkpoint_name,
                predictions_dir=None if fold.index is None else run_dir / "test",
            )
            held_rows += _evaluate_run(
                run_dir,
                held_out,
                config.eval_batch_size,
                config.device,
                bins,
                f"heldout_{config.held_out_site}_metrics{suffix}.csv",
            )
            eval_seconds += time.perf_counter() - tic
            history = _read_history(run_dir)
            if checkpoint_name == "last.pt":
                best = history[-1] if history else {}
            else:
                best = max(history, key=lambda h: h.get("val_dice", -1.0)) if history else {}
            bests.append(best)
            run_train_seconds = float(sum(h.get("seconds", 0.0) for h in history))
            seconds += run_train_seconds
            if fold.index is None:
                histories.setdefault(arm.key, {})[seed] = history
                rows += fold_rows
                continue
            histories.setdefault(arm.key, {})[(fold.index, seed)] = history
            rows += [{"fold": fold.index, **r} for r in fold_rows]
            per_fold.append(
                {
                    "fold": fold.index,
                    "arm": arm.key,
                    "seed": seed,
                    "test_cases": " ".join(str(c.case_id) for c in fold.test),
                    "best_epoch": int(best.get("epoch", 0)),
                    "best_val_dice": best.get("val_dice", math.nan),
                    "train_seconds": run_train_seconds,
                    **_run_figures(fold_rows, fold.test),
                }
            )
        for r in rows:
            per_case.append({"set": "test", "arm": arm.key, "seed": seed, **r})
        for r in held_rows:
            per_case.append({"set": "held-out site", "arm": arm.key, "seed": seed, **r})
        if len(folds) == 1:
            best_epoch: float = int(bests[0].get("epoch", 0))
            best_val = bests[0].get("val_dice", math.nan)
        else:  # means over the folds
            best_epoch = float(np.mean([int(b.get("epoch", 0)) for b in bests]))
            best_val = float(np.mean([b.get("val_dice", math.nan) for b in bests]))
        common = {
            "arm": arm.key,
            "seed": seed,
            "best_epoch": best_epoch,  # counted from 1 (metrics.csv)
            "best_val_dice": best_val,
            "train_seconds": seconds,
        }
        per_run.append({**common, **_run_figures(rows, test_cases)})
        if held_rows:
            per_run_held.append({**common, **_run_figures(held_rows, held_out)})
    complete = len(finished) == len(runs)
    summary = _summarise(arms, per_run)
    summary_held = _summarise(arms, per_run_held) if per_run_held else []
    labels = {a.key: a.label for a in ARMS}
    ran = {a.key for a, _ in finished}
    stats_md = []
    for set_name, heading_suffix in (("test", "test cases"), ("held-out site", "held-out site")):
        rows_set = [r for r in per_case if r["set"] == set_name]
        if not rows_set:
            continue
        for a, b, heading in COMPARISONS:
            if a in ran and b in ran:
                comparisons = compare_arms(rows_set, a, b, seed=0)
                stats_md.append(
                    comparisons_markdown(comparisons, labels, f"{heading} ({heading_suffix})")
                )
    calibration = _calibration(summary, config)
    figure_slice = None
    if "gdl" in ran and test_cases:
        yield Progress(len(finished), len(finished), "drawing the test-slice figure")
        shown = [a for a in arms if a.key in ran]
        if config.folds is None:
            figure_slice = _plot_test_slice(
                out / "test_slice.png", runs_path, shown, config, test_cases
            )
        else:  # the case the pooled rule picks, by the models of the fold that tested it
            case = _figure_case(test_cases)
            fold = next(f for f in folds if any(c is case for c in f.test))
            figure_slice = _plot_test_slice(
                out / "test_slice.png", fold.runs_path, shown, config, [case], checkpoint_name
            )
    if config.folds is None:
        split: dict[str, Any] = {
            "train": [str(c.case_id) for c in folds[0].train],
            "validation": [str(c.case_id) for c in folds[0].val],
            "test": [str(c.case_id) for c in folds[0].test],
            "held_out_site": [str(c.case_id) for c in held_out],
        }
        train_slices: Any = slices[0]
        steps_per_epoch: Any = fold_steps[0]
    else:
        split = {
            "folds": [
                {
                    "fold": f.index,
                    "train": [str(c.case_id) for c in f.train],
                    "validation": [str(c.case_id) for c in f.val],
                    "test": [str(c.case_id) for c in f.test],
                }
                for f in folds
            ],
            "held_out_site": [],
        }
        train_slices, steps_per_epoch = slices, fold_steps
    files = _write_outputs(
        config,
        out,
        arms,
        summary,
        per_case,
        per_run,
        histories,
        complete=complete,
        summary_held=summary_held,
        per_run_held=per_run_held,
        per_fold=per_fold,
        stats_md="\n".join(stats_md),
        calibration=calibration,
        extra={
            "command": command,
            "versions": _versions(library_versions()),
            "split": split,
            "held_out_site": config.held_out_site,
            "sites": sites,
            "train_slices": train_slices,
            "steps_per_epoch": steps_per_epoch,
            **({} if config.folds is None else {"tested_checkpoint": checkpoint_name}),
            "schedules": {a.key: arm_schedule(a, config.epochs, config.alpha_floor) for a in arms},
            "distance": {a.key: a.distance for a in arms},
            "size_bins_voxels": [list(b) for b in bins],
            "calibration": calibration,
            "runs_finished": [f.run_label(a.key, s) for a, s in finished for f in folds],
            "runs_missing": [
                f.run_label(a.key, s)
                for a, s in runs
                for f in folds
                if done_epochs[(f.index, a.key, s)] < config.epochs
            ],
            "train_seconds_this_invocation": run_seconds,
            "eval_seconds_this_invocation": eval_seconds,
            "wall_seconds_this_invocation": time.time() - started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    if figure_slice is not None:
        files["test_slice_figure"] = str(figure_slice)
    yield Progress(len(finished), len(finished), "done")
    return StudyResult(summary, per_case, files, complete, summary_held, calibration)


def run_study(
    config: StudyConfig,
    callback: Callable[[Progress], None] | None = None,
    **kwargs: Any,
) -> StudyResult:
    """:func:`iter_study` run to its end."""
    return run_to_end(iter_study(config, **kwargs), callback)


# ---------------------------------------------------------------------------
# outputs


def _versions(base: Mapping[str, str]) -> dict[str, str]:
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


def _summarise(
    arms: Sequence[StudyArm], per_run: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
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


def _calibration(summary: Sequence[Mapping[str, Any]], config: StudyConfig) -> dict[str, Any]:
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


def _figure_case(test_cases: Sequence[Any]) -> Any:
    """The test case of median lesion volume (ties by name), the case of the slice figure."""
    loads = sorted(test_cases, key=lambda c: (int((c.labels > 0).sum()), str(c.case_id)))
    return loads[(len(loads) - 1) // 2]


def _plot_test_slice(
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
    case = _figure_case(test_cases)
    axis = config.axis % 3
    other = tuple(a for a in range(3) if a != axis)
    per_slice = (case.labels > 0).sum(axis=other)
    index = int(np.argmax(per_slice))
    take = lambda v: np.take(v, index, axis=axis)  # noqa: E731
    preds: dict[str, np.ndarray] = {}
    for key in keys:
        for seed in config.seeds:
            best = runs_path / _run_name(key, seed) / checkpoint_name
            if best.exists():
                model, checkpoint = load_checkpoint(best)
                _, pred = predict_volume(
                    (model, checkpoint),
                    case.images,
                    case.spacing,
                    batch_size=config.eval_batch_size,
                    device=config.device,
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


def _write_outputs(
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
    case_cols = ["arm", "seed", "case", *case_metric_columns(bins)]
    if config.folds is not None:
        case_cols.insert(0, "fold")
    if any("set" in r and r["set"] != "test" for r in per_case):
        case_cols.insert(0, "set")
    _write_csv(files["per_case_csv"], per_case, case_cols)
    _plot_curves(files["figure"], arms, histories, config.epochs)
    record = {"config": config.to_dict(), "complete": complete, **extra}
    files["config_json"].write_text(json.dumps(record, indent=2, default=str) + "\n")
    return {k: str(v) for k, v in files.items()}


# ---------------------------------------------------------------------------
# command line (registered by napari_boundary_seg.cli)


def add_study_parser(sub: Any, drive: Callable[..., Any]) -> None:
    """Add the ``study`` subcommand to an argparse subparsers object.

    ``drive(generator, desc, unit)`` runs a ``Progress`` generator with a
    progress bar and returns its value (the CLI's tqdm driver).
    """
    import argparse

    defaults = StudyConfig(data=".", out=".")
    p = sub.add_parser(
        "study",
        help="loss study: GDL vs GDL+BL (two alpha schedules) vs BL alone vs CE, several seeds",
        description="Train the same UNet with every loss and seed on one patient-wise "
        "train/validation/test split and budget, evaluate each best checkpoint on the "
        "held-out test cases in 3D (DSC, HD, HD95, ASSD, AVD, lesion recall/F1, small-lesion "
        "recall), and write results.md/.csv (mean ± std over seeds), per_case.csv, "
        "per_run.csv, validation_curves.png and study.json to --out. Each run has its own "
        "folder (best.pt, last.pt, metrics.csv): rerunning skips finished runs and resumes "
        "unfinished ones. With --folds K (or loo), every arm and seed runs in each fold of a "
        "cross-validation by patient and the test figures of all folds are pooled.",
    )
    p.add_argument("--data", required=True, type=Path, help="dataset folder (any layout)")
    p.add_argument("--out", required=True, type=Path, help="results folder (created if missing)")
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="folder of the per-run folders (default OUT/runs)",
    )
    p.add_argument(
        "--synth",
        type=int,
        default=None,
        metavar="N",
        help="if --data does not exist, write N cases of the built-in benchmark there first",
    )
    p.add_argument(
        "--synth-seed", type=int, default=0, help="seed of the generated benchmark (default 0)"
    )
    p.add_argument(
        "--synth-shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="grid of the generated benchmark (default: the generator's, 96 112 96)",
    )
    p.add_argument(
        "--synth-spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm of the generated benchmark (default: the generator's, 2 2 2)",
    )
    p.add_argument(
        "--arms",
        nargs="+",
        default=list(defaults.arms),
        choices=[a.key for a in ARMS],
        help=f"losses to compare (default: {' '.join(defaults.arms)}; gdl-bl-paper-2d is the "
        "ablation: GDL+BL, paper α, φ per 2D slice)",
    )
    p.add_argument(
        "--synth-preset",
        choices=PRESETS,
        default="easy",
        help="generator preset of the benchmark --synth writes (default easy; wmh: the "
        "harder WMH-2017-like preset, grids from its sites)",
    )
    p.add_argument(
        "--held-out-site",
        default=None,
        metavar="SITE",
        help="keep this site's cases (dataset.json) out of training, validation and test; "
        "report them as a separate test set",
    )
    p.add_argument(
        "--small-voxels",
        type=float,
        default=defaults.small_voxels,
        help=f"lesions of at most this many voxels are small (default {defaults.small_voxels:g})",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=list(defaults.seeds), help="seeds (default 0 1)"
    )
    p.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"epochs (default {defaults.epochs})"
    )
    p.add_argument(
        "--steps-per-epoch",
        type=int,
        default=defaults.max_steps_per_epoch,
        help=f"cap on steps per epoch; 0: every slice once (default {defaults.max_steps_per_epoch})",
    )
    p.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="batch size (default 8)"
    )
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam lr (default 1e-3)")
    p.add_argument(
        "--lr-patience",
        type=int,
        default=defaults.lr_patience,
        help="epochs without validation improvement before the lr is halved (default 20)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=defaults.slice_size,
        help=f"slice size (default {defaults.slice_size}; the paper: 256, fine on a GPU)",
    )
    p.add_argument(
        "--depth", type=int, default=defaults.depth, help=f"UNet levels (default {defaults.depth})"
    )
    p.add_argument(
        "--base-channels",
        type=int,
        default=defaults.base_channels,
        help=f"UNet first-level width (default {defaults.base_channels})",
    )
    p.add_argument(
        "--axis", type=int, default=defaults.axis, help="slicing axis (default 2, axial)"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help=f"fraction of cases held out for testing (default {defaults.test_fraction})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help=f"fraction of cases for validation (default {defaults.val_fraction})",
    )
    p.add_argument(
        "--split-seed", type=int, default=defaults.split_seed, help="seed of the split (default 0)"
    )
    p.add_argument(
        "--folds",
        default=None,
        metavar="K",
        help="cross-validation by patient instead of one split: K folds (an integer >= 2), "
        f"or {LEAVE_ONE_OUT} (leave one patient out); fold k tests the k-th patient group "
        "and trains on the others, --val-fraction of them validating (0: none, last.pt is "
        "tested; --test-fraction is not used); every arm and seed runs in each fold "
        "(RUNS/fold_k/ARM-seedS/, test predictions in its test/ as NIfTI on the scan's grid), "
        "the tables and statistics pool the folds' test cases (each patient once per arm and "
        "seed) and per_fold.csv keeps each fold's figures; finished runs are not rerun",
    )
    p.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=defaults.dims,
        help="2: slices, the paper (default); 3: 3D patches of --patch-size (a GPU's job)",
    )
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("D0", "D1", "D2"),
        help="3D patch in voxels, numpy axis order (default: the trainer's, 96 96 32)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: evaluate and report the finished runs (marked partial if some "
        "are missing)",
    )

    def handler(args: argparse.Namespace) -> int:
        import shlex
        import sys

        folds = _folds_argument(args.folds, args.data, args.synth)
        config = StudyConfig(
            data=str(args.data),
            out=str(args.out),
            runs_dir=None if args.runs_dir is None else str(args.runs_dir),
            arms=tuple(args.arms),
            seeds=tuple(args.seeds),
            epochs=args.epochs,
            max_steps_per_epoch=args.steps_per_epoch or None,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_patience=args.lr_patience,
            slice_size=args.size,
            depth=args.depth,
            base_channels=args.base_channels,
            axis=args.axis,
            test_fraction=args.test_fraction,
            val_fraction=args.val_fraction,
            split_seed=args.split_seed,
            device=args.device,
            synth_cases=args.synth,
            synth_seed=args.synth_seed,
            synth_shape=None if args.synth_shape is None else tuple(args.synth_shape),
            synth_spacing=None if args.synth_spacing is None else tuple(args.synth_spacing),
            synth_preset=args.synth_preset,
            held_out_site=args.held_out_site,
            small_voxels=args.small_voxels,
            dims=args.dims,
            patch_size=None if args.patch_size is None else tuple(args.patch_size),
            folds=folds,
        )
        command = " ".join(shlex.quote(a) for a in ["napari-boundary-seg", *sys.argv[1:]])
        result = drive(
            iter_study(config, report_only=args.report_only, command=command), "study", "step"
        )
        print(Path(result.files["table_md"]).read_text(), end="")  # calibration included
        for role, path in result.files.items():
            print(f"{role}: {path}")
        if not result.complete:
            print("PARTIAL: some runs have not finished (rerun the command to continue them)")
        return 0

    p.set_defaults(func=handler)


def _folds_argument(text: str | None, data: Path, synth: int | None) -> int | str | None:
    """``--folds`` checked before anything is written: an integer >= 2 or ``loo``,
    no more folds than the patients of ``data`` (or the ``synth`` cases it will get)."""
    if text is None:
        return None
    if text == LEAVE_ONE_OUT:
        folds: int | str = text
    else:
        try:
            folds = int(text)
        except ValueError:
            raise ValueError(
                f"--folds takes an integer >= 2 or {LEAVE_ONE_OUT}, got {text!r}"
            ) from None
        if folds < 2:
            raise ValueError(f"--folds must be at least 2, got {folds}")
    if data.is_dir():
        from napari_boundary_seg.core.data import find_cases

        n_patients = len({str(c.case_id) for c in find_cases(data)})
    elif synth is not None:
        n_patients = synth
    else:
        return folds  # the study names the missing folder
    if folds != LEAVE_ONE_OUT and int(folds) > n_patients:
        raise ValueError(
            f"--folds {folds} needs at least {folds} patients, {data} has {n_patients}"
        )
    if folds == LEAVE_ONE_OUT and n_patients < 2:
        raise ValueError(
            f"--folds {LEAVE_ONE_OUT} needs at least 2 patients, {data} has {n_patients}"
        )
    return folds
