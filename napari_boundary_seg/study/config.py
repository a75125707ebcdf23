"""The loss study's settings: its arms, :class:`StudyConfig` and the config of each run.

A study is a :class:`~napari_boundary_seg.core.config.TrainConfig` (``train``,
default :data:`STUDY_TRAIN`) trained once per arm and seed, plus the study's own
fields (arms, seeds, test split, held-out site, folds, generated benchmark).
Every field is a declared setting: the ``study`` command builds its options from
``settings(StudyConfig)`` and :func:`study_train_settings`. See ``docs/DESIGN.md``,
"The config".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_boundary_seg.core.config import LossKind, TrainConfig
from napari_boundary_seg.core.folds import LEAVE_ONE_OUT
from napari_boundary_seg.core.settings import Setting, check_settings, setting, settings
from napari_boundary_seg.core.synthetic import PRESETS
from napari_boundary_seg.core.validate import check_int

__all__ = [
    "ARMS",
    "CALIBRATION_BAR",
    "COMPARISONS",
    "MAIN_ARMS",
    "BASIN_DSC",
    "CONSTANT_ALPHA",
    "REGIME_ARMS",
    "RUN_FIELDS",
    "SIZE_BINS_VOXELS",
    "STUDY_TRAIN",
    "TABLE_METRICS",
    "StudyArm",
    "StudyConfig",
    "arm_schedule",
    "run_name",
    "size_bins",
    "study_train_settings",
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
    phi_units, empty_slices
        The units rule and the empty-slice rule of φ (``TrainConfig.phi_units``,
        ``TrainConfig.empty_slice_phi``).
    """

    key: str
    label: str
    loss: LossKind
    schedule: str | None = None
    distance: str = "3d"
    phi_units: str = "mm"
    empty_slices: str = "distance"

    @property
    def phi(self) -> tuple[str, str, str]:
        """``(distance, phi_units, empty_slices)``: arms with the same φ share a data set."""
        return (self.distance, self.phi_units, self.empty_slices)


ARMS: tuple[StudyArm, ...] = (
    StudyArm("gdl", "GDL", LossKind.GDL),
    StudyArm("gdl-bl-paper", "GDL+BL (paper α)", LossKind.GDL_BL, "paper"),
    StudyArm("gdl-bl-refcode", "GDL+BL (reference-code α)", LossKind.GDL_BL, "reference-code"),
    StudyArm("bl", "BL alone", LossKind.BL),
    StudyArm("ce", "CE", LossKind.CE),
    StudyArm("gdl-bl-paper-2d", "GDL+BL (paper α, 2D φ)", LossKind.GDL_BL, "paper", "2d"),
    # the regimes map (opt-in): how the boundary term enters, φ's units, a peer arm
    StudyArm("gdl-bl-warm", "GDL+BL (warm start)", LossKind.GDL_BL, "warm-start"),
    StudyArm("gdl-bl-hold", "GDL+BL (α = 1 until out of the basin)", LossKind.GDL_BL, "basin-hold"),
    StudyArm("gdl-bl-const", "GDL+BL (constant α = 0.9)", LossKind.GDL_BL, "constant"),
    StudyArm(
        "gdl-bl-paper-vox",
        "GDL+BL (paper α, φ in voxels)",
        LossKind.GDL_BL,
        "paper",
        "3d",
        "voxels",
    ),
    StudyArm(
        "gdl-bl-paper-clip",
        "GDL+BL (paper α, φ clipped)",
        LossKind.GDL_BL,
        "paper",
        "3d",
        "clipped",
    ),
    StudyArm(
        "gdl-bl-paper-zero",
        "GDL+BL (paper α, φ 0 on empty slices)",
        LossKind.GDL_BL,
        "paper",
        "3d",
        "mm",
        "zero",
    ),
    StudyArm("gdl-monai-bl", "GDL+MONAI BL (paper α)", LossKind.GDL_MONAI_BL, "paper"),
)
"""The study's arms, in table order; the 2D-φ ablation and the regimes map's arms
(:data:`REGIME_ARMS`) are not run by default."""

