"""Cases, data set layouts, the paper's preprocessing and the 2D slice data set.

A *case* is one patient: ``M`` co-registered modality volumes and an optional
label volume. Cases are found in a folder (:func:`find_cases`, three layouts),
read (:func:`load_case`) or built from arrays (:func:`case_from_arrays`), split
patient-wise (:func:`split_cases`) and turned into a :class:`SliceDataset` of 2D
slices, preprocessed as in the paper:

1. intensities scaled to [0, 1] per volume and per modality (min-max, or robust
   percentiles), ``PreprocessConfig.scale`` / ``percentiles``;
2. 2D slices taken along ``PreprocessConfig.axis`` (numpy axis 2 by default: the
   axial slices of a volume stored in RAS/LAS-like order, as WMH, ISLES, the
   MNI templates and the built-in benchmark are);
3. each slice resized to ``slice_size`` x ``slice_size`` (images bilinear, labels
   nearest), modalities stacked as channels.

Distance maps are computed once per volume when the data set is built, never per
training step. They are computed on the *resized* label slices, with the spacing
the resizing gives them (``spacing * native_size / slice_size`` in-plane; the
slicing axis keeps its own spacing): so their values are in mm, their sign agrees
exactly with the resized labels and ``∂G`` is exactly 0 on the training grid (an
interpolated map would blur both). ``distance="3d"`` uses the whole resized
volume with its spacing (the paper's choice), ``"2d"`` each slice on its own.
Maps are cached by a content hash of the resized labels, the spacing, the mode
and the number of classes: in memory in a :class:`DistanceCache` shared between
builds, and on disk in ``cache_dir`` (``.npy`` files written atomically).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from napari_boundary_seg.core import distance as _distance
from napari_boundary_seg.core.config import NORMALIZE_MODES
from napari_boundary_seg.core.io import (
    atomic_path,
    check_finite,
    default_affine,
    is_hidden_or_temp,
    is_nifti_path,
    nifti_stem,
    read_nifti,
)
from napari_boundary_seg.core.orientation import (
    Orientation,
    canonical_orientation,
    check_plane,
    native_slice_axis,
    slice_axis,
)
from napari_boundary_seg.core.progress import Progress, run_to_end
from napari_boundary_seg.core.validate import check_slice_spacing

logger = logging.getLogger(__name__)

__all__ = [
    "ISLES_MODALITIES",
    "LAYOUTS",
    "WMH_MODALITIES",
    "Case",
    "CaseFiles",
    "DistanceCache",
    "PreprocessConfig",
    "SliceDataset",
    "case_from_arrays",
    "find_cases",
    "iter_build_dataset",
    "iter_load_cases",
    "load_case",
    "load_cases",
    "canonical_case",
    "check_slice_spacing",
    "head_box",
    "head_mask",
    "normalize_volume",
    "preprocess_case",
    "resampled_size",
    "scale_images",
    "iter_check_cases",
    "median_slice_spacing",
    "slice_plane_spacing",
    "split_cases",
]

LAYOUTS = ("auto", "generic", "wmh", "isles")
"""Accepted values of ``find_cases(layout=...)``."""

WMH_MODALITIES = ("FLAIR", "T1")
"""Modalities read from a WMH 2017 case's ``pre/`` folder, in channel order."""

ISLES_MODALITIES = ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax")
"""ISLES 2018 modalities read by default, in channel order (``CT_4DPWI`` is 4D)."""

_ISLES_TOKENS = {t.upper(): t for t in (*ISLES_MODALITIES, "CT_4DPWI", "MR_DWI", "OT")}
_WMH_LABEL_MAP = {2: 0}  # "other pathology" is background
_DISTANCE_MODES = ("3d", "2d")
_CACHE_VERSION = 1
_AFFINE_ATOL = 1e-3  # mm

C = TypeVar("C")


