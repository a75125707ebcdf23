"""The paper's 2D slice data set in memory, and its distance-map cache.

Cases (:mod:`~napari_boundary_seg.core.cases`) are preprocessed
(:mod:`~napari_boundary_seg.core.preprocess`: intensities per modality, 2D
slices along ``PreprocessConfig.axis``, resized to ``slice_size``) into a
:class:`SliceDataset` held in memory; :func:`iter_build_dataset` builds it with
progress events. The names of ``cases`` and ``preprocess`` stay importable from
here.

Distance maps are computed once per volume when the data set is built, never per
training step. They are computed on the *resized* label slices, with the spacing
the resizing gives them (``spacing * native_size / slice_size`` in-plane; the
slicing axis keeps its own spacing): so their values are in mm, their sign agrees
exactly with the resized labels and ``∂G`` is exactly 0 on the training grid (an
interpolated map would blur both). ``distance="3d"`` uses the whole resized
volume with its spacing (the paper's choice), ``"2d"`` each slice on its own.
Maps are cached by a content hash of the resized labels, the spacing, the mode
and the number of classes: in memory in a :class:`DistanceCache` shared between
builds, and on disk in ``cache_dir`` (``.npy`` files written atomically). See
``docs/DESIGN.md``, "The data cache".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_boundary_seg.core import distance as _distance
from napari_boundary_seg.core.cache_entries import save_npy_atomic as _save_npy_atomic
from napari_boundary_seg.core.cases import (
    ISLES_MODALITIES,
    LAYOUTS,
    WMH_MODALITIES,
    Case,
    CaseFiles,
    _generic_modality_names,  # noqa: F401 (the command line imports it from here)
    case_from_arrays,
    check_training_labels,
    find_cases,
    iter_check_cases,
    iter_load_cases,
    load_case,
    load_cases,
    split_cases,
)
from napari_boundary_seg.core.cases import check_training_labels as _check_training_labels  # noqa: F401
from napari_boundary_seg.core.config import DISTANCE_MODES
from napari_boundary_seg.core.preprocess import (
    CROP_MARGIN,
    HEAD_RULES,
    HEAD_THRESHOLD,
    NORMALIZE_MODES,
    ZSCORE_PERCENTILES,
    PreparedCase,
    PreprocessConfig,
    canonical_case,
    check_slice_spacing,
    head_box,
    head_mask,
    median_slice_spacing,
    normalize_volume,
    preprocess_case,
    resampled_size,
    resolve_slice_axis,
    scale_images,
    slice_plane_spacing,
)
from napari_boundary_seg.core.preprocess import PreparedCase as _Prepared  # noqa: F401
from napari_boundary_seg.core.progress import Progress, run_to_end
from napari_boundary_seg.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "CROP_MARGIN",
    "HEAD_RULES",
    "HEAD_THRESHOLD",
    "ISLES_MODALITIES",
    "LAYOUTS",
    "NORMALIZE_MODES",
    "WMH_MODALITIES",
    "ZSCORE_PERCENTILES",
    "Case",
    "CaseFiles",
    "DistanceCache",
    "PreparedCase",
    "PreprocessConfig",
    "SliceDataset",
    "canonical_case",
    "case_from_arrays",
    "check_slice_spacing",
    "check_training_labels",
    "find_cases",
    "head_box",
    "head_mask",
    "iter_build_dataset",
    "iter_check_cases",
    "iter_load_cases",
    "load_case",
    "load_cases",
    "median_slice_spacing",
    "normalize_volume",
    "preprocess_case",
    "resampled_size",
    "resolve_slice_axis",
    "scale_images",
    "slice_plane_spacing",
    "split_cases",
]

_DISTANCE_MODES = DISTANCE_MODES
_CACHE_VERSION = 1


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
    phi_units: str = "mm",
    empty_slices: str = "distance",
) -> Generator[Progress, None, _Built]:
    if distance not in _DISTANCE_MODES:
        raise ValueError(f"distance must be one of {_DISTANCE_MODES}, got {distance!r}")
    check_int(num_classes, "num_classes", 2)
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
        check_training_labels(case, num_classes)

    total = len(cases)
    yield Progress(0, total, "preparing slices")
    prepared: list[PreparedCase | None] = []
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
        maps = _distance.phi_maps(  # (C, D, H, W)
            prep.labels,
            num_classes,
            prep.spacing,
            distance,
            phi_units,
            empty_slices,
            compute=cache.get,
        )
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
    phi_units, empty_slices
        The units rule and the empty-slice rule of φ
        (:func:`~napari_boundary_seg.core.distance.phi_maps`; ``mm`` and
        ``distance`` by default).

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
        *,
        phi_units: str = "mm",
        empty_slices: str = "distance",
    ) -> None:
        built = run_to_end(
            _iter_build(
                cases, num_classes, preprocess, distance, cache_dir, cache, phi_units, empty_slices
            )
        )
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
        cls, *args: Any, callback: Callable[[Progress], None] | None = None, **kwargs: Any
    ) -> SliceDataset:
        """:func:`iter_build_dataset` (same arguments) run to its end, calling
        ``callback`` on each event."""
        return run_to_end(iter_build_dataset(*args, **kwargs), callback)

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
    *,
    phi_units: str = "mm",
    empty_slices: str = "distance",
) -> Generator[Progress, None, SliceDataset]:
    """Build a :class:`SliceDataset`, yielding ``Progress`` (one step per case).

    Returns the data set (napari's ``thread_worker`` emits it as ``returned``).
    Arguments as for :class:`SliceDataset`.
    """
    built = yield from _iter_build(
        cases, num_classes, preprocess, distance, cache_dir, cache, phi_units, empty_slices
    )
    return SliceDataset._from_built(built)
