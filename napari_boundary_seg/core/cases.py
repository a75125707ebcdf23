"""Cases: one patient's modality volumes and labels, found, read, checked and split.

A *case* is one patient: ``M`` co-registered modality volumes and an optional
label volume. Cases are found in a folder (:func:`find_cases`, three layouts:
generic nnU-Net style, WMH 2017, ISLES 2018), read (:func:`load_case`,
:func:`iter_load_cases`) or built from arrays (:func:`case_from_arrays`),
checked before any work is written (:func:`iter_check_cases`) and split
patient-wise (:func:`split_cases`). How a case becomes network input is
:mod:`~napari_boundary_seg.core.preprocess`; see ``docs/DESIGN.md``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from napari_boundary_seg.core.io import (
    check_finite,
    default_affine,
    is_hidden_or_temp,
    is_nifti_path,
    nifti_stem,
    read_nifti,
)
from napari_boundary_seg.core.orientation import canonical_orientation
from napari_boundary_seg.core.progress import Progress, blocking

logger = logging.getLogger(__name__)

__all__ = [
    "ISLES_MODALITIES",
    "LAYOUTS",
    "WMH_MODALITIES",
    "Case",
    "CaseFiles",
    "case_from_arrays",
    "check_training_labels",
    "find_cases",
    "iter_check_cases",
    "iter_load_cases",
    "load_case",
    "load_cases",
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
    torch = sys.modules.get("torch")  # not imported: images cannot be a tensor
    if isinstance(images, np.ndarray) or (torch is not None and torch.is_tensor(images)):
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
    """Load several cases (:func:`load_case`), yielding ``Progress`` after each.

    Parameters
    ----------
    case_files
        As returned by :func:`find_cases`.
    affine_atol
        Largest allowed difference (mm) between the affines of a case's files.

    Returns
    -------
    list[Case]
        The cases, in the order of ``case_files``.
    """
    total = len(case_files)
    yield Progress(0, total, "loading cases")
    cases = []
    for i, files in enumerate(case_files):
        cases.append(load_case(files, affine_atol=affine_atol))
        yield Progress(i + 1, total, f"loaded {files.case_id}")
    return cases


load_cases = blocking(iter_load_cases)


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


def check_training_labels(case: Case, num_classes: int) -> None:
    """ValueError naming the case when it has no labels or label values outside
    ``0..num_classes-1`` (every training data set and cache entry needs both)."""
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
        check_training_labels(case, num_classes)
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