# ----------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case, as found by :func:`find_cases`.

    Attributes
    ----------
    case_id
        Unique name of the case (patient) within the data set.
    image_paths
        One file per modality, in channel order.
    label_path
        The label file, or ``None`` (test data).
    modalities
        Modality names, same order as ``image_paths``.
    label_map
        Label values to replace when loading (``{2: 0}`` for WMH), or ``None``.
    layout
        The layout it was found in (``"generic"``, ``"wmh"``, ``"isles"``).
    """

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path | None
    modalities: tuple[str, ...]
    label_map: Mapping[int, int] | None = None
    layout: str = "generic"


@dataclass(frozen=True, eq=False)
class Case:
    """One loaded case.

    Attributes
    ----------
    case_id
        Name of the case (patient).
    images
        ``(M, *spatial)`` float32, one channel per modality, 2 or 3 spatial axes.
    labels
        ``(*spatial)`` int64 class indices, or ``None``.
    spacing
        Voxel size per spatial axis in mm, numpy axis order.
    affine
        ``(4, 4)`` voxel-to-world matrix (mm) of the spatial axes.
    modalities
        ``M`` modality names.
    normalized
        The images are already normalised (a part of a volume normalised as a
        whole, ``core.presets.split_slices(normalize=)``): preprocessing leaves
        them as they are.
    """

    case_id: str
    images: np.ndarray
    labels: np.ndarray | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    modalities: tuple[str, ...]
    normalized: bool = False

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
            shape = getattr(images, "shape", None)
            raise ValueError(
                f"case {self.case_id}: images must be (M, *spatial) with 2 or 3 spatial axes, "
                f"got shape {shape}"
            )
        if images.dtype != np.float32:
            raise TypeError(f"case {self.case_id}: images must be float32, got {images.dtype}")
        spatial = images.shape[1:]
        if self.labels is not None:
            if self.labels.shape != spatial:
                raise ValueError(
                    f"case {self.case_id}: labels of shape {self.labels.shape} do not match "
                    f"the images' spatial shape {spatial}"
                )
            if self.labels.dtype != np.int64:
                raise TypeError(
                    f"case {self.case_id}: labels must be int64, got {self.labels.dtype}"
                )
        if len(self.spacing) != len(spatial):
            raise ValueError(
                f"case {self.case_id}: spacing {self.spacing} does not have one value per "
                f"spatial axis of {spatial}"
            )
        if len(self.modalities) != images.shape[0]:
            raise ValueError(
                f"case {self.case_id}: {len(self.modalities)} modality names "
                f"{self.modalities} for {images.shape[0]} image channels"
            )
        if np.shape(self.affine) != (4, 4):
            raise ValueError(
                f"case {self.case_id}: affine must be (4, 4), got {np.shape(self.affine)}"
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape of the spatial axes."""
        return tuple(self.images.shape[1:])


def case_from_arrays(
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    case_id: str = "case",
    modalities: Sequence[str] | None = None,
) -> Case:
    """Build a :class:`Case` from arrays (napari layers' data, for instance).

    Parameters
    ----------
    images
        One ``(*spatial)`` array (a single modality), or a list/tuple of them (one
        per modality, same shape). 2 or 3 spatial axes.
    labels
        ``(*spatial)`` integer-valued labels, or ``None``.
    spacing
        Voxel size per spatial axis (mm, numpy axis order; napari ``layer.scale``).
        Default 1.0 each.
    affine
        ``(4, 4)`` matrix; default ``diag(*spacing, 1)``.
    case_id
        Name of the case.
    modalities
        Channel names; default ``("0", "1", ...)``.
    """
    if isinstance(images, np.ndarray) or torch.is_tensor(images):
        volumes = [np.asarray(images)]
    else:
        volumes = [np.asarray(v) for v in images]
    if not volumes:
        raise ValueError(f"case {case_id}: no image given")
    shapes = {v.shape for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"case {case_id}: modalities have different shapes {sorted(shapes)}")
    spatial = volumes[0].shape
    if len(spatial) not in (2, 3):
        raise ValueError(f"case {case_id}: images must have 2 or 3 spatial axes, got {spatial}")
    stacked = np.stack([v.astype(np.float32, copy=False) for v in volumes])
    if spacing is None:
        spacing = (1.0,) * len(spatial)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != len(spatial) or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"case {case_id}: spacing {spacing} is not valid for shape {spatial}")
    lab = None
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != spatial:
            raise ValueError(
                f"case {case_id}: labels of shape {lab.shape} do not match images of shape {spatial}"
            )
        if lab.dtype.kind == "f":
            if not np.all(np.isfinite(lab)) or np.any(lab != np.rint(lab)):
                raise ValueError(f"case {case_id}: labels are not integer-valued")
        elif lab.dtype.kind not in "biu":
            raise TypeError(f"case {case_id}: labels must be integers, got dtype {lab.dtype}")
        lab = lab.astype(np.int64)
    if modalities is None:
        modalities = tuple(str(i) for i in range(len(volumes)))
    aff = default_affine(spacing) if affine is None else np.asarray(affine, dtype=np.float64)
    return Case(case_id, stacked, lab, spacing, aff, tuple(modalities))


# ----------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and is_nifti_path(p) and not p.name.startswith(".")
        ),
        key=lambda p: _natural_key(p.name),
    )


def _generic_modality_names(folder: Path, n: int) -> tuple[str, ...]:
    names = [f"{i:04d}" for i in range(n)]
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("ignoring %s: %s", meta_path, exc)
            return tuple(names)
        table = meta.get("channel_names") or meta.get("modality") or {}
        if isinstance(table, Mapping):
            for key, value in table.items():
                if str(key).isdigit() and int(key) < n:
                    names[int(key)] = str(value)
    return tuple(names)


