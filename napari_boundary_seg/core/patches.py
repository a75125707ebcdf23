"""The samples training draws from the case cache: 3D patches and 2D slices.

The cache itself (entries ``vol-<key>/`` and ``sl-<key>/``, one writer, one
reader, :func:`iter_cache_cases`, :func:`iter_cache_slices`) is
:mod:`~napari_boundary_seg.core.cache_entries`; its names stay importable from
here. This module reads the entries memory-mapped, a few cases at a time
(:class:`~napari_boundary_seg.core.cache_entries.OpenArrays`): a process's
memory does not grow with the number of cases.

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
    :class:`DiskSliceDataset` gives the paper's 2D slices from the cache, and
    :class:`AugmentedSlices` gives a 2D slice data set the same ``(epoch,
    index)`` addressing with augmentation. See ``docs/DESIGN.md``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from napari_boundary_seg.core import augment as _augment
from napari_boundary_seg.core.cache_entries import (
    OpenArrays,
    SliceEntry,
    VolumeEntry,
    iter_cache_cases,
    iter_cache_slices,
    volume_key,
)
from napari_boundary_seg.core.config import DEFAULT_PATCH_SIZE
from napari_boundary_seg.core.validate import check_number

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PATCH_SIZE",
    "AugmentedSlices",
    "DiskSliceDataset",
    "PatchBatchSampler",
    "PatchDataset",
    "SliceEntry",
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
        self._open = OpenArrays()
        self._low: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OpenArrays()
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
        return self._open.get(case, self.entries[case].arrays)

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
        self.oversample = check_number(oversample, "oversample", 0.0, 1.0)
        self.seed = int(seed)
        self.augment = augment
        self.length = epoch_samples(self.entries, self.patch_size) if length is None else length
        self.num_classes = self.entries[0].num_classes
        self.warp_stats: dict[str, float] = {}
        self._open = OpenArrays()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OpenArrays()
        return state

    def __len__(self) -> int:
        return self.length

    @property
    def num_modalities(self) -> int:
        """``M``."""
        return len(self.entries[0].modalities)

    def arrays(self, case: int) -> dict[str, np.ndarray]:
        """The memory-mapped ``image``, ``labels``, ``dist`` and ``fg`` of a case."""
        return self._open.get(case, self.entries[case].arrays)

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
                foreground=arrays.get("fg"),
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
    """Stacked batches of a keyed data set, in this process or in DataLoader workers
    (as many tensors as an item has: a fine-tune's items add a loss mask).

    The same batches for any ``num_workers`` (items are pure functions of their
    keys; worker generators are seeded from ``seed`` with :func:`worker_init`).
    """
    if num_workers == 0:
        for keys in batches:
            items = [dataset[k] for k in keys]
            yield tuple(torch.stack([item[j] for item in items]) for j in range(len(items[0])))
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
