"""The declared configuration of training and fine-tuning, torch-free.

Every setting of a run is one field of :class:`TrainConfig` (or of
:class:`FinetuneConfig`) declared with :func:`~napari_boundary_seg.core.settings.setting`:
its default, help text, flag, bounds, step, choices and section live there and
nowhere else. :func:`settings` lists them as :class:`Setting` descriptors for the
command line, the widgets' forms and the docs; ``__post_init__`` checks them
from the same metadata (:func:`~napari_boundary_seg.core.settings.check_settings`),
and only the checks that span several fields or normalise a structured value are
code. The constants the fields take (default 3D patch, precisions, distance
modes, device names, intensity rules, slicing planes) are defined here too, and
the two rules on loss weights: :func:`loss_weights` (which weights a loss kind
applies) and :func:`boundary_only_from_start`. See ``docs/DESIGN.md``, "The config".

Importing this module imports no torch: the command line reads its options and a
widget its form without loading the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from napari_boundary_seg.core.orientation import SLICE_PLANES, check_plane
from napari_boundary_seg.core.schedule import Schedule, schedule_from_dict
from napari_boundary_seg.core.settings import (
    Setting,
    check_settings,
    form_options,
    setting,
    settings,
)
from napari_boundary_seg.core.validate import check_int, check_slice_spacing

__all__ = [
    "FLIPS_HELP",
    "DEFAULT_PATCH_SIZE",
    "DEVICE_KINDS",
    "DISTANCE_MODES",
    "EMPTY_SLICE_PHI",
    "PHI_CLIP_MM",
    "PHI_UNITS",
    "LR_DECAYS",
    "MONAI_MISSING",
    "NORMALIZE_MODES",
    "PRECISIONS",
    "SLICE_PLANES",
    "FinetuneConfig",
    "LossKind",
    "Setting",
    "TrainConfig",
    "boundary_only_from_start",
    "check_device_name",
    "check_precision",
    "form_options",
    "loss_weights",
    "monai_available",
    "parse_plane",
    "uses_schedule",
    "parse_slice_spacing",
    "setting",
    "settings",
]

DEFAULT_PATCH_SIZE = (96, 96, 32)
"""3D patch (voxels, numpy axis order) when ``TrainConfig.patch_size`` is None: it fits
the sample case (96 × 112 × 96 at 2 mm) and is nnU-Net-like."""

PRECISIONS = ("32", "bf16", "16-mixed")
"""Values of ``TrainConfig.precision`` (:mod:`napari_boundary_seg.core.precision`)."""

DISTANCE_MODES = ("3d", "2d")
"""``3d``: φ of whole volumes with their spacing, then cut; ``2d``: φ per slice."""

PHI_UNITS = ("mm", "voxels", "clipped")
"""Units of the φ the trainer uses (:func:`~napari_boundary_seg.core.distance.phi_maps`): ``mm`` (physical units with
the spacing), ``voxels`` (the spacing taken as 1, the reference code's), ``clipped``
(mm clipped to ±:data:`PHI_CLIP_MM`, divided by it: values in [-1, 1])."""

PHI_CLIP_MM = 20.0
"""The clip of ``phi_units="clipped"``, in mm (10 voxels of the 2 mm benchmark)."""

EMPTY_SLICE_PHI = ("distance", "zero")
"""φ of a 2D training slice without foreground: ``distance`` (as computed: with 3D
φ, the distance to the lesions of other slices), ``zero`` (all zeros, the reference
code's rule for slices without foreground: no boundary term there)."""

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
"""Device names understood by :func:`~napari_boundary_seg.core.device.resolve_device`
(plus ``"cuda:N"``)."""

LR_DECAYS = ("plateau", "poly")
"""Values of ``TrainConfig.lr_decay``: ``plateau`` (the lr times ``lr_factor`` after
``lr_patience`` epochs without improvement) and ``poly`` (nnU-Net's
``lr · (1 − epoch/epochs)^0.9``, falling to 0 by the last epoch)."""

NORMALIZE_MODES = ("robust", "zscore", "minmax")
"""Intensity rules, per modality: ``robust`` (within the head: its 0.5 and 99.5 %
percentiles mapped to 0 and 1, clipped; the default for real scans), ``zscore``
(within the head, clipped the same way, then nnU-Net's MRI z-score, 0 outside)
and ``minmax`` (the paper's: the volume's minimum and maximum mapped to 0 and 1)."""


class LossKind(StrEnum):
    """The training objectives the trainer offers."""

    GDL = "gdl"
    """Generalized Dice loss alone."""
    BL = "bl"
    """Boundary loss alone (weight 1); collapses to empty foreground in binary problems."""
    GDL_BL = "gdl+bl"
    """``w_region * GDL + w_boundary * BL`` with the weights of an alpha schedule."""
    CE = "ce"
    """Cross-entropy alone."""
    DICE = "dice"
    """Soft Dice loss (mean over classes) alone."""
    GDL_CE = "gdl+ce"
    """GDL + cross-entropy, weight 1 each (nnU-Net's Dice + CE compound)."""
    GDL_MONAI_BL = "gdl+monai-bl"
    """As ``gdl+bl`` with MONAI's ``BoundaryLoss`` (its φ per batch item, in voxels)
    for the boundary term: the study's peer arm; needs MONAI >= 1.6."""


def loss_weights(
    loss: LossKind | str, schedule_weights: tuple[float, float]
) -> tuple[float, float]:
    """The ``(w_region, w_boundary)`` that a loss kind applies at an epoch.

    ``gdl+bl`` (and ``gdl+monai-bl``) follows its schedule (``schedule_weights``, the schedule's value at
    the epoch); ``bl`` is the boundary loss alone, ``(0, 1)``; every other kind is
    its regional loss alone, ``(1, 0)``. The one rule of the trainer, the loss
    function, the widgets' weight plot and the study.
    """
    kind = LossKind(loss)
    if uses_schedule(kind):
        if len(schedule_weights) != 2:
            raise ValueError(f"weights must be (w_region, w_boundary), got {schedule_weights!r}")
        return float(schedule_weights[0]), float(schedule_weights[1])
    if kind is LossKind.BL:
        return 0.0, 1.0
    return 1.0, 0.0


MONAI_MISSING = (
    "loss 'gdl+monai-bl' needs MONAI >= 1.6 (its BoundaryLoss): pip install -U monai, "
    "or choose the loss 'gdl+bl'"
)
"""The message of the ``gdl+monai-bl`` loss without MONAI installed."""


def monai_available() -> bool:
    """True when MONAI's ``BoundaryLoss`` (MONAI >= 1.6) can be imported."""
    import importlib.util

    try:
        return importlib.util.find_spec("monai.losses.boundary_loss") is not None
    except ImportError:  # no monai at all
        return False


def uses_schedule(loss: LossKind | str) -> bool:
    """True for the loss kinds whose weights follow the alpha schedule
    (``gdl+bl`` and ``gdl+monai-bl``)."""
    return LossKind(loss) in (LossKind.GDL_BL, LossKind.GDL_MONAI_BL)


def boundary_only_from_start(loss: LossKind | str, schedule: Mapping[str, Any] | Schedule) -> bool:
    """True when the boundary loss is the whole objective in the first epoch.

    It collapses to an empty foreground in binary problems (Kervadec et al. 2019):
    the trainer warns, the widget shows a warning. ``schedule`` is a schedule dict
    (``{"kind": "paper", ...}``) or a :class:`~napari_boundary_seg.core.schedule.Schedule`.
    """
    if not isinstance(schedule, Schedule):
        schedule = schedule_from_dict(schedule)
    return loss_weights(loss, schedule(0))[0] == 0.0


def check_device_name(name: Any) -> None:
    """Raise ValueError unless ``name`` is one of :data:`DEVICE_KINDS` or ``"cuda:N"``."""
    if not isinstance(name, str):
        raise ValueError(f"device must be a string, got {name!r}")
    kind, _, index = name.partition(":")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {name!r}; use one of {list(DEVICE_KINDS)} or 'cuda:N'")


def check_precision(value: object) -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else ValueError naming it."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {value!r}")
    return str(value)


def _check_patch_size(value: Any, name: str) -> tuple[int, int, int]:
    try:
        patch = tuple(value)
    except TypeError:
        patch = ()
    if len(patch) != 3:
        raise ValueError(f"{name} must be 3 positive integers, got {value!r}")
    try:
        return tuple(check_int(p, name, 1) for p in patch)  # type: ignore[return-value]
    except TypeError:
        raise ValueError(f"{name} must be 3 positive integers, got {value!r}") from None


def parse_plane(text: str) -> str | int:
    """A slicing plane as typed: a name of :data:`SLICE_PLANES` or an axis number."""
    if text in SLICE_PLANES:
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not one of {', '.join(SLICE_PLANES)} or an axis 0, 1, 2"
        ) from None


