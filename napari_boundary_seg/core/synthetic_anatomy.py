"""The anatomy of the built-in benchmark: reference heads and what both presets share.

A reference head (:class:`Anatomy`: T1, grey matter, white matter, CSF, other
tissue, distance to the ventricles) on the output grid, from the MNI152
templates or a procedural phantom (:func:`load_anatomy`); per-case deformation
(:func:`_deform`), smooth random fields and lesion growing, used by the
``easy`` (:mod:`~napari_boundary_seg.core.synthetic_easy`) and ``wmh``
(:mod:`~napari_boundary_seg.core.synthetic_wmh`) presets. The overview is in
:mod:`~napari_boundary_seg.core.synthetic`.
"""

from __future__ import annotations

import heapq
import importlib.util
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_boundary_seg.core.cases import Case

logger = logging.getLogger(__name__)

__all__ = [
    "ANATOMIES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "MODALITIES",
    "Anatomy",
    "load_anatomy",
    "mni_template_paths",
]

ANATOMIES = ("auto", "mni", "phantom")
DEFAULT_SHAPE = (96, 112, 96)
"""Default grid (numpy axis order = RAS: left-right, posterior-anterior, inferior-superior)."""
DEFAULT_SPACING = (2.0, 2.0, 2.0)
"""Default voxel size in mm: a 192 x 224 x 192 mm field of view."""
MODALITIES = ("FLAIR", "T1")

_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue maps of one reference head on the output grid.

    Attributes
    ----------
    kind
        ``"mni"`` or ``"phantom"``.
    t1
        ``(*shape)`` float32 T1-weighted reference in [0, 1].
    gm, wm, csf, other
        ``(*shape)`` float32 probabilities of grey matter, white matter,
        cerebrospinal fluid and non-brain head tissue (scalp, skull, muscle).
    ventricle_distance
        ``(*shape)`` float32 distance to the ventricles, mm.
    spacing
        Voxel size in mm (numpy axis order).
    affine
        ``(4, 4)`` voxel-to-world matrix (MNI mm for ``"mni"``).
    """

    kind: str
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    other: np.ndarray
    ventricle_distance: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape."""
        return tuple(self.t1.shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------------
# anatomy
# ----------------------------------------------------------------------------


def mni_template_paths() -> dict[str, Path] | None:
    """Paths of the MNI152 2009 T1/GM/WM templates inside ``nilearn``, or ``None``.

    nilearn is located without being imported.
    """
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {k: base / name for k, name in _MNI_FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def _check_grid(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape}")
    if len(spacing) != 3 or any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing}")
    return shape, spacing


def _grid_affine(
    shape: Sequence[int], spacing: Sequence[float], center: Sequence[float]
) -> np.ndarray:
    """``diag(spacing)`` with the grid's centre at world point ``center``."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(center) - np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
    return affine


def _sample(volumes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sampling of ``volumes (K, X, Y, Z)`` at voxel ``coords (X', Y', Z', 3)``.

    Outside the volume the result is 0. Returns ``(K, X', Y', Z')`` float32.
    """
    size = np.asarray(volumes.shape[1:], dtype=np.float64)
    grid = np.empty(coords.shape, dtype=np.float32)  # xyz order: last numpy axis first
    for k in range(3):
        grid[..., 2 - k] = coords[..., k] * np.float32(2.0 / (size[k] - 1)) - np.float32(1.0)
    grid = torch.from_numpy(grid)[None]  # (1, X', Y', Z', 3), align_corners=True convention
    src = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].numpy()