REGIME_ARMS: tuple[str, ...] = (
    "gdl",
    "gdl-bl-paper",
    "gdl-bl-refcode",
    "gdl-bl-warm",
    "gdl-bl-hold",
    "gdl-bl-const",
    "gdl-bl-paper-vox",
    "gdl-bl-paper-clip",
    "gdl-bl-paper-zero",
    "gdl-monai-bl",
)
"""The arms of the regimes map: GDL and every way of adding a boundary term."""

CONSTANT_ALPHA = 0.9
"""α of the ``gdl-bl-const`` arm: a small constant boundary weight, 0.1."""

BASIN_DSC = 0.1
"""A run whose validation DSC is below this is in the empty-prediction basin (the
``gdl-bl-hold`` arm's threshold and the basin figure's rule)."""

MAIN_ARMS: tuple[str, ...] = ("gdl", "gdl-bl-paper", "gdl-bl-refcode", "bl", "ce")
"""The default arms: the paper's comparison (the ablation arm is opt-in)."""

COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("gdl", "gdl-bl-paper", "GDL+BL vs GDL"),
    ("gdl", "gdl-bl-refcode", "GDL+BL vs GDL"),
    ("gdl-bl-paper", "gdl-bl-paper-2d", "Ablation, φ per 2D slice vs 3D φ with spacing"),
    *(
        ("gdl", key, "GDL+BL vs GDL")
        for key in REGIME_ARMS
        if key not in ("gdl", "gdl-bl-paper", "gdl-bl-refcode")
    ),
    ("gdl-bl-paper", "gdl-monai-bl", "Peer arm, MONAI's BoundaryLoss vs this project's φ"),
)
"""Paired comparisons ``(a, b, heading)`` reported as ``b - a`` when both arms ran."""

CALIBRATION_BAR: Mapping[str, tuple[float, float]] = {
    "dice": (0.60, 0.82),
    "lesion_recall_small": (-math.inf, 0.8),
}
"""The wmh preset's calibration bar for GDL on the test cases: DSC in [0.60, 0.82],
recall of small lesions (<= ``small_voxels``) below 0.8."""

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