def parse_slice_spacing(words: list[str]) -> str | list[float] | None:
    """``slice_spacing`` as typed: ``auto``, ``native`` (None), or one or two numbers (mm)."""
    if len(words) == 1 and words[0] in ("auto", "native"):
        return "auto" if words[0] == "auto" else None
    try:
        numbers = [float(w) for w in words]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise ValueError(
            f"--slice-spacing takes auto, native, or one or two numbers in mm, got {' '.join(words)}"
        )
    return numbers * 2 if len(numbers) == 1 else numbers


BOUNDARY_LOSS_EVIDENCE = (
    "on the regimes map it beat GDL at no lesion load (3 to 0.03 %% of the brain, 5 schedules, "
    "3 seeds) and lost on DSC at 3 and 0.6 %%, also with φ in voxels, MONAI's BoundaryLoss "
    "and 3x the steps (README, 'When does the boundary loss help?'; "
    "benchmarks/results/boundary_regimes/regimes_delta.png)"
)
"""What the regimes map says of GDL + BL against GDL, in one clause: the help
of the ``loss`` setting (the command line's ``--loss`` and the Train widget's
tooltip) quotes it."""


FLIPS_HELP = (
    "test-time mirroring: average the probabilities over the input mirrored along each "
    "in-plane axis (2D: 4 passes; 3D: every axis, 8 passes); steadier for models trained "
    "with augmentation, that many times slower"
)
"""The help of prediction's ``flips`` (``predict --flips`` and the Predict
widget's "mirror" box)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; JSON round trip with :meth:`to_dict`.

    The defaults are the paper's (Kervadec et al. 2019) but for the loss: GDL,
    which the regimes map found at least as good everywhere it measured
    (:data:`BOUNDARY_LOSS_EVIDENCE`); ``loss="gdl+bl"`` (the ``paper`` preset)
    adds the boundary loss under ``schedule``. Each field's meaning,
    flag, bounds and section are its metadata: ``settings(TrainConfig)`` lists
    them (:class:`~napari_boundary_seg.core.settings.Setting`), and
    ``napari-boundary-seg train --help`` prints them. Notes beyond one line:

    - ``data`` ``None`` when the cases are given to ``train`` in memory;
      ``out_dir`` ``None`` writes nothing (the model is in the ``DoneEvent``).
    - ``schedule`` is a dict (``{"kind": "paper"}`` and parameters, see
      :func:`~napari_boundary_seg.core.schedule.make_schedule`), used by ``gdl+bl``.
    - ``batch_size`` is per process under torchrun: the global batch is
      ``world_size × batch_size`` (:mod:`napari_boundary_seg.core.distributed`).
    - ``axis`` ``auto`` is axial, or the thick-slice axis when one spacing is
      > 3× the others; an axis 0–2 is of the canonical order (of the stored order
      when ``canonical`` is False).
    - ``slice_spacing`` ``"auto"`` is the training cases' median, recorded in the
      checkpoint; ignored when ``slice_size`` is set.
    - ``seed`` seeds the initialisation and the slice order, ``split_seed`` the
      train/validation split (``None``: ``seed``); a study varies ``seed``.
    - ``amp`` is deprecated: ``True`` is ``precision="16-mixed"`` (old configs load).
    - ``cache_dir`` ``None`` is ``<out_dir>/cache``, or a temporary folder removed
      with the run when ``out_dir`` is ``None``; unused with a prebuilt dataset.
    - ``patch_size`` ``None`` is :data:`DEFAULT_PATCH_SIZE` in 3D (the field then
      holds it); every volume must be at least as large along each axis.
    - ``augment`` ``None`` is on in 3D, off in 2D (:attr:`augment_enabled`).
    - ``steps_per_epoch`` sets the length of a 3D epoch (``None``: one tiling of
      the training volumes, the length of checkpoints that predate the setting);
      ``max_steps_per_epoch`` caps the steps of an epoch in both modes, so a 3D
      epoch is ``min(steps_per_epoch, max_steps_per_epoch)`` steps. 2D ignores
      ``steps_per_epoch``.
    """

    # data
    data: str | None = setting(
        None,
        help="data set folder (generic, WMH or ISLES layout)",
        section="data",
        kind="path",
        metavar="DIR",
    )
    out_dir: str | None = setting(
        None,
        help="run folder for best.pt, last.pt, metrics.csv",
        flag="--out",
        section="run",
        kind="path",
        metavar="DIR",
    )
    num_classes: int = setting(
        2,
        help="classes incl. background",
        bounds=(2, None),
        section="model",
        label="classes",
        same_on_resume=True,
    )
    loss: LossKind = setting(
        LossKind.GDL,
        help="training objective: gdl (the default), gdl+bl (GDL + the boundary loss under "
        "the α schedule; " + BOUNDARY_LOSS_EVIDENCE + "), bl, ce, dice, gdl+ce (GDL + "
        "cross-entropy), gdl+monai-bl",
        choices=tuple(LossKind),
        section="schedule",
        same_on_resume=True,
    )
    schedule: Mapping[str, Any] = setting(
        help="alpha schedule of gdl+bl (default paper: 1 at the first epoch, -0.01 per "
        "epoch, floor 0.01)",
        flag="",
        section="schedule",
        default_factory=lambda: {"kind": "paper"},
        same_on_resume=True,
    )
    epochs: int = setting(100, help="number of epochs", bounds=(0, None), section="schedule")
    lr: float = setting(
        1e-3,
        help="Adam learning rate",
        bounds=(0, None),
        open=(True, False),
        step=1e-4,
        section="schedule",
        label="learning rate",
        same_on_resume=True,
    )
    batch_size: int = setting(
        8,
        help="batch size of one process; under torchrun the global batch is processes × this",
        bounds=(1, None),
        section="schedule",
        same_on_resume=True,
    )
    lr_patience: int = setting(
        20,
        help="halve the lr after this many epochs without improvement",
        bounds=(1, None),
        section="schedule",
        same_on_resume=True,
    )
    lr_factor: float = setting(
        0.5,
        help="factor of the lr after the patience runs out",
        flag="",
        bounds=(0, 1),
        open=(True, True),
        step=0.05,
        section="schedule",
        same_on_resume=True,
    )
    lr_decay: str = setting(
        "plateau",
        help="how the lr falls: plateau (times lr_factor after lr_patience epochs without "
        "improvement) or poly (nnU-Net's lr·(1 − epoch/epochs)^0.9, to 0 by the last epoch, "
        "so the last epoch's model settles: for runs without validation cases)",
        choices=LR_DECAYS,
        section="schedule",
        label="lr decay",
        same_on_resume=True,
    )
    ema: float = setting(
        0.0,
        help="weight averaging: validate, save and predict with an exponential moving "
        "average of the weights, updated after every step with this decay (0.99 averages "
        "about the last 100 steps); 0 keeps the last step's weights. It smooths the "
        "step-to-step swings of small real-scan sets",
        bounds=(0, 1),
        open=(False, True),
        step=0.01,
        section="schedule",
        label="weight averaging",
        same_on_resume=True,
    )
    slice_size: int | None = setting(
        None,
        help="resize slices to this size, 0 keeps their size",
        bounds=(1, None),
        none_as=0,
        section="data",
        same_on_resume=True,
    )
    axis: int | str = setting(
        "auto",
        help="slicing plane: auto (axial, or the thick-slice axis of anisotropic scans), "
        "axial, coronal, sagittal, or an axis 0-2 of the canonical order",
        choices=(*SLICE_PLANES, 0, 1, 2),
        parse=parse_plane,
        section="data",
        label="slicing plane",
        same_on_resume=True,
    )
    scale: bool = setting(
        True,
        help="normalise each modality (False: raw intensities)",
        flag="",
        section="data",
        same_on_resume=True,
    )
    percentiles: tuple[float, float] | None = setting(
        None,
        help="robust intensity scaling between these percentiles",
        none_text="min-max",
        bounds=(0, 100),
        nargs=2,
        metavar=("LOW", "HIGH"),
        section="advanced",
        same_on_resume=True,
    )
    normalize: str = setting(
        "robust",
        help="intensities per modality: robust (the head's 0.5/99.5 %% percentiles mapped to "
        "[0, 1]; for real scans), zscore (within the head, nnU-Net's MRI rule) or minmax "
        "(the volume's minimum and maximum, the paper's)",
        choices=NORMALIZE_MODES,
        section="data",
        label="intensities",
    )
    canonical: bool = setting(
        True,
        help="reorient scans to the closest canonical (RAS) order before slicing "
        "(--no-canonical: the stored voxel order)",
        section="data",
    )
    slice_spacing: str | tuple[float, float] | None = setting(
        "auto",
        help="resample slices to this in-plane spacing: auto (the training cases' median), "
        "native (no resampling), or one or two numbers in mm",
        nargs="+",
        metavar="MM",
        parse=parse_slice_spacing,
        section="data",
    )
    crop_to_head: bool = setting(
        True,
        help="2D: crop each scan to the head (plus 4 voxels) before slicing: no slices or "
        "borders of air",
        section="data",
    )
    skip_empty_slices: bool = setting(
        False,
        help="train on slices with foreground only",
        flag="",
        section="data",
        same_on_resume=True,
    )
    distance: str = setting(
        "3d",
        help="distance maps of whole volumes or of each slice",
        choices=DISTANCE_MODES,
        section="advanced",
        same_on_resume=True,
    )
    phi_units: str = setting(
        "mm",
        help="units of φ: mm with the spacing, voxels (the reference code's), or clipped "
        "(mm clipped to ±20 and divided by 20); 2D slices",
        choices=PHI_UNITS,
        section="advanced",
        same_on_resume=True,
    )
    empty_slice_phi: str = setting(
        "distance",
        help="φ of 2D slices without foreground: distance (as computed) or zero (the "
        "reference code's: no boundary term on them)",
        choices=EMPTY_SLICE_PHI,
        section="advanced",
        same_on_resume=True,
    )
    val_fraction: float = setting(
        0.2,
        help="validation fraction of cases",
        bounds=(0, 1),
        open=(False, True),
        step=0.05,
        section="data",
        same_on_resume=True,
    )
    seed: int = setting(
        0, help="seed of initialisation and order", section="run", same_on_resume=True
    )
    split_seed: int | None = setting(
        None,
        help="seed of the train/validation split",
        none_text="--seed",
        section="run",
        same_on_resume=True,
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps", section="run")
    depth: int = setting(
        4, help="UNet levels", bounds=(1, None), section="model", same_on_resume=True
    )
    base_channels: int = setting(
        64,
        help="UNet first-level width",
        bounds=(1, None),
        section="model",
        label="width",
        same_on_resume=True,
    )
    num_workers: int = setting(
        0,
        help="DataLoader worker processes; the same batches for any number",
        bounds=(0, None),
        section="advanced",
    )
    max_steps_per_epoch: int | None = setting(
        None,
        help="cap on the steps of an epoch, 2D or 3D (quick runs); 0: no cap (2D: every "
        "slice once)",
        bounds=(1, None),
        none_as=0,
        section="schedule",
        same_on_resume=True,
    )
    steps_per_epoch: int | None = setting(
        250,
        help="3D: optimizer steps of an epoch, each on freshly drawn patches (nnU-Net's 250); "
        "0: as many as one tiling of the training volumes takes; --max-steps-per-epoch caps "
        "it; 2D ignores it (an epoch is every slice once)",
        bounds=(1, None),
        none_as=0,
        section="schedule",
        same_on_resume=True,
    )
    amp: bool = setting(
        False, help="deprecated: same as --precision 16-mixed", section="advanced", form=False
    )
    precision: str = setting(
        "32",
        help="32 (float32), bf16 (bfloat16 autocast, also on the CPU) or 16-mixed (float16 "
        "autocast + gradient scaling, CUDA/MPS); losses are float32 always",
        choices=PRECISIONS,
        section="advanced",
    )
    channels_last: bool = setting(
        False,
        help="channels-last memory format (opt-in; may speed up convolutions on a GPU)",
        section="advanced",
    )
    compile: bool = setting(
        False,
        help="train a torch.compile'd network (opt-in; the first steps compile)",
        section="advanced",
    )
    init_checkpoint: str | None = setting(
        None,
        help="fine-tune: start from this checkpoint's weights with the new data and schedule",
        section="run",
        kind="path",
    )
    resume_from: str | None = setting(
        None,
        help="continue the run saved in this checkpoint (its config; --epochs may extend it)",
        flag="--resume",
        section="run",
        kind="path",
    )
    cache_dir: str | None = setting(
        None,
        help="folder of the cache of prepared cases, read memory-mapped",
        none_text="the per-user cache shared by every run, see the cache command",
        section="advanced",
        kind="path",
    )
    overwrite: bool = setting(
        False, help="allow an --out that holds a run", section="run", form=False
    )
    dims: int = setting(
        2,
        help="2: the paper's 2D slices (default); 3: 3D patches from the memory-mapped cache",
        choices=(2, 3),
        section="data",
        label="mode",
        same_on_resume=True,
    )
    patch_size: tuple[int, ...] | None = setting(
        None,
        help="3D patch in voxels, numpy axis order",
        none_text=" ".join(map(str, DEFAULT_PATCH_SIZE)),
        bounds=(1, None),
        nargs=3,
        metavar=("X", "Y", "Z"),
        section="data",
        same_on_resume=True,
    )
    oversample: float = setting(
        1 / 3,
        help="share of 3D patches centred on foreground, 0 = uniform (default 1/3)",
        bounds=(0, 1),
        step=0.05,
        section="data",
        same_on_resume=True,
    )
    slice_oversample: float = setting(
        0.0,
        help="2D: share of each epoch's slices drawn from slices with foreground "
        "(default 0: every slice once)",
        bounds=(0, 1),
        open=(False, True),
        step=0.05,
        section="data",
    )
    augment: bool | None = setting(
        None,
        help="augmentation that keeps φ exact",
        none_text="on in 3D, off in 2D",
        section="data",
        same_on_resume=True,
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        try:
            set_(self, "loss", LossKind(self.loss))
        except ValueError as err:
            raise ValueError(
                f"TrainConfig.loss {self.loss!r} is not one of {[k.value for k in LossKind]}"
            ) from err
        if self.loss is LossKind.GDL_MONAI_BL and not monai_available():
            raise ValueError(f"TrainConfig.{MONAI_MISSING}")
        if isinstance(self.schedule, Schedule):
            set_(self, "schedule", self.schedule.to_dict())
        if not isinstance(self.schedule, Mapping):
            raise TypeError(
                f"TrainConfig.schedule must be a dict or Schedule, got {self.schedule!r}"
            )
        # normalised through the schedule module (validates kind and parameters)
        set_(self, "schedule", schedule_from_dict(self.schedule).to_dict())
        set_(self, "axis", check_plane(self.axis, "TrainConfig.axis"))
        check_settings(self)
        if self.slice_spacing is not None and self.slice_spacing != "auto":
            spacing = check_slice_spacing(self.slice_spacing, "TrainConfig.slice_spacing")
            set_(self, "slice_spacing", spacing)
        if self.percentiles is not None:
            lo_hi = tuple(float(p) for p in self.percentiles)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] < lo_hi[1] <= 100:
                raise ValueError(
                    f"TrainConfig.percentiles must be (low, high) with 0 <= low < high <= 100, "
                    f"got {self.percentiles!r}"
                )
            set_(self, "percentiles", lo_hi)
        check_device_name(self.device)
        if self.amp:  # the deprecated flag is precision 16-mixed
            if self.precision == "32":
                set_(self, "precision", "16-mixed")
            elif self.precision != "16-mixed":
                raise ValueError(
                    f"TrainConfig: amp=True means precision='16-mixed', but precision is "
                    f"{self.precision!r}; drop amp"
                )
        if self.patch_size is not None:
            set_(self, "patch_size", _check_patch_size(self.patch_size, "TrainConfig.patch_size"))
        elif self.dims == 3:
            set_(self, "patch_size", DEFAULT_PATCH_SIZE)
        if self.dims == 3 and (self.phi_units != "mm" or self.empty_slice_phi != "distance"):
            raise ValueError(
                f"TrainConfig: phi_units={self.phi_units!r} and empty_slice_phi="
                f"{self.empty_slice_phi!r} apply to 2D slices; 3D patches use φ in mm "
                "(phi_units='mm', empty_slice_phi='distance')"
            )
        if self.init_checkpoint is not None and self.resume_from is not None:
            raise ValueError(
                "TrainConfig: give init_checkpoint (fine-tune) or resume_from (resume), not both"
            )

    @property
    def augment_enabled(self) -> bool:
        """Whether augmentation runs: ``augment``, or by default on in 3D, off in 2D."""
        return self.dims == 3 if self.augment is None else bool(self.augment)

    @property
    def effective_split_seed(self) -> int:
        """The seed of the train/validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (enums as their values, tuples as lists)."""
        return _to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise ValueError."""
        return _from_dict(cls, d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _to_dict(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = json.loads(json.dumps(dict(value)))
        out[f.name] = value
    return out


def _from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    name = cls.__name__
    if not isinstance(d, Mapping):
        raise TypeError(f"{name}.from_dict needs a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; known: {sorted(names)}")
    values = dict(d)
    for spec in settings(cls):  # JSON lists back to the tuples of the fields
        value = values.get(spec.name)
        if isinstance(value, list) and "tuple" in spec.type:
            values[spec.name] = tuple(value)
    return cls(**values)


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of a fine-tune on corrected slices
    (:func:`napari_boundary_seg.core.finetune.finetune`); the network, the
    preprocessing and the loss come from the parent checkpoint.

    ``lr`` and ``batch_size`` ``None`` are the checkpoint's (the batch capped by
    the number of slices); ``out_dir`` ``None`` is ``finetune-<time>`` beside the
    parent; a 3D checkpoint always uses ``distance="3d"`` (per verified slab).
    ``verified_slices`` are slices checked without painting; with the corrected
    slices they are the only ones that teach (docs/DESIGN.md, "Fine-tuning").
    """

    epochs: int = setting(
        5, help="epochs over the fine-tuning slices", bounds=(1, None), section="schedule"
    )
    alpha_start: float = setting(
        0.8, help="α in the first epoch", bounds=(0, 1), step=0.05, section="schedule"
    )
    alpha_step: float = setting(
        0.1, help="α drop per epoch", bounds=(0, 1), step=0.01, section="schedule"
    )
    alpha_floor: float = setting(
        0.01, help="lowest α", bounds=(0, 1), step=0.01, section="schedule", flag=""
    )
    lr: float | None = setting(
        None,
        help="learning rate (default: the checkpoint's)",
        bounds=(0, None),
        open=(True, False),
        step=1e-4,
        section="schedule",
    )
    batch_size: int | None = setting(
        None,
        help="batch size (default: the checkpoint's)",
        bounds=(1, None),
        section="schedule",
        flag="",
    )
    mix_ratio: float = setting(
        0.0,
        help="original slices per corrected slice (3D: patches per corrected patch)",
        bounds=(0, None),
        step=0.1,
        section="data",
    )
    verified_slices: tuple[int, ...] = setting(
        (),
        help="slices checked and correct as predicted, without painting (indices along the "
        "slicing axis): they teach like corrected slices; every other uncorrected voxel is "
        "left out of the loss (default none)",
        nargs="+",
        metavar="SLICE",
        section="data",
        form=False,
    )
    distance: str = setting(
        "2d",
        help="distance maps of the verified slices: 2d per slice, or 3d per slab of "
        "contiguous verified slices (never from unverified slices)",
        choices=("2d", "3d"),
        section="advanced",
        flag="",
    )
    device: str = setting("auto", help="auto, cpu, cuda, cuda:N or mps", section="run")
    seed: int = setting(
        0, help="seed of the slice order and of the mix choice", section="run", flag=""
    )
    out_dir: str | None = setting(
        None, help="folder of the new checkpoint", flag="--out", section="run", kind="path"
    )
    overwrite: bool = setting(False, help="allow an --out that holds a run", section="run")

    def __post_init__(self) -> None:
        check_settings(self)
        check_device_name(self.device)
        name = "FinetuneConfig.verified_slices"
        if isinstance(self.verified_slices, str | bytes | Mapping):
            raise TypeError(f"{name} must be a list of slice indices, got {self.verified_slices!r}")
        try:
            given = list(self.verified_slices)
        except TypeError as err:
            raise TypeError(
                f"{name} must be a list of slice indices, got {self.verified_slices!r}"
            ) from err
        checked = {check_int(s, name, 0) for s in given}
        object.__setattr__(self, "verified_slices", tuple(sorted(checked)))

    @property
    def schedule(self) -> dict[str, Any]:
        """The restarted α schedule: the paper's kind from ``alpha_start`` down by
        ``alpha_step`` per epoch to ``alpha_floor`` (capped by the start)."""
        floor = min(self.alpha_floor, self.alpha_start)
        params = {"start": self.alpha_start, "step": self.alpha_step, "floor": floor}
        return schedule_from_dict({"kind": "paper", **params}).to_dict()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return _to_dict(self)

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
