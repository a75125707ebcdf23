"""npe2 writers: a Labels or Image layer to NIfTI (``.nii`` / ``.nii.gz``).

The affine written is the one the layer came with (``metadata["affine"]``, set
by ``_reader``) while the layer still sits where that affine puts it;
otherwise (a layer made in napari, or one the user moved or rescaled) the
layer's own data-to-world transform: napari ``affine`` composed with
translate, rotate, shear and scale, which is ``diag(scale)`` plus the
translation for a plain layer.

Overwriting. napari's "Save layers" dialog asks before replacing a file, then
calls the writer; the writer then replaces the file. Called any other way
(``viewer.layers.save(path, plugin="napari-boundary-seg")``, scripts) it never
replaces an existing file: it raises ``FileExistsError`` naming it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.io import write_nifti

logger = logging.getLogger(__name__)

#: The napari function that shows the save dialog (which confirms overwrites).
_NAPARI_SAVE_DIALOG = "_save_layers_dialog"


def _confirmed_by_napari_dialog() -> bool:
    """True when called from napari's save dialog, which confirmed overwriting."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == _NAPARI_SAVE_DIALOG and "napari" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def _layer_transform(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """The layer's ``(ndim+1, ndim+1)`` data-to-world matrix from writer ``meta``."""
    from napari.utils.transforms import Affine

    base = Affine(
        scale=meta.get("scale", np.ones(ndim)),
        translate=meta.get("translate", np.zeros(ndim)),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=ndim,
    ).affine_matrix
    extra = np.asarray(meta.get("affine", np.eye(ndim + 1)), dtype=float)
    if extra.shape != (ndim + 1, ndim + 1):
        extra = np.eye(ndim + 1)
    return extra @ base


def nifti_affine(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """The ``(4, 4)`` NIfTI affine to write for a layer (see module docstring).

    Parameters
    ----------
    meta
        The layer attributes npe2 passes to writers (``scale``, ``translate``,
        ``rotate``, ``shear``, ``affine``, ``metadata``).
    ndim
        Number of dimensions of the layer data; the first ``min(ndim, 3)`` axes
        are the spatial ones of the NIfTI file.
    """
    k = min(ndim, 3)
    full = _layer_transform(meta, ndim)
    affine = np.eye(4)
    affine[:k, :k] = full[:k, :k]
    affine[:k, 3] = full[:k, ndim]
    kept = (meta.get("metadata") or {}).get("affine")
    if kept is not None:
        kept = np.asarray(kept, dtype=float)
        tol = 1e-5 * max(1.0, float(np.abs(affine).max()))
        if kept.shape == (4, 4) and np.allclose(kept, affine, atol=tol):
            return kept
        logger.info("layer moved since it was read; writing its current transform")
    return affine


def _write(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        path = f"{path}.nii.gz"
    array = np.asarray(data[0] if meta.get("multiscale") else data)
    if labels and not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(f"labels to write have dtype {array.dtype}, not integer")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if Path(path).exists() and not _confirmed_by_napari_dialog():
        raise FileExistsError(
            f"{path} already exists; not overwriting it (save through napari's "
            "File > Save dialog to confirm replacing it, or choose another name)."
        )
    affine = nifti_affine(meta, array.ndim)
    write_nifti(path, array, affine=affine, overwrite=True)
    logger.info("wrote %s %s %s", path, array.shape, array.dtype)
    return [str(path)]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for one Labels layer; returns the written path."""
    return _write(path, data, meta, labels=True)


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 writer for one Image layer; returns the written path."""
    return _write(path, data, meta, labels=False)
