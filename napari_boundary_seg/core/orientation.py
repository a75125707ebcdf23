"""Anatomical orientation: one canonical voxel order for training and prediction.

A NIfTI file may store its voxels in any order (RAS, LPS, PIR, oblique...). The
network must not depend on that choice, so every 3D case is reoriented to the
closest canonical orientation (RAS+, nibabel's ``as_closest_canonical`` rule:
a permutation and flips of the stored axes, never an interpolation) before
preprocessing, and predictions are brought back to the stored order exactly.

In canonical order the spatial axes are (0: left→right, 1: posterior→anterior,
2: inferior→superior), so the anatomical planes are slices along

* ``sagittal``: axis 0, ``coronal``: axis 1, ``axial``: axis 2.

``auto`` picks the axial plane, or the thick-slice axis when one spacing is
more than 3× each of the others (nnU-Net's rule for anisotropic scans: a
0.47×0.47×8 mm scan is sliced along its 8 mm axis, whatever its anatomy).

Uses :func:`nibabel.orientations.io_orientation` for the axis assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

__all__ = [
    "PLANES",
    "SLICE_PLANES",
    "Orientation",
    "canonical_orientation",
    "check_plane",
    "native_slice_axis",
    "slice_axis",
]

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Canonical axis a plane's slices are taken along."""

SLICE_PLANES = ("auto", "axial", "coronal", "sagittal")
"""The values a slicing plane setting takes (besides a canonical axis index)."""

THICK_SLICE_RATIO = 3.0
"""``auto`` slices along an axis whose spacing exceeds this many times the others'."""


@dataclass(frozen=True)
class Orientation:
    """How the stored (native) voxel axes map to the canonical ones.

    Canonical axis ``k`` is native axis ``perm[k]``, reversed when ``flip[k]``.
    """

    perm: tuple[int, ...]
    flip: tuple[bool, ...]

    @property
    def is_identity(self) -> bool:
        """True when the native order is already canonical."""
        return self.perm == tuple(range(len(self.perm))) and not any(self.flip)

    def _check(self, array: np.ndarray, lead: int) -> None:
        if array.ndim != lead + len(self.perm):
            raise ValueError(
                f"array of shape {array.shape} does not have {lead} leading and "
                f"{len(self.perm)} spatial axes"
            )

    def to_canonical(self, array: np.ndarray, lead: int = 0) -> np.ndarray:
        """``array`` (``lead`` leading axes, then the native spatial axes) in canonical order.

        Returns a view (no copy) when possible.
        """
        self._check(array, lead)
        if self.is_identity:
            return array
        out = np.transpose(array, (*range(lead), *(lead + p for p in self.perm)))
        flips = tuple(lead + k for k, f in enumerate(self.flip) if f)
        return np.flip(out, flips) if flips else out

    def from_canonical(self, array: np.ndarray, lead: int = 0) -> np.ndarray:
        """The inverse of :meth:`to_canonical`: canonical order back to the native one."""
        self._check(array, lead)
        if self.is_identity:
            return array
        flips = tuple(lead + k for k, f in enumerate(self.flip) if f)
        out = np.flip(array, flips) if flips else array
        inverse = np.argsort(self.perm)
        return np.transpose(out, (*range(lead), *(lead + int(i) for i in inverse)))

    def spacing(self, native_spacing: Sequence[float]) -> tuple[float, ...]:
        """The voxel sizes in canonical axis order."""
        return tuple(float(native_spacing[p]) for p in self.perm)

    def shape(self, native_shape: Sequence[int]) -> tuple[int, ...]:
        """The spatial shape in canonical axis order."""
        return tuple(int(native_shape[p]) for p in self.perm)

    def affine(self, native_affine: np.ndarray, native_shape: Sequence[int]) -> np.ndarray:
        """The voxel-to-world affine of the canonical array (same world positions)."""
        n = len(self.perm)
        # canonical index c -> native index: native[perm[k]] = c[k] or (size - 1 - c[k])
        t = np.zeros((4, 4))
        t[3, 3] = 1.0
        for k, p in enumerate(self.perm):
            if self.flip[k]:
                t[p, k] = -1.0
                t[p, 3] = float(native_shape[p]) - 1.0
            else:
                t[p, k] = 1.0
        for k in range(n, 3):
            t[k, k] = 1.0
        return np.asarray(native_affine, dtype=float) @ t


IDENTITY_3D = Orientation((0, 1, 2), (False, False, False))


def canonical_orientation(affine: Any, ndim: int = 3) -> Orientation:
    """The :class:`Orientation` of a volume with this voxel-to-world ``affine``.

    ``ndim`` spatial axes (2 or 3); a 2D image is left as it is. A missing or
    singular affine (no geometry) gives the identity.
    """
    if ndim != 3 or affine is None:
        return Orientation(tuple(range(ndim)), (False,) * ndim)
    matrix = np.asarray(affine, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        return IDENTITY_3D
    ornt = io_orientation(matrix)  # row i: native axis i -> (canonical axis, +1/-1)
    perm = [0, 0, 0]
    flip = [False, False, False]
    for i, (axis, sign) in enumerate(ornt):
        perm[int(axis)] = i
        flip[int(axis)] = bool(sign < 0)
    return Orientation(tuple(perm), tuple(flip))


def check_plane(plane: Any, what: str = "slice plane") -> str | int:
    """``plane`` if it is one of :data:`SLICE_PLANES` or a canonical axis 0–2, else ValueError."""
    if isinstance(plane, str) and plane in SLICE_PLANES:
        return plane
    if isinstance(plane, (int, np.integer)) and not isinstance(plane, bool) and -3 <= plane < 3:
        return int(plane) % 3
    raise ValueError(
        f"{what} must be one of {', '.join(SLICE_PLANES)} (or an axis 0, 1, 2), got {plane!r}"
    )


def slice_axis(canonical_spacing: Sequence[float], plane: str | int = "auto") -> int:
    """The canonical axis 2D slices of ``plane`` are taken along.

    ``auto``: the thick-slice axis when its spacing is more than
    :data:`THICK_SLICE_RATIO` × each other spacing, else the axial axis (2).
    """
    plane = check_plane(plane)
    if isinstance(plane, int):
        return plane
    if plane != "auto":
        return PLANES[plane]
    spacing = np.asarray([float(s) for s in canonical_spacing], dtype=float)
    if spacing.size == 3:
        k = int(np.argmax(spacing))
        others = np.delete(spacing, k)
        if spacing[k] > THICK_SLICE_RATIO * float(others.max()):
            return k
    return PLANES["axial"]


def native_slice_axis(
    affine: Any, native_spacing: Sequence[float], plane: str | int = "auto"
) -> int:
    """The stored (numpy) axis of a volume that ``plane``'s slices are taken along.

    What a viewer showing the native array should slice through to show the
    training slices.
    """
    orientation = canonical_orientation(affine, len(native_spacing))
    return orientation.perm[slice_axis(orientation.spacing(native_spacing), plane)]