def _find_generic(folder: Path, subset: str) -> list[CaseFiles]:
    suffix = "Tr" if subset == "train" else "Ts"
    image_dir, label_dir = folder / f"images{suffix}", folder / f"labels{suffix}"
    if not image_dir.is_dir():
        raise ValueError(f"{folder}: no images{suffix}/ folder")
    groups: dict[str, dict[int, Path]] = {}
    for path in _nifti_files(image_dir):
        match = re.fullmatch(r"(.+)_(\d{4})", nifti_stem(path))
        if match is None:
            raise ValueError(
                f"{path}: image names in {image_dir} must end with a 4-digit modality "
                "index, e.g. case_0000.nii.gz"
            )
        case_id, mod = match.group(1), int(match.group(2))
        if mod in groups.setdefault(case_id, {}):
            raise ValueError(f"{path}: two files for modality {mod} of case {case_id}")
        groups[case_id][mod] = path
    if not groups:
        raise ValueError(f"{image_dir} holds no .nii/.nii.gz files")
    n_mod = max(len(g) for g in groups.values())
    expected = set(range(n_mod))
    for case_id, mods in groups.items():
        if set(mods) != expected:
            raise ValueError(
                f"case {case_id} in {image_dir} has modalities {sorted(mods)}, expected "
                f"{sorted(expected)}"
            )
    labels = {nifti_stem(p): p for p in _nifti_files(label_dir)} if label_dir.is_dir() else {}
    if subset == "train":
        missing = [c for c in groups if c not in labels]
        if missing:
            raise ValueError(
                f"{label_dir}: no label file for case(s) {missing[:5]}"
                + (" ..." if len(missing) > 5 else "")
            )
    extra = sorted(set(labels) - set(groups))
    if extra:
        logger.warning("%s: labels without images ignored: %s", label_dir, extra[:5])
    names = _generic_modality_names(folder, n_mod)
    return [
        CaseFiles(
            case_id=case_id,
            image_paths=tuple(groups[case_id][m] for m in range(n_mod)),
            label_path=labels.get(case_id),
            modalities=names,
            label_map=None,
            layout="generic",
        )
        for case_id in sorted(groups, key=_natural_key)
    ]


