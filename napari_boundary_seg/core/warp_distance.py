"""φ of a warped patch from the boundary voxels of the warped labels.

A warped training sample needs φ of the *whole* warped volume's labels on the
patch (docs/DESIGN.md, "φ of a warped patch"): at a patch voxel ``q``, the
distance (mm) to the nearest voxel of ``∂G`` of the warped labels, negative
inside ``G``, with ``∂G`` as :mod:`napari_boundary_seg.core.distance` defines it
(voxels of ``G`` with a face neighbour outside ``G``; the image edge is no
boundary; an empty or full class gets zeros). Warping the whole volume and
transforming all of it costs about a second on a 197×233×189 volume. This
module gets the same numbers from the sparse parts only:

1. **Where the warped labels can be foreground.** The output grid is cut into
   blocks; a block's pre-image under the warp lies in a box (the affine image
   of the block, widened by the largest elastic displacement where the block
   meets the elastic box, and by half a voxel for nearest-neighbour rounding).
   Only blocks whose box meets a foreground voxel of the input (counted with a
   summed-area table of coarse cells) can hold foreground after the warp; the
   labels are warped on those voxels only, with the same coordinates as
   :func:`~napari_boundary_seg.core.augment.warp_labels` (everything else of
   the warped volume is background).
2. **∂G of each class**, from the foreground voxels and their face neighbours
   (class 0: background voxels next to foreground), in the warped grid's
   voxel coordinates.
3. **The distance on the patch.** Only boundary voxels within ``R`` (mm) of the
   patch can be nearest to a patch voxel, where ``R`` bounds φ on the patch
   from above: the exact distance at a lattice of patch points (a KD-tree
   query) plus the farthest any patch voxel lies from its lattice point. One
   Euclidean transform of the box holding the patch and those boundary voxels
   then gives every patch voxel its nearest boundary voxel, as the whole
   volume's transform would (the same ``edt``/scipy transform, so the numbers
   agree to float32 rounding); signed by the warped labels of the patch.

The cost is the warped foreground, the boundary voxel count and one transform
of that box per class, instead of the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy.spatial import cKDTree

from napari_boundary_seg.core import kernels
from napari_boundary_seg.core.distance import distance_transform, resolve_backend

try:  # the squared transform of the optional fast backend (as core.distance uses it)
    import edt as _edt
except ImportError:  # pragma: no cover - exercised only without edt installed
    _edt = None


__all__ = ["foreground_voxels", "patch_class_distances", "warped_boundaries"]


class Warp(Protocol):
    """What this module reads of :class:`napari_boundary_seg.core.augment.Warp`
    (a protocol: core.augment imports this module, not the other way round)."""

    centre: np.ndarray
    matrix: np.ndarray
    box: tuple[slice, ...]
    displacement: np.ndarray | None
    reach: np.ndarray | None

    def coords_at(self, points: np.ndarray) -> np.ndarray: ...


_CELL = 4
"""Side (voxels) of the coarse input cells that record where the foreground is."""
_BLOCK = 8
"""Side (voxels) of the output blocks tested for possible foreground."""
_LATTICE_MM = 12.0
"""Largest spacing (mm) of the patch lattice whose exact distances bound φ."""
_EPS = 1e-6
_REACH_SEEDS = 2048
"""About how many boundary voxels of a class bound φ on the patch (a subset)."""


def nearest_index(warp: Warp, points: np.ndarray) -> np.ndarray:
    """Nearest input voxel ``(nd, n)`` int64 of output voxels ``points (nd, n)``."""
    return np.rint(warp.coords_at(points)).astype(np.int64)


def _nonzero(array: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(array)``; for byte labels (the cache's uint8) the scan reads
    eight voxels per 64-bit word and looks into the words that are not zero."""
    if array.dtype.itemsize != 1 or not array.flags.c_contiguous or array.size < 64:
        return np.flatnonzero(array)
    flat = array.reshape(-1).view(np.uint8)
    whole = flat.size // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    voxels = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    tail = whole + np.flatnonzero(flat[whole:])
    return np.concatenate([voxels[flat[voxels] != 0], tail])


