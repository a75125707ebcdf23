"""The built-in benchmark: a deterministic, highly unbalanced lesion data set.

Each case is a brain-like volume with small white-matter-hyperintensity-like
lesions (0.1–1 % of the voxels, several lesions, some of only a few voxels) and
two modalities, in the generic layout's channel order:

- ``FLAIR``: cerebrospinal fluid dark, grey matter slightly brighter than white
  matter, lesions bright (each lesion with its own contrast, some faint);
- ``T1``: white matter brightest, grey matter darker, fluid dark, lesions
  slightly dark.

Anatomy (``anatomy=``):

- ``"mni"``: the MNI152 2009c symmetric T1, grey- and white-matter templates that
  the ``nilearn`` wheel ships (read with nibabel; nilearn itself is not imported),
  resampled to the requested grid in MNI world coordinates;
- ``"phantom"``: a procedural head (ellipsoids for the scalp, skull, a folded
  cortex, white matter and the lateral ventricles);
- ``"auto"``: ``"mni"`` when the templates are found, else ``"phantom"``.

Per case (all drawn from ``numpy.random.default_rng(seed)``): an affine jitter
(rotation, scale, shift) and a smooth random displacement field; contrast
jitter; lesions grown in white matter, more likely near the ventricles
(periventricular, as WMH are); a smooth multiplicative bias field per modality;
Rician noise. The same seed gives identical arrays.

Presets
-------
``easy`` (:func:`make_case`, the default and the sample data; unchanged since
generator version 2) has high-contrast lesions on one 2 mm grid: plain
generalized Dice already reaches DSC 0.98 on it. ``wmh`` (:func:`make_wmh_case`,
:class:`WMHConfig`) imitates what makes the WMH 2017 challenge data hard:

- several simulated sites (:data:`WMH_SITES`), each with its own grid, lesion
  contrast, noise, bias field and grey/white ratio; the site of each case is
  recorded in ``dataset.json`` so that a study can hold one out;
- partial volume: tissue and lesions are drawn on a grid twice as fine per axis
  and box-averaged; a voxel is labelled when more than half of it is lesion;
- a heavy-tailed lesion load, many punctate lesions of 1-10 voxels, larger deep
  lesions, confluent periventricular caps and bands with ragged boundaries;
- lesion contrast that varies per case and per lesion and fades towards the
  rim (rim voxels overlap normal white matter), a slightly dark T1;
- hyperintense mimics that are not labelled: the normal bright lining along
  the ventricles, bright cortical spots, and (in half the cases) a flow
  artefact: bright spots in the ventricles plus a faint phase-direction ghost.

What the ``wmh`` defaults rest on. Verified here from sources (read with the
project's search tool):

- Challenge site (wmh.isi.uu.nl, archived December 2022) and Kuijf et al.,
  "Standardized assessment of automatic segmentation of white matter
  hyperintensities and results of the WMH segmentation challenge", IEEE TMI
  2019 (abstract, arXiv 1904.00682): 60 training sets (T1 + FLAIR) from three
  institutes/scanners; a test set of 110 from five scanners, three of them in
  the training data (hence a held-out site); manual contours per the STRIVE
  criteria, converted to masks "including all voxels whose volume > 50 % was
  included" in the contour (our ``label_threshold``); ranked by DSC, HD95,
  AVD, lesion recall and lesion F1.
- Kervadec et al. (MIDL 2019, section 4): the WMH data are 3D T1 and "2D
  multi-slice FLAIR" from three hospitals; GDL reached DSC 0.727, GDL + BL
  0.748 (Table 1; 2 runs, 10 validation scans).
- A secondary summary (not the paper) says all FLAIR images were provided at a
  common 3 mm slice thickness.

From memory, NOT verified here (the paper's table of scanners could not be
retrieved): the site voxel sizes (Utrecht, 3T Philips Achieva, 2D FLAIR
0.96 x 0.95 x 3.00 mm; Singapore, 3T Siemens TrioTim, 2D FLAIR 1.00 x 1.00 x
3.00 mm; Amsterdam, 3T GE Signa HDxt, 3D FLAIR about 0.98 x 0.98 x 1.2 mm
before resampling); the lesion load range of roughly 0.6 to over 150 ml per
scan; punctate lesions being the majority of lesions by count; confluent
periventricular lesions in the scans with high load. The default sites double
the in-plane voxel size (about 2 mm, to fit a 2-core CPU budget) and keep each
site's slice thickness; the GE site keeps the thin slices of a 3D FLAIR (2.4 mm
here), and a fourth, 1.5T-like site (noisier, lower contrast, 3.6 mm slices)
stands in for the test set's unseen scanners.
"""

from __future__ import annotations

import dataclasses
import heapq
import importlib.util
import json
import logging
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_boundary_seg.core.data import Case
from napari_boundary_seg.core.io import write_nifti, write_text_atomic
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "ANATOMIES",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "MODALITIES",
    "PRESETS",
    "WMH_SITES",
    "Anatomy",
    "LesionConfig",
    "SiteConfig",
    "WMHConfig",
    "iter_write_benchmark",
    "load_anatomy",
    "load_wmh_anatomy",
    "make_case",
    "make_wmh_case",
    "mni_template_paths",
    "read_sites",
    "write_benchmark",
]

ANATOMIES = ("auto", "mni", "phantom")
DEFAULT_SHAPE = (96, 112, 96)
"""Default grid (numpy axis order = RAS: left-right, posterior-anterior, inferior-superior)."""
DEFAULT_SPACING = (2.0, 2.0, 2.0)
"""Default voxel size in mm: a 192 x 224 x 192 mm field of view."""
MODALITIES = ("FLAIR", "T1")
GENERATOR_VERSION = 2
"""Version of the easy preset (the sample data's cache key; never bump it for the wmh preset)."""
WMH_GENERATOR_VERSION = 1
PRESETS = ("easy", "wmh")
"""Generator presets: ``easy`` (the default, the original benchmark) and ``wmh``."""