def _find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii`` (any case), if present."""
    if not folder.is_dir():
        return None
    for path in _nifti_files(folder):
        if nifti_stem(path).lower() == stem.lower():
            return path
    return None


def _find_wmh(folder: Path, modalities: Sequence[str] | None) -> list[CaseFiles]:
    modalities = tuple(modalities) if modalities else WMH_MODALITIES
    flairs = sorted({p.parent for p in folder.rglob("pre/*") if nifti_stem(p).lower() == "flair"})
    if not flairs:
        raise ValueError(f"{folder}: no <site>/<id>/pre/FLAIR.nii.gz files")
    cases = []
    for pre in flairs:
        case_dir = pre.parent
        rel = case_dir.relative_to(folder)
        case_id = "_".join(rel.parts) if rel.parts else case_dir.name
        paths = []
        for mod in modalities:
            path = _find_nifti(pre, mod)
            if path is None:
                raise ValueError(f"case {case_id}: no {mod}.nii.gz in {pre}")
            paths.append(path)
        cases.append(
            CaseFiles(
                case_id=case_id,
                image_paths=tuple(paths),
                label_path=_find_nifti(case_dir, "wmh"),
                modalities=modalities,
                label_map=dict(_WMH_LABEL_MAP),
                layout="wmh",
            )
        )
    return sorted(cases, key=lambda c: _natural_key(c.case_id))


def _isles_token(path: Path) -> str | None:
    """The ISLES modality of a file name (``SMIR.Brain.XX.O.CT_CBF.345560.nii`` -> CT_CBF)."""
    stem = nifti_stem(path)
    for token in re.split(r"[.\s-]+", stem):
        if token.upper() in _ISLES_TOKENS:
            return _ISLES_TOKENS[token.upper()]
    upper = stem.upper()
    for key in sorted(_ISLES_TOKENS, key=len, reverse=True):
        if upper.endswith("_" + key):
            return _ISLES_TOKENS[key]
    return None


def _isles_case_dir(path: Path, root: Path) -> Path:
    for parent in path.parents:
        if parent == root.parent:
            break
        if re.fullmatch(r"case[_-]?\d+", parent.name, flags=re.IGNORECASE):
            return parent
    # SMIR layout: each file sits in a folder of its own name
    if nifti_stem(path) == path.parent.name and path.parent != root:
        return path.parent.parent
    return path.parent


def _find_isles(folder: Path, modalities: Sequence[str] | None) -> list[CaseFiles]:
    modalities = tuple(modalities) if modalities else ISLES_MODALITIES
    for mod in modalities:
        if mod.upper() not in _ISLES_TOKENS:
            raise ValueError(
                f"unknown ISLES modality {mod!r}; known: {sorted(_ISLES_TOKENS.values())}"
            )
    found: dict[Path, dict[str, Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not is_nifti_path(path) or is_hidden_or_temp(path):
            continue
        token = _isles_token(path)
        if token is None:
            continue
        case_dir = _isles_case_dir(path, folder)
        files = found.setdefault(case_dir, {})
        if token in files:
            raise ValueError(f"case {case_dir}: two {token} files: {files[token]} and {path}")
        files[token] = path
    if not found:
        raise ValueError(
            f"{folder}: no ISLES files (names holding a token CT, CT_CBF, CT_CBV, CT_MTT, "
            "CT_Tmax or OT)"
        )
    wanted = tuple(_ISLES_TOKENS[m.upper()] for m in modalities)
    cases = []
    for case_dir, files in found.items():
        missing = [m for m in wanted if m not in files]
        if missing:
            raise ValueError(
                f"case {case_dir}: no {', '.join(missing)} file (found {sorted(files)})"
            )
        cases.append(
            CaseFiles(
                case_id=case_dir.name,
                image_paths=tuple(files[m] for m in wanted),
                label_path=files.get("OT"),
                modalities=wanted,
                label_map=None,
                layout="isles",
            )
        )
    return sorted(cases, key=lambda c: _natural_key(c.case_id))


def find_cases(
    folder: str | os.PathLike,
    layout: str = "auto",
    subset: str = "train",
    modalities: Sequence[str] | None = None,
) -> list[CaseFiles]:
    """Find the cases of a data set folder.

    Layouts:

    - ``"generic"`` (nnU-Net style): ``imagesTr/<case>_<XXXX>.nii.gz`` for modality
      ``XXXX`` and ``labelsTr/<case>.nii.gz``; ``subset="test"`` reads ``imagesTs/``
      (and ``labelsTs/`` when present). Modality names come from ``dataset.json``
      (``channel_names`` or ``modality``) when present.
    - ``"wmh"`` (WMH 2017): ``<site>/<id>/pre/FLAIR.nii.gz``, ``pre/T1.nii.gz`` and
      ``<id>/wmh.nii.gz``; the case id is ``<site>_<id>``; label 2 (other
      pathology) becomes background when loaded.
    - ``"isles"`` (ISLES 2018 training): per-case folders ``case_N/`` holding files
      (or folders of files) whose names carry a modality token, e.g.
      ``case_1/SMIR.Brain.XX.O.CT_CBF.345560/SMIR.Brain.XX.O.CT_CBF.345560.nii``;
      ``OT`` is the label.

    Parameters
    ----------
    folder
        The data set folder.
    layout
        One of :data:`LAYOUTS`; ``"auto"`` tries generic, then wmh, then isles.
    subset
        ``"train"`` or ``"test"`` (generic layout only).
    modalities
        Modalities to read, in channel order (wmh and isles layouts); default
        :data:`WMH_MODALITIES` / :data:`ISLES_MODALITIES`.

    Returns
    -------
    list[CaseFiles]
        Sorted by case id (naturally: ``case_2`` before ``case_10``).

    Raises
    ------
    ValueError
        No layout matches (the message says what was looked for), or a case is
        incomplete (the message names it and the missing file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    if layout == "generic":
        return _find_generic(folder, subset)
    if layout == "wmh":
        return _find_wmh(folder, modalities)
    if layout == "isles":
        return _find_isles(folder, modalities)
    suffix = "Tr" if subset == "train" else "Ts"
    if (folder / f"images{suffix}").is_dir():
        return _find_generic(folder, subset)
    if any(nifti_stem(p).lower() == "flair" for p in folder.rglob("pre/*")):
        return _find_wmh(folder, modalities)
    try:
        return _find_isles(folder, modalities)
    except ValueError as exc:
        if "no ISLES files" not in str(exc):
            raise
    raise ValueError(
        f"{folder}: no known data set layout found. Looked for: images{suffix}/ "
        f"(+ labels{suffix}/) with <case>_0000.nii.gz names (generic); "
        "<site>/<id>/pre/FLAIR.nii.gz with <id>/wmh.nii.gz (WMH 2017); case folders with "
        "files named by CT, CT_CBF, CT_CBV, CT_MTT, CT_Tmax, OT (ISLES 2018)"
    )


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------


def load_case(case_files: CaseFiles, affine_atol: float = _AFFINE_ATOL) -> Case:
    """Read the files of a case and check that they agree.

    Parameters
    ----------
    case_files
        As returned by :func:`find_cases`.
    affine_atol
        Largest allowed difference (mm) between the affines of the files.

    Returns
    -------
    Case
        ``images (M, *spatial)`` float32, ``labels`` int64 with ``label_map``
        applied (or ``None``), spacing and affine of the first modality.

    Raises
    ------
    ValueError
        The files differ in shape or affine (the message names both files and
        their shapes/affines), a file is not 3D, or a label file is not integer-valued.
    """
    if not case_files.image_paths:
        raise ValueError(f"case {case_files.case_id}: no image files")
    volumes = [read_nifti(p, as_labels=False, ndim=3) for p in case_files.image_paths]
    for path, vol in zip(case_files.image_paths, volumes, strict=True):
        check_finite(vol.data, path)  # the message names the file
    ref, ref_path = volumes[0], case_files.image_paths[0]
    paths_and_vols = list(zip(case_files.image_paths, volumes, strict=True))
    label_vol = None
    if case_files.label_path is not None:
        label_vol = read_nifti(case_files.label_path, as_labels=True, ndim=3)
        paths_and_vols.append((case_files.label_path, label_vol))
    for path, vol in paths_and_vols[1:]:
        if vol.data.shape != ref.data.shape:
            raise ValueError(
                f"case {case_files.case_id}: {path} has shape {vol.data.shape} but "
                f"{ref_path} has shape {ref.data.shape}"
            )
        if not np.allclose(vol.affine, ref.affine, rtol=0, atol=affine_atol):
            diff = float(np.abs(vol.affine - ref.affine).max())
            raise ValueError(
                f"case {case_files.case_id}: the affine of {path} differs from that of "
                f"{ref_path} by up to {diff:.4g} mm (tolerance {affine_atol} mm)"
            )
    labels = None
    if label_vol is not None:
        labels = label_vol.data.astype(np.int64)
        if case_files.label_map:
            source = labels.copy()
            for src, dst in case_files.label_map.items():
                labels[source == int(src)] = int(dst)
    images = np.stack([v.data for v in volumes]).astype(np.float32, copy=False)
    return Case(
        case_id=case_files.case_id,
        images=images,
        labels=labels,
        spacing=ref.spacing,
        affine=ref.affine,
        modalities=tuple(case_files.modalities),
    )


def iter_load_cases(
    case_files: Sequence[CaseFiles], affine_atol: float = _AFFINE_ATOL
) -> Generator[Progress, None, list[Case]]:
    """Load several cases, yielding ``Progress`` after each; returns the list of cases."""
    total = len(case_files)
    yield Progress(0, total, "loading cases")
    cases = []
    for i, files in enumerate(case_files):
        cases.append(load_case(files, affine_atol=affine_atol))
        yield Progress(i + 1, total, f"loaded {files.case_id}")
    return cases


def load_cases(case_files: Sequence[CaseFiles], affine_atol: float = _AFFINE_ATOL) -> list[Case]:
    """:func:`iter_load_cases` run to its end."""
    return run_to_end(iter_load_cases(case_files, affine_atol))


def split_cases(
    cases: Sequence[C],
    val_fraction: float = 0.2,
    seed: int = 0,
    group: Callable[[C], str] | None = None,
) -> tuple[list[C], list[C]]:
    """Patient-wise, deterministic train/validation split.

    Cases are grouped by ``group(case)`` (default: ``case.case_id``); groups are
    shuffled with ``seed`` after sorting them by name, so the split does not depend
    on the input order. ``round(val_fraction * n_groups)`` groups go to validation,
    at least one when there are two groups or more and ``val_fraction > 0``, and
    never all of them.

    Parameters
    ----------
    cases
        :class:`Case` or :class:`CaseFiles` objects (anything ``group`` accepts).
    val_fraction
        In ``[0, 1)``.
    seed
        Seed of the shuffle.
    group
        Patient of a case, for data sets with several cases per patient.

    Returns
    -------
    (train, val)
        Two lists, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    key = group if group is not None else (lambda c: c.case_id)
    names = [str(key(c)) for c in cases]
    groups = sorted(set(names), key=_natural_key)
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    else:
        n_val = 0
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    train = [c for c, n in zip(cases, names, strict=True) if n not in val_groups]
    val = [c for c, n in zip(cases, names, strict=True) if n in val_groups]
    return train, val


# ----------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------


CROP_MARGIN = 4
"""Voxels kept around the head when volumes are cropped to it."""

ZSCORE_PERCENTILES = (0.5, 99.5)
"""Percentiles of the head's intensities that ``zscore`` clips at."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case becomes network input; each step switchable.

    The defaults are the paper's (and this package's first versions'): min–max
    scaling, slices along stored axis 2 resized to 256². The training config
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
        if self.slice_size is not None and (
            not isinstance(self.slice_size, int) or self.slice_size < 1
        ):
            raise ValueError(
                f"slice_size must be a positive integer or None, got {self.slice_size!r}"
            )
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
class _Prepared:
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


def preprocess_case(case: Case, preprocess: PreprocessConfig = PreprocessConfig()) -> _Prepared:  # noqa: B008
    """Orient, normalise, slice and resize (or resample) one case.

    Returns an object with ``images (D, M, H, W)`` float32, ``labels (D, H, W)``
    int64 or ``None``, ``spacing`` (slicing axis, row, column) in mm after
    resizing and ``slice_index (D,)``; and what it takes to go back
    (``orientation``, ``axis``, ``native_hw``). Empty slices are *not* dropped here.
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
    return _Prepared(
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


# ----------------------------------------------------------------------------
# distance maps with a cache
# ----------------------------------------------------------------------------


class DistanceCache:
    """Signed distance maps keyed by a content hash, in memory and on disk.

    Parameters
    ----------
    cache_dir
        Folder for ``dist-<hash>.npy`` files (created if missing); ``None``: no
        disk cache.
    memory
        Keep computed maps in memory too (share one cache between builds to reuse
        them; the data set itself already holds its maps).

    Attributes
    ----------
    hits, misses
        Counters of lookups answered from the cache and computed.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, memory: bool = True) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.memory = memory
        self._store: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(labels: np.ndarray, num_classes: int, spacing: Sequence[float], mode: str) -> str:
        """Content hash of the labels (values and shape), spacing, mode and class count."""
        digest = hashlib.sha256()
        arr = np.ascontiguousarray(labels, dtype=np.int32)
        meta = {
            "v": _CACHE_VERSION,
            "shape": list(arr.shape),
            "spacing": [round(float(s), 6) for s in spacing],
            "mode": mode,
            "num_classes": int(num_classes),
        }
        digest.update(json.dumps(meta, sort_keys=True).encode())
        digest.update(arr.tobytes())
        return digest.hexdigest()[:32]

    def _path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"dist-{key}.npy"

    def get(
        self, labels: np.ndarray, num_classes: int, spacing: Sequence[float], mode: str
    ) -> np.ndarray:
        """Distance maps of ``labels (D, H, W)``: ``(C, D, H, W)`` float32, in mm.

        ``mode="3d"``: one 3D map per class with ``spacing`` (D, H, W axes);
        ``"2d"``: one 2D map per slice (axis 0), the spacing of axis 0 unused.
        """
        if mode not in _DISTANCE_MODES:
            raise ValueError(f"distance must be one of {_DISTANCE_MODES}, got {mode!r}")
        key = self.key(labels, num_classes, spacing, mode)
        expected = (num_classes, *labels.shape)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        path = self._path(key)
        if path is not None and path.is_file():
            try:
                maps = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                logger.warning("unreadable cache file %s (%s): recomputing", path, exc)
            else:
                if maps.shape == expected and maps.dtype == np.float32:
                    self.hits += 1
                    if self.memory:
                        self._store[key] = maps
                    return maps
                logger.warning(
                    "cache file %s has shape %s, expected %s: recomputing",
                    path,
                    maps.shape,
                    expected,
                )
        self.misses += 1
        maps = _distance.class_distance_maps(
            labels, num_classes, spacing=tuple(spacing), axis=None if mode == "3d" else 0
        )
        maps = np.ascontiguousarray(maps, dtype=np.float32)
        if self.memory:
            self._store[key] = maps
        if path is not None:
            _save_npy_atomic(path, maps)
        return maps