def _summed_cells(labels: np.ndarray, foreground: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Summed-area table of the coarse cells holding foreground, and whether any does."""
    shape = labels.shape
    if foreground is None:
        index = np.unravel_index(_nonzero(np.asarray(labels)), shape)
    else:
        index = tuple(np.asarray(foreground, dtype=np.int64).T.reshape(len(shape), -1))
    cells = tuple(-(-n // _CELL) for n in shape)
    table = np.zeros(tuple(c + 1 for c in cells), dtype=np.int32)
    if index[0].size == 0:
        return table, False
    inner = (slice(1, None),) * len(shape)
    table[inner][tuple(a // _CELL for a in index)] = 1
    for axis in range(len(shape)):
        table = table.cumsum(axis=axis, dtype=np.int32)
    return table, True


def _box_count(table: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Occupied cells in the cell boxes ``[lo, hi]`` (``(n, nd)`` each, inclusive)."""
    nd = lo.shape[1]
    total = np.zeros(len(lo), dtype=np.int64)
    for corner in range(1 << nd):
        use_hi = [(corner >> a) & 1 for a in range(nd)]
        index = tuple(hi[:, a] + 1 if use_hi[a] else lo[:, a] for a in range(nd))
        sign = 1 if (nd - sum(use_hi)) % 2 == 0 else -1
        total += sign * table[index]
    return total


def _split(lo: np.ndarray, hi: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut blocks ``[lo, hi]`` (inclusive, ``(n, nd)``) into blocks of ``side`` voxels."""
    nd = lo.shape[1]
    offsets = np.stack(
        np.meshgrid(*[np.arange(0, _BLOCK, side)] * nd, indexing="ij"), axis=-1
    ).reshape(-1, nd)
    sub_lo = (lo[:, None, :] + offsets[None]).reshape(-1, nd)
    sub_hi = np.minimum(sub_lo + side - 1, np.repeat(hi, len(offsets), axis=0))
    keep = np.all(sub_lo <= sub_hi, axis=1)
    return sub_lo[keep], sub_hi[keep]


def _may_hold_foreground(
    table: np.ndarray,
    warp: Warp,
    reach: np.ndarray | None,
    shape: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """Which output blocks ``[lo, hi]`` have a pre-image box that meets a foreground
    cell; ``reach``: the largest elastic displacement per axis (or None)."""
    mid = (lo + hi) / 2.0
    half = (hi - lo) / 2.0
    ymid = warp.centre + (mid - warp.centre) @ warp.matrix.T
    spread = half @ np.abs(warp.matrix).T + 0.5 + _EPS
    if reach is not None:
        box_lo = np.array([b.start for b in warp.box])
        box_hi = np.array([b.stop - 1 for b in warp.box])
        meets = np.all((hi >= box_lo) & (lo <= box_hi), axis=1)
        spread = spread + meets[:, None] * reach
    ilo = np.maximum(np.ceil(ymid - spread), 0).astype(np.int64)
    ihi = np.minimum(np.floor(ymid + spread), shape - 1).astype(np.int64)
    inside = np.all(ilo <= ihi, axis=1)
    out = np.zeros(len(lo), dtype=bool)
    out[inside] = _box_count(table, ilo[inside] // _CELL, ihi[inside] // _CELL) > 0
    return out


def _candidate_blocks(
    labels: np.ndarray, warp: Warp, foreground: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Output blocks ``(lo, hi)`` (inclusive voxel corners, ``(n, nd)``) that may hold
    foreground after the warp: blocks of ``_BLOCK`` voxels, then their halves."""
    shape = np.asarray(labels.shape)
    nd = len(shape)
    table, any_fg = _summed_cells(labels, foreground)
    if not any_fg:
        empty = np.zeros((0, nd), dtype=np.int64)
        return empty, empty
    axes = [np.arange(0, n, _BLOCK) for n in shape]
    lo = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, nd)
    hi = np.minimum(lo + _BLOCK, shape) - 1
    reach = getattr(warp, "reach", None)
    if warp.displacement is not None and reach is None:
        if kernels.NUMBA:
            reach = kernels.abs_max(warp.displacement)
        else:
            field = warp.displacement.reshape(nd, -1)
            reach = np.maximum(field.max(axis=1), -field.min(axis=1))
    if kernels.NUMBA and nd == 3:
        zero = np.zeros(nd) if reach is None else reach
        return kernels.candidate_blocks(
            table, warp.centre, warp.matrix, zero, warp.box, tuple(shape), _BLOCK, _CELL, _EPS
        )
    keep = _may_hold_foreground(table, warp, reach, shape, lo, hi)
    lo, hi = _split(lo[keep], hi[keep], _BLOCK // 2)
    keep = _may_hold_foreground(table, warp, reach, shape, lo, hi)
    return lo[keep], hi[keep]


def foreground_voxels(
    labels: np.ndarray, warp: Warp, foreground: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every foreground voxel of the warped volume: ``points (nd, n)`` int64 and labels.

    The warped labels are :func:`~napari_boundary_seg.core.augment.warp_labels`
    of the whole grid (nearest neighbour, background outside the input); only
    the blocks that can hold foreground are warped. ``foreground``: the
    ``(K, nd)`` indices of the input's foreground voxels, if known (else the
    volume is scanned).
    """
    shape = np.asarray(labels.shape)
    nd = len(shape)
    lo, hi = _candidate_blocks(labels, warp, foreground)
    if len(lo) == 0:
        return np.zeros((nd, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    if kernels.NUMBA and nd == 3:
        box_lo = np.array([b.start for b in warp.box])
        return kernels.warped_foreground(
            labels, lo, hi, warp.centre, warp.matrix, box_lo, warp.displacement
        )
    offsets = np.stack(np.meshgrid(*[np.arange(_BLOCK // 2)] * nd, indexing="ij"), axis=-1).reshape(
        -1, nd
    )
    voxels = lo[:, None, :] + offsets[None]
    valid = np.all(voxels <= hi[:, None, :], axis=-1)
    points = voxels[valid].T
    idx = nearest_index(warp, points)
    inside = np.all((idx >= 0) & (idx < shape[:, None]), axis=0)
    values = np.zeros(points.shape[1], dtype=np.int64)
    values[inside] = np.asarray(labels)[tuple(idx[:, inside])]
    fg = values > 0
    return points[:, fg], values[fg]


def warped_boundaries(
    points: np.ndarray, values: np.ndarray, shape: Sequence[int], num_classes: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """∂G of every class of a label volume given by its foreground voxels.

    Parameters
    ----------
    points, values
        Foreground voxels ``(nd, n)`` and their classes (every other voxel of
        the ``shape`` grid is background).
    shape
        The grid.
    num_classes
        ``C``.

    Returns
    -------
    seeds, counts
        ``seeds[c]``: the voxels ``(k, nd)`` of ``∂G`` of class ``c`` (a voxel
        of the class with a face neighbour of another class inside the grid);
        ``counts[c]``: the voxels of class ``c`` in the grid.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    counts = np.bincount(values, minlength=num_classes).astype(np.int64)
    counts[0] = math.prod(shape) - len(values)
    if len(values) == 0:
        return [np.zeros((0, nd), dtype=np.int64) for _ in range(num_classes)], counts
    # the foreground's box plus one voxel (inside the grid) as a dense lookup
    lo = np.maximum(points.min(axis=1) - 1, 0)
    hi = np.minimum(points.max(axis=1) + 2, shape)
    local = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    if kernels.NUMBA and nd == 3:
        edge, background = kernels.boundary_voxels(points - lo[:, None], values, local)
        seeds = [background + lo]
        seeds += [(points[:, edge & (values == c)]).T.copy() for c in range(1, num_classes)]
        return seeds, counts
    dtype = np.uint8 if num_classes <= 256 else np.int64
    dense = np.zeros(local, dtype=dtype)
    rel = points - lo[:, None]
    flat = np.ravel_multi_index(tuple(rel), local)
    dense.reshape(-1)[flat] = values
    lookup = dense.reshape(-1)
    own = values.astype(dtype)
    edge = np.zeros(len(values), dtype=bool)
    background = np.zeros(math.prod(local), dtype=bool)
    stride = 1
    for axis in reversed(range(nd)):  # face neighbours inside the grid (and so the box)
        for step in (-1, 1):
            moved = rel[axis] + step
            ok = np.flatnonzero((moved >= 0) & (moved < local[axis]))
            nb = flat[ok] + step * stride
            nb_values = lookup[nb]
            edge[ok] |= nb_values != own[ok]
            background[nb[nb_values == 0]] = True
        stride *= local[axis]
    seeds = [np.zeros((0, nd), dtype=np.int64) for _ in range(num_classes)]
    found = np.flatnonzero(background)
    if found.size:
        seeds[0] = np.stack(np.unravel_index(found, local), axis=1) + lo
    for c in range(1, num_classes):
        seeds[c] = (points[:, edge & (values == c)]).T.copy()
    return seeds, counts


def _reach(seeds_mm: np.ndarray, patch: Sequence[slice], spacing: np.ndarray) -> float:
    """An upper bound (mm) of the distance from any patch voxel to the nearest seed."""
    axes = []
    gap = []
    for p, s in zip(patch, spacing, strict=True):
        n = p.stop - p.start
        k = max(1, math.ceil((n - 1) * s / _LATTICE_MM))
        pos = np.unique(np.round(np.linspace(p.start, p.stop - 1, k + 1)).astype(np.int64))
        axes.append(pos * s)
        gap.append(float(np.max(np.diff(pos), initial=0)) / 2.0 * s)
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    # any subset of the seeds bounds the distance from above: a sparse one keeps the
    # tree small (the bound loosens by about the gap between the kept seeds)
    stride = max(1, len(seeds_mm) // _REACH_SEEDS)
    dist, _ = cKDTree(seeds_mm[::stride]).query(lattice, workers=1)
    return float(dist.max()) + math.sqrt(sum(g * g for g in gap)) + _EPS


def _patch_distance(
    seeds: np.ndarray,
    patch: Sequence[slice],
    spacing: np.ndarray,
    backend: str,
) -> np.ndarray:
    """Distance (mm, float32) from each patch voxel to the nearest of ``seeds (k, nd)``."""
    plo = np.array([p.start for p in patch])
    phi = np.array([p.stop - 1 for p in patch])
    reach = _reach(seeds * spacing, patch, spacing)
    gap = np.maximum(np.maximum(plo - seeds, seeds - phi), 0) * spacing
    near = seeds[np.einsum("ij,ij->i", gap, gap) <= reach * reach]
    if kernels.NUMBA and backend != "scipy":  # the transform on the patch's lines only
        lead = 3 - len(patch)  # 1D and 2D as 3D with leading axes of one voxel
        squared = kernels.patch_squared_distance(
            np.pad(near, ((0, 0), (lead, 0))),
            np.concatenate([np.zeros(lead, dtype=np.int64), plo]),
            (1,) * lead + tuple(p.stop - p.start for p in patch),
            np.concatenate([np.ones(lead), spacing]),
        )
        return np.sqrt(squared.reshape(squared.shape[lead:])).astype(np.float32)
    lo = np.minimum(plo, near.min(axis=0))
    hi = np.maximum(phi, near.max(axis=0)) + 1
    free = np.ones(tuple(hi - lo), dtype=bool)
    free[tuple((near - lo).T)] = False
    crop = tuple(
        slice(a - b, a - b + p.stop - p.start) for a, b, p in zip(plo, lo, patch, strict=True)
    )
    if backend == "edt" and _edt is not None:  # squared: the root on the patch only
        anisotropy = tuple(float(s) for s in spacing)
        squared = _edt.edtsq(free, anisotropy=anisotropy, black_border=False, parallel=1)
        return np.sqrt(squared[crop])
    return distance_transform(free, tuple(float(s) for s in spacing), backend)[crop]


def patch_class_distances(
    labels: np.ndarray,
    warp: Warp,
    patch: Sequence[slice],
    patch_labels: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
    *,
    backend: str = "auto",
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """φ of every class of the warped volume, on the patch: ``(C, *P)`` float32 (mm).

    Parameters
    ----------
    labels
        ``(*V)`` class indices of the volume (may be memory-mapped).
    warp
        The warp of the volume grid (:func:`~napari_boundary_seg.core.augment.draw_warp`).
    patch
        The patch, a tuple of slices of the volume grid.
    patch_labels
        ``(*P)``: the warped labels on the patch
        (:func:`~napari_boundary_seg.core.augment.warp_labels` of ``patch``).
    num_classes
        ``C``.
    spacing
        Voxel size (mm), numpy axis order.
    backend
        Of the Euclidean transform, as in
        :func:`~napari_boundary_seg.core.distance.resolve_backend`.
    foreground
        Optional ``(K, nd)`` indices of the foreground voxels of ``labels``.

    Returns
    -------
    np.ndarray
        ``class_distance_maps(warp_labels(labels, warp, whole grid), C,
        spacing)`` cropped to ``patch``, up to float32 rounding.
    """
    sp = np.asarray([float(s) for s in spacing])
    resolved = resolve_backend(backend, labels.ndim)
    points, values = foreground_voxels(labels, warp, foreground)
    seeds, counts = warped_boundaries(points, values, labels.shape, num_classes)
    size = math.prod(labels.shape)
    out = np.zeros((num_classes, *patch_labels.shape), dtype=np.float32)
    for c in range(num_classes):
        if counts[c] == 0 or counts[c] == size or len(seeds[c]) == 0:
            continue  # an empty or full class: φ is all zeros
        dist = _patch_distance(seeds[c], patch, sp, resolved)
        np.negative(dist, out=dist, where=(patch_labels == c) & (dist > 0))
        out[c] = dist
    return out
