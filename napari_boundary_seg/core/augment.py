"""Augmentation of training samples that keeps the distance map φ exact.

A training sample is ``(image (M, *S) float32, labels (*S) int, φ (C, *S)
float32 mm)`` cropped from a volume, with φ the signed distance map of the
*whole* volume's labels. The rule every transform keeps: **φ of the augmented
sample is the signed distance map of the augmented labels** (of the augmented
whole volume; never the map of the patch alone, never an interpolated φ).

- Exact transforms move φ with the labels: flips along any axis, permutations
  of axes whose spacing (and patch size) are equal, 90° rotations in a plane
  whose two axes have equal spacing and size. A signed distance is invariant
  under these isometries of the voxel grid, so the moved φ *is* the map of the
  moved labels, bit for bit.
- Intensity transforms (gamma, contrast, brightness, Gaussian noise, Gaussian
  blur) change the image only.
- Interpolating transforms (rotation by any angle, scaling, elastic
  deformation; :class:`Warp`) warp the image (linear) and the labels (nearest
  neighbour) and **recompute** φ. The warp is defined on the whole volume:
  ``x -> c + A (x - c) + u(x)`` with ``c`` the patch centre, ``A`` rotation and
  scale in mm, and ``u`` a smooth elastic displacement confined to a *context*
  box (the patch plus a margin, tapered to zero at the box's edge). φ of the
  patch is the whole warped volume's φ, computed from the sparse parts only
  (:mod:`napari_boundary_seg.core.warp_distance`, docs/DESIGN.md "φ of a warped
  patch"): the labels are warped only where they can be foreground, their
  boundary voxels collected, and one transform of the box holding the patch and
  the boundary voxels that can be nearest to it gives every patch voxel its
  distance. ``phi="context"`` is the tests' reference: φ on the warped
  context, certified at a patch voxel ``q`` when ``|φ_ctx(q)|`` is smaller
  than the distance from ``q`` to the context's outer layer, the margin
  doubled otherwise, up to the whole volume (``bench data`` compares the two).

Why not MONAI's ``RandAffine``/``Rand3DElastic`` here: they resample one array
on a grid they draw, while exactness needs the *same* map evaluated on several
parts of the grid (the patch, the blocks that may hold foreground, the whole
volume) with the labels sampled by nearest neighbour at identical
coordinates; the warp is a few lines of numpy and
``scipy.ndimage.map_coordinates`` (image, order 1). The intensity transforms
are the usual nnU-Net/MONAI ones, written here in numpy for the same reason of
seeding: every random number comes from the ``numpy.random.Generator`` passed
in, so a sample is a pure function of its seed (repeatable for any number of
DataLoader workers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_boundary_seg.core import kernels
from napari_boundary_seg.core.distance import class_distance_maps
from napari_boundary_seg.core.validate import check_int
from napari_boundary_seg.core.warp_distance import patch_class_distances

__all__ = [
    "PHI_METHODS",
    "AugmentConfig",
    "Sample",
    "Warp",
    "augment_sample",
    "draw_warp",
    "exact_transform",
    "intensity_transform",
    "warp_labels",
    "warped_sample",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the random transforms (nnU-Net-like defaults).

    Attributes
    ----------
    flip
        Probability of a flip, per spatial axis.
    permute
        Probability of permuting the axes that share spacing and size.
    rot90
        Probability of a 90° rotation (1, 2 or 3 quarter turns) in one plane of
        two axes with equal spacing and size.
    warp
        Probability of a rotation/scale/elastic warp (φ recomputed).
    rotate_deg
        Largest rotation angle (degrees) about each axis (in-plane for 2D).
    scale
        Range of the zoom factor.
    elastic_vox
        Standard deviation (voxels) of the elastic displacement at its control
        points; 0 disables it.
    elastic_points
        Control points per axis of the elastic field.
    margin_mm
        Margin of the context box around the patch (mm): where the elastic
        displacement lives, and where ``phi="context"`` first recomputes φ.
    gamma, contrast, brightness, noise, blur
        Probabilities of each intensity transform (per sample).
    gamma_range, contrast_range, brightness_range
        Ranges of the gamma exponent, contrast factor and additive brightness.
    noise_std
        Largest standard deviation of the Gaussian noise (image units, [0, 1]).
    blur_sigma
        Range of the Gaussian blur's sigma (voxels).
    """

    flip: float = 0.5
    permute: float = 0.5
    rot90: float = 0.5
    warp: float = 0.2
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_vox: float = 2.0
    elastic_points: int = 4
    margin_mm: float = 16.0
    gamma: float = 0.3
    contrast: float = 0.15
    brightness: float = 0.15
    noise: float = 0.15
    blur: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    noise_std: float = 0.05
    blur_sigma: tuple[float, float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        for name in (
            "flip",
            "permute",
            "rot90",
            "warp",
            "gamma",
            "contrast",
            "brightness",
            "noise",
            "blur",
        ):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability, got {value!r}")
        check_int(self.elastic_points, "AugmentConfig.elastic_points", 2)
        if self.margin_mm < 0 or self.elastic_vox < 0:
            raise ValueError(
                f"AugmentConfig: margin_mm {self.margin_mm} and elastic_vox {self.elastic_vox} "
                "must be >= 0"
            )


@dataclass(frozen=True, eq=False)
class Sample:
    """One training sample: ``image (M, *S)`` float32, ``labels (*S)`` int64,
    ``dist (C, *S)`` float32 (mm)."""

    image: np.ndarray
    labels: np.ndarray
    dist: np.ndarray


# ---------------------------------------------------------------------------
# exact transforms


def _spatial_ok(spacing: Sequence[float], shape: Sequence[int], a: int, b: int) -> bool:
    return math.isclose(spacing[a], spacing[b], rel_tol=1e-6) and shape[a] == shape[b]


def exact_transform(
    sample: Sample, spacing: Sequence[float], config: AugmentConfig, rng: np.random.Generator
) -> Sample:
    """Random flips, axis permutations and 90° rotations; φ moves with the labels.

    Permutations and rotations only use axes of equal spacing and size, so the
    moved φ is exactly the map of the moved labels (the grid is unchanged).
    """
    image, labels, dist = sample.image, sample.labels, sample.dist
    nd = labels.ndim
    for axis in range(nd):
        if rng.random() < config.flip:
            image = np.flip(image, 1 + axis)
            labels = np.flip(labels, axis)
            dist = np.flip(dist, 1 + axis)
    pairs = [(a, b) for a in range(nd) for b in range(a + 1, nd)]
    pairs = [p for p in pairs if _spatial_ok(spacing, labels.shape, *p)]
    if pairs and rng.random() < config.permute:
        a, b = pairs[int(rng.integers(len(pairs)))]
        image = np.swapaxes(image, 1 + a, 1 + b)
        labels = np.swapaxes(labels, a, b)
        dist = np.swapaxes(dist, 1 + a, 1 + b)
    if pairs and rng.random() < config.rot90:
        a, b = pairs[int(rng.integers(len(pairs)))]
        k = int(rng.integers(1, 4))
        image = np.rot90(image, k, axes=(1 + a, 1 + b))
        labels = np.rot90(labels, k, axes=(a, b))
        dist = np.rot90(dist, k, axes=(1 + a, 1 + b))
    return Sample(image, labels, dist)


def intensity_transform(
    image: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Gamma, contrast, brightness, Gaussian noise and blur of ``image (M, *S)``."""
    out = np.array(image, dtype=np.float32, copy=True)
    spatial = tuple(range(1, out.ndim))
    if rng.random() < config.gamma:
        lo, hi = out.min(axis=spatial, keepdims=True), out.max(axis=spatial, keepdims=True)
        span = np.maximum(hi - lo, 1e-8)
        gamma = rng.uniform(*config.gamma_range)
        out = ((out - lo) / span) ** gamma * span + lo
    if rng.random() < config.contrast:
        mean = out.mean(axis=spatial, keepdims=True)
        out = (out - mean) * rng.uniform(*config.contrast_range) + mean
    if rng.random() < config.brightness:
        out = out + rng.uniform(*config.brightness_range)
    if rng.random() < config.noise:
        std = rng.uniform(0.0, config.noise_std)
        out = out + rng.standard_normal(out.shape).astype(np.float32) * std
    if rng.random() < config.blur:
        sigma = rng.uniform(*config.blur_sigma)
        out = np.stack([ndimage.gaussian_filter(ch, sigma) for ch in out])
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------
# warps (φ recomputed)


@dataclass(frozen=True, eq=False)
class Warp:
    """A warp of the whole volume grid: ``x -> centre + matrix (x - centre) + u(x)``.

    Coordinates are voxel indices of the volume (output grid = input grid).
    ``u`` is ``displacement (nd, *box_shape)`` on ``box`` (a tuple of slices of
    the volume grid) and zero outside it; ``reach`` (optional): an upper bound
    of ``|u|`` per axis (else taken from ``displacement``).
    """

    centre: np.ndarray
    matrix: np.ndarray
    box: tuple[slice, ...]
    displacement: np.ndarray | None
    reach: np.ndarray | None = None

    def coords(self, region: Sequence[slice]) -> np.ndarray:
        """Input coordinates ``(nd, *region_shape)`` (float64) of a region of the grid."""
        if kernels.NUMBA and len(region) == 3:  # the same operations, compiled
            return kernels.warp_coords(
                np.array([s.start for s in region]),
                tuple(s.stop - s.start for s in region),
                self.centre,
                self.matrix,
                np.array([b.start for b in self.box]),
                self.displacement,
            )
        axes = [np.arange(s.start, s.stop, dtype=np.float64) for s in region]
        out = self._affine(np.stack(np.meshgrid(*axes, indexing="ij")))
        if self.displacement is not None:
            inner = tuple(
                slice(max(r.start, b.start), min(r.stop, b.stop))
                for r, b in zip(region, self.box, strict=True)
            )
            if all(s.stop > s.start for s in inner):
                dst = tuple(
                    slice(i.start - r.start, i.stop - r.start)
                    for i, r in zip(inner, region, strict=True)
                )
                src = tuple(
                    slice(i.start - b.start, i.stop - b.start)
                    for i, b in zip(inner, self.box, strict=True)
                )
                out[(slice(None), *dst)] += self.displacement[(slice(None), *src)]
        return out

    def coords_at(self, points: np.ndarray) -> np.ndarray:
        """Input coordinates ``(nd, n)`` (float64) of grid voxels ``points (nd, n)``,
        bit-identical to :meth:`coords` of any region holding them."""
        out = self._affine(points.astype(np.float64))
        if self.displacement is not None:
            nd = points.shape[0]
            size = self.displacement.shape[1:]
            inside = np.ones(points.shape[1], dtype=bool)
            flat = np.zeros(points.shape[1], dtype=np.int64)
            for a, (b, n) in enumerate(zip(self.box, size, strict=True)):
                local = points[a] - b.start
                inside &= (local >= 0) & (local < n)
                flat = flat * n + local
            if inside.any():
                field = self.displacement.reshape(nd, -1)
                out[:, inside] += field[:, flat[inside]]
        return out

    def _affine(self, grid: np.ndarray) -> np.ndarray:
        """``centre + matrix (grid - centre)`` over axis 0 of ``grid``, in elementwise
        products and sums (not BLAS), so that a voxel gets bit-identical coordinates
        whatever region or point list it is computed in."""
        nd = grid.shape[0]
        rel = grid - self.centre.reshape(-1, *([1] * (grid.ndim - 1)))
        out = np.empty(rel.shape, dtype=np.float64)
        term = np.empty(rel.shape[1:], dtype=np.float64)
        for i in range(nd):
            np.multiply(self.matrix[i, 0], rel[0], out=out[i])
            for j in range(1, nd):
                out[i] += np.multiply(self.matrix[i, j], rel[j], out=term)
            out[i] += self.centre[i]
        return out


def _rotation(nd: int, angles: np.ndarray) -> np.ndarray:
    if nd == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        a, b = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rot = r @ rot
    return rot


def draw_warp(
    shape: Sequence[int],
    spacing: Sequence[float],
    patch: Sequence[slice],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> Warp:
    """Draw a random rotation/scale/elastic warp around ``patch`` of a volume of ``shape``.

    Rotation and scale act in mm (anisotropic spacing is respected); the
    elastic displacement lives on the context box (the patch plus
    ``config.margin_mm`` on each side, inside the volume) and tapers to zero at
    its edge.
    """
    nd = len(shape)
    sp = np.asarray(spacing, dtype=np.float64)
    centre = np.array([(s.start + s.stop - 1) / 2.0 for s in patch])
    n_angles = 1 if nd == 2 else 3
    angles = np.deg2rad(rng.uniform(-config.rotate_deg, config.rotate_deg, size=n_angles))
    zoom = rng.uniform(*config.scale)
    # output offset (mm) -> input offset (mm) is R / zoom; in voxels S^-1 R S / zoom
    matrix = np.diag(1.0 / sp) @ _rotation(nd, angles) @ np.diag(sp) / zoom
    margin = [int(math.ceil(config.margin_mm / s)) for s in sp]
    box = tuple(
        slice(max(0, p.start - m), min(n, p.stop + m))
        for p, m, n in zip(patch, margin, shape, strict=True)
    )
    displacement = reach = None
    if config.elastic_vox > 0:
        k = config.elastic_points
        coarse = rng.standard_normal((nd, *([k] * nd))) * config.elastic_vox
        box_shape = tuple(b.stop - b.start for b in box)
        displacement, reach = _elastic_field(coarse, box_shape)
    return Warp(centre, matrix, box, displacement, reach)


def _linear_weights(k: int, n: int) -> np.ndarray:
    """``(n, k)``: linear interpolation of ``k`` nodes at ``n`` points, the end
    points on the end nodes (``align_corners=True`` in torch's terms)."""
    scale = (k - 1) / (n - 1) if n > 1 else 0.0
    src = np.arange(n) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), k - 1)
    hi = np.minimum(lo + 1, k - 1)
    frac = src - lo
    weights = np.zeros((n, k))
    np.add.at(weights, (np.arange(n), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n), hi), frac)
    return weights