def _finish_anatomy(
    kind: str,
    t1: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    head: np.ndarray,
    ventricles: np.ndarray | None,
    spacing: tuple[float, ...],
    affine: np.ndarray,
) -> Anatomy:
    """Derive CSF, non-brain tissue and the ventricle distance from GM/WM/head maps."""
    tissue = gm + wm
    brain = tissue > 0.5
    # fill the ventricles and sulci: hole filling per axial slice, then in 3D
    filled = np.stack(
        [ndimage.binary_fill_holes(brain[..., k]) for k in range(brain.shape[2])], axis=-1
    )
    filled = ndimage.binary_fill_holes(ndimage.binary_closing(filled, iterations=1) | filled)
    soft = ndimage.gaussian_filter(filled.astype(np.float32), 0.5)
    csf = np.clip(np.maximum(soft, tissue) - tissue, 0.0, 1.0).astype(np.float32)
    other = np.clip(head - np.maximum(soft, tissue), 0.0, 1.0).astype(np.float32)
    if ventricles is None:
        depth = ndimage.distance_transform_edt(filled, sampling=spacing)
        ventricles = (csf > 0.5) & (depth > 12.0)
    if ventricles.any():
        vdist = ndimage.distance_transform_edt(~ventricles, sampling=spacing)
    else:  # no ventricles found at this resolution: distance to the brain's centre
        centre = np.argwhere(filled).mean(axis=0) if filled.any() else np.asarray(brain.shape) / 2
        grids = np.meshgrid(*[np.arange(n) for n in brain.shape], indexing="ij")
        vdist = np.sqrt(
            sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
        )
    return Anatomy(
        kind=kind,
        t1=np.clip(t1, 0, 1).astype(np.float32),
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf,
        other=other,
        ventricle_distance=vdist.astype(np.float32),
        spacing=tuple(float(s) for s in spacing),
        affine=affine,
    )


def _mni_anatomy(
    shape: tuple[int, ...], spacing: tuple[float, ...], paths: dict[str, Path]
) -> Anatomy:
    images = {k: nib.load(str(p)) for k, p in paths.items()}
    src_affine = np.asarray(images["t1"].affine, dtype=np.float64)
    src_spacing = np.linalg.norm(src_affine[:3, :3], axis=0)
    vols = np.stack(
        [np.asarray(images[k].dataobj, dtype=np.float32) / 255.0 for k in ("t1", "gm", "wm")]
    )
    # centre the grid on the head's bounding box
    head_idx = np.argwhere(vols[0] > 0.04)
    centre_vox = (head_idx.min(axis=0) + head_idx.max(axis=0)) / 2.0
    centre = (src_affine @ np.append(centre_vox, 1.0))[:3]
    affine = _grid_affine(shape, spacing, centre)
    # anti-alias before downsampling: Gaussian of FWHM = target voxel size
    sigma = [max(0.0, (s / ss - 1.0)) * 0.42 for s, ss in zip(spacing, src_spacing, strict=True)]
    if any(v > 0.1 for v in sigma):
        vols = np.stack([ndimage.gaussian_filter(v, sigma, truncate=2.5) for v in vols])
    grid = np.stack(
        np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1
    )
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    src_coords = (world - src_affine[:3, 3]) @ np.linalg.inv(src_affine[:3, :3]).T
    t1, gm, wm = _sample(vols, src_coords)
    head = ndimage.gaussian_filter((t1 > 0.06).astype(np.float32), 0.5)
    return _finish_anatomy("mni", t1, gm, wm, head, None, spacing, affine)


