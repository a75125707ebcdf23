"""NIfTI reading and writing that keeps the affine and the voxel spacing.

Arrays are returned in the file's own array order (the numpy axis order of
``nibabel``'s ``dataobj``); ``spacing`` is the header's zooms for those axes, so
``spacing[k]`` is the size of a voxel along numpy axis ``k`` in mm (what napari's
``layer.scale`` expects). Nothing is reoriented.

Labels come back with an integer dtype and images as ``float32``. Files are written
atomically (a temporary file in the same folder, then :func:`os.replace`) and an
existing file is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiVolume",
    "atomic_path",
    "default_affine",
    "is_label_file",
    "is_nifti_path",
    "nifti_stem",
    "read_nifti",
    "write_nifti",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def default_affine(spacing: Sequence[float]) -> np.ndarray:
    """4×4 affine of a volume with no geometry: the voxel sizes (1 beyond the
    given axes) on the diagonal, origin 0."""
    diag = [float(s) for s in spacing][:3]
    diag += [1.0] * (3 - len(diag))
    return np.diag(diag + [1.0])


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file name beside ``path``, for writing ``path`` atomically.

    Write the file at the yielded name inside the ``with`` block; when the block
    ends without error the file replaces ``path`` (:func:`os.replace`), so
    readers never see a half-written file; on any error it is deleted.
    ``suffix`` ends the temporary name (nibabel picks the format from it).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A file whose name holds one of these tokens is a label volume.
_LABEL_TOKENS = frozenset(
    {
        "seg",
        "segs",
        "segmentation",
        "aseg",
        "label",
        "labels",
        "labelmap",
        "mask",
        "masks",
        "wmh",
        "ot",
        "gt",
        "truth",
        "groundtruth",
        "lesion",
        "lesions",
        "annotation",
        "annotations",
        "manual",
        "roi",
        "pred",
        "prediction",
    }
)
# ... and one holding one of these is an image (checked after the label tokens).
_IMAGE_TOKENS = frozenset(
    {
        "flair",
        "t1",
        "t1w",
        "t1c",
        "t1ce",
        "t2",
        "t2w",
        "dwi",
        "adc",
        "ct",
        "cbf",
        "cbv",
        "mtt",
        "tmax",
        "pwi",
        "4dpwi",
        "image",
        "img",
        "mri",
        "brain",
    }
)
_LABEL_FOLDERS = frozenset({"labelstr", "labelsts", "labels", "masks", "segmentations"})
_IMAGE_FOLDERS = frozenset({"imagestr", "imagests", "images"})
# Integer or integer-valued data with at most this many distinct values looks like labels.
_MAX_LABEL_VALUES = 64


@dataclass(frozen=True, eq=False)
class NiftiVolume:
    """A volume read from, or to be written to, a NIfTI file.

    Attributes
    ----------
    data
        ``(*spatial)`` array in the file's array order: an integer dtype for labels,
        ``float32`` for images.
    affine
        ``(4, 4)`` float64 voxel-to-world (mm) matrix.
    spacing
        Voxel size in mm per numpy axis (the header's zooms), one entry per spatial
        axis (at most 3).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]

    @property
    def is_labels(self) -> bool:
        """True when ``data`` has an integer (or bool) dtype."""
        return self.data.dtype.kind in "biu"


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the name ends with ``.nii`` or ``.nii.gz`` (any case)."""
    name = Path(path).name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without ``.nii`` / ``.nii.gz`` (``"case_0000.nii.gz" -> "case_0000"``)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _identity_scaling(img: nib.Nifti1Image) -> bool:
    slope, inter = img.dataobj.slope, img.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    return slope == 1.0 and inter == 0.0


def _smallest_int_dtype(data: np.ndarray) -> np.dtype:
    """uint8 when the values fit, else int16, else int32 (ValueError beyond)."""
    if data.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(data.min()), int(data.max())
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise ValueError(f"label values {lo}..{hi} do not fit in int32")


def _to_integer(data: np.ndarray, what: str) -> np.ndarray:
    """Integer copy of integer-valued ``data``; ValueError naming ``what`` otherwise."""
    if data.dtype.kind in "iu":
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{what}: label data contain NaN or inf")
    rounded = np.rint(data)
    if not np.allclose(data, rounded, rtol=0, atol=1e-3):
        bad = data[np.abs(data - rounded) > 1e-3].ravel()[:3]
        raise ValueError(f"{what}: label data are not integer-valued (e.g. {bad.tolist()})")
    return rounded.astype(_smallest_int_dtype(rounded))


def read_nifti(
    path: str | os.PathLike,
    as_labels: bool | None = None,
    ndim: int | None = None,
) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` file.

    Parameters
    ----------
    path
        The file.
    as_labels
        ``None``: integer data on disk (integer dtype, no intensity scaling) come
        back with their own integer dtype, everything else as ``float32``.
        ``True``: force an integer dtype (ValueError if the values are not
        integers). ``False``: force ``float32``.
    ndim
        Expected number of axes (e.g. 3). Trailing axes of length 1 beyond ``ndim``
        are dropped (``(X, Y, Z, 1) -> (X, Y, Z)``); any other mismatch raises
        ValueError naming the file and its shape.

    Returns
    -------
    NiftiVolume
        ``data`` in the file's array order, the ``(4, 4)`` affine and the spacing
        (mm) of the first ``min(data.ndim, 3)`` axes.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a NIfTI file")
    if not is_nifti_path(path):
        raise ValueError(f"{path} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for broken files
        raise ValueError(f"{path} could not be read as NIfTI: {exc}") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path} is not a NIfTI image ({type(img).__name__})")

    integer_on_disk = np.dtype(img.get_data_dtype()).kind in "biu" and _identity_scaling(img)
    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise ValueError(f"{path}: could not read the voxel data: {exc}") from exc
    if ndim is not None:
        while raw.ndim > ndim and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != ndim:
            raise ValueError(f"{path}: expected a {ndim}D volume, got shape {raw.shape}")

    if as_labels is None:
        as_labels = integer_on_disk
    if as_labels:
        data = _to_integer(np.asarray(raw), str(path))
    else:
        data = np.asarray(raw, dtype=np.float32)

    zooms = img.header.get_zooms()
    n_spatial = min(data.ndim, 3)
    spacing = tuple(float(z) for z in zooms[:n_spatial])
    if len(spacing) < n_spatial:  # degenerate header
        spacing = spacing + (1.0,) * (n_spatial - len(spacing))
    affine = np.asarray(img.affine, dtype=np.float64)
    return NiftiVolume(data=np.ascontiguousarray(data), affine=affine, spacing=spacing)


def _label_like(data: np.ndarray) -> bool:
    return data.dtype.kind in "biu"


def write_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    as_labels: bool | None = None,
) -> Path:
    """Write ``data`` to a ``.nii`` / ``.nii.gz`` file, atomically.

    Parameters
    ----------
    path
        Target file; its name must end with ``.nii`` or ``.nii.gz`` (gzip follows
        the name). The folder must exist.
    data
        ``(*spatial)`` array, 2 to 4 axes, in numpy axis order.
    affine
        ``(4, 4)`` voxel-to-world matrix (mm). ``None``: ``diag(*spacing, 1)``, or the
        identity when ``spacing`` is also ``None``.
    spacing
        Voxel size per axis in mm. With an ``affine`` it must agree with the
        affine's column norms (ValueError otherwise); the header's zooms follow it.
    overwrite
        Replace an existing file. ``False`` (default) raises FileExistsError.
    as_labels
        ``None``: integer/bool data are stored as labels, float data as float32.
        ``True``: store as labels (values must be integers). ``False``: float32.
        Labels are stored as uint8 when they fit, else int16 (int32 beyond).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: a NIfTI file name must end with .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    data = np.asarray(data)
    if data.ndim < 2 or data.ndim > 4:
        raise ValueError(f"{path}: data must have 2 to 4 axes, got shape {data.shape}")
    n_spatial = min(data.ndim, 3)

    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != n_spatial:
            raise ValueError(
                f"{path}: spacing {spacing} has {len(spacing)} entries for data of shape "
                f"{data.shape} ({n_spatial} spatial axes)"
            )
        if any(not np.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"{path}: spacing must be positive and finite, got {spacing}")
    if affine is None:
        affine = default_affine(spacing if spacing is not None else ())
    else:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"{path}: affine must be a finite (4, 4) matrix, got {affine.shape}")
        if spacing is not None:
            norms = np.linalg.norm(affine[:3, :n_spatial], axis=0)
            if not np.allclose(norms, spacing, rtol=1e-4, atol=1e-5):
                raise ValueError(
                    f"{path}: spacing {spacing} disagrees with the affine's voxel sizes "
                    f"{tuple(np.round(norms, 6))}"
                )

    if as_labels is None:
        as_labels = _label_like(data)
    if as_labels:
        values = _to_integer(data, str(path))
        out = values.astype(_smallest_int_dtype(values), copy=False)
    else:
        out = data.astype(np.float32, copy=False)

    img = nib.Nifti1Image(np.ascontiguousarray(out), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(out.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if spacing is not None:
        zooms = list(img.header.get_zooms())
        zooms[:n_spatial] = spacing
        img.header.set_zooms(zooms)

    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    with atomic_path(path, ".tmp" + suffix) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote %s %s %s", path, out.shape, out.dtype)
    return path


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def is_label_file(path: str | os.PathLike, data: np.ndarray | None = None) -> bool:
    """Guess whether a NIfTI file holds labels rather than an image.

    In order: a parent folder named ``labelsTr``/``labelsTs``/``labels``/``masks``
    means labels, ``imagesTr``/``imagesTs``/``images`` means image; a name token
    such as ``seg``, ``label``, ``mask``, ``wmh``, ``OT`` or ``gt`` means labels; an
    image token (``FLAIR``, ``T1``, ``CT_CBF``, a ``_0000`` modality suffix...)
    means image; otherwise ``data`` decides: bool or integer data (or float data
    that are integer-valued) with at most 64 distinct values are labels.

    Parameters
    ----------
    path
        The file name (it need not exist when ``data`` is given).
    data
        The voxel data, if already read.
    """
    path = Path(path)
    for parent in path.parents[:2]:
        name = parent.name.lower()
        if name in _LABEL_FOLDERS:
            return True
        if name in _IMAGE_FOLDERS:
            return False
    stem = nifti_stem(path)
    tokens = _tokens(stem)
    if any(
        t in _LABEL_TOKENS or t.startswith("seg") or "label" in t or "mask" in t for t in tokens
    ):
        return True
    if any(t in _IMAGE_TOKENS for t in tokens) or re.search(r"_\d{4}$", stem):
        return False
    if data is None:
        return False
    data = np.asarray(data)
    if data.dtype.kind == "b":
        return True
    if data.dtype.kind not in "iuf" or data.size == 0:
        return False
    # a strided sample rules most images out quickly
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 100_000)]
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(sample)) or np.any(sample != np.rint(sample)):
            return False
    if np.unique(sample).size > _MAX_LABEL_VALUES:
        return False
    if data.dtype.kind == "f" and np.any(flat != np.rint(flat)):
        return False
    return np.unique(flat).size <= _MAX_LABEL_VALUES