def arm_schedule(arm: StudyArm, epochs: int, floor: float = 0.01) -> dict[str, Any]:
    """The alpha schedule of an arm, rescaled so alpha reaches its floor at the last epoch.

    The paper: ``step = 0.01`` per epoch over 100 epochs, ``alpha(99) = 0.01``.
    Here ``step = (1 - floor) / (epochs - 1)`` (``1 - floor`` for one epoch).
    The reference-code and the basin-hold schedules take the same step (the hold
    at :data:`BASIN_DSC`); the warm start waits ``max(2, epochs // 8)`` epochs
    without a better validation DSC and reaches the floor ``epochs // 2`` epochs
    after its switch; the constant arm is :data:`CONSTANT_ALPHA`.

    Returns
    -------
    dict
        A schedule dict for :class:`~napari_boundary_seg.core.train.TrainConfig`
        (the paper schedule for arms that do not use one; it is ignored there).
    """
    step = (1.0 - floor) / max(epochs - 1, 1)
    if arm.schedule == "reference-code":
        return {"kind": "reference-code", "step": step, "region_floor": 0.1, "boundary_start": 0.01}
    if arm.schedule == "warm-start":  # the switch comes late: the floor within half the budget
        half = max(epochs // 2, 1)
        patience = max(2, epochs // 8)
        return {
            "kind": "warm-start",
            "patience": patience,
            "step": (1.0 - floor) / half,
            "floor": floor,
        }
    if arm.schedule == "basin-hold":
        return {"kind": "basin-hold", "threshold": BASIN_DSC, "step": step, "floor": floor}
    if arm.schedule == "constant":
        return {"kind": "constant", "alpha": CONSTANT_ALPHA}
    return {"kind": "paper", "start": 1.0, "step": step, "floor": floor}


def run_name(arm: str, seed: int) -> str:
    """The folder of the run of ``arm`` with ``seed``."""
    return f"{arm}-seed{seed}"


STUDY_TRAIN = TrainConfig(
    epochs=40,
    max_steps_per_epoch=30,
    steps_per_epoch=None,  # 3D: one tiling, capped as above (the study's epochs)
    slice_size=128,
    base_channels=8,
    axis=2,
    val_fraction=0.1,
    split_seed=0,
    # the study keeps the paper's recipe on its generated cases (stored order,
    # min-max, no resampling or cropping), as its committed results were run
    normalize="minmax",
    canonical=False,
    slice_spacing=None,
    crop_to_head=False,
)
"""The :class:`~napari_boundary_seg.core.config.TrainConfig` a study's runs start
from: a 40-epoch budget of 30 steps, 128² slices, a UNet of width 8 on axial
slices, the paper's intensity recipe. Each run sets its own
:data:`RUN_FIELDS`."""

RUN_FIELDS = (
    "data",
    "out_dir",
    "loss",
    "schedule",
    "distance",
    "phi_units",
    "empty_slice_phi",
    "seed",
    "cache_dir",
)
"""The ``TrainConfig`` fields the study sets per run (from the arm, the seed and
the folders); the others are the study's ``train``. ``resume_from``,
``init_checkpoint`` and ``overwrite`` are the study's business too."""

_NOT_STUDY = (*RUN_FIELDS, "resume_from", "init_checkpoint", "overwrite")


def study_train_settings() -> tuple[Setting, ...]:
    """The ``TrainConfig`` settings a study takes (all but :data:`RUN_FIELDS` and the
    resume, fine-tune and overwrite ones), with the study's defaults."""
    specs = settings(TrainConfig)
    defaults = STUDY_TRAIN.to_dict()
    return tuple(
        dataclasses.replace(s, default=getattr(STUDY_TRAIN, s.name)) if s.name in defaults else s
        for s in specs
        if s.name not in _NOT_STUDY
    )


@dataclass(frozen=True, init=False)
class StudyConfig:
    """Settings of a loss study: the study's own fields and the ``train`` config of
    its runs (JSON round trip with :meth:`to_dict` / :meth:`from_dict`).

    ``StudyConfig(data, out, train=..., **fields)``: ``fields`` are the study's
    own fields or ``TrainConfig`` fields (``epochs=1``, ``dims=3``), which replace
    those of ``train`` (default :data:`STUDY_TRAIN`). Each run trains
    ``train`` with the arm's loss, schedule and distance mode, its seed and its
    folder (:meth:`run_config`). Validation (model selection) is
    ``train.val_fraction`` of the cases; with ``folds``, of each fold's training
    patients, and ``0`` there means no validation (``last.pt`` is tested).
    ``train.split_seed`` seeds the split. With ``train.dims = 3`` the runs train
    3D patches from one cache in ``<runs_dir>/cache``, shared by the runs; the
    2D-φ ablation is a 2D arm.
    """

    data: str = setting(
        help="dataset folder (any layout); written first by --synth when missing",
        section="data",
        kind="path",
        metavar="DIR",
    )
    out: str = setting(
        help="results folder (created if missing)", section="run", kind="path", metavar="DIR"
    )
    runs_dir: str | None = setting(
        None, help="folder of the per-run folders (default OUT/runs)", section="run", kind="path"
    )
    arms: tuple[str, ...] = setting(
        MAIN_ARMS,
        help="losses to compare (gdl-bl-paper-2d is the ablation: GDL+BL, paper α, φ per 2D slice)",
        nargs="+",
        choices=tuple(a.key for a in ARMS),
        section="schedule",
    )
    seeds: tuple[int, ...] = setting(
        (0, 1), help="training seeds; the split is fixed", nargs="+", section="run"
    )
    test_fraction: float = setting(
        0.25,
        help="fraction of cases held out for testing",
        bounds=(0, 1),
        open=(True, True),
        section="data",
    )
    alpha_floor: float = setting(
        0.01,
        help="floor of the paper schedule (0.01 in the paper)",
        bounds=(0, 1),
        open=(True, True),
        flag="",
        section="schedule",
    )
    synth_cases: int | None = setting(
        None,
        help="if --data does not exist, write N cases of the built-in benchmark there first",
        flag="--synth",
        bounds=(3, None),
        metavar="N",
        section="data",
    )
    synth_seed: int = setting(0, help="seed of the generated benchmark", section="data")
    synth_shape: tuple[int, int, int] | None = setting(
        None,
        help="grid of the generated benchmark (default: the generator's, 96 112 96)",
        nargs=3,
        metavar=("X", "Y", "Z"),
        section="data",
    )
    synth_spacing: tuple[float, float, float] | None = setting(
        None,
        help="voxel size in mm of the generated benchmark (default: the generator's, 2 2 2)",
        nargs=3,
        metavar=("SX", "SY", "SZ"),
        section="data",
    )
    eval_batch_size: int = setting(
        16, help="slices per forward pass at test time", bounds=(1, None), flag="", section="run"
    )
    synth_preset: str = setting(
        "easy",
        help="generator preset of the benchmark --synth writes (default easy; wmh: the "
        "harder WMH-2017-like preset, grids from its sites)",
        choices=PRESETS,
        section="data",
    )
    held_out_site: str | None = setting(
        None,
        help="keep this site's cases (dataset.json) out of training, validation and test; "
        "report them as a separate test set",
        metavar="SITE",
        section="data",
    )
    small_voxels: float = setting(
        8.0,
        help="lesions of at most this many voxels are small",
        bounds=(0, 64),
        open=(True, True),
        section="data",
    )
    folds: int | str | None = setting(
        None,
        help="cross-validation by patient instead of one split: K folds (an integer >= 2), "
        f"or {LEAVE_ONE_OUT} (leave one patient out); fold k tests the k-th patient group "
        "and trains on the others, --val-fraction of them validating (0: none, last.pt is "
        "tested; --test-fraction is not used); every arm and seed runs in each fold "
        "(RUNS/fold_k/ARM-seedS/, test predictions in its test/ as NIfTI on the scan's grid), "
        "the tables and statistics pool the folds' test cases (each patient once per arm and "
        "seed) and per_fold.csv keeps each fold's figures; finished runs are not rerun",
        metavar="K",
        section="data",
    )
    loads: tuple[float, ...] | None = setting(
        None,
        help="the regimes map's lesion-load axis: write the generated wmh preset once per "
        "load (each case's lesions this percentage of its brain, within a factor 1.25) into "
        "DATA/load_<L>, run the study on each (OUT/load_<L>, RUNS/load_<L>) and write the "
        "map across loads to OUT (regimes.md, regimes.csv, the figures)",
        nargs="+",
        metavar="PERCENT",
        section="data",
    )
    synth_load: float | None = setting(
        None,
        help="the lesion load of the generated wmh cases, percent of the brain (one load)",
        flag="",
        section="data",
    )
    train: TrainConfig = dataclasses.field(default=STUDY_TRAIN)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(self, data: Any, out: Any, *, train: TrainConfig | None = None, **fields: Any):
        own = {f.name for f in dataclasses.fields(self)} - {"data", "out", "train"}
        train_names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(fields) - own - train_names)
        per_run = sorted(set(fields) & set(_NOT_STUDY))
        if unknown or per_run:
            raise TypeError(
                f"StudyConfig takes no {unknown or per_run}: the study's fields are "
                f"{sorted(own)} and the TrainConfig fields but {sorted(_NOT_STUDY)}"
            )
        changes = {k: v for k, v in fields.items() if k in train_names}
        train = (train if train is not None else STUDY_TRAIN).replace(**changes)
        for f in dataclasses.fields(self):
            if f.name in ("data", "out"):
                value = data if f.name == "data" else out
            elif f.name == "train":
                value = train
            elif f.name in fields:
                value = fields[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        known = {a.key for a in ARMS}
        arms = tuple(str(a) for a in self.arms)
        unknown = [a for a in arms if a not in known]
        if unknown or not arms:
            raise ValueError(f"unknown study arms {unknown or arms}; choose from {sorted(known)}")
        if len(set(arms)) != len(arms):
            raise ValueError(f"study arms repeat: {arms}")
        set_(self, "arms", arms)
        message = f"seeds must be a non-empty sequence of integers, got {self.seeds!r}"
        try:
            seeds = tuple(check_int(s, "seeds") for s in self.seeds)
        except TypeError:
            raise ValueError(message) from None
        if not seeds:
            raise ValueError(message)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        set_(self, "seeds", seeds)
        check_settings(self, prefix="")
        train = self.train
        check_int(train.epochs, "epochs", 1)
        if self.folds is not None and self.folds != LEAVE_ONE_OUT:
            try:
                set_(self, "folds", check_int(self.folds, "folds", 2))
            except (TypeError, ValueError):
                raise ValueError(
                    f"folds must be an integer >= 2 or '{LEAVE_ONE_OUT}', got {self.folds!r}"
                ) from None
        if self.folds is None and train.val_fraction == 0:
            raise ValueError(f"val_fraction must be in (0, 1), got {train.val_fraction!r}")
        if self.folds is not None and self.held_out_site is not None:
            raise ValueError("a held-out site and folds cannot be combined: choose one test design")
        if self.folds is None and self.test_fraction + train.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be below 1, got "
                f"{self.test_fraction} + {train.val_fraction}"
            )
        if self.synth_preset == "wmh" and (
            self.synth_shape is not None or self.synth_spacing is not None
        ):
            raise ValueError(
                "synth_shape/synth_spacing apply to the easy preset; the wmh preset's "
                "grids come from its sites"
            )
        for name in ("synth_shape", "synth_spacing"):
            if getattr(self, name) is not None:
                set_(self, name, tuple(getattr(self, name)))
        if train.patch_size is not None and train.dims != 3:
            raise ValueError(
                f"patch_size takes 3 positive sizes and dims=3, got {train.patch_size!r} "
                f"with dims={train.dims}"
            )
        flat = [
            a for a in arms if next(x for x in ARMS if x.key == a).phi != ("3d", "mm", "distance")
        ]
        if train.dims == 3 and flat:
            raise ValueError(
                f"arms {flat} change φ per 2D slice (per-slice maps, units, empty slices), "
                "which a 3D study cannot train; leave them out with --dims 3"
            )
        if self.synth_load is not None and not 0 < float(self.synth_load) < 40:
            raise ValueError(f"synth_load is a percentage in (0, 40), got {self.synth_load!r}")
        if self.loads is not None:
            loads = tuple(float(v) for v in self.loads)
            if not loads or len(set(loads)) != len(loads):
                raise ValueError(f"loads must be distinct percentages, got {self.loads!r}")
            if any(not 0 < v < 40 for v in loads):
                raise ValueError(f"loads are percentages of the brain in (0, 40), got {loads}")
            if self.synth_preset != "wmh" or self.synth_cases is None:
                raise ValueError(
                    "loads need the generated wmh preset: --synth N --synth-preset wmh"
                )
            if self.held_out_site is not None or self.folds is not None:
                raise ValueError("loads take one split per load: no held-out site or folds")
            set_(self, "loads", loads)

    @property
    def runs_path(self) -> Path:
        """The folder holding one folder per run."""
        return Path(self.runs_dir) if self.runs_dir is not None else Path(self.out) / "runs"

    def run_config(self, arm: StudyArm, seed: int, run_dir: Path) -> TrainConfig:
        """The ``TrainConfig`` of one run: ``train`` with the arm's loss, schedule
        and distance mode, the seed, the run's folder and, in 3D, the shared cache."""
        from napari_boundary_seg.core.modes import mode_for

        shares_dataset = mode_for(self.train).shares_dataset
        return self.train.replace(
            data=self.data,
            out_dir=str(run_dir),
            loss=arm.loss,
            schedule=arm_schedule(arm, self.train.epochs, self.alpha_floor),
            distance=arm.distance,
            phi_units=arm.phi_units,
            empty_slice_phi=arm.empty_slices,
            seed=seed,
            # without a shared data set (3D) the volumes are prepared once into a
            # cache that every run reads
            cache_dir=None if shares_dataset else str(self.runs_path / "cache"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict, flat: the study's fields and ``train``'s (but
        :data:`RUN_FIELDS`), tuples as lists; ``folds`` only when set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "train":
                out.update({k: v for k, v in value.to_dict().items() if k not in _NOT_STUDY})
                continue
            if f.name in ("folds", "loads", "synth_load") and value is None:
                continue  # a study without them records the settings it always did
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyConfig:
        """A config from :meth:`to_dict` output (also the ``config`` of an older
        ``study.json``); a nested ``"train"`` dict is read as the train config."""
        values = dict(d)
        train = values.pop("train", None)
        if train is not None:
            values["train"] = TrainConfig.from_dict(train)
        for key in ("percentiles", "patch_size", "slice_spacing", "arms", "seeds", "loads"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)