def _phantom_anatomy(shape: tuple[int, ...], spacing: tuple[float, ...]) -> Anatomy:
    # physical coordinates (mm) centred on the grid
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    z = z + 10.0  # the head sits a little above the centre

    def ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float) -> np.ndarray:
        return np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2)

    r = ellipsoid(0, 0, 0, 72, 92, 78)
    # angular folding of the cortex: gyri as a product of sines
    theta = np.arctan2(y, x)
    phi = np.arctan2(z, np.hypot(x, y))
    fold = 0.035 * np.sin(7 * theta) * np.sin(6 * phi) + 0.02 * np.sin(11 * theta + 3 * phi)
    head = (r < 1.0).astype(np.float32)
    skull = (r >= 0.9) & (r < 0.95)
    brain_r = r / 0.88
    brain = brain_r < 1.0 + fold
    wm = brain & (brain_r < 0.78 + 1.6 * fold)
    gm = brain & ~wm
    vent = (ellipsoid(-11, 4, 14, 7, 30, 11) < 1.0) | (ellipsoid(11, 4, 14, 7, 30, 11) < 1.0)
    vent |= ellipsoid(0, -4, 2, 3, 12, 6) < 1.0  # third ventricle
    wm &= ~vent
    gm &= ~vent
    sig = 0.6
    gm_f = ndimage.gaussian_filter(gm.astype(np.float32), sig)
    wm_f = ndimage.gaussian_filter(wm.astype(np.float32), sig)
    head_f = ndimage.gaussian_filter(head, sig)
    csf_f = np.clip(ndimage.gaussian_filter(brain.astype(np.float32), sig) - gm_f - wm_f, 0, 1)
    other = np.clip(head_f - gm_f - wm_f - csf_f, 0, 1)
    skull_f = ndimage.gaussian_filter(skull.astype(np.float32), sig)
    t1 = (
        0.8 * wm_f
        + 0.55 * gm_f
        + 0.12 * csf_f
        + 0.6 * np.clip(other - skull_f, 0, 1)
        + 0.05 * skull_f
    )
    affine = _grid_affine(shape, spacing, (0.0, 0.0, 0.0))
    return _finish_anatomy("phantom", t1, gm_f, wm_f, head_f, vent, spacing, affine)


def load_anatomy(
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    anatomy: str = "auto",
) -> Anatomy:
    """The reference head on a ``shape`` grid of ``spacing`` mm voxels.

    Build it once and pass it to :func:`make_case` to generate many cases (the MNI
    templates take about a second to read and resample).

    Parameters
    ----------
    shape
        Grid size ``(X, Y, Z)`` (RAS order), each at least 8.
    spacing
        Voxel size in mm.
    anatomy
        ``"auto"``, ``"mni"`` (ValueError when the nilearn templates are missing)
        or ``"phantom"``.
    """
    shape, spacing = _check_grid(shape, spacing)
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    paths = mni_template_paths() if anatomy in ("auto", "mni") else None
    if anatomy == "mni" and paths is None:
        raise ValueError(
            "anatomy='mni' needs the MNI152 templates of the nilearn package "
            "(pip install nilearn); use anatomy='phantom' or 'auto'"
        )
    if paths is not None:
        return _mni_anatomy(shape, spacing, paths)
    if anatomy == "auto":
        logger.info("nilearn templates not found: using the procedural head phantom")
    return _phantom_anatomy(shape, spacing)


# ----------------------------------------------------------------------------
# what both presets draw per case
# ----------------------------------------------------------------------------


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], control: int, scale: float
) -> np.ndarray:
    """A smooth random field: normal values on a ``control``^3 grid, upsampled (cubic-ish)."""
    coarse = torch.from_numpy(
        rng.standard_normal((1, 1, control, control, control)).astype(np.float32)
    )
    field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return (field[0, 0].numpy() * scale).astype(np.float32)


