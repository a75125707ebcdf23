"""Named training presets and the slice split of a single case.

:func:`quick_start_config` is the "Quick start" of the Train widget, of
``napari-boundary-seg demo`` and of ``benchmarks/quick_start.py`` (one
function, so that the three train the same way). Its values were chosen by
running ``benchmarks/quick_start.py`` on the sample case (README, "Quick
start"): a narrow UNet (width 16) on the slices at their native size (no
resizing), 15 short epochs (every slice once), the generalized Dice loss, and
lr 2e-3. On the sample case it passes a validation DSC of 0.7 within the
first minute on 2 CPU cores (the README gives the measured figures); with the
boundary loss added (α from 1 down by 0.02 per epoch to 0.5, the schedule it
keeps for ``loss="gdl+bl"``) it reached a lower best DSC on three seeds of
three (``benchmarks/results/quick_start/``).

A single volume has no other case to validate on, so :func:`split_slices`
holds out a contiguous block of its slices (:func:`validation_block`): the
figures are measured on slices the model did not train on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_boundary_seg.core.config import LossKind, TrainConfig

__all__ = [
    "PAPER",
    "PRESETS",
    "PRESET_CONFIGS",
    "QUICK",
    "QUICK_START",
    "changed_fields",
    "preset_config",
    "quick_start_config",
    "split_slices",
    "validation_block",
]

QUICK = TrainConfig(
    epochs=15,
    lr=2e-3,
    lr_patience=10,
    base_channels=16,
    schedule={"kind": "paper", "start": 1.0, "step": 0.02, "floor": 0.5},
    steps_per_epoch=None,
)
"""The quick-start config: ``TrainConfig``'s defaults with the measured changes; in
3D its epochs are one tiling of the training volumes (``steps_per_epoch=None``), so a
3D Quick start stays minutes on a CPU."""

PAPER = TrainConfig(slice_size=256, loss=LossKind.GDL_BL)
"""The paper's config: ``TrainConfig``'s defaults (the paper's network, optimiser and
α schedule) with GDL + BL and slices resized to 256²."""

PRESET_CONFIGS: Mapping[str, TrainConfig] = {"quick": QUICK, "paper": PAPER}
"""The named presets of ``train --preset`` and of the widgets, as configs."""

PRESETS: dict[str, str] = {
    "quick": "the Quick start: UNet width 16, slices at their size, 15 epochs (CPU-sized)",
    "paper": "the paper's: UNet width 64, 256×256 slices, 100 epochs (GPU-sized)",
}
"""The named presets of ``train --preset`` and what each is."""


def changed_fields(config: TrainConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from ``TrainConfig``'s defaults (JSON form)."""
    default = TrainConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != default[k]}


QUICK_START: dict[str, Any] = changed_fields(QUICK)
"""The quick-start values as ``TrainConfig`` keyword arguments (those that differ
from the defaults)."""


