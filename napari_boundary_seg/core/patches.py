"""Cases on disk and the samples training draws from them (3D patches, 2D slices).

The volume cache
    :func:`iter_cache_cases` prepares cases **one at a time** (read, scale to
    [0, 1], φ of the whole volume in 3D with the spacing) and writes each to
    ``<cache_dir>/vol-<key>/`` as ``image.npy (M, *V)`` float32, ``labels.npy
    (*V)`` uint8, ``dist.npy (C, *V)`` float32 (mm), ``fg.npy (K, nd)`` int32
    (the foreground voxels, for oversampling) and ``meta.json``. ``key`` is a
    content hash of the case (the bytes of its files, or of its arrays) and of
    the settings (scaling, class count, cache version): a changed file or
    setting makes a new entry and leaves the others valid. Entries are written
    to a temporary folder and renamed, so a crash leaves no half entry. Training
    opens them with ``numpy.load(..., mmap_mode="r")`` and reads only the
    patches it samples: a process's memory does not grow with the number of
    cases.

The samples
    :class:`PatchDataset` addresses its items by ``(epoch, index)``; the item
    is a pure function of ``(seed, epoch, index)`` (its random generator is
    seeded with exactly these), so it does not depend on which DataLoader
    worker or which rank draws it: runs repeat for any worker count and resume
    exactly, and :class:`PatchBatchSampler` shards the indices of an epoch over
    ``world_size`` ranks like ``DistributedSampler``. Index ``i`` is centred on
    a random foreground voxel when ``floor((i + 1) p) > floor(i p)`` with ``p =
    oversample`` (exactly a share ``p`` of every run of indices), else placed
    uniformly; the case is drawn uniformly. Patches always lie inside the volume
    (a volume smaller than the patch along an axis raises ValueError), so the
    cropped whole-volume φ is exact and no padding rule is needed.
    :class:`AugmentedSlices` gives the 2D slice data set the same ``(epoch,
    index)`` addressing with augmentation.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from napari_boundary_seg.core import augment as _augment
from napari_boundary_seg.core.config import DEFAULT_PATCH_SIZE
from napari_boundary_seg.core.distance import class_distance_maps
from napari_boundary_seg.core.io import OutputError, _is_out_of_space
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "AugmentedSlices",
    "DiskSliceDataset",
    "PatchBatchSampler",
    "PatchDataset",
    "VolumeEntry",
    "epoch_batches",
    "epoch_samples",
    "iter_cache_cases",
    "iter_cache_slices",
    "iter_keyed_batches",
    "sample_rng",
    "volume_key",
    "worker_init",
]

_CACHE_VERSION = 1
_FILES = ("image.npy", "labels.npy", "dist.npy", "fg.npy", "meta.json")


# ---------------------------------------------------------------------------
# the volume cache


class _OpenArrays:
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


@dataclass(frozen=True)
class VolumeEntry:
    """One prepared case in the cache (arrays opened memory-mapped on demand)."""

    path: Path
    case_id: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    modalities: tuple[str, ...]
    affine: tuple[tuple[float, ...], ...]
    num_classes: int
    num_foreground: int

    def open(self, name: str) -> np.ndarray:
        """``image``, ``labels``, ``dist`` or ``fg``, memory-mapped read-only."""
        return _open_array(self.path, name)

    @classmethod
    def read(cls, path: Path) -> VolumeEntry:
        meta = json.loads((path / "meta.json").read_text())
        return cls(
            path=path,
            case_id=str(meta["case_id"]),
            shape=tuple(int(n) for n in meta["shape"]),
            spacing=tuple(float(s) for s in meta["spacing"]),
            modalities=tuple(meta["modalities"]),
            affine=tuple(tuple(float(v) for v in row) for row in meta["affine"]),
            num_classes=int(meta["num_classes"]),
            num_foreground=int(meta["num_foreground"]),
        )


def _hash_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def volume_key(source: Any, settings: dict[str, Any]) -> str:
    """Content hash of a case (``CaseFiles``: its files' bytes; ``Case``: its arrays) and settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": _CACHE_VERSION, **settings}, sort_keys=True).encode())
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
        if getattr(source, "normalized", False):  # keys of earlier entries stay valid
            meta["normalized"] = True
        digest.update(json.dumps(meta).encode())
        digest.update(np.ascontiguousarray(source.images).tobytes())
        digest.update(np.ascontiguousarray(source.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def _publish(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError:  # another process wrote the same entry meanwhile
        if not (final / "meta.json").is_file():
            raise


def _write_cache_dir(final: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write one cache entry whole or not at all: ``<name>.npy`` of each array
    and ``meta.json`` into a temporary folder beside ``final``, then renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        for name, array in arrays.items():
            target = tmp / f"{name}.npy"
            try:
                np.save(target, array, allow_pickle=False)
            except OSError as err:  # numpy's own words on a full disk name bytes, not the cause
                if _is_out_of_space(final.parent):
                    raise OutputError(errno.ENOSPC, final) from err
                raise
        (tmp / "meta.json").write_text(json.dumps(meta))
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _open_array(folder: Path, name: str) -> np.ndarray:
    """``<folder>/<name>.npy`` of a cache entry, memory-mapped read-only."""
    return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)


def _write_entry(
    case: Any,
    final: Path,
    num_classes: int,
    scale: bool,
    percentiles: Any,
    normalize: str = "minmax",
    canonical: bool = False,
) -> None:
    from napari_boundary_seg.core.data import _check_training_labels, canonical_case, scale_images

    _check_training_labels(case, num_classes)
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
    _write_cache_dir(final, {"image": images, "labels": labels, "dist": dist, "fg": fg}, meta)


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
        :class:`~napari_boundary_seg.core.data.CaseFiles` (read only when their
        entry is missing) or in-memory :class:`~napari_boundary_seg.core.data.Case`.
    cache_dir
        The cache folder (created if missing).
    num_classes
        ``C``; label values must lie in ``[0, C)``.
    scale, percentiles, normalize
        Intensity scaling (:class:`~napari_boundary_seg.core.data.PreprocessConfig`).
    canonical
        Reorient each case to the canonical (RAS) order first.

    Yields
    ------
    Progress
        One step per case.
    """
    from napari_boundary_seg.core.data import load_case

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    settings = {
        "scale": bool(scale),
        "percentiles": None if percentiles is None else [float(p) for p in percentiles],
        "num_classes": int(num_classes),
    }
    if normalize != "minmax" or canonical:  # keys of earlier entries stay valid
        settings.update(normalize=str(normalize), canonical=bool(canonical))
    entries: list[VolumeEntry] = []
    total = len(sources)
    hits = 0
    yield Progress(0, total, "preparing cases")
    for i, source in enumerate(sources):
        key = volume_key(source, settings)
        final = cache / f"vol-{key}"
        if all((final / name).is_file() for name in _FILES):
            hits += 1
        else:
            case = load_case(source) if hasattr(source, "image_paths") else source
            _write_entry(case, final, num_classes, scale, percentiles, normalize, canonical)
            del case
        entries.append(VolumeEntry.read(final))
        yield Progress(i + 1, total, f"cached {source.case_id}")
    logger.info("volume cache %s: %d of %d cases were cached", cache, hits, total)
    return entries


@dataclass(frozen=True)
class SliceEntry:
    """One case prepared as the paper's 2D slices (arrays memory-mapped on demand).

    ``images (D, M, S, S)`` float32, ``labels (D, S, S)`` uint8, ``dist (D, C, S, S)``
    float32 (mm), in slice-major order so that a slice is one contiguous read.
    """

    path: Path
    case_id: str
    spacing: tuple[float, float, float]
    slice_index: tuple[int, ...]
    nonempty: tuple[bool, ...]
    modalities: tuple[str, ...]
    num_classes: int

    def open(self, name: str) -> np.ndarray:
        """``images``, ``labels`` or ``dist``, memory-mapped read-only."""
        return _open_array(self.path, name)

    @classmethod
    def read(cls, path: Path) -> SliceEntry:
        meta = json.loads((path / "meta.json").read_text())
        return cls(
            path=path,
            case_id=str(meta["case_id"]),
            spacing=tuple(float(s) for s in meta["spacing"]),
            slice_index=tuple(int(i) for i in meta["slice_index"]),
            nonempty=tuple(bool(b) for b in meta["nonempty"]),
            modalities=tuple(meta["modalities"]),
            num_classes=int(meta["num_classes"]),
        )


_SLICE_FILES = ("images.npy", "labels.npy", "dist.npy", "meta.json")


def _write_slices(case: Any, final: Path, num_classes: int, preprocess: Any, distance: str) -> None:
    from napari_boundary_seg.core.data import _check_training_labels, preprocess_case

    _check_training_labels(case, num_classes)
    prep = preprocess_case(case, preprocess)
    label_dtype = np.uint8 if num_classes <= 256 else np.int64
    maps = class_distance_maps(
        prep.labels, num_classes, spacing=prep.spacing, axis=None if distance == "3d" else 0
    )
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
    _write_cache_dir(final, arrays, meta)


def iter_cache_slices(
    sources: Sequence[Any],
    cache_dir: str | os.PathLike,
    num_classes: int,
    preprocess: Any,
    distance: str = "3d",
) -> Generator[Progress, None, list[SliceEntry]]:
    """Prepare cases as 2D slices into the cache, one at a time; returns their entries.

    The slices and their φ are exactly those of
    :class:`~napari_boundary_seg.core.data.SliceDataset` (the same preprocessing
    and distance maps), written once per case and settings (``skip_empty_slices``
    is applied by :class:`DiskSliceDataset`, not here).
    """
    from napari_boundary_seg.core.data import load_case

    if distance not in ("3d", "2d"):
        raise ValueError(f"distance must be '3d' or '2d', got {distance!r}")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
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
    if preprocess.normalize != "minmax" or preprocess.canonical or preprocess.slice_spacing:
        settings.update(  # keys of earlier entries stay valid
            normalize=preprocess.normalize,
            canonical=bool(preprocess.canonical),
            slice_spacing=None
            if preprocess.slice_spacing is None
            else [float(v) for v in preprocess.slice_spacing],
        )
    entries: list[SliceEntry] = []
    total = len(sources)
    yield Progress(0, total, "preparing slices")
    for i, source in enumerate(sources):
        final = cache / f"sl-{volume_key(source, settings)}"
        if not all((final / name).is_file() for name in _SLICE_FILES):
            case = load_case(source) if hasattr(source, "image_paths") else source
            _write_slices(case, final, num_classes, preprocess, distance)
            del case
        entries.append(SliceEntry.read(final))
        yield Progress(i + 1, total, f"distance maps of {source.case_id}")
    return entries


class DiskSliceDataset(Dataset):
    """The paper's 2D slices read memory-mapped from the cache (:func:`iter_cache_slices`).

    Same items, attributes and order as
    :class:`~napari_boundary_seg.core.data.SliceDataset` (``case_index``,
    ``slice_index``, ``case_ids``, ``case_spacing``, ``modalities``,
    ``num_classes``, ``distance``), without holding the slices in memory.
    """

    def __init__(
        self, entries: Sequence[SliceEntry], skip_empty_slices: bool = False, distance: str = "3d"
    ) -> None:
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("no cases to build a data set from")
        sizes = [tuple(e.open("labels").shape[1:]) for e in self.entries]
        # slices of other sizes (scans of other fields of view resampled to one
        # spacing) are padded at the end of each axis to the largest: images
        # with their case's lowest value, labels with background, φ with 0 (no
        # boundary term there; the regional loss supervises the padding)
        self.canvas = tuple(int(max(s[k] for s in sizes)) for k in range(2))
        case_index, position = [], []
        for c, entry in enumerate(self.entries):
            keep = entry.nonempty if skip_empty_slices else (True,) * len(entry.nonempty)
            for k, kept in enumerate(keep):
                if kept:
                    case_index.append(c)
                    position.append(k)
        if not case_index:
            raise ValueError("no slices left (all are empty and skip_empty_slices=True)")
        self.case_index = np.asarray(case_index, dtype=np.int64)
        self._position = np.asarray(position, dtype=np.int64)
        self.slice_index = np.asarray(
            [self.entries[c].slice_index[k] for c, k in zip(case_index, position, strict=True)],
            dtype=np.int64,
        )
        self.case_ids = tuple(e.case_id for e in self.entries)
        self.case_spacing = tuple(e.spacing for e in self.entries)
        self.modalities = self.entries[0].modalities
        self.num_classes = self.entries[0].num_classes
        self.distance = distance
        self._open = _OpenArrays()
        self._low: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = _OpenArrays()
        state["_low"] = {}
        return state

    def __len__(self) -> int:
        return int(self.case_index.size)

    @property
    def num_modalities(self) -> int:
        """``M``."""
        return len(self.modalities)

    def arrays(self, case: int) -> dict[str, np.ndarray]:
        """The memory-mapped ``images``, ``labels`` and ``dist`` of a case."""
        entry = self.entries[case]
        return self._open.get(
            case, lambda: {n: entry.open(n) for n in ("images", "labels", "dist")}
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image (M, H, W) float32, labels (H, W) int64, dist (C, H, W) float32)``."""
        index = int(index)
        case = int(self.case_index[index])
        arrays = self.arrays(case)
        k = int(self._position[index])
        image = np.array(arrays["images"][k], dtype=np.float32)
        labels = np.array(arrays["labels"][k], dtype=np.int64)
        dist = np.array(arrays["dist"][k], dtype=np.float32)
        pad = [c - n for c, n in zip(self.canvas, labels.shape, strict=True)]
        if any(pad):
            widths = [(0, pad[0]), (0, pad[1])]
            low = self._low.get(case)
            if low is None:
                low = self._low[case] = np.asarray(arrays["images"]).min(axis=(0, 2, 3))
            image = np.stack(
                [
                    np.pad(ch, widths, constant_values=float(v))
                    for ch, v in zip(image, low, strict=True)
                ]
            )
            labels = np.pad(labels, widths)
            dist = np.pad(dist, [(0, 0), *widths])
        return (torch.from_numpy(image), torch.from_numpy(labels), torch.from_numpy(dist))


# ---------------------------------------------------------------------------
# sampling


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of item ``index`` of ``epoch``: seeded by ``(seed, epoch, index)`` only."""
    return np.random.default_rng([int(seed) % (2**63), int(epoch), int(index), int(stream)])


def epoch_samples(entries: Sequence[VolumeEntry], patch_size: Sequence[int]) -> int:
    """Patches in one 3D epoch: per case, as many as would tile its volume (at least 1)."""
    per_patch = math.prod(patch_size)
    return int(sum(max(1, math.ceil(math.prod(e.shape) / per_patch)) for e in entries))


def takes_share(index: int, share: float) -> bool:
    """Whether item ``index`` is one of a share ``share`` of every run of indices
    (exactly ``share`` of them, evenly spread: the foreground oversampling rule)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def patch_start(
    rng: np.random.Generator,
    shape: Sequence[int],
    patch_size: Sequence[int],
    centre: Sequence[int] | None = None,
) -> list[int]:
    """First voxel of a patch inside ``shape``: centred on ``centre`` (clipped to
    the volume), or uniform (one draw of ``rng`` per axis) without one."""
    if centre is not None:
        return [
            int(np.clip(int(c) - p // 2, 0, n - p))
            for c, p, n in zip(centre, patch_size, shape, strict=True)
        ]
    return [int(rng.integers(0, n - p + 1)) for p, n in zip(patch_size, shape, strict=True)]


class PatchDataset(Dataset):
    """3D patches of cached volumes, with their whole-volume φ, addressed by ``(epoch, index)``.

    Parameters
    ----------
    entries
        Cached cases (:func:`iter_cache_cases`), all with ``nd`` spatial axes.
    patch_size
        Patch shape in voxels (numpy axis order); every volume must be at least
        that large along each axis.
    oversample
        Share of items centred on a random foreground voxel (0: uniform).
    seed
        Seed of the sampling and augmentation.
    augment
        An :class:`~napari_boundary_seg.core.augment.AugmentConfig`, or ``None``.
    length
        ``len(dataset)``: the items of one epoch.

    Items are ``(image (M, *P) float32, labels (*P) int64, dist (C, *P) float32)``
    tensors. The memory-mapped arrays are opened lazily in each process (they
    are not pickled into DataLoader workers).
    """

    def __init__(
        self,
        entries: Sequence[VolumeEntry],
        patch_size: Sequence[int],
        *,
        oversample: float = 1 / 3,
        seed: int = 0,
        augment: _augment.AugmentConfig | None = None,
        length: int | None = None,
    ) -> None:
        self.entries = list(entries)
        if not self.entries:
            raise ValueError("no cases to sample patches from")
        self.patch_size = tuple(int(p) for p in patch_size)
        for entry in self.entries:
            if len(entry.shape) != len(self.patch_size):
                raise ValueError(
                    f"case {entry.case_id} has shape {entry.shape}, patch_size {self.patch_size}"
                )
            if any(n < p for n, p in zip(entry.shape, self.patch_size, strict=True)):
                raise ValueError(
                    f"case {entry.case_id} of shape {entry.shape} is smaller than the patch "
                    f"{self.patch_size}; choose a patch_size no larger than every volume"
                )
        if not 0.0 <= float(oversample) <= 1.0:
            raise ValueError(f"oversample must be in [0, 1], got {oversample!r}")
        self.oversample = float(oversample)
        self.seed = int(seed)
        self.augment = augment
        self.length = epoch_samples(self.entries, self.patch_size) if length is None else length
        self.num_classes = self.entries[0].num_classes
        self.warp_stats: dict[str, float] = {}
        self._open = _OpenArrays()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = _OpenArrays()
        return state

    def __len__(self) -> int:
        return self.length

    @property
    def num_modalities(self) -> int:
        """``M``."""
        return len(self.entries[0].modalities)

    def arrays(self, case: int) -> dict[str, np.ndarray]:
        """The memory-mapped ``image``, ``labels``, ``dist`` and ``fg`` of a case."""
        entry = self.entries[case]
        return self._open.get(
            case, lambda: {n: entry.open(n) for n in ("image", "labels", "dist", "fg")}
        )

    def locate(self, epoch: int, index: int) -> tuple[int, tuple[slice, ...], bool]:
        """The case, patch (slices) and foreground flag of item ``(epoch, index)``."""
        rng = sample_rng(self.seed, epoch, index, stream=1)
        case = int(rng.integers(len(self.entries)))
        entry = self.entries[case]
        shape = entry.shape
        foreground = takes_share(index, self.oversample) and entry.num_foreground > 0
        centre = None
        if foreground:
            fg = self.arrays(case)["fg"]
            centre = np.asarray(fg[int(rng.integers(len(fg)))], dtype=np.int64)
        start = patch_start(rng, shape, self.patch_size, centre)
        patch = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size, strict=True))
        return case, patch, foreground

    def sample(self, epoch: int, index: int) -> _augment.Sample:
        """Item ``(epoch, index)`` as numpy arrays."""
        case, patch, _ = self.locate(epoch, index)
        arrays = self.arrays(case)
        spacing = self.entries[case].spacing
        rng = sample_rng(self.seed, epoch, index, stream=2)
        cfg = self.augment
        if cfg is not None and rng.random() < cfg.warp:
            warp = _augment.draw_warp(self.entries[case].shape, spacing, patch, cfg, rng)
            sample = _augment.warped_sample(
                arrays["image"],
                arrays["labels"],
                spacing,
                patch,
                warp,
                self.num_classes,
                self.warp_stats,
            )
        else:
            sample = _augment.Sample(
                np.array(arrays["image"][(slice(None), *patch)], dtype=np.float32),
                np.array(arrays["labels"][patch], dtype=np.int64),
                np.array(arrays["dist"][(slice(None), *patch)], dtype=np.float32),
            )
        if cfg is not None:
            sample = _augment.augment_sample(sample, spacing, cfg, rng)
        return sample

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        s = self.sample(int(epoch), int(index))
        return (
            torch.from_numpy(np.ascontiguousarray(s.image)),
            torch.from_numpy(np.ascontiguousarray(s.labels, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(s.dist)),
        )


class AugmentedSlices(Dataset):
    """A 2D slice data set with augmentation, items addressed by ``(epoch, index)``.

    Exact transforms (flips; transposition and 90° rotations where the in-plane
    spacing and size are equal) and intensity transforms always; the warp
    (rotation/scale/elastic, φ recomputed) only when the slices' φ is per slice
    (``distance="2d"``): with the paper's 3D φ, φ of a warped slice would need
    the whole volume warped, so the warp is left out there.
    """

    def __init__(self, dataset: Any, config: _augment.AugmentConfig, seed: int = 0) -> None:
        self.dataset = dataset
        self.config = config
        self.seed = int(seed)
        self.warp_ok = getattr(dataset, "distance", "3d") == "2d"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = key
        image, labels, dist = (np.asarray(t) for t in self.dataset[int(index)])
        case = int(self.dataset.case_index[int(index)])
        spacing = tuple(self.dataset.case_spacing[case][1:])
        rng = sample_rng(self.seed, epoch, index, stream=3)
        cfg = self.config
        sample = _augment.Sample(image, labels.astype(np.int64), dist)
        if self.warp_ok and rng.random() < cfg.warp:
            whole = tuple(slice(0, n) for n in labels.shape)
            warp = _augment.draw_warp(labels.shape, spacing, whole, cfg, rng)
            sample = _augment.warped_sample(image, labels, spacing, whole, warp, int(dist.shape[0]))
        sample = _augment.augment_sample(sample, spacing, cfg, rng)
        return (
            torch.from_numpy(sample.image),
            torch.from_numpy(sample.labels.astype(np.int64)),
            torch.from_numpy(sample.dist),
        )


# ---------------------------------------------------------------------------
# batches


class PatchBatchSampler(Sampler):
    """The batches of keys ``(epoch, index)`` of steps ``start_step .. stop_step - 1``.

    Step ``k`` of rank ``r`` of ``world_size`` holds the indices ``(k *
    world_size + r) * batch_size + j``; ``indices`` (optional) maps them
    through an epoch's permutation (the 2D slice order).
    """

    def __init__(
        self,
        epoch: int,
        batch_size: int,
        start_step: int,
        stop_step: int,
        *,
        indices: Sequence[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.epoch = int(epoch)
        self.batch_size = int(batch_size)
        self.start_step, self.stop_step = int(start_step), int(stop_step)
        self.indices = None if indices is None else [int(i) for i in indices]
        self.rank, self.world_size = int(rank), int(world_size)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k in range(self.start_step, self.stop_step):
            first = (k * self.world_size + self.rank) * self.batch_size
            flat = range(first, first + self.batch_size)
            if self.indices is not None:
                flat = [self.indices[i] for i in flat if i < len(self.indices)]
            yield [(self.epoch, i) for i in flat]


def epoch_batches(
    epoch: int,
    batch_size: int,
    start_step: int,
    stop_step: int,
    indices: Sequence[int] | None,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[tuple[int, int]]]:
    """:class:`PatchBatchSampler`'s batches (of one rank) as a list."""
    sampler = PatchBatchSampler(
        epoch, batch_size, start_step, stop_step, indices=indices, rank=rank, world_size=world_size
    )
    return list(sampler)


def worker_init(worker_id: int) -> None:
    """Seed Python's, numpy's and torch's global generators per worker.

    The samples themselves depend only on ``(seed, epoch, index)``; this keeps
    any library-level randomness in a worker repeatable too.
    """
    info = torch.utils.data.get_worker_info()
    base = (info.seed if info is not None else 0) % (2**32)
    random.seed(base)
    np.random.seed((base + worker_id) % (2**32))


def iter_keyed_batches(
    dataset: Dataset,
    batches: Sequence[Sequence[Any]],
    num_workers: int = 0,
    seed: int = 0,
) -> Generator[tuple[torch.Tensor, ...], None, None]:
    """Stacked batches of a keyed data set, in this process or in DataLoader workers.

    The same batches for any ``num_workers`` (items are pure functions of their
    keys; worker generators are seeded from ``seed`` with :func:`worker_init`).
    """
    if num_workers == 0:
        for keys in batches:
            items = [dataset[k] for k in keys]
            yield tuple(torch.stack([item[j] for item in items]) for j in range(3))
        return
    from torch.utils.data import DataLoader

    generator = torch.Generator()
    generator.manual_seed(int(seed) % (2**63))
    loader = DataLoader(
        dataset,
        batch_sampler=list(batches),
        num_workers=num_workers,
        worker_init_fn=worker_init,
        generator=generator,
    )
    for batch in loader:
        yield tuple(batch)