_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


@dataclass(frozen=True)
class LesionConfig:
    """How many lesions and how much foreground.

    Attributes
    ----------
    fraction
        ``(low, high)``: the foreground fraction of a case (of all voxels) is drawn
        log-uniformly in this range. Overlapping lesions can only lower it, and
        lesions are added until it reaches ``min_fraction``.
    count
        ``(low, high)`` inclusive range of the number of lesions.
    tiny
        ``(low, high)`` inclusive range of the number of tiny lesions (2 to 8 voxels).
    min_fraction
        Lower bound that the final fraction always reaches.
    periventricular
        Lesion centres are drawn with weight ``wm * (1 + periventricular *
        exp(-d / 8 mm))``, ``d`` the distance to the ventricles.
    """

    fraction: tuple[float, float] = (0.0015, 0.008)
    count: tuple[int, int] = (5, 14)
    tiny: tuple[int, int] = (1, 3)
    min_fraction: float = 0.001
    periventricular: float = 3.0

    def __post_init__(self) -> None:
        lo, hi = self.fraction
        if not 0 < lo <= hi < 0.5:
            raise ValueError(f"fraction must satisfy 0 < low <= high < 0.5, got {self.fraction}")
        if not 1 <= self.count[0] <= self.count[1]:
            raise ValueError(f"count must satisfy 1 <= low <= high, got {self.count}")
        if not 0 <= self.tiny[0] <= self.tiny[1]:
            raise ValueError(f"tiny must satisfy 0 <= low <= high, got {self.tiny}")
        if not 0 <= self.min_fraction <= lo:
            raise ValueError(f"min_fraction must be in [0, fraction[0]], got {self.min_fraction}")


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
# one case
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