def _check_training_labels(case: Case, num_classes: int) -> None:
    """ValueError naming the case when it has no labels or label values outside
    ``0..num_classes-1`` (a training data set needs both)."""
    if case.labels is None:
        raise ValueError(f"case {case.case_id} has no labels; a training data set needs them")
    lo, hi = int(case.labels.min()), int(case.labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"case {case.case_id}: label values in [{lo}, {hi}] but num_classes={num_classes}"
        )


def iter_check_cases(
    sources: Sequence[Any],
    num_classes: int,
    canonical: bool = False,
    in_channels: tuple[int, str] | None = None,
) -> Generator[Progress, None, list[tuple[int, ...]]]:
    """Read and check every case before any work is written.

    Files (:class:`CaseFiles`) are read one at a time (shapes, affines, finite
    values, integer labels: :func:`load_case`), label values are checked
    against ``num_classes`` and the modality counts against each other, so a
    bad case is refused before the first cache entry is written; with
    ``in_channels=(n, checkpoint)``, so is a case whose modality count is not
    the checkpoint's. Returns the spatial shape of each case (canonical when
    ``canonical``).
    """
    shapes: list[tuple[int, ...]] = []
    channels: dict[int, str] = {}
    total = len(sources)
    yield Progress(0, total, "checking cases")
    for i, source in enumerate(sources):
        case = load_case(source) if hasattr(source, "image_paths") else source
        _check_training_labels(case, num_classes)
        channels.setdefault(int(case.images.shape[0]), str(case.case_id))
        if in_channels is not None and int(case.images.shape[0]) != in_channels[0]:
            raise ValueError(
                f"case {case.case_id} has {case.images.shape[0]} modalities but "
                f"{in_channels[1]} takes {in_channels[0]} (in_channels)"
            )
        if len(channels) > 1:
            detail = ", ".join(f"{name}: {n}" for n, name in channels.items())
            raise ValueError(f"cases have different numbers of modalities ({detail})")
        shape = tuple(int(n) for n in case.images.shape[1:])
        if canonical and len(shape) == 3:
            shape = canonical_orientation(case.affine).shape(shape)
        shapes.append(shape)
        del case
        yield Progress(i + 1, total, f"checked {source.case_id}")
    return shapes


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