def _deform(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Deformed tissue maps ``(6, *shape)``: t1, gm, wm, csf, other, ventricle distance."""
    shape = np.asarray(anatomy.shape, dtype=np.float64)
    spacing = np.asarray(anatomy.spacing)
    centre = (shape - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-6.0, 6.0, size=3))
    rot = np.eye(3)
    for k, a in enumerate(angles):
        i, j = [m for m in range(3) if m != k]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        rot = rot @ r
    scale = rng.uniform(0.92, 1.08, size=3) * rng.uniform(0.95, 1.05)
    shift_mm = rng.uniform(-4.0, 4.0, size=3)
    # output voxel -> mm about the centre -> inverse scale/rotation -> source voxel,
    # built by broadcasting 1D axes (float32) rather than a full coordinate grid
    mm_axes = [
        ((np.arange(n) - centre[k]) * spacing[k] - shift_mm[k])
        .astype(np.float32)
        .reshape([-1 if a == k else 1 for a in range(3)])
        for k, n in enumerate(anatomy.shape)
    ]
    displacement_mm = 3.0
    src = np.empty((*anatomy.shape, 3), dtype=np.float32)
    for j in range(3):
        acc = _smooth_field(rng, anatomy.shape, 5, displacement_mm)
        for k in range(3):
            acc += mm_axes[k] * np.float32(rot[k, j] / scale[j])
        src[..., j] = acc / np.float32(spacing[j]) + np.float32(centre[j])
    vols = np.stack(
        [anatomy.t1, anatomy.gm, anatomy.wm, anatomy.csf, anatomy.other, anatomy.ventricle_distance]
    )
    return _sample(vols, src)


def _grow_lesion(
    centre: np.ndarray,
    size: int,
    allowed: np.ndarray,
    taken: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Flat indices of ``size`` face-connected voxels forming an irregular blob.

    Grown from ``centre`` by always adding the free neighbour with the lowest score
    (ellipsoidal distance plus a smooth random field, white matter preferred), so
    the lesion is one 6-connected component.
    """
    shape = np.asarray(allowed.shape)
    radius = (3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0)
    half = int(math.ceil(2.5 * radius)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    axes = [np.arange(a, b) - c for a, b, c in zip(lo, hi, centre, strict=True)]
    g = np.meshgrid(*axes, indexing="ij")
    radii = max(radius, 1.0) * rng.uniform(0.6, 1.5, size=3)
    score = np.sqrt(sum((gi / ri) ** 2 for gi, ri in zip(g, radii, strict=True)))
    score = score + _smooth_field(rng, box_shape, 3, 0.3) + 0.05 * rng.standard_normal(box_shape)
    score = score + 4.0 * ~allowed[box]
    blocked = taken[box]
    flat_score = score.ravel()
    strides = np.array([box_shape[1] * box_shape[2], box_shape[2], 1])
    start = int(np.dot(centre - lo, strides))
    chosen: list[int] = []
    seen = np.zeros(flat_score.size, dtype=bool)
    seen[start] = True
    heap = [(float(flat_score[start]), start)]
    while heap and len(chosen) < size:
        _, v = heapq.heappop(heap)
        coords = np.unravel_index(v, box_shape)
        if not blocked[coords]:
            chosen.append(v)
        for k in range(3):
            for step in (-1, 1):
                c = coords[k] + step
                if 0 <= c < box_shape[k]:
                    u = v + step * int(strides[k])
                    if not seen[u]:
                        seen[u] = True
                        heapq.heappush(heap, (float(flat_score[u]), u))
    local = np.unravel_index(np.asarray(chosen, dtype=np.int64), box_shape)
    return np.ravel_multi_index(
        tuple(li + a for li, a in zip(local, lo, strict=True)), allowed.shape
    )


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def synthetic_case(
    prefix: str,
    seed: int | Sequence[int],
    case_id: str | None,
    images: list[np.ndarray],
    labels: np.ndarray,
    spacing: Sequence[float],
    affine: np.ndarray,
) -> Case:
    """A drawn case as a :class:`~napari_boundary_seg.core.cases.Case`: the modality
    images stacked, integer labels, its id ``<prefix>_<seed>`` unless given."""
    if case_id is None:
        case_id = f"{prefix}_" + (
            "_".join(str(s) for s in seed) if isinstance(seed, Sequence) else str(seed)
        )
    return Case(
        case_id=case_id,
        images=np.stack(images),
        labels=labels.astype(np.int64),
        spacing=tuple(float(s) for s in spacing),
        affine=affine,
        modalities=MODALITIES,
    )
