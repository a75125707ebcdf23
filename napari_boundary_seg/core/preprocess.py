"""Preprocessing: how a case becomes network input, for every data path.

One module holds the steps that the in-memory slice data set
(:class:`~napari_boundary_seg.core.data.SliceDataset`), both on-disk caches
(:func:`~napari_boundary_seg.core.cache_entries.iter_cache_cases` for 3D
volumes, :func:`~napari_boundary_seg.core.cache_entries.iter_cache_slices` for
2D slices) and prediction apply, so that training and inference see the same
arrays (``docs/DESIGN.md``, "Preprocessing"):

1. orientation: 3D volumes reordered to the closest canonical (RAS) order
   (:func:`canonical_case`) when ``PreprocessConfig.canonical``;
2. intensities: each modality normalised on its own (:func:`normalize_volume`:
   ``robust``, ``zscore`` within the :func:`head_mask`, or the paper's
   ``minmax``), ``PreprocessConfig.normalize`` / ``scale`` / ``percentiles``;
3. crop: 3D volumes cropped to the head plus a margin (:func:`head_box`) when
   ``PreprocessConfig.crop``;
4. slices: 2D slices taken along ``PreprocessConfig.axis`` and resized to
   ``slice_size`` x ``slice_size`` or resampled to ``slice_spacing`` (images
   bilinear, labels nearest), modalities stacked as channels.

:func:`preprocess_case` runs all of them and returns a :class:`PreparedCase`
that also knows how to paste predictions back (:meth:`PreparedCase.paste`).
The module imports torch only to resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_boundary_seg.core.cases import Case
from napari_boundary_seg.core.config import NORMALIZE_MODES
from napari_boundary_seg.core.orientation import (
    Orientation,
    canonical_orientation,
    check_plane,
    native_slice_axis,
    slice_axis,
)
from napari_boundary_seg.core.validate import check_int, check_slice_spacing

__all__ = [
    "CROP_MARGIN",
    "HEAD_RULES",
    "HEAD_THRESHOLD",
    "NORMALIZE_MODES",
    "ZSCORE_PERCENTILES",
    "PreparedCase",
    "PreprocessConfig",
    "canonical_case",
    "check_slice_spacing",
    "head_box",
    "head_mask",
    "median_slice_spacing",
    "normalize_volume",
    "preprocess_case",
    "resampled_size",
    "resolve_slice_axis",
    "scale_images",
    "slice_plane_spacing",
]


CROP_MARGIN = 4
"""Voxels kept around the head when volumes are cropped to it."""

ZSCORE_PERCENTILES = (0.5, 99.5)
"""Percentiles of the head's intensities that ``zscore`` clips at."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case becomes network input; each step switchable.

    The defaults are the paper's: min–max scaling, slices along stored axis 2
    resized to 256². The training config
    (:class:`~napari_boundary_seg.core.train.TrainConfig`) chooses the recipe
    for real scans (canonical orientation, ``robust``, crop, resampling).

    Attributes
    ----------
    scale
        Normalise each modality (``False``: raw intensities).
    percentiles
        ``minmax`` only: ``(low, high)`` percentiles mapped to 0 and 1 (robust
        scaling, e.g. ``(0.5, 99.5)``); ``None``: the minimum and maximum.
    slice_size
        Resize every 2D slice to ``slice_size x slice_size`` (images bilinear,
        labels nearest; the aspect ratio is not kept, as in the paper). ``None``
        keeps the native size (or resamples to ``slice_spacing``).
    axis
        The slicing plane: ``auto`` (axial, or the thick-slice axis), ``axial``,
        ``coronal``, ``sagittal``, or an axis index 0–2 (of the canonical order
        when ``canonical``, else of the stored order). Ignored for 2D cases.
    skip_empty_slices
        Drop slices without foreground (the paper keeps all).
    normalize
        ``robust``, ``zscore`` or ``minmax`` (:data:`NORMALIZE_MODES`).
    canonical
        Reorient 3D volumes to the closest canonical (RAS) order first
        (:mod:`~napari_boundary_seg.core.orientation`).
    slice_spacing
        ``(row, column)`` spacing in mm that slices are resampled to (images
        bilinear, labels nearest); ``None`` keeps the native spacing. Ignored
        when ``slice_size`` is set.
    crop
        Crop 3D volumes to the head (the union of the modalities' head masks
        and the labels, plus a margin of :data:`CROP_MARGIN` voxels) before
        slicing: no slice of air, no border of air (nnU-Net's crop to the
        nonzero region). Predictions are pasted back as background outside.
    """

    scale: bool = True
    percentiles: tuple[float, float] | None = None
    slice_size: int | None = 256
    axis: int | str = 2
    skip_empty_slices: bool = False
    normalize: str = "minmax"
    canonical: bool = False
    slice_spacing: tuple[float, float] | None = None
    crop: bool = False

    def __post_init__(self) -> None:
        if self.percentiles is not None:
            lo, hi = self.percentiles
            if not 0.0 <= lo < hi <= 100.0:
                raise ValueError(
                    f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
                )
        if self.slice_size is not None:
            check_int(self.slice_size, "slice_size", 1)
        object.__setattr__(self, "axis", check_plane(self.axis, "axis"))
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(
                f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {self.normalize!r}"
            )
        if self.slice_spacing is not None:
            object.__setattr__(
                self, "slice_spacing", check_slice_spacing(self.slice_spacing, "slice_spacing")
            )


def _scale_unit(volume: np.ndarray, percentiles: tuple[float, float] | None) -> np.ndarray:
    if percentiles is None:
        lo, hi = float(volume.min()), float(volume.max())
    else:
        lo, hi = (float(v) for v in np.percentile(volume, percentiles))
    if hi <= lo:
        return np.zeros_like(volume, dtype=np.float32)
    out = (volume - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


HEAD_THRESHOLD = 0.1
"""A voxel is in the head above this share of the robust (2nd–98th percentile)
intensity range (FSL BET's robust threshold)."""


def head_mask(volume: np.ndarray) -> np.ndarray:
    """The head (or brain) of one modality, holes filled.

    Voxels above the 2nd percentile plus :data:`HEAD_THRESHOLD` of the range
    up to the 98th, the largest face-connected piece of them (specks of
    noise in the air are left out), its holes filled in 3D (ventricles and
    dark lesions inside the head belong to it). On a scan with the skull, air falls below
    the threshold; on a skull-stripped scan, the zero background does. A
    volume with no contrast gives a full mask.
    """
    from scipy.ndimage import binary_fill_holes

    lo, hi = (float(v) for v in np.percentile(volume, (2, 98)))
    if hi <= lo:
        return np.ones(volume.shape, dtype=bool)
    mask = volume > lo + HEAD_THRESHOLD * (hi - lo)
    if mask.ndim == 3 and mask.any():  # the head is one piece: noise specks in the air are not
        import cc3d

        mask = cc3d.largest_k(mask, k=1, connectivity=6) > 0
    mask = binary_fill_holes(mask)
    if mask.sum() < max(16, 0.001 * mask.size):
        return np.ones(volume.shape, dtype=bool)
    return mask


def _head_range(
    volume: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``volume`` as float32, its head mask (``mask``, or :func:`head_mask`) and the
    head's :data:`ZSCORE_PERCENTILES`."""
    volume = np.asarray(volume, dtype=np.float32)
    mask = head_mask(volume) if mask is None else mask
    lo, hi = (float(v) for v in np.percentile(volume[mask], ZSCORE_PERCENTILES))
    return volume, mask, lo, hi


def _zscore(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """nnU-Net's MRI rule within the head mask: clip at its 0.5/99.5 percentiles,
    subtract its mean, divide by its standard deviation; 0 outside the mask
    (nnU-Net's ``use_mask_for_norm``). On the sample case the Quick start is
    unstable with it (best validation DSC 0.311, 0.842, 0.773 for seeds 0-2,
    ``benchmarks/quick_start.py --seed N --set normalize='"zscore"'``), so
    ``robust`` is the default."""
    volume, mask, lo, hi = _head_range(volume, mask)
    out = np.clip(volume, lo, hi)
    inside = out[mask]
    mean, std = float(inside.mean()), float(inside.std())
    out -= mean
    out /= max(std, 1e-6)
    out[~mask] = 0.0  # outside the head: 0, as the network's zero padding
    return out.astype(np.float32, copy=False)


def _robust(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The head's 0.5 and 99.5 % percentiles mapped to 0 and 1, clipped: the
    skull, fat or a hot voxel cannot squeeze the brain's contrast, and the air
    (below the head's low percentile) is 0, as the network's zero padding."""
    volume, _, lo, hi = _head_range(volume, mask)
    if hi <= lo:
        return np.zeros_like(volume)
    out = (np.clip(volume, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False)


HEAD_RULES = ("robust", "zscore")
"""The intensity rules that work within a :func:`head_mask`."""


def normalize_volume(
    volume: np.ndarray,
    normalize: str = "robust",
    percentiles: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """One modality's volume normalised by ``normalize`` (:data:`NORMALIZE_MODES`);
    ``mask``: its :func:`head_mask` when already computed."""
    if normalize == "robust":
        return _robust(volume, mask)
    if normalize == "zscore":
        return _zscore(volume, mask)
    if normalize == "minmax":
        return _scale_unit(volume, percentiles)
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")


def scale_images(
    case: Case,
    scale: bool = True,
    percentiles: tuple[float, float] | None = None,
    normalize: str = "minmax",
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """The case's ``images (M, *spatial)`` normalised per modality (step 1).

    ``scale=False`` returns them unchanged. ``masks (M, *spatial)``: the
    modalities' head masks when already computed. NaN or inf values raise
    ValueError naming the case and modality.
    """
    images = case.images
    for m, name in enumerate(case.modalities):
        if not np.all(np.isfinite(images[m])):
            raise ValueError(f"case {case.case_id}: modality {name} contains NaN or inf values")
    if not scale or getattr(case, "normalized", False):
        return images
    return np.stack(
        [
            normalize_volume(images[m], normalize, percentiles, None if masks is None else masks[m])
            for m in range(len(images))
        ]
    )


def canonical_case(case: Case) -> Case:
    """``case`` with its 3D arrays in the closest canonical (RAS) order.

    Spacing and affine follow, so every voxel keeps its place in the world; a
    2D case or one already canonical is returned as it is.
    """
    if case.images.ndim != 4:
        return case
    orientation = canonical_orientation(case.affine)
    if orientation.is_identity:
        return case
    labels = None
    if case.labels is not None:
        labels = np.ascontiguousarray(orientation.to_canonical(case.labels))
    return Case(
        case_id=case.case_id,
        images=np.ascontiguousarray(orientation.to_canonical(case.images, lead=1)),
        labels=labels,
        spacing=orientation.spacing(case.spacing),
        affine=orientation.affine(case.affine, case.spatial_shape),
        modalities=case.modalities,
        normalized=case.normalized,
    )


@dataclass(frozen=True, eq=False)
class PreparedCase:
    """One case as network input (:func:`preprocess_case`) and the way back.

    ``images (D, M, H, W)`` float32 slices, ``labels (D, H, W)`` int64 or
    ``None``, ``spacing`` (slicing axis, row, column) in mm after resizing and
    ``slice_index (D,)`` (each slice's index along the slicing axis); the
    orientation applied, the slicing axis in that order, the ``(H, W)`` before
    resizing, and the crop to the head (its box, the full shape, its head mask).
    """

    images: np.ndarray  # (D, M, H, W) float32
    labels: np.ndarray | None  # (D, H, W) int64
    spacing: tuple[float, float, float]  # (slicing axis, H, W) after resizing
    slice_index: np.ndarray  # (D,) index along the slicing axis
    # how to go back: the orientation applied, the slicing axis in that order,
    # and the (H, W) of the slices before resizing or resampling
    orientation: Orientation | None = None
    axis: int | None = None
    native_hw: tuple[int, int] | None = None
    # the crop to the head: (start, stop) per axis of the (D, H, W) stack, its full
    # shape, and the head mask of the cropped stack
    crop: tuple[tuple[int, int], ...] | None = None
    full_shape: tuple[int, int, int] | None = None
    head: np.ndarray | None = None

    def paste(self, probs: np.ndarray) -> np.ndarray:
        """``(C, D', H', W')`` probabilities of the cropped stack in the full
        ``(C, D, H, W)``: background (class 0) outside the crop and outside the
        head (no lesion lies in the air; the network's guesses at the crop's
        edges are dropped)."""
        if self.crop is None:
            return probs
        if self.head is not None:
            outside = ~self.head
            probs = probs.copy()
            probs[1:, outside] = 0.0
            probs[0, outside] = 1.0
        out = np.zeros((probs.shape[0], *self.full_shape), dtype=probs.dtype)
        out[0] = 1.0
        box = tuple(slice(a, b) for a, b in self.crop)
        out[(slice(None), *box)] = probs
        return out


def head_box(
    mask: np.ndarray, labels: np.ndarray | None, margin: int = CROP_MARGIN
) -> tuple[tuple[int, int], ...]:
    """The bounding box ``((start, stop), ...)`` of a head ``mask`` and of the
    labels, grown by ``margin``."""
    mask = mask.copy()
    if labels is not None:
        mask |= labels > 0
    box = []
    for axis in range(mask.ndim):
        other = tuple(k for k in range(mask.ndim) if k != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        n = mask.shape[axis]
        if hit.size == 0:
            box.append((0, n))
        else:
            box.append((max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(box)


def _resize(stack: np.ndarray, size: int | Sequence[int], mode: str) -> np.ndarray:
    """Resize ``(D, K, H, W)`` to ``(D, K, *size)`` (float32); one int: a square."""
    import torch
    import torch.nn.functional as F

    size = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    if mode == "nearest":
        out = F.interpolate(tensor, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


def resampled_size(
    hw: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, int]:
    """The (H, W) of slices of size ``hw`` at ``spacing`` resampled to ``target`` mm."""
    return tuple(  # type: ignore[return-value]
        max(1, int(round(n * s / t))) for n, s, t in zip(hw, spacing, target, strict=True)
    )


def resolve_slice_axis(spacing: Sequence[float], affine: Any, preprocess: PreprocessConfig) -> int:
    """The axis that ``preprocess.axis`` slices along, in the order the arrays are
    in when sliced (canonical when ``preprocess.canonical``, then ``spacing`` is
    the canonical one; else stored, and a plane is found through ``affine``)."""
    if isinstance(preprocess.axis, int):
        return preprocess.axis % 3
    if preprocess.canonical:
        return slice_axis(spacing, preprocess.axis)
    return native_slice_axis(affine, spacing, preprocess.axis)


def slice_plane_spacing(
    spacing: Sequence[float], affine: Any, preprocess: PreprocessConfig
) -> tuple[float, float]:
    """The in-plane ``(row, column)`` spacing (mm) of the slices of a volume of
    this (stored) ``spacing`` and ``affine`` under ``preprocess``, before any resizing."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) == 2:
        return (spacing[0], spacing[1])
    if preprocess.canonical:
        spacing = canonical_orientation(affine).spacing(spacing)
    axis = resolve_slice_axis(spacing, affine, preprocess)
    rest = [s for k, s in enumerate(spacing) if k != axis]
    return (rest[0], rest[1])


def _source_geometry(source: Any) -> tuple[tuple[float, ...], np.ndarray]:
    """Spacing and affine of a :class:`Case` or of a :class:`CaseFiles` (its first
    image's header; no voxel is read)."""
    if hasattr(source, "image_paths"):
        import nibabel as nib

        img = nib.load(str(source.image_paths[0]))
        ndim = min(3, len(img.shape))
        return tuple(float(z) for z in img.header.get_zooms()[:ndim]), np.asarray(img.affine)
    return tuple(source.spacing), np.asarray(source.affine)


def median_slice_spacing(
    sources: Sequence[Any], preprocess: PreprocessConfig
) -> tuple[float, float] | None:
    """The median in-plane spacing (mm) of the slices of ``sources`` under
    ``preprocess`` (nnU-Net's target spacing rule, in the plane); ``None`` when
    there is no 3D case."""
    planes = []
    for source in sources:
        spacing, affine = _source_geometry(source)
        if len(spacing) == 3:
            planes.append(slice_plane_spacing(spacing, affine, preprocess))
    if not planes:
        return None
    median = np.median(np.asarray(planes, dtype=float), axis=0)
    return (float(median[0]), float(median[1]))


def preprocess_case(case: Case, preprocess: PreprocessConfig = PreprocessConfig()) -> PreparedCase:  # noqa: B008
    """Orient, normalise, crop, slice and resize (or resample) one case.

    Returns a :class:`PreparedCase`: the slices, labels, spacing and slice
    indices, and what it takes to go back (``orientation``, ``axis``,
    ``native_hw``, the crop). Empty slices are *not* dropped here.
    """
    orientation = None
    if preprocess.canonical and case.images.ndim == 4:
        orientation = canonical_orientation(case.affine)
        case = canonical_case(case)
    # each modality's head mask once, for the intensity rule and the crop (a part
    # normalised as a whole lost its air: its head is what is not 0)
    masks = None
    crop_3d = preprocess.crop and case.images.ndim == 4
    if case.normalized:
        masks = (case.images != 0) if crop_3d else None
    elif crop_3d or (preprocess.scale and preprocess.normalize in HEAD_RULES):
        masks = np.stack([head_mask(channel) for channel in case.images])
    images = scale_images(
        case, preprocess.scale, preprocess.percentiles, preprocess.normalize, masks
    )
    labels = case.labels
    spacing = tuple(float(s) for s in case.spacing)
    if images.ndim == 3:  # a 2D case: one slice
        images = images[:, None]
        labels = None if labels is None else labels[None]
        spacing = (1.0, *spacing)
        axis = None
    else:
        axis = resolve_slice_axis(case.spacing, case.affine, preprocess)
        images = np.moveaxis(images, 1 + axis, 1)
        labels = None if labels is None else np.moveaxis(labels, axis, 0)
        spacing = (spacing[axis], *(s for k, s in enumerate(spacing) if k != axis))
    images = np.ascontiguousarray(np.swapaxes(images, 0, 1), dtype=np.float32)  # (D, M, H, W)
    crop = full_shape = head = None
    slice_index = np.arange(images.shape[0])
    if preprocess.crop and axis is not None:
        full_shape = (images.shape[0], *images.shape[2:])
        head = np.moveaxis(masks.any(axis=0), axis, 0)  # (D, H, W)
        crop = head_box(head, labels)
        (d0, d1), (h0, h1), (w0, w1) = crop
        head = head[d0:d1, h0:h1, w0:w1]
        images = np.ascontiguousarray(images[d0:d1, :, h0:h1, w0:w1])
        if labels is not None:
            labels = labels[d0:d1, h0:h1, w0:w1]
        slice_index = np.arange(d0, d1)
    depth, _, height, width = images.shape
    size: tuple[int, int] | None = None
    if preprocess.slice_size is not None:
        size = (preprocess.slice_size, preprocess.slice_size)
    elif preprocess.slice_spacing is not None:
        size = resampled_size((height, width), spacing[1:], preprocess.slice_spacing)
    if size is not None and (height, width) != size:
        bounds = None
        if preprocess.scale:  # antialiasing may overshoot the normalised range
            bounds = (
                (0.0, 1.0) if preprocess.normalize == "minmax" else (images.min(), images.max())
            )
        images = _resize(images, size, "bilinear")
        if bounds is not None:
            np.clip(images, *bounds, out=images)
        if labels is not None:
            labels = _resize(labels[:, None], size, "nearest")[:, 0]
            labels = np.rint(labels).astype(np.int64)
        spacing = (spacing[0], spacing[1] * height / size[0], spacing[2] * width / size[1])
    elif labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return PreparedCase(
        images,
        labels,
        spacing,
        slice_index,
        orientation,
        axis,
        (height, width),
        crop,
        full_shape,
        head if crop is not None else None,
    )