# ----------------------------------------------------------------------------
# the slice data set
# ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Built:
    images: torch.Tensor
    labels: torch.Tensor
    dist: torch.Tensor
    case_index: np.ndarray
    slice_index: np.ndarray
    case_ids: tuple[str, ...]
    case_spacing: tuple[tuple[float, float, float], ...]
    modalities: tuple[str, ...]
    num_classes: int
    preprocess: PreprocessConfig
    distance: str
    meta: dict = field(default_factory=dict)


def _iter_build(
    cases: Sequence[Case],
    num_classes: int,
    preprocess: PreprocessConfig,
    distance: str,
    cache_dir: str | os.PathLike | None,
    cache: DistanceCache | None,
) -> Generator[Progress, None, _Built]:
    if distance not in _DISTANCE_MODES:
        raise ValueError(f"distance must be one of {_DISTANCE_MODES}, got {distance!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to build a data set from")
    if cache is None:
        cache = DistanceCache(cache_dir, memory=False)
    elif cache_dir is not None and cache.cache_dir != Path(cache_dir):
        raise ValueError("give either cache or cache_dir, not both with different folders")
    n_mod = cases[0].images.shape[0]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate case ids {dup}")
    for case in cases:
        if case.images.shape[0] != n_mod:
            raise ValueError(
                f"case {case.case_id} has {case.images.shape[0]} modalities, "
                f"case {cases[0].case_id} has {n_mod}"
            )
        _check_training_labels(case, num_classes)

    total = len(cases)
    yield Progress(0, total, "preparing slices")
    prepared: list[_Prepared] = []
    keep: list[np.ndarray] = []
    for case in cases:  # pass 1: slices and labels (cheap), to size the tensors
        prep = preprocess_case(case, preprocess)
        prepared.append(prep)
        if preprocess.skip_empty_slices:
            keep.append(prep.labels.reshape(len(prep.labels), -1).any(axis=1))
        else:
            keep.append(np.ones(len(prep.labels), dtype=bool))
    sizes = {p.images.shape[2:] for p in prepared}
    if len(sizes) != 1:
        detail = ", ".join(
            f"{c.case_id}: {p.images.shape[2:]}" for c, p in zip(cases, prepared, strict=True)
        )
        raise ValueError(f"slices differ in size ({detail}); set PreprocessConfig.slice_size")
    (height, width) = sizes.pop()
    n = int(sum(k.sum() for k in keep))
    if n == 0:
        raise ValueError("no slices left (all are empty and skip_empty_slices=True)")
    images = torch.empty((n, n_mod, height, width), dtype=torch.float32)
    # class indices stored as uint8 (an eighth of int64's memory); items and
    # batches come out as int64 (SliceDataset.__getitem__, train.collate)
    label_dtype = torch.uint8 if num_classes <= 256 else torch.int64
    labels = torch.empty((n, height, width), dtype=label_dtype)
    dist = torch.empty((n, num_classes, height, width), dtype=torch.float32)
    case_index = np.empty(n, dtype=np.int64)
    slice_index = np.empty(n, dtype=np.int64)
    case_spacing = tuple(p.spacing for p in prepared)
    start = 0
    for i, (case, prep, kept) in enumerate(zip(cases, prepared, keep, strict=True)):
        maps = cache.get(prep.labels, num_classes, prep.spacing, distance)  # (C, D, H, W)
        idx = np.flatnonzero(kept)
        stop = start + idx.size
        images[start:stop] = torch.from_numpy(prep.images[idx])
        labels[start:stop] = torch.from_numpy(prep.labels[idx])
        dist[start:stop] = torch.from_numpy(np.ascontiguousarray(np.swapaxes(maps[:, idx], 0, 1)))
        case_index[start:stop] = i
        slice_index[start:stop] = prep.slice_index[idx]
        start = stop
        prepared[i] = None  # free the per-case copy
        yield Progress(i + 1, total, f"distance maps of {case.case_id}")
    return _Built(
        images=images,
        labels=labels,
        dist=dist,
        case_index=case_index,
        slice_index=slice_index,
        case_ids=tuple(ids),
        case_spacing=case_spacing,
        modalities=tuple(cases[0].modalities),
        num_classes=num_classes,
        preprocess=preprocess,
        distance=distance,
        meta={"cache_hits": cache.hits, "cache_misses": cache.misses},
    )


