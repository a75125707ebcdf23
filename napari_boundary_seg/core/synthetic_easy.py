"""The ``easy`` preset of the built-in benchmark: one case per seed, high contrast.

:func:`make_case` draws a case on a reference head
(:mod:`~napari_boundary_seg.core.synthetic_anatomy`): affine jitter and a
smooth displacement, contrast jitter, lesions grown in white matter (more
likely near the ventricles, :class:`LesionConfig`), a bias field per modality
and Rician noise. Its arrays are fixed by :data:`GENERATOR_VERSION` (the
sample data and the committed easy study depend on them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_boundary_seg.core.cases import Case
from napari_boundary_seg.core.synthetic_anatomy import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    Anatomy,
    _deform,
    _grow_lesion,
    _padded_box,
    _smooth_field,
    load_anatomy,
    synthetic_case,
)

__all__ = ["GENERATOR_VERSION", "LesionConfig", "make_case"]

GENERATOR_VERSION = 2
"""Version of the easy preset (the sample data's cache key; never bump it for the wmh preset)."""


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
    return synthetic_case("synth", seed, case_id, out, mask, anatomy.spacing, anatomy.affine.copy())