def _elastic_field(coarse: np.ndarray, box_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(nd, *box_shape)``: the coarse displacements ``(nd, k, ..., k)`` interpolated
    (bi/trilinear, end points on the end nodes) onto the box and tapered by
    ``Π_a sin(π (i_a + ½) / n_a)``, one axis at a time (the interpolation and the
    taper are separable); and an upper bound of its magnitude per axis (the
    last axis' weights are at least 0 and add up to at most 1, so the largest
    magnitude before that axis bounds the field)."""
    field = bound = coarse
    for n in box_shape:  # contracts the first node axis; the new axis goes last
        bound = np.abs(field).reshape(len(field), -1).max(axis=1)
        t = np.sin(np.pi * (np.arange(n) + 0.5) / n)
        field = np.tensordot(field, _linear_weights(coarse.shape[1], n) * t[:, None], (1, 1))
    return np.ascontiguousarray(field), bound


def _read_block(array: np.ndarray, coords: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The block of ``array``'s last ``nd`` axes that ``coords`` reach, and coords relative to it."""
    nd = coords.shape[0]
    shape = array.shape[-nd:]
    flat = coords.reshape(nd, -1)
    pad = 1 if order > 0 else 0
    lo = [int(max(0, min(n - 1, math.floor(flat[a].min()) - pad))) for a, n in enumerate(shape)]
    hi = [
        int(max(lo[a] + 1, min(n, math.ceil(flat[a].max()) + 1 + pad))) for a, n in enumerate(shape)
    ]
    index = (Ellipsis, *(slice(a, b) for a, b in zip(lo, hi, strict=True)))
    block = np.asarray(array[index])  # a view of an array in memory
    rel = coords - np.asarray(lo, dtype=np.float64).reshape(-1, *([1] * (coords.ndim - 1)))
    return block, rel


def warp_labels(
    labels: np.ndarray, warp: Warp, region: Sequence[slice], coords: np.ndarray | None = None
) -> np.ndarray:
    """Nearest-neighbour warped labels on ``region`` of the grid (background outside).

    ``coords``: ``warp.coords(region)`` if already computed.
    """
    coords = warp.coords(region) if coords is None else coords
    if kernels.NUMBA and labels.ndim == 3:  # the same rounding and lookup, compiled
        return kernels.nearest_labels(labels, coords)
    idx = np.rint(coords).astype(np.int64)
    shape = labels.shape
    flat = idx.reshape(len(shape), -1)
    lo = [int(min(max(flat[a].min(), 0), n - 1)) for a, n in enumerate(shape)]
    hi = [int(max(min(flat[a].max() + 1, n), lo[a] + 1)) for a, n in enumerate(shape)]
    block = np.asarray(labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
    inside = np.ones(idx.shape[1:], dtype=bool)
    for a, n in enumerate(block.shape):
        idx[a] -= lo[a]
        inside &= (idx[a] >= 0) & (idx[a] < n)
        np.clip(idx[a], 0, n - 1, out=idx[a])
    out = block[tuple(idx)].astype(np.int64)
    out[~inside] = 0
    return out


def _warp_image(
    image: np.ndarray, warp: Warp, region: Sequence[slice], coords: np.ndarray | None = None
) -> np.ndarray:
    coords = warp.coords(region) if coords is None else coords
    block, rel = _read_block(image, coords, order=1)
    if kernels.NUMBA and rel.shape[0] == 3:  # the same interpolation, compiled
        return kernels.linear_sample(block, rel)
    return np.stack(
        [
            ndimage.map_coordinates(
                np.asarray(ch, dtype=np.float32), rel, order=1, mode="constant", cval=0.0
            )
            for ch in block
        ]
    ).astype(np.float32, copy=False)


def _edge_distance(
    shape: Sequence[int], box: Sequence[slice], inner: Sequence[slice], spacing: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from each voxel of ``inner`` (box coordinates) to the box's outer
    layer, counting only the box sides that have volume beyond them."""
    nd = len(shape)
    out = np.full([1] * nd, np.inf)
    for a in range(nd):
        n = box[a].stop - box[a].start
        idx = np.arange(inner[a].start, inner[a].stop, dtype=np.float64)
        low = idx * spacing[a] if box[a].start > 0 else np.full_like(idx, np.inf)
        high = (n - 1 - idx) * spacing[a] if box[a].stop < shape[a] else np.full_like(idx, np.inf)
        d = np.minimum(low, high).reshape([-1 if k == a else 1 for k in range(nd)])
        out = np.minimum(out, d)
    return out


PHI_METHODS = ("boundary", "context")
"""How :func:`warped_sample` recomputes φ: ``"boundary"`` (default) from the
boundary voxels of the warped labels (:mod:`~napari_boundary_seg.core.warp_distance`),
``"context"`` by transforms of a growing context box up to the whole volume (the
reference of the tests)."""


def warped_sample(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    patch: Sequence[slice],
    warp: Warp,
    num_classes: int,
    stats: dict | None = None,
    *,
    phi: str = "boundary",
    foreground: np.ndarray | None = None,
) -> Sample:
    """The patch of the warped volume, with φ recomputed exactly (see module doc).

    Parameters
    ----------
    image
        ``(M, *V)`` volume (may be memory-mapped; only the blocks the warp
        reaches are read).
    labels
        ``(*V)`` class indices.
    spacing
        Voxel size (mm) of the volume, numpy axis order.
    patch
        The patch, a tuple of slices of the volume grid.
    warp
        From :func:`draw_warp`.
    num_classes
        ``C``.
    stats
        If given, ``stats["phi_s"]`` adds up the seconds spent warping labels
        and recomputing φ (``stats["phi_cpu_s"]``: the thread's CPU seconds)
        and ``stats["samples"]`` counts the calls; with
        ``phi="context"``, ``stats["full"]`` also counts the samples whose whole
        volume had to be warped and ``stats["grown"]`` the growths of the box.
    phi
        One of :data:`PHI_METHODS`; both give the same φ (up to float32
        rounding of the transform).
    foreground
        Optional ``(K, nd)`` voxel indices of every foreground voxel of
        ``labels`` (the cache's ``fg``), which saves a scan of the volume.

    Returns
    -------
    Sample
        ``image (M, *P)`` linear, ``labels (*P)`` nearest, ``dist (C, *P)``:
        the signed distance map of the warped whole-volume labels, cropped.
    """
    if phi not in PHI_METHODS:
        raise ValueError(f"phi must be one of {PHI_METHODS}, got {phi!r}")
    tic, cpu = time.perf_counter(), time.thread_time()
    sp = tuple(float(s) for s in spacing)
    coords = warp.coords(patch)
    if phi == "boundary":
        out_labels = warp_labels(labels, warp, patch, coords)
        dist = patch_class_distances(
            labels, warp, patch, out_labels, num_classes, sp, foreground=foreground
        )
    else:
        out_labels, dist = _context_phi(labels, sp, patch, warp, num_classes, stats)
    if stats is not None:
        stats["phi_s"] = stats.get("phi_s", 0.0) + time.perf_counter() - tic
        stats["phi_cpu_s"] = stats.get("phi_cpu_s", 0.0) + time.thread_time() - cpu
        stats["samples"] = stats.get("samples", 0) + 1
    out_image = _warp_image(image, warp, patch, coords)
    return Sample(out_image, out_labels, np.ascontiguousarray(dist))


def _context_phi(
    labels: np.ndarray,
    sp: tuple[float, ...],
    patch: Sequence[slice],
    warp: Warp,
    num_classes: int,
    stats: dict | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Warped patch labels and φ from the context box, grown up to the whole volume."""
    full = tuple(slice(0, n) for n in labels.shape)
    region = warp.box
    out_labels = None
    while True:
        inner = tuple(
            slice(p.start - r.start, p.stop - r.start) for p, r in zip(patch, region, strict=True)
        )
        label_region = warp_labels(labels, warp, region)
        if out_labels is None:
            out_labels = np.ascontiguousarray(label_region[inner])
        if region == full:  # the whole warped volume: exact by definition
            dist = class_distance_maps(label_region, num_classes, spacing=sp)[(slice(None), *inner)]
            if stats is not None:
                stats["full"] = stats.get("full", 0) + 1
            return out_labels, dist
        counts = np.bincount(label_region.ravel(), minlength=num_classes)
        if np.all((counts > 0) & (counts < label_region.size)):  # else it cannot certify
            dist_region = class_distance_maps(label_region, num_classes, spacing=sp)
            dist = dist_region[(slice(None), *inner)]
            edge = _edge_distance(labels.shape, region, inner, sp)
            has_boundary = all(bool(np.any(m != 0)) for m in dist_region)
            if has_boundary and bool(np.all(np.abs(dist) < edge)):
                return out_labels, dist
        # not certified: twice the margin around the patch (at least 8 voxels), up to
        # the whole volume (directly once the box would hold half of it)
        region = tuple(
            slice(
                max(0, p.start - max(8, 2 * (p.start - r.start))),
                min(n, p.stop + max(8, 2 * (r.stop - p.stop))),
            )
            for p, r, n in zip(patch, region, labels.shape, strict=True)
        )
        if math.prod(r.stop - r.start for r in region) > labels.size / 2:
            region = full  # nearly the volume: one transform of all of it is cheaper
        if stats is not None:
            stats["grown"] = stats.get("grown", 0) + 1


def augment_sample(
    sample: Sample,
    spacing: Sequence[float],
    config: AugmentConfig,
    rng: np.random.Generator,
) -> Sample:
    """Exact spatial transforms then intensity transforms (no warp; see :func:`warped_sample`)."""
    moved = exact_transform(sample, spacing, config, rng)
    image = intensity_transform(moved.image, config, rng)
    return Sample(
        np.ascontiguousarray(image),
        np.ascontiguousarray(moved.labels),
        np.ascontiguousarray(moved.dist),
    )