class SliceDataset(Dataset):
    """2D slices of preprocessed cases with their distance maps, all in memory.

    Everything is computed once, at construction: ``__getitem__`` only indexes
    preallocated tensors, and a trainer may index :attr:`images`, :attr:`labels`
    and :attr:`dist` with a batch of indices directly.

    Parameters
    ----------
    cases
        Cases with labels (values in ``[0, num_classes)``), same number of modalities.
    num_classes
        Number of classes ``C``, background included (>= 2).
    preprocess
        The preprocessing (:class:`PreprocessConfig`).
    distance
        ``"3d"``: maps of the whole (resized) volume with its spacing (the
        paper's); ``"2d"``: each slice on its own.
    cache_dir
        Folder of the on-disk distance map cache, or ``None``.
    cache
        A :class:`DistanceCache` to share between builds (takes ``cache_dir``'s place).

    Attributes
    ----------
    images
        ``(N, M, H, W)`` float32 tensor.
    labels
        ``(N, H, W)`` uint8 tensor of class indices (int64 beyond 256 classes);
        items and batches give them as int64.
    dist
        ``(N, C, H, W)`` float32 tensor, signed distances in mm.
    case_index, slice_index
        ``(N,)`` int64 arrays: the case (index into :attr:`case_ids`) of each slice
        and its index along the slicing axis of that case.
    case_ids
        Case ids in input order.
    case_spacing
        Per case, the (slicing axis, row, column) voxel size in mm after resizing.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        num_classes: int,
        preprocess: PreprocessConfig = PreprocessConfig(),  # noqa: B008
        distance: str = "3d",
        cache_dir: str | os.PathLike | None = None,
        cache: DistanceCache | None = None,
    ) -> None:
        built = run_to_end(_iter_build(cases, num_classes, preprocess, distance, cache_dir, cache))
        self._assign(built)

    def _assign(self, built: _Built) -> None:
        self.images = built.images
        self.labels = built.labels
        self.dist = built.dist
        self.case_index = built.case_index
        self.slice_index = built.slice_index
        self.case_ids = built.case_ids
        self.case_spacing = built.case_spacing
        self.modalities = built.modalities
        self.num_classes = built.num_classes
        self.preprocess = built.preprocess
        self.distance = built.distance
        self.cache_hits = built.meta.get("cache_hits", 0)
        self.cache_misses = built.meta.get("cache_misses", 0)

    @classmethod
    def _from_built(cls, built: _Built) -> SliceDataset:
        obj = cls.__new__(cls)
        obj._assign(built)
        return obj

    @classmethod
    def build(
        cls,
        cases: Sequence[Case],
        num_classes: int,
        preprocess: PreprocessConfig = PreprocessConfig(),  # noqa: B008
        distance: str = "3d",
        cache_dir: str | os.PathLike | None = None,
        cache: DistanceCache | None = None,
        callback: Callable[[Progress], None] | None = None,
    ) -> SliceDataset:
        """:func:`iter_build_dataset` run to its end, calling ``callback`` on each event."""
        return run_to_end(
            iter_build_dataset(cases, num_classes, preprocess, distance, cache_dir, cache), callback
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image (M, H, W) float32, labels (H, W) int64, dist (C, H, W) float32)``."""
        return self.images[index], self.labels[index].long(), self.dist[index]

    @property
    def num_modalities(self) -> int:
        """Number of input channels ``M``."""
        return int(self.images.shape[1])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every slice."""
        return (int(self.images.shape[2]), int(self.images.shape[3]))

    def case_slices(self, case: int | str) -> np.ndarray:
        """Indices (into this data set) of the slices of a case, by position or id."""
        if isinstance(case, str):
            if case not in self.case_ids:
                raise KeyError(f"no case {case!r} in this data set")
            case = self.case_ids.index(case)
        return np.flatnonzero(self.case_index == case)


def iter_build_dataset(
    cases: Sequence[Case],
    num_classes: int,
    preprocess: PreprocessConfig = PreprocessConfig(),  # noqa: B008
    distance: str = "3d",
    cache_dir: str | os.PathLike | None = None,
    cache: DistanceCache | None = None,
) -> Generator[Progress, None, SliceDataset]:
    """Build a :class:`SliceDataset`, yielding ``Progress`` (one step per case).

    Returns the data set (napari's ``thread_worker`` emits it as ``returned``).
    Arguments as for :class:`SliceDataset`.
    """
    built = yield from _iter_build(cases, num_classes, preprocess, distance, cache_dir, cache)
    return SliceDataset._from_built(built)
