"""The entries of the case cache: one writer, one reader, for volumes and slices.

Training prepares every case once into a cache folder and reads it back
memory-mapped (``docs/DESIGN.md``, "The data cache"). An *entry* is one case
prepared under one set of settings, a folder ``<prefix><key>/`` holding one
``<name>.npy`` per array and a ``meta.json``:

``vol-<key>/`` (:class:`VolumeEntry`, :func:`iter_cache_cases`, 3D patches)
    ``image.npy (M, *V)`` float32 (scaled), ``labels.npy (*V)`` uint8,
    ``dist.npy (C, *V)`` float32 (φ of the whole volume, mm), ``fg.npy (K, nd)``
    int32 (the foreground voxels, for oversampling).
``sl-<key>/`` (:class:`SliceEntry`, :func:`iter_cache_slices`, the paper's 2D slices)
    ``images.npy (D, M, S, S)`` float32, ``labels.npy (D, S, S)`` uint8,
    ``dist.npy (D, C, S, S)`` float32, slice-major so that a slice is one read;
    exactly the slices and φ of the in-memory
    :class:`~napari_boundary_seg.core.data.SliceDataset`
    (:func:`~napari_boundary_seg.core.preprocess.preprocess_case`).

``key`` (:func:`volume_key`) is a content hash of the case (the bytes of its
files, or of its arrays) and of the settings: a changed file or setting makes
a new entry and leaves the others valid. :func:`write_entry` writes an entry
whole or not at all (a temporary folder beside it, renamed), so a crash leaves
no half entry; :func:`read_entry` opens one, checked (every array present, the
meta complete, the arrays' shapes those the meta gives), and reports a missing,
unfinished or damaged entry as ``None`` so that it is written again. Arrays are
opened with ``numpy.load(..., mmap_mode="r")``: training reads only what it
samples. The in-memory slice data set's distance maps use
:func:`save_npy_atomic` (``dist-<key>.npy`` files).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from napari_boundary_seg.core.cases import check_training_labels, load_case
from napari_boundary_seg.core.distance import class_distance_maps, phi_maps
from napari_boundary_seg.core.io import OutputError, _is_out_of_space, atomic_path
from napari_boundary_seg.core.preprocess import (
    PreprocessConfig,
    canonical_case,
    preprocess_case,
    scale_images,
)
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)

__all__ = [
    "CacheEntry",
    "OpenArrays",
    "SliceEntry",
    "VolumeEntry",
    "iter_cache_cases",
    "iter_cache_slices",
    "open_array",
    "read_entry",
    "save_npy_atomic",
    "volume_key",
    "write_entry",
]

CACHE_VERSION = 1
"""Part of every key: raising it makes new entries for every case."""

E = TypeVar("E", bound="CacheEntry")

_FROM_JSON: dict[str, Callable[[Any], Any]] = {  # an entry field's type -> its JSON reader
    "str": str,
    "int": int,
    "tuple[int, ...]": lambda v: tuple(int(x) for x in v),
    "tuple[float, ...]": lambda v: tuple(float(x) for x in v),
    "tuple[float, float, float]": lambda v: tuple(float(x) for x in v),
    "tuple[bool, ...]": lambda v: tuple(bool(x) for x in v),
    "tuple[str, ...]": tuple,
    "tuple[tuple[float, ...], ...]": lambda v: tuple(tuple(float(x) for x in row) for row in v),
}


# ---------------------------------------------------------------------------
# keys


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def volume_key(source: Any, settings: dict[str, Any]) -> str:
    """Content hash of a case (``CaseFiles``: its files' bytes; ``Case``: its arrays) and settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": CACHE_VERSION, **settings}, sort_keys=True).encode())
    if hasattr(source, "image_paths"):  # CaseFiles
        digest.update(
            json.dumps(
                {
                    "case_id": source.case_id,
                    "modalities": list(source.modalities),
                    "label_map": {str(k): int(v) for k, v in (source.label_map or {}).items()},
                }
            ).encode()
        )
        for path in (*source.image_paths, source.label_path):
            digest.update(b"|file|")
            if path is not None:
                _hash_file(digest, Path(path))
    else:  # Case
        meta = {
            "case_id": source.case_id,
            "shape": list(source.images.shape),
            "spacing": [round(float(s), 6) for s in source.spacing],
            "affine": np.round(np.asarray(source.affine, dtype=np.float64), 6).tolist(),
            "modalities": list(source.modalities),
        }
        if getattr(source, "normalized", False):  # only then: other keys stay the same
            meta["normalized"] = True
        digest.update(json.dumps(meta).encode())
        digest.update(np.ascontiguousarray(source.images).tobytes())
        digest.update(np.ascontiguousarray(source.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


# ---------------------------------------------------------------------------
# the writer


def _save_npy(target: str | os.PathLike, array: np.ndarray, folder: Path, final: Path) -> None:
    try:
        np.save(target, array, allow_pickle=False)
    except OSError as err:  # numpy's own words on a full disk name bytes, not the cause
        if _is_out_of_space(folder):
            raise OutputError(errno.ENOSPC, final) from err
        raise


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """One ``.npy`` file written atomically (a temporary file beside it, renamed)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another process wrote the same entry meanwhile
        if not (final / "meta.json").is_file():
            raise


def write_entry(final: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write one cache entry whole or not at all: ``<name>.npy`` of each array
    and ``meta.json`` into a temporary folder beside ``final``, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        for name, array in arrays.items():
            _save_npy(tmp / f"{name}.npy", array, final.parent, final)
        (tmp / "meta.json").write_text(json.dumps(meta))
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# the reader


def open_array(folder: Path, name: str) -> np.ndarray:
    """``<folder>/<name>.npy`` of a cache entry, memory-mapped read-only."""
    return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)


@dataclass(frozen=True)
class CacheEntry:
    """One case prepared in the cache: the folder, its meta, arrays opened on demand.

    Subclasses name their ``PREFIX``, ``ARRAYS`` and fields (each read from the
    ``meta.json`` key of its name, :meth:`from_meta`) and give the shape each
    array must have (:meth:`expected_shapes`).
    """

    PREFIX: ClassVar[str] = ""
    ARRAYS: ClassVar[tuple[str, ...]] = ()

    path: Path

    def open(self, name: str) -> np.ndarray:
        """One of :attr:`ARRAYS`, memory-mapped read-only."""
        return open_array(self.path, name)

    def arrays(self) -> dict[str, np.ndarray]:
        """All of :attr:`ARRAYS`, memory-mapped read-only."""
        return {name: self.open(name) for name in self.ARRAYS}

    @classmethod
    def from_meta(cls: type[E], path: Path, meta: dict[str, Any]) -> E:
        """The entry of ``meta.json``'s values, each field converted by its type."""
        values = {
            f.name: _FROM_JSON[str(f.type)](meta[f.name])
            for f in dataclasses.fields(cls)
            if f.name != "path"
        }
        return cls(path=path, **values)

    def expected_shapes(self) -> dict[str, Callable[[tuple[int, ...]], bool]]:
        """Per array, whether a shape fits this entry's meta."""
        return {}

    @classmethod
    def read(cls: type[E], path: Path) -> E:
        """The entry in ``path``; ValueError when it is missing, unfinished or damaged."""
        entry = read_entry(path, cls)
        if entry is None:
            raise ValueError(f"{path} is not a complete cache entry")
        return entry


def read_entry(folder: Path, kind: type[E]) -> E | None:
    """The entry of kind ``kind`` in ``folder``, checked: every array present,
    ``meta.json`` readable and complete, each array's shape the one the meta
    gives. ``None`` when the entry is missing, unfinished or damaged."""
    if not all((folder / f"{name}.npy").is_file() for name in kind.ARRAYS):
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        entry = kind.from_meta(folder, meta)
        for name, fits in entry.expected_shapes().items():
            if not fits(tuple(open_array(folder, name).shape)):
                raise ValueError(f"{name}.npy does not match meta.json")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("damaged cache entry %s (%s): written again", folder, exc)
        return None
    return entry


class OpenArrays:
    """The memory maps of the last few cases used (least recently used dropped).

    Pages read through a memory map count in the process's resident memory
    while the map is open; keeping only ``size`` cases mapped keeps
    that bounded however many cases a long run visits (the pages stay in the
    system's file cache, not in the process).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._maps: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def get(self, key: int, opener: Any) -> dict[str, np.ndarray]:
        if key in self._maps:
            self._maps.move_to_end(key)
        else:
            self._maps[key] = opener()
            while len(self._maps) > self.size:
                self._maps.popitem(last=False)
        return self._maps[key]

    def __setitem__(self, key: int, value: dict[str, np.ndarray]) -> None:
        self._maps[key] = value


# ---------------------------------------------------------------------------
# the two kinds


@dataclass(frozen=True)
class VolumeEntry(CacheEntry):
    """One case prepared whole for 3D patches (arrays memory-mapped on demand):
    ``image``, ``labels``, ``dist`` and ``fg``."""

    PREFIX: ClassVar[str] = "vol-"
    ARRAYS: ClassVar[tuple[str, ...]] = ("image", "labels", "dist", "fg")

    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    modalities: tuple[str, ...]
    affine: tuple[tuple[float, ...], ...]
    num_classes: int
    num_foreground: int

    def expected_shapes(self) -> dict[str, Callable[[tuple[int, ...]], bool]]:
        shape, nd = self.shape, len(self.shape)
        return {
            "image": lambda s: s == (len(self.modalities), *shape),
            "labels": lambda s: s == shape,
            "dist": lambda s: s == (self.num_classes, *shape),
            "fg": lambda s: s == (self.num_foreground, nd),
        }


@dataclass(frozen=True)
class SliceEntry(CacheEntry):
    """One case prepared as the paper's 2D slices (arrays memory-mapped on demand).

    ``images (D, M, S, S)`` float32, ``labels (D, S, S)`` uint8, ``dist (D, C, S, S)``
    float32 (mm), in slice-major order so that a slice is one contiguous read.
    """

    PREFIX: ClassVar[str] = "sl-"
    ARRAYS: ClassVar[tuple[str, ...]] = ("images", "labels", "dist")

    case_id: str
    spacing: tuple[float, float, float]
    slice_index: tuple[int, ...]
    nonempty: tuple[bool, ...]
    modalities: tuple[str, ...]
    num_classes: int

    def expected_shapes(self) -> dict[str, Callable[[tuple[int, ...]], bool]]:
        depth, m, c = len(self.slice_index), len(self.modalities), self.num_classes
        return {
            "images": lambda s: len(s) == 4 and s[:2] == (depth, m),
            "labels": lambda s: len(s) == 3 and s[0] == depth,
            "dist": lambda s: len(s) == 4 and s[:2] == (depth, c),
        }


def _volume_arrays(
    case: Any,
    num_classes: int,
    scale: bool,
    percentiles: Any,
    normalize: str,
    canonical: bool,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A case's :class:`VolumeEntry` arrays and meta."""
    check_training_labels(case, num_classes)
    if canonical:
        case = canonical_case(case)
    images = np.ascontiguousarray(
        scale_images(case, scale, percentiles, normalize), dtype=np.float32
    )
    label_dtype = np.uint8 if num_classes <= 256 else np.int64
    labels = np.ascontiguousarray(case.labels, dtype=label_dtype)
    spacing = tuple(float(s) for s in case.spacing)
    dist = np.ascontiguousarray(
        class_distance_maps(case.labels, num_classes, spacing=spacing), dtype=np.float32
    )
    fg = np.argwhere(case.labels > 0).astype(np.int32)
    meta = {
        "case_id": str(case.case_id),
        "shape": list(labels.shape),
        "spacing": list(spacing),
        "modalities": [str(m) for m in case.modalities],
        "affine": np.asarray(case.affine, dtype=np.float64).tolist(),
        "num_classes": int(num_classes),
        "num_foreground": int(len(fg)),
    }
    return {"image": images, "labels": labels, "dist": dist, "fg": fg}, meta


def _slice_arrays(
    case: Any,
    num_classes: int,
    preprocess: PreprocessConfig,
    distance: str,
    phi_units: str = "mm",
    empty_slices: str = "distance",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A case's :class:`SliceEntry` arrays and meta."""
    check_training_labels(case, num_classes)
    prep = preprocess_case(case, preprocess)
    label_dtype = np.uint8 if num_classes <= 256 else np.int64
    maps = phi_maps(prep.labels, num_classes, prep.spacing, distance, phi_units, empty_slices)
    dist = np.ascontiguousarray(np.swapaxes(np.asarray(maps, dtype=np.float32), 0, 1))
    del maps
    arrays = {
        "images": np.ascontiguousarray(prep.images, dtype=np.float32),
        "labels": np.ascontiguousarray(prep.labels, dtype=label_dtype),
        "dist": dist,
    }
    meta = {
        "case_id": str(case.case_id),
        "spacing": [float(v) for v in prep.spacing],
        "slice_index": [int(i) for i in prep.slice_index],
        "nonempty": prep.labels.reshape(len(prep.labels), -1).any(axis=1).tolist(),
        "modalities": [str(m) for m in case.modalities],
        "num_classes": int(num_classes),
    }
    return arrays, meta


def _iter_cache(
    sources: Sequence[Any],
    cache_dir: str | os.PathLike,
    kind: type[E],
    settings: dict[str, Any],
    prepare: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, Any]]],
    start: str,
    step: str,
) -> Generator[Progress, None, list[E]]:
    """Each source's entry of ``kind``, read when present and complete, else
    prepared (``prepare(case)``) and written; one case in memory at a time."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    entries: list[E] = []
    total = len(sources)
    hits = 0
    yield Progress(0, total, start)
    for i, source in enumerate(sources):
        final = cache / f"{kind.PREFIX}{volume_key(source, settings)}"
        entry = read_entry(final, kind)
        if entry is None:
            if final.is_dir():  # published but damaged: written again
                shutil.rmtree(final, ignore_errors=True)
            case = load_case(source) if hasattr(source, "image_paths") else source
            write_entry(final, *prepare(case))
            del case
            entry = kind.read(final)
        else:
            hits += 1
        entries.append(entry)
        yield Progress(i + 1, total, f"{step} {source.case_id}")
    logger.info("case cache %s: %d of %d %s were cached", cache, hits, total, kind.__name__)
    return entries


def iter_cache_cases(
    sources: Sequence[Any],
    cache_dir: str | os.PathLike,
    num_classes: int,
    scale: bool = True,
    percentiles: tuple[float, float] | None = None,
    normalize: str = "minmax",
    canonical: bool = False,
) -> Generator[Progress, None, list[VolumeEntry]]:
    """Prepare cases into the volume cache, one at a time; returns their entries.

    Parameters
    ----------
    sources
        :class:`~napari_boundary_seg.core.cases.CaseFiles` (read only when their
        entry is missing) or in-memory :class:`~napari_boundary_seg.core.cases.Case`.
    cache_dir
        The cache folder (created if missing).
    num_classes
        ``C``; label values must lie in ``[0, C)``.
    scale, percentiles, normalize
        Intensity scaling (:class:`~napari_boundary_seg.core.preprocess.PreprocessConfig`).
    canonical
        Reorient each case to the canonical (RAS) order first.

    Yields
    ------
    Progress
        One step per case.
    """
    settings = {
        "scale": bool(scale),
        "percentiles": None if percentiles is None else [float(p) for p in percentiles],
        "num_classes": int(num_classes),
    }
    if normalize != "minmax" or canonical:  # only then: the paper's keys stay the same
        settings.update(normalize=str(normalize), canonical=bool(canonical))

    def prepare(case: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _volume_arrays(case, num_classes, scale, percentiles, normalize, canonical)

    return (
        yield from _iter_cache(
            sources, cache_dir, VolumeEntry, settings, prepare, "preparing cases", "cached"
        )
    )


def iter_cache_slices(
    sources: Sequence[Any],
    cache_dir: str | os.PathLike,
    num_classes: int,
    preprocess: PreprocessConfig,
    distance: str = "3d",
    phi_units: str = "mm",
    empty_slices: str = "distance",
) -> Generator[Progress, None, list[SliceEntry]]:
    """Prepare cases as 2D slices into the cache, one at a time; returns their entries.

    The slices and their φ are exactly those of
    :class:`~napari_boundary_seg.core.data.SliceDataset` (the same preprocessing
    and distance maps), written once per case and settings (``skip_empty_slices``
    is applied by :class:`~napari_boundary_seg.core.patches.DiskSliceDataset`,
    not here). Arguments as for :func:`iter_cache_cases`, with the whole
    ``preprocess``, the ``distance`` mode (``"3d"`` or ``"2d"``) and the φ rules
    (:func:`~napari_boundary_seg.core.distance.phi_maps`).
    """
    if distance not in ("3d", "2d"):
        raise ValueError(f"distance must be '3d' or '2d', got {distance!r}")
    settings = {
        "kind": "slices",
        "scale": bool(preprocess.scale),
        "percentiles": None
        if preprocess.percentiles is None
        else [float(p) for p in preprocess.percentiles],
        "slice_size": preprocess.slice_size,
        "axis": preprocess.axis,
        "distance": distance,
        "num_classes": int(num_classes),
    }
    if getattr(preprocess, "crop", False):
        settings["crop"] = True
    if phi_units != "mm" or empty_slices != "distance":  # only then: older keys stay
        settings.update(phi_units=phi_units, empty_slices=empty_slices)
    if preprocess.normalize != "minmax" or preprocess.canonical or preprocess.slice_spacing:
        settings.update(  # only then: the paper's keys stay the same
            normalize=preprocess.normalize,
            canonical=bool(preprocess.canonical),
            slice_spacing=None
            if preprocess.slice_spacing is None
            else [float(v) for v in preprocess.slice_spacing],
        )

    def prepare(case: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _slice_arrays(case, num_classes, preprocess, distance, phi_units, empty_slices)

    return (
        yield from _iter_cache(
            sources,
            cache_dir,
            SliceEntry,
            settings,
            prepare,
            "preparing slices",
            "distance maps of",
        )
    )