def _place_lesions(
    wm: np.ndarray,
    vdist: np.ndarray,
    rng: np.random.Generator,
    config: LesionConfig,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Lesion mask and the flat voxel indices of each lesion."""
    n_vox = wm.size
    allowed = wm > 0.6
    if allowed.sum() < 10:
        allowed = wm > 0.3
    if not allowed.any():
        raise ValueError(f"no white matter on a grid of shape {wm.shape}: use a larger shape")
    weight = np.where(
        allowed, wm * (1.0 + config.periventricular * np.exp(-vdist / 8.0)), 0.0
    ).ravel()
    weight /= weight.sum()
    lo, hi = config.fraction
    target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    budget = max(2, int(round(target * n_vox)))
    n_lesions = int(rng.integers(config.count[0], config.count[1] + 1))
    n_tiny = min(int(rng.integers(config.tiny[0], config.tiny[1] + 1)), n_lesions - 1)
    tiny = [int(s) for s in rng.integers(2, 9, size=n_tiny)]
    rest = max(budget - sum(tiny), 0)
    n_big = n_lesions - n_tiny
    shares = rng.lognormal(0.0, 1.4, size=n_big)
    big = [max(10, int(round(rest * s / shares.sum()))) for s in shares] if rest > 0 else []
    sizes = [s for s in big + tiny if s > 0]
    mask = np.zeros(wm.shape, dtype=bool)
    lesions: list[np.ndarray] = []
    min_count = int(math.ceil(config.min_fraction * n_vox))
    for attempt in range(len(sizes) + 50):
        if attempt < len(sizes):
            size = sizes[attempt]
        elif mask.sum() < min_count:
            size = max(min_count - int(mask.sum()), 10)
        else:
            break
        cap = int(0.0095 * n_vox) - int(mask.sum())
        size = min(size, cap)
        if size < 1:
            break
        # keep lesions apart where possible (tiny ones must stay separate lesions)
        clearance = int(math.ceil((3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0))) + 2
        candidates = np.stack(
            np.unravel_index(rng.choice(n_vox, size=30, p=weight), wm.shape), axis=1
        )
        centre = candidates[0]
        for cand in candidates:
            near = tuple(slice(max(int(c) - clearance, 0), int(c) + clearance + 1) for c in cand)
            if not mask[near].any():
                centre = cand
                break
        idx = _grow_lesion(centre, size, allowed, mask, rng)
        idx = idx[~mask.ravel()[idx]]
        if idx.size == 0:
            continue
        mask.ravel()[idx] = True
        lesions.append(idx)
    return mask, lesions


def _padded_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def make_case(
    seed: int | Sequence[int] = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    anatomy: str | Anatomy = "auto",
    lesions: LesionConfig = LesionConfig(),  # noqa: B008
    case_id: str | None = None,
) -> Case:
    """Generate one synthetic case.

    Parameters
    ----------
    seed
        Seed of ``numpy.random.default_rng`` (an int or a sequence of ints); the
        same seed, grid and anatomy give identical arrays.
    shape, spacing
        Grid ``(X, Y, Z)`` in RAS order and voxel size in mm (ignored when
        ``anatomy`` is an :class:`Anatomy`, which carries its own).
    anatomy
        ``"auto"``, ``"mni"``, ``"phantom"``, or an :class:`Anatomy` from
        :func:`load_anatomy` (reuse it for many cases).
    lesions
        Lesion count and foreground fraction (:class:`LesionConfig`).
    case_id
        Name of the case; default ``"synth_<seed>"``.

    Returns
    -------
    Case
        ``images (2, X, Y, Z)`` float32 (FLAIR, T1; arbitrary MR units, noise
        included), ``labels (X, Y, Z)`` int64 in {0, 1}, spacing and affine.
    """
    if not isinstance(anatomy, Anatomy):
        anatomy = load_anatomy(shape, spacing, anatomy)
    rng = np.random.default_rng(seed)
    t1_ref, gm, wm, csf, other, vdist = _deform(anatomy, rng)
    mask, lesion_voxels = _place_lesions(wm, vdist, rng, lesions)

    # tissue contrasts, jittered per case
    jitter = rng.uniform(0.9, 1.1, size=4)
    texture = 1.0 + 0.2 * ndimage.gaussian_filter(
        rng.standard_normal(mask.shape).astype(np.float32), 0.8
    )
    wm_flair = 0.48 * jitter[1]
    flair = (
        0.62 * jitter[0] * gm
        + wm_flair * wm
        + 0.07 * jitter[2] * csf
        + 0.45 * jitter[3] * other * np.clip(t1_ref / 0.6, 0, 1.5)
    )
    t1 = np.clip(t1_ref, 0, None) ** rng.uniform(0.85, 1.15)
    wm_t1 = float(np.median(t1[wm > 0.8])) if np.any(wm > 0.8) else float(t1.max())

    # lesions replace the tissue (partial volume at their edges), each with its own
    # contrast relative to white matter: FLAIR 1.5-2.3x (some faint), T1 0.65-0.88x
    flair_level = np.zeros(mask.shape, dtype=np.float32)
    t1_level = np.zeros(mask.shape, dtype=np.float32)
    for idx in lesion_voxels:
        flair_level.ravel()[idx] = rng.uniform(1.5, 2.3)
        t1_level.ravel()[idx] = rng.uniform(0.65, 0.88)
    if mask.any():
        box = _padded_box(mask, 3)
        pv = np.maximum(mask[box], ndimage.gaussian_filter(mask[box].astype(np.float32), 0.6))
        flair_lesion = ndimage.grey_dilation(flair_level[box], size=3) * wm_flair
        t1_lesion = ndimage.grey_dilation(t1_level[box], size=3) * wm_t1
        flair[box] = flair[box] * (1.0 - pv) + pv * flair_lesion
        t1[box] = t1[box] * (1.0 - pv) + pv * t1_lesion
    flair *= texture
    t1 *= texture

    out = []
    for image in (flair, t1):
        bias = np.exp(_smooth_field(rng, mask.shape, 4, 0.1))
        image = image * bias * rng.uniform(300.0, 600.0)
        wm_level = float(np.median(image[wm > 0.8])) if np.any(wm > 0.8) else float(image.max())
        sigma = rng.uniform(0.015, 0.035) * max(wm_level, 1e-3)
        real = image + sigma * rng.standard_normal(mask.shape).astype(np.float32)
        imag = sigma * rng.standard_normal(mask.shape).astype(np.float32)
        out.append(np.sqrt(real * real + imag * imag).astype(np.float32))  # Rician
    if case_id is None:
        case_id = "synth_" + (
            "_".join(str(s) for s in seed) if isinstance(seed, Sequence) else str(seed)
        )
    return Case(
        case_id=case_id,
        images=np.stack(out),
        labels=mask.astype(np.int64),
        spacing=anatomy.spacing,
        affine=anatomy.affine.copy(),
        modalities=MODALITIES,
    )


# ----------------------------------------------------------------------------
# the "wmh" preset: a harder, WMH-2017-like benchmark
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteConfig:
    """One simulated scanner/site of the ``wmh`` preset.

    Attributes
    ----------
    name
        Site id, recorded per case in ``dataset.json`` (a study can hold it out).
    spacing
        Voxel size in mm (numpy/RAS order, the slice axis last). The defaults
        are the challenge sites' in-plane sizes doubled (CPU budget: about
        2 mm in plane) with the slice thickness kept as acquired.
    contrast
        ``(low, high)``: a case's mean lesion/white-matter ratio on FLAIR is
        drawn uniformly in this range (each lesion varies around it, see
        :attr:`WMHConfig.lesion_sd`).
    noise
        Rician noise sigma as a fraction of the white-matter level (each case
        multiplies it by a factor in [0.8, 1.25]).
    bias
        Standard deviation of the log bias field (smooth, multiplicative).
    gm_wm
        FLAIR grey/white-matter ratio (grey matter is brighter on FLAIR).
    """

    name: str
    spacing: tuple[float, float, float]
    contrast: tuple[float, float] = (1.3, 1.9)
    noise: float = 0.04
    bias: float = 0.12
    gm_wm: float = 1.25

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"site name must be a non-empty string, got {self.name!r}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or any(not math.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"site {self.name}: spacing must be 3 positive mm, got {self.spacing}")
        object.__setattr__(self, "spacing", spacing)
        lo, hi = self.contrast
        if not 1.0 < lo <= hi:
            raise ValueError(
                f"site {self.name}: contrast must satisfy 1 < low <= high, got {self.contrast}"
            )
        if not 0 <= self.noise < 1 or not 0 <= self.bias < 1:
            raise ValueError(
                f"site {self.name}: noise and bias must be in [0, 1), got {self.noise}, {self.bias}"
            )


WMH_SITES: tuple[SiteConfig, ...] = (
    # Utrecht, 3T Philips Achieva, 2D FLAIR 0.96 x 0.95 x 3.00 mm
    SiteConfig(
        "utrecht", (1.92, 1.90, 3.0), contrast=(1.55, 2.2), noise=0.03, bias=0.10, gm_wm=1.22
    ),
    # Singapore, 3T Siemens TrioTim, 2D FLAIR 1.00 x 1.00 x 3.00 mm
    SiteConfig(
        "singapore", (2.0, 2.0, 3.0), contrast=(1.5, 2.1), noise=0.045, bias=0.16, gm_wm=1.3
    ),
    # Amsterdam, 3T GE Signa HDxt, 3D FLAIR 0.98 x 0.98 x 1.2 mm (thin slices)
    SiteConfig(
        "amsterdam-ge3t", (1.96, 1.96, 2.4), contrast=(1.5, 2.0), noise=0.04, bias=0.12, gm_wm=1.15
    ),
    # a 1.5T-like site (the challenge's test set had two scanners absent from training):
    # lower SNR and contrast, thicker slices
    SiteConfig("sim-1.5t", (2.1, 2.1, 3.6), contrast=(1.4, 1.9), noise=0.065, bias=0.2, gm_wm=1.35),
)
"""Default sites of the ``wmh`` preset (cases are assigned round-robin)."""


@dataclass(frozen=True)
class WMHConfig:
    """Parameters of the ``wmh`` preset (each default documented; see the module docstring
    for which published facts they follow).

    Attributes
    ----------
    sites
        The simulated sites; case ``i`` belongs to ``sites[i % len(sites)]``.
    fov_mm
        Field of view in mm (numpy/RAS order); each site's grid is
        ``round(fov_mm / spacing)``.
    supersample
        Partial volume: tissue and lesions are drawn on a grid ``supersample``
        times finer per axis, then box-averaged to the site's grid; a voxel is
        labelled lesion when more than ``label_threshold`` of it is lesion
        (the WMH challenge's rule for its manual contours: > 50 %).
    label_threshold
        See ``supersample``.
    load_ml
        ``(low, high)``: total lesion volume per case in ml, log-uniform
        (WMH 2017 spans roughly 0.6 to 150+ ml per scan; see the module docstring).
    periventricular_share
        ``(low, high)``: share of the load in confluent periventricular lesions
        (caps and bands along the ventricles with irregular boundaries).
    punctate
        ``(low, high)``: number of punctate lesions of ``punctate_voxels``
        site voxels each (capped so that they fit in the load).
    punctate_voxels
        ``(low, high)``: size of a punctate lesion in site voxels (before
        partial volume; a few fall below the label threshold and stay faint,
        unlabelled spots).
    deep
        ``(low, high)``: number of larger deep white-matter lesions that share
        the rest of the load.
    lesion_sd
        Standard deviation of a lesion's log contrast around its case's mean.
    rim_mm
        The lesion contrast ramps from ``rim_floor`` of its excess at the
        boundary to its full value at this depth (mm): rims overlap normal
        tissue in intensity.
    rim_floor
        See ``rim_mm``.
    cap_depth_mm
        Confluent periventricular lesions fill the white matter whose distance
        to the ventricles, minus ``cap_depth_mm`` times a smooth random field
        (plus a quarter of that of a finer one, for ragged borders), is lowest:
        caps and bands where the field is high, none where it is low.
    t1_contrast
        ``(low, high)``: lesion/white-matter ratio on T1 (slightly dark).
    cortical_mimics
        ``(low, high)``: number of hyperintense spots in the cortex (not lesions).
    mimic_contrast
        ``(low, high)``: their FLAIR ratio to white matter.
    ventricle_lining
        ``(low, high)``: FLAIR ratio of the thin normal hyperintense lining along
        the ventricles (not a lesion), per case.
    flow_artefact
        Probability that a case has a flow (CSF inflow/pulsation) artefact:
        bright spots in the ventricles and a faint ghost of the head shifted
        along the phase-encoding axis in a slab of slices.
    """

    sites: tuple[SiteConfig, ...] = WMH_SITES
    fov_mm: tuple[float, float, float] = (192.0, 224.0, 192.0)
    supersample: int = 2
    label_threshold: float = 0.5
    load_ml: tuple[float, float] = (0.6, 150.0)
    periventricular_share: tuple[float, float] = (0.3, 0.85)
    punctate: tuple[int, int] = (10, 40)
    punctate_voxels: tuple[int, int] = (1, 10)
    deep: tuple[int, int] = (2, 10)
    lesion_sd: float = 0.12
    rim_mm: float = 2.5
    rim_floor: float = 0.4
    cap_depth_mm: float = 8.0
    t1_contrast: tuple[float, float] = (0.75, 0.95)
    cortical_mimics: tuple[int, int] = (3, 10)
    mimic_contrast: tuple[float, float] = (1.25, 1.8)
    ventricle_lining: tuple[float, float] = (1.1, 1.35)
    flow_artefact: float = 0.5

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("WMHConfig.sites must name at least one site")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"WMHConfig.sites repeat a name: {names}")
        if (
            isinstance(self.supersample, bool)
            or not isinstance(self.supersample, int)
            or not 1 <= self.supersample <= 4
        ):
            raise ValueError(
                f"WMHConfig.supersample must be an integer in [1, 4], got {self.supersample!r}"
            )
        if not 0 < self.label_threshold < 1:
            raise ValueError(
                f"WMHConfig.label_threshold must be in (0, 1), got {self.label_threshold}"
            )
        lo, hi = self.load_ml
        if not 0 < lo <= hi:
            raise ValueError(f"WMHConfig.load_ml must satisfy 0 < low <= high, got {self.load_ml}")
        for name in ("punctate", "punctate_voxels", "deep", "cortical_mimics"):
            a, b = getattr(self, name)
            if not 0 <= a <= b:
                raise ValueError(f"WMHConfig.{name} must satisfy 0 <= low <= high, got {(a, b)}")
        if self.punctate_voxels[0] < 1:
            raise ValueError(f"WMHConfig.punctate_voxels must be >= 1, got {self.punctate_voxels}")
        a, b = self.periventricular_share
        if not 0 <= a <= b <= 1:
            raise ValueError(f"WMHConfig.periventricular_share must be in [0, 1], got {(a, b)}")
        if not 0 <= self.flow_artefact <= 1:
            raise ValueError(
                f"WMHConfig.flow_artefact must be a probability, got {self.flow_artefact}"
            )

    def site_of(self, index: int) -> SiteConfig:
        """The site of case ``index`` (round-robin)."""
        return self.sites[index % len(self.sites)]

    def grid(self, site: SiteConfig) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """``(shape, spacing)`` of a site's volumes."""
        shape = tuple(
            max(8, int(round(f / s))) for f, s in zip(self.fov_mm, site.spacing, strict=True)
        )
        return shape, site.spacing  # type: ignore[return-value]

    def fine_grid(
        self, site: SiteConfig
    ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """``(shape, spacing)`` of the finer grid the site's cases are drawn on."""
        shape, spacing = self.grid(site)
        k = self.supersample
        return tuple(n * k for n in shape), tuple(s / k for s in spacing)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (recorded in ``dataset.json``)."""
        out = dataclasses.asdict(self)
        out["sites"] = [dataclasses.asdict(s) for s in self.sites]
        return json.loads(json.dumps(out))


def load_wmh_anatomy(
    site: SiteConfig, config: WMHConfig = WMHConfig(), anatomy: str = "auto"
) -> Anatomy:  # noqa: B008
    """The reference head on a site's fine grid (build once per site, pass to :func:`make_wmh_case`)."""
    shape, spacing = config.fine_grid(site)
    return load_anatomy(shape, spacing, anatomy)


def _block_mean(volume: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return volume.astype(np.float32)
    x, y, z = (n // k for n in volume.shape)
    v = volume[: x * k, : y * k, : z * k].reshape(x, k, y, k, z, k)
    return v.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _pick_centres(weight: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    flat = weight.ravel().astype(np.float64)
    total = flat.sum()
    if n <= 0 or total <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    idx = rng.choice(flat.size, size=n, p=flat / total)
    return np.stack(np.unravel_index(idx, weight.shape), axis=1)


def make_wmh_case(
    seed: int | Sequence[int] = 0,
    site: SiteConfig | None = None,
    config: WMHConfig = WMHConfig(),  # noqa: B008
    anatomy: str | Anatomy = "auto",
    case_id: str | None = None,
) -> Case:
    """Generate one case of the ``wmh`` preset.

    Parameters
    ----------
    seed
        Seed of ``numpy.random.default_rng``; the same seed, site, config and
        anatomy give identical arrays.
    site
        The simulated site (default: ``config.sites[0]``).
    config
        The preset's parameters (:class:`WMHConfig`).
    anatomy
        ``"auto"``, ``"mni"``, ``"phantom"`` or an :class:`Anatomy` built on the
        site's fine grid by :func:`load_wmh_anatomy` (reuse it for many cases).
    case_id
        Name of the case; default ``"wmh_<seed>"``.

    Returns
    -------
    Case
        ``images (2, X, Y, Z)`` float32 (FLAIR, T1) and ``labels (X, Y, Z)``
        int64 in {0, 1} on the site's grid, with its spacing and affine.
    """
    site = config.sites[0] if site is None else site
    fine_shape, fine_spacing = config.fine_grid(site)
    if not isinstance(anatomy, Anatomy):
        anatomy = load_anatomy(fine_shape, fine_spacing, anatomy)
    if anatomy.shape != fine_shape:
        raise ValueError(
            f"anatomy grid {anatomy.shape} is not site {site.name}'s fine grid {fine_shape}; "
            "build it with load_wmh_anatomy(site, config)"
        )
    k = config.supersample
    rng = np.random.default_rng(seed)
    t1_ref, gm, wm, csf, other, vdist = _deform(anatomy, rng)
    fine_ml = float(np.prod(fine_spacing)) / 1000.0
    site_voxel_ml = fine_ml * k**3
    wm_core = wm > 0.5
    if not wm_core.any():
        raise ValueError(f"no white matter on the fine grid {fine_shape}: use a larger grid")

    # --- the lesion load and its parts ---------------------------------------------
    lo, hi = config.load_ml
    load_ml = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    load_ml = min(load_ml, 0.5 * float(wm_core.sum()) * fine_ml)
    pv_share = rng.uniform(*config.periventricular_share)
    n_punct = int(rng.integers(config.punctate[0], config.punctate[1] + 1))
    pmin, pmax = config.punctate_voxels
    punct_sizes = rng.integers(pmin, pmax + 1, size=n_punct)
    # fit the punctate lesions into the load (at least 3 when there are any)
    while len(punct_sizes) > 3 and punct_sizes.sum() * site_voxel_ml > 0.6 * load_ml:
        punct_sizes = punct_sizes[:-1]
    punct_ml = float(punct_sizes.sum()) * site_voxel_ml
    cap_ml = max(load_ml - punct_ml, 0.0) * pv_share
    deep_ml = max(load_ml - punct_ml - cap_ml, 0.0)
    n_deep = int(rng.integers(config.deep[0], config.deep[1] + 1))

    label_id = np.zeros(fine_shape, dtype=np.int32)  # 0 none, 1 caps, 2.. other lesions
    # confluent periventricular lesions: white matter nearest the ventricles, with a
    # smooth random distortion of the distance for irregular, lobulated boundaries
    field = _smooth_field(rng, fine_shape, 7, 1.0)
    ragged = _smooth_field(rng, fine_shape, 15, 1.0)
    n_cap = int(round(cap_ml / fine_ml))
    if n_cap > 0:
        # caps where the smooth field is high (a few mm to over a cm deep), none elsewhere
        score = vdist - config.cap_depth_mm * field - 0.25 * config.cap_depth_mm * ragged
        score = np.where(wm_core, score, np.inf).ravel()
        n_cap = min(n_cap, int(np.isfinite(score).sum()))
    if n_cap > 0:
        chosen = np.argpartition(score, n_cap - 1)[:n_cap]
        caps = np.zeros(fine_shape, dtype=bool)
        caps.ravel()[chosen] = True
        # drop speckle: fragments under 4 site voxels are not confluent lesions
        comp, n_comp = ndimage.label(caps)
        if n_comp:
            keep = np.bincount(comp.ravel()) >= 4 * k**3
            keep[0] = False
            caps = keep[comp]
        label_id[caps] = 1
    # deep lesions (irregular blobs, away from the ventricles) and punctate ones
    sizes: list[int] = []
    if n_deep > 0 and deep_ml > 0:
        shares = rng.lognormal(0.0, 1.0, size=n_deep)
        sizes += [max(int(round(deep_ml / fine_ml * s / shares.sum())), 2 * k**3) for s in shares]
    # a punctate lesion of n site voxels is drawn as n * k^3 fine voxels (+30 %: the
    # blob does not align with the site's voxels, partial volume trims it)
    sizes += [int(round(s * k**3 * 1.3)) for s in punct_sizes]
    deep_weight = wm * (wm_core & (vdist > 6.0))
    if not deep_weight.any():
        deep_weight = wm * wm_core
    centres = _pick_centres(deep_weight, len(sizes), rng)
    taken = label_id > 0
    for j, (size, centre) in enumerate(zip(sizes, centres, strict=False)):
        idx = _grow_lesion(centre, size, wm_core, taken, rng)
        idx = idx[~taken.ravel()[idx]]
        if idx.size:
            taken.ravel()[idx] = True
            label_id.ravel()[idx] = j + 2
    # round off ragged blob surfaces (a lesion is one compact region, not a sponge
    # that the site grid would split into face-disconnected fragments)
    closed = ndimage.binary_closing(label_id > 0, iterations=1) & (wm > 0.2)
    grown = closed & (label_id == 0)
    if grown.any():
        nearest = ndimage.grey_dilation(label_id, size=3)
        label_id[grown] = nearest[grown]
    mask = label_id > 0

    # --- FLAIR and T1 on the fine grid -----------------------------------------------
    jitter = rng.uniform(0.93, 1.07, size=3)
    wm_level = 0.5
    flair = (
        wm_level * site.gm_wm * jitter[0] * gm
        + wm_level * wm
        + 0.08 * jitter[1] * csf
        + 0.4 * jitter[2] * other * np.clip(t1_ref / 0.6, 0, 1.5)
    ).astype(np.float32)
    t1 = (np.clip(t1_ref, 0, None) ** rng.uniform(0.85, 1.15)).astype(np.float32)
    wm_t1 = float(np.median(t1[wm > 0.8])) if np.any(wm > 0.8) else float(t1.max())
    # normal hyperintense lining along the ventricles (not a lesion)
    lining = (vdist > 0) & (vdist <= 1.6 * max(fine_spacing)) & (wm > 0.2)
    lining_ratio = rng.uniform(*config.ventricle_lining)
    flair = np.where(lining, flair * np.float32(lining_ratio), flair)
    # hyperintense cortical spots (not lesions)
    n_mimic = int(rng.integers(config.cortical_mimics[0], config.cortical_mimics[1] + 1))
    cortex = gm > 0.5
    if n_mimic and cortex.any():
        free = np.zeros(fine_shape, dtype=bool)
        for centre in _pick_centres(gm * cortex * (csf + 0.05), n_mimic, rng):
            size = int(rng.integers(2 * k**3, 12 * k**3 + 1))
            idx = _grow_lesion(centre, size, cortex, free | mask, rng)
            free.ravel()[idx] = True
            flair.ravel()[idx] *= np.float32(rng.uniform(*config.mimic_contrast) / site.gm_wm)
    # lesions: per-lesion contrast around the case's mean, ramped from the rim inwards
    if mask.any():
        box = _padded_box(mask, 2)
        depth = ndimage.distance_transform_edt(mask[box], sampling=fine_spacing)
        ramp = config.rim_floor + (1.0 - config.rim_floor) * np.clip(depth / config.rim_mm, 0, 1)
        case_contrast = rng.uniform(*site.contrast)
        n_ids = int(label_id.max()) + 1
        per_lesion = case_contrast * np.exp(rng.normal(0.0, config.lesion_sd, size=n_ids))
        per_lesion = np.maximum(per_lesion, 1.02)
        ratio = per_lesion[label_id[box]]
        # caps: the contrast also drifts smoothly across the confluent lesion
        caps = label_id[box] == 1
        ratio = np.where(caps, 1.0 + (ratio - 1.0) * np.exp(0.25 * field[box]), ratio)
        excess = (ratio - 1.0) * ramp
        m = mask[box]
        sub = flair[box]
        sub[m] = (wm_level * (1.0 + excess[m])).astype(np.float32)
        flair[box] = sub
        t1_ratio = rng.uniform(*config.t1_contrast)
        t1_sub = t1[box]
        t1_sub[m] = np.float32(wm_t1) * np.float32(t1_ratio + (1 - t1_ratio) * (1 - ramp[m]) * 0.5)
        t1[box] = t1_sub
    texture = 1.0 + 0.12 * ndimage.gaussian_filter(
        rng.standard_normal(fine_shape).astype(np.float32), 1.0
    )
    flair *= texture
    t1 *= texture

    # --- partial volume: to the site's grid --------------------------------------------
    flair = _block_mean(flair, k)
    t1 = _block_mean(t1, k)
    labels = _block_mean(mask.astype(np.float32), k) > config.label_threshold
    wm_site = _block_mean(wm, k)
    csf_site = _block_mean(csf * (vdist < 1.0), k)
    shape = labels.shape
    # flow artefact: bright spots in the ventricles, a faint ghost along the phase axis
    if rng.uniform() < config.flow_artefact:
        z0 = int(rng.integers(0, shape[2]))
        z1 = min(shape[2], z0 + int(rng.integers(2, 6)))
        ghost = np.roll(flair[:, :, z0:z1], int(rng.integers(shape[1] // 6, shape[1] // 3)), axis=1)
        flair[:, :, z0:z1] += np.float32(rng.uniform(0.05, 0.12)) * ghost
        vent = csf_site > 0.5
        for centre in _pick_centres(vent.astype(np.float32), int(rng.integers(1, 4)), rng):
            spot = tuple(slice(max(c - 1, 0), c + 1) for c in centre)
            flair[spot] = np.maximum(flair[spot], np.float32(wm_level * rng.uniform(1.3, 1.9)))

    out = []
    noise = site.noise * rng.uniform(0.8, 1.25)
    for image in (flair, t1):
        bias = np.exp(_smooth_field(rng, shape, 4, site.bias))
        image = image * bias * rng.uniform(300.0, 600.0)
        level = (
            float(np.median(image[wm_site > 0.8])) if np.any(wm_site > 0.8) else float(image.max())
        )
        sigma = noise * max(level, 1e-3)
        real = image + sigma * rng.standard_normal(shape).astype(np.float32)
        imag = sigma * rng.standard_normal(shape).astype(np.float32)
        out.append(np.sqrt(real * real + imag * imag).astype(np.float32))  # Rician
    # the site grid's affine: the centre of a block of k fine voxels
    affine = anatomy.affine @ np.block(
        [
            [np.diag([float(k)] * 3), np.full((3, 1), (k - 1) / 2.0)],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    )
    if case_id is None:
        case_id = "wmh_" + (
            "_".join(str(s) for s in seed) if isinstance(seed, Sequence) else str(seed)
        )
    return Case(
        case_id=case_id,
        images=np.stack(out),
        labels=labels.astype(np.int64),
        spacing=tuple(float(s) for s in site.spacing),
        affine=affine,
        modalities=MODALITIES,
    )


# ----------------------------------------------------------------------------
# the benchmark on disk
# ----------------------------------------------------------------------------


def _case_names(n_cases: int) -> list[str]:
    width = max(3, len(str(n_cases - 1)))
    return [f"case_{i:0{width}d}" for i in range(n_cases)]


def _prepare_out(out: Path, names: Sequence[str], overwrite: bool) -> Path:
    """Refuse (FileExistsError, naming the first file) to replace any file of the
    data set unless ``overwrite``, then make its folders; returns the
    ``dataset.json`` path."""
    targets = []
    for name in names:
        targets += [out / "imagesTr" / f"{name}_{m:04d}.nii.gz" for m in range(len(MODALITIES))]
        targets.append(out / "labelsTr" / f"{name}.nii.gz")
    meta_path = out / "dataset.json"
    if not overwrite:
        for path in [*targets, meta_path]:
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    return meta_path


def _write_case(out: Path, name: str, case: Case, overwrite: bool) -> list[Path]:
    """One case's modality images and labels in the generic layout; the written paths."""
    written = [
        write_nifti(
            out / "imagesTr" / f"{name}_{m:04d}.nii.gz",
            case.images[m],
            affine=case.affine,
            overwrite=overwrite,
        )
        for m in range(len(MODALITIES))
    ]
    written.append(
        write_nifti(
            out / "labelsTr" / f"{name}.nii.gz",
            case.labels,
            affine=case.affine,
            overwrite=overwrite,
        )
    )
    return written


def iter_write_benchmark(
    out_dir: str | os.PathLike,
    n_cases: int = 20,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    anatomy: str = "auto",
    overwrite: bool = False,
    lesions: LesionConfig = LesionConfig(),  # noqa: B008
    preset: str = "easy",
    wmh: WMHConfig | None = None,
) -> Generator[Progress, None, list[Path]]:
    """Write the benchmark in the generic layout, yielding ``Progress`` per case.

    Writes ``imagesTr/case_000_0000.nii.gz`` (FLAIR), ``imagesTr/case_000_0001.nii.gz``
    (T1), ``labelsTr/case_000.nii.gz`` and ``dataset.json`` (modalities, labels,
    generator parameters). Case ``i`` is ``make_case(seed=(seed, i), ...)``.
    Returns the written paths (dataset.json last). Refuses (FileExistsError,
    naming the first file) to replace existing files unless ``overwrite=True``;
    nothing is written in that case.

    ``preset="wmh"`` writes the harder WMH-2017-like preset instead
    (:func:`make_wmh_case` with ``wmh`` or ``WMHConfig()``; case ``i`` on site
    ``i % len(sites)``; ``shape``, ``spacing`` and ``lesions`` do not apply, each
    site has its own grid); ``dataset.json`` then also records each case's
    ``site`` (in ``training`` and ``generator.sites_by_case``).
    """
    if not isinstance(n_cases, int) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if preset == "wmh":
        return (
            yield from _iter_write_wmh(
                Path(out_dir), n_cases, seed, anatomy, overwrite, wmh or WMHConfig()
            )
        )
    shape, spacing = _check_grid(shape, spacing)
    out = Path(out_dir)
    names = _case_names(n_cases)
    meta_path = _prepare_out(out, names, overwrite)
    yield Progress(0, n_cases + 1, "building the anatomy")
    ref = load_anatomy(shape, spacing, anatomy)
    written: list[Path] = []
    fractions = []
    for i, name in enumerate(names):
        case = make_case((seed, i), anatomy=ref, lesions=lesions, case_id=name)
        written += _write_case(out, name, case, overwrite)
        fractions.append(float(case.labels.mean()))
        yield Progress(i + 1, n_cases + 1, f"wrote {name}")
    meta = _dataset_meta(
        DATASET_NAME,
        "Brain-like volumes with small white-matter-hyperintensity-like lesions "
        "(0.1-1 % of voxels), FLAIR-like and T1-like contrasts.",
        [{} for _ in names],
        names,
    )
    meta.update(
        generator={
            "version": GENERATOR_VERSION,
            "seed": seed,
            "case_seeds": [[seed, i] for i in range(n_cases)],
            "shape": list(shape),
            "spacing": list(spacing),
            "anatomy": ref.kind,
            "lesions": {
                "fraction": list(lesions.fraction),
                "count": list(lesions.count),
                "tiny": list(lesions.tiny),
                "min_fraction": lesions.min_fraction,
                "periventricular": lesions.periventricular,
            },
            "foreground_fraction": fractions,
        }
    )
    written.append(write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n"))
    yield Progress(n_cases + 1, n_cases + 1, "done")
    logger.info("wrote %d synthetic cases (%s anatomy) to %s", n_cases, ref.kind, out)
    return written


def write_benchmark(
    out_dir: str | os.PathLike,
    n_cases: int = 20,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    anatomy: str = "auto",
    overwrite: bool = False,
    lesions: LesionConfig = LesionConfig(),  # noqa: B008
    preset: str = "easy",
    wmh: WMHConfig | None = None,
) -> list[Path]:
    """:func:`iter_write_benchmark` run to its end; returns the written paths."""
    return run_to_end(
        iter_write_benchmark(
            out_dir, n_cases, seed, shape, spacing, anatomy, overwrite, lesions, preset, wmh
        )
    )


def _iter_write_wmh(
    out: Path, n_cases: int, seed: int, anatomy: str, overwrite: bool, config: WMHConfig
) -> Generator[Progress, None, list[Path]]:
    """The ``wmh`` preset on disk (see :func:`iter_write_benchmark`)."""
    names = _case_names(n_cases)
    meta_path = _prepare_out(out, names, overwrite)
    anatomies: dict[str, Anatomy] = {}
    written: list[Path] = []
    fractions, loads, sites = [], [], []
    for i, name in enumerate(names):
        site = config.site_of(i)
        if site.name not in anatomies:
            yield Progress(i, n_cases + 1, f"building the anatomy of site {site.name}")
            anatomies[site.name] = load_wmh_anatomy(site, config, anatomy)
        case = make_wmh_case((seed, i), site, config, anatomies[site.name], case_id=name)
        written += _write_case(out, name, case, overwrite)
        fractions.append(float(case.labels.mean()))
        loads.append(float(case.labels.sum()) * float(np.prod(case.spacing)) / 1000.0)
        sites.append(site.name)
        yield Progress(i + 1, n_cases + 1, f"wrote {name} (site {site.name})")
    meta = _dataset_meta(
        f"{DATASET_NAME}, wmh preset",
        "WMH-2017-like synthetic FLAIR/T1 volumes: several simulated sites, "
        "partial volume, punctate and confluent periventricular lesions, hyperintense mimics.",
        [{"site": site_name} for site_name in sites],
        names,
    )
    meta.update(
        generator={
            "preset": "wmh",
            "version": WMH_GENERATOR_VERSION,
            "seed": seed,
            "case_seeds": [[seed, i] for i in range(n_cases)],
            "anatomy": next(iter(anatomies.values())).kind,
            "sites_by_case": dict(zip(names, sites, strict=True)),
            "config": config.to_dict(),
            "foreground_fraction": fractions,
            "lesion_ml": loads,
        }
    )
    written.append(write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n"))
    yield Progress(n_cases + 1, n_cases + 1, "done")
    logger.info("wrote %d wmh-preset cases to %s", n_cases, out)
    return written


DATASET_NAME = "napari-boundary-seg synthetic lesions"
"""Start of the ``name`` in every ``dataset.json`` this module writes (both presets);
``synth`` writes into a non-empty folder only when its ``dataset.json`` says so."""


def _dataset_meta(
    name: str, description: str, extra: Sequence[dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """The ``dataset.json`` fields both presets share (nnU-Net style), ``extra`` keys
    added to each case's ``training`` entry; the caller adds ``generator``."""
    return {
        "name": name,
        "description": description,
        "channel_names": {str(m): mod for m, mod in enumerate(MODALITIES)},
        "modality": {str(m): mod for m, mod in enumerate(MODALITIES)},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(names),
        "file_ending": ".nii.gz",
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz", **more}
            for n, more in zip(names, extra, strict=True)
        ],
    }


def read_sites(data_dir: str | os.PathLike) -> dict[str, str]:
    """``{case_id: site}`` from a data set's ``dataset.json`` (empty without sites)."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        return {}
    meta = json.loads(path.read_text())
    sites = (meta.get("generator") or {}).get("sites_by_case")
    if isinstance(sites, dict):
        return {str(k): str(v) for k, v in sites.items()}
    out = {}
    for entry in meta.get("training", []):
        if isinstance(entry, dict) and "site" in entry and "label" in entry:
            out[Path(str(entry["label"])).name.split(".")[0]] = str(entry["site"])
    return out