def quick_start_config(**overrides: Any) -> TrainConfig:
    """The quick-start :class:`~napari_boundary_seg.core.config.TrainConfig`.

    Parameters
    ----------
    **overrides
        ``TrainConfig`` fields that replace the preset's (``out_dir``,
        ``device``, ``epochs``...).

    Returns
    -------
    TrainConfig
        :data:`QUICK` with ``overrides``.
    """
    return QUICK.replace(**overrides)


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`~napari_boundary_seg.core.config.TrainConfig` of preset ``name``.

    ``"quick"`` is :data:`QUICK` (the Train widget's and the demo's Quick
    start); ``"paper"`` is :data:`PAPER`; both keep the real-scan preprocessing
    (``--normalize minmax`` gives the paper's scaling). ``overrides`` replace
    the preset's fields.
    """
    if name not in PRESET_CONFIGS:
        raise ValueError(f"unknown preset {name!r}; use one of {sorted(PRESETS)}")
    return PRESET_CONFIGS[name].replace(**overrides)


TRAIN_SHARE = 0.5
"""The share of a volume's foreground the Quick start's held-out block leaves for
training when it can: the model trains on at least as much lesion as it is judged
on. A real MS scan whose best block held 73 % of its lesion voxels (the periventricular
ones) learnt to predict nothing from the 27 % left; with half left it learnt them
(``benchmarks/results/real_data/``)."""


def validation_block(labels: np.ndarray, axis: int, val_fraction: float) -> slice | None:
    """The contiguous block of slices along ``axis`` held out for validation.

    A single volume has no other case to validate on, so a block of
    ``max(1, round(val_fraction * n))`` neighbouring slices becomes the
    validation case. Among the blocks that hold foreground and leave at least
    :data:`TRAIN_SHARE` of it for training, the one with the most foreground
    voxels is chosen (ties: the first); when no block leaves that much, among
    those that leave some. None when there is nothing to split (not 3D, ``val_fraction`` 0,
    fewer than 4 slices, or no such block).

    Parameters
    ----------
    labels
        ``(*spatial)`` integer labels, 3 axes to be split.
    axis
        The slicing axis (numpy order).
    val_fraction
        In ``[0, 1)``.
    """
    if labels.ndim != 3 or val_fraction <= 0:
        return None
    n = labels.shape[axis]
    if n < 4:
        return None
    k = min(max(1, round(val_fraction * n)), n - 1)
    other = tuple(a for a in range(3) if a != axis)
    per_slice = (labels > 0).sum(axis=other)
    total = int(per_slice.sum())
    windows = np.convolve(per_slice, np.ones(k, dtype=np.int64), mode="valid")
    order = np.argsort(-windows, kind="stable")
    # a real scan may hold most of its lesions in one block: leave at least
    # TRAIN_SHARE of the foreground to train on when a block can
    for start in order:
        if 0 < int(windows[start]) <= (1 - TRAIN_SHARE) * total:
            return slice(int(start), int(start) + k)
    for start in order:
        if 0 < int(windows[start]) < total:
            return slice(int(start), int(start) + k)
    return None


def split_slices(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    axis: int,
    val_fraction: float,
    case_id: str = "viewer",
    modalities: Sequence[str] | None = None,
    affine: np.ndarray | None = None,
    normalize: str | None = None,
) -> tuple[list[Any], list[Any]]:
    """Training and validation cases of one labelled volume, split along ``axis``.

    Parameters
    ----------
    images
        ``(M, *spatial)`` array or a list of ``M`` ``(*spatial)`` volumes.
    labels
        ``(*spatial)`` integer labels.
    spacing
        Voxel size (mm, numpy axis order).
    axis
        Slicing axis.
    val_fraction
        Size of the held-out block (:func:`validation_block`).
    case_id, modalities
        Names of the cases and channels.
    affine
        ``(4, 4)`` voxel-to-world affine of the volume (default: from
        ``spacing``); each part gets it with its origin moved to its first slice.
    normalize
        Intensity rule (``"robust"``, ``"zscore"``, ``"minmax"``) applied to the whole volume
        before it is split, so that every part keeps the intensities the whole
        scan has at prediction (the parts are marked ``normalized``); ``None``
        leaves the parts raw (each is then normalised on its own).

    Returns
    -------
    (train_cases, val_cases)
        The slices before and after the block (one or two cases) and the block
        (one case); ``(all, [])`` when there is nothing to split.
    """
    from napari_boundary_seg.core.data import case_from_arrays, normalize_volume

    stack = np.stack([np.asarray(v) for v in images])
    if normalize is not None:
        stack = np.stack([normalize_volume(v, normalize) for v in stack])
    block = validation_block(labels, axis, val_fraction)

    def case(index: slice | None, name: str) -> Any:
        sub = (slice(None),) * axis + (index,) if index is not None else ()
        part_affine = None
        if affine is not None:
            part_affine = np.array(affine, dtype=np.float64)
            if index is not None and axis < 3:
                part_affine[:3, 3] += part_affine[:3, axis] * index.start
        part = case_from_arrays(
            list(stack[(slice(None), *sub)]),
            labels[sub],
            spacing,
            affine=part_affine,
            case_id=name,
            modalities=None if modalities is None else tuple(modalities),
        )
        return dataclasses.replace(part, normalized=True) if normalize is not None else part

    if block is None:
        return [case(None, case_id)], []
    n = labels.shape[axis]
    train = [
        case(part, f"{case_id}-{part.start}-{part.stop}")
        for part in (slice(0, block.start), slice(block.stop, n))
        if part.stop > part.start
    ]
    return train, [case(block, f"{case_id}-val-{block.start}-{block.stop}")]
