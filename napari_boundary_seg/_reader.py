"""npe2 reader: NIfTI files (``*.nii``, ``*.nii.gz``) as Image or Labels layers.

Geometry. A NIfTI affine ``A`` maps voxel indices (numpy axis order) to world
millimetres. The layer gets ``scale`` = the voxel spacing (nibabel zooms) and

- when the 3x3 part of ``A`` is diagonal and positive (the usual case, and what
  this package writes): ``translate`` = the affine's translation column, so the
  layer's world coordinates are the NIfTI world coordinates;
- otherwise (axis flips, rotations, oblique scans): napari's ``affine`` =
  ``[R | t]`` with ``R = A[:3, :3] / spacing`` (unit columns), so that
  ``affine @ diag(scale) == A`` exactly: flips and rotations are displayed,
  and ``layer.scale`` still holds the spacing that the widgets use.

Either way a scan and its labels with the same affine overlay exactly, and two
files with different affines land at their true world positions. The NIfTI
affine itself is kept in ``layer.metadata["affine"]`` for the writer; axis
units are millimetres.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.io import (
    NiftiVolume,
    is_label_file,
    is_nifti_path,
    nifti_stem,
    read_nifti,
)

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]


def geometry_from_affine(affine: np.ndarray, spacing: Sequence[float], ndim: int) -> dict[str, Any]:
    """napari layer keyword arguments (scale, translate or affine, units).

    Parameters
    ----------
    affine
        ``(4, 4)`` NIfTI voxel-to-world affine (mm).
    spacing
        Voxel spacing in numpy axis order (the header's zooms). The scale of
        the first ``min(ndim, 3)`` axes is the affine's column norms (equal to
        the zooms in a consistent file), so that ``affine == R @ diag(scale)``
        with unit columns in ``R``; ``spacing`` is the fallback for a zero
        column. Axes beyond the third (time, channels) get scale 1 and no
        translation.
    """
    affine = np.asarray(affine, dtype=float)
    k = min(ndim, 3)
    linear = affine[:k, :k]
    translation = affine[:k, 3]
    zooms = np.ones(ndim)
    given = np.abs(np.asarray(spacing, dtype=float))[:ndim]
    zooms[: given.size] = np.where(given > 0, given, 1.0)
    norms = np.linalg.norm(linear, axis=0)  # the affine's own voxel sizes
    zooms[:k] = np.where(norms > 0, norms, zooms[:k])
    kwargs: dict[str, Any] = {"scale": tuple(zooms), "units": ("mm",) * ndim}
    diag = np.diag(np.diag(linear))
    if np.allclose(linear, diag, atol=1e-6 * zooms[:k].max()) and np.all(np.diag(linear) > 0):
        translate = np.zeros(ndim)
        translate[:k] = translation
        kwargs["translate"] = tuple(translate)
    else:
        napari_affine = np.eye(ndim + 1)
        napari_affine[:k, :k] = linear / zooms[:k]
        napari_affine[:k, ndim] = translation
        kwargs["affine"] = napari_affine
    return kwargs


def volume_to_layer_data(path: str | Path, volume: NiftiVolume, labels: bool) -> LayerData:
    """A napari layer data tuple (Labels when ``labels``, else Image) for a volume."""
    data = np.asarray(volume.data)
    kwargs = geometry_from_affine(volume.affine, volume.spacing, data.ndim)
    kwargs["name"] = nifti_stem(path)
    kwargs["metadata"] = {
        "affine": np.asarray(volume.affine, dtype=float),
        "path": str(path),
    }
    if labels:
        return data, kwargs, "labels"
    return data.astype(np.float32, copy=False), kwargs, "image"


def read_volume(path: str | Path) -> tuple[NiftiVolume, bool]:
    """Read one NIfTI file and decide whether it holds labels.

    ``core.io.is_label_file`` decides from the folder, the name and the data
    (integer data with few values). Label files come back with an integer
    dtype, images as float32.

    Raises
    ------
    ValueError
        The file is not a readable NIfTI file (named in the message).
    """
    try:
        volume = read_nifti(path)
    except (ValueError, TypeError, OSError):
        raise
    except Exception as error:  # nibabel raises many kinds on corrupt files
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
    labels = is_label_file(path, volume.data)
    if labels and not volume.is_labels:
        try:  # float on disk but integer-valued (e.g. a mask saved as float)
            volume = read_nifti(path, as_labels=True)
        except ValueError:
            labels = False
    return volume, labels


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or several NIfTI files into napari layer data tuples.

    Raises
    ------
    ValueError
        A file is not a readable NIfTI file (named in the message).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        volume, labels = read_volume(p)
        layers.append(volume_to_layer_data(p, volume, labels))
        logger.info("read %s as %s %s", p, layers[-1][2], volume.data.shape)
    return layers


def napari_get_reader(
    path: str | Sequence[str],
) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """npe2 reader hook: :func:`read_layers` for NIfTI paths, None otherwise."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return read_layers
