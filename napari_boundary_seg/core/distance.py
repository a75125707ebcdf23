"""Signed distance maps: the level set φ_G of the boundary loss.

Definitions (``docs/DESIGN.md``, "The method"):

- ``G`` is the region of a binary mask; ``∂G`` the voxels of ``G`` that have a
  face-connected neighbour (4 in 2D, 6 in 3D, 2·N in N-D) outside ``G``. Voxels
  beyond the image edge are not neighbours, so the image edge is no boundary.
- ``φ_G(q)`` is the Euclidean distance, in physical units, from ``q`` to the
  nearest voxel of ``∂G``: negative inside ``G``, positive outside, exactly 0 on
  ``∂G``. If ``G`` or ``∂G`` is empty (the mask is empty or fills the image) the
  map is all zeros.

How it is computed: ``|φ_G|`` is by definition the Euclidean distance
transform whose zero set is ``∂G``, so one transform of ``~∂G`` (true everywhere
but on ``∂G``) gives the map, and the sign is flipped on ``G``. Two facts relate
it to the reference code:

- Outside ``G`` it equals ``EDT(~G)``, the distance to the nearest voxel of ``G``:
  that voxel is always in ``∂G`` (if the nearest one ``p`` were interior, its face
  neighbour one step towards ``q`` would lie in ``G`` and be strictly closer,
  whatever the spacing).
- Inside ``G`` it differs from the reference code's ``EDT(G) - 1`` with
  anisotropic spacing, which does not keep ``∂G`` at 0.

No bounding-box crop: every voxel of the image receives a distance (outside
values reach the whole image, and for the background class so do inside
values), so one full transform is the least work: two transforms (outside on
the box of ``~G``, inside on the box of ``G``) measure about 1.4x slower on
scattered lesions, whose box is the whole image.

Backends: the ``edt`` package (>= 3, 1D to 3D, ``anisotropy`` in numpy axis
order) when importable, else ``scipy.ndimage.distance_transform_edt``; both give
the same maps up to float32 rounding. ``edt`` holds the GIL for the whole
transform (about 0.6 s on a 197×233×189 volume), which would freeze napari's
window while a worker thread computes; scipy releases it (worst main-thread gap
9 ms in the same measurement). So ``backend="auto"`` takes ``edt`` in the main
thread (command line, scripts, benchmarks) and scipy in other threads (the
widgets' workers).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_boundary_seg.core.config import EMPTY_SLICE_PHI, PHI_CLIP_MM, PHI_UNITS
from napari_boundary_seg.core.progress import Progress, blocking
from napari_boundary_seg.core.validate import check_int

try:  # the fast backend is optional: scipy is the fallback
    import edt as _edt_module
except ImportError:  # pragma: no cover - exercised only without edt installed
    _edt_module = None

BACKENDS = ("auto", "edt", "scipy")
"""Accepted values of the ``backend`` keyword."""

_EDT_MAX_NDIM = 3


def edt_available() -> bool:
    """Return whether the fast ``edt`` backend can be imported."""
    return _edt_module is not None


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------


def _check_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """Return ``spacing`` as ``ndim`` positive finite floats (default 1.0 each)."""
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, numbers.Real) and not isinstance(spacing, bool):
        values: tuple[float, ...] = (float(spacing),) * ndim
    else:
        try:
            values = tuple(float(s) for s in spacing)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"spacing must be a number or a sequence of {ndim} numbers, got {spacing!r}"
            ) from err
        if len(values) != ndim:
            raise ValueError(
                f"spacing has {len(values)} values {values} but the array has {ndim} "
                "dimensions; give one spacing per axis, in numpy axis order"
            )
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite, got {values}")
    return values


def _check_axis(axis: Any, ndim: int) -> int | None:
    """Normalise ``axis`` to ``0 <= axis < ndim`` (or keep ``None``)."""
    if axis is None:
        return None
    axis = check_int(axis, "axis")
    if ndim < 2:
        raise ValueError(f"per-slice mode (axis={axis}) needs at least 2 dimensions, got {ndim}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimensions")
    return int(axis) % ndim


def resolve_backend(backend: str, ndim: int) -> str:
    """Resolve ``backend`` to ``"edt"`` or ``"scipy"`` for ``ndim``-D transforms.

    ``"auto"`` is ``edt`` when it is installed, handles ``ndim`` and the caller is
    the main thread; scipy otherwise, because ``edt`` holds the GIL and would
    stall the main thread (napari's event loop) while a worker computes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fast = _edt_module is not None and ndim <= _EDT_MAX_NDIM
        in_main_thread = threading.current_thread() is threading.main_thread()
        return "edt" if fast and in_main_thread else "scipy"
    if backend == "edt":
        if _edt_module is None:
            raise ValueError("backend='edt' was asked for but the edt package is not installed")
        if ndim > _EDT_MAX_NDIM:
            raise ValueError(
                f"backend='edt' supports 1 to {_EDT_MAX_NDIM} dimensions, got {ndim}; "
                "use backend='scipy' or 'auto'"
            )
    return backend


def _as_binary_mask(mask: Any) -> np.ndarray:
    """Return ``mask`` as a boolean array; raise if it holds values other than 0 and 1."""
    arr = np.asarray(mask)
    if arr.ndim == 0:
        raise ValueError("mask must have at least one dimension, got a scalar")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"mask must be a boolean or numeric array, got dtype {arr.dtype}")
    is_one = arr == 1
    bad = ~(is_one | (arr == 0))
    if bad.any():
        found = np.unique(arr[bad])[:5]
        raise ValueError(
            f"mask of shape {arr.shape} must be binary (0/1 or bool), found values "
            f"{found.tolist()}; for a label image use class_distance_maps"
        )
    return is_one


def _as_labels(labels: Any, num_classes: Any) -> np.ndarray:
    """Return ``labels`` as an integer array with values in ``[0, num_classes)``."""
    if check_int(num_classes, "num_classes") < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    arr = np.asarray(labels)
    if arr.ndim == 0:
        raise ValueError("labels must have at least one dimension, got a scalar")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array, got dtype {arr.dtype} (shape {arr.shape}); "
            "round and cast float labels explicitly"
        )
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels of shape {arr.shape} hold values in [{lo}, {hi}] but must lie in "
                f"[0, {num_classes}) for num_classes={num_classes}"
            )
    return arr


# ----------------------------------------------------------------------------
# the computation
# ----------------------------------------------------------------------------


def distance_transform(
    foreground: np.ndarray, spacing: tuple[float, ...], backend: str = "auto"
) -> np.ndarray:
    """Distance (physical units) from each True voxel to the nearest False voxel.

    ``foreground`` must contain at least one False voxel; the image edge is not
    a False voxel. ``spacing`` has one positive float per axis (numpy axis
    order). Returns float32 of the same shape. The one Euclidean transform of
    the package (the metrics use it too); ``backend`` as in
    :func:`resolve_backend`.
    """
    if resolve_backend(backend, foreground.ndim) == "edt":
        data = np.ascontiguousarray(foreground)
        anisotropy: float | tuple[float, ...] = spacing[0] if data.ndim == 1 else spacing
        return _edt_module.edt(data, anisotropy=anisotropy, black_border=False, parallel=1)
    dist = ndimage.distance_transform_edt(foreground, sampling=spacing)
    return dist.astype(np.float32, copy=False)


def _interior(region: np.ndarray) -> np.ndarray:
    """``G \\ ∂G``: voxels whose 2·N face neighbours are all in ``region``.

    Neighbours beyond the array edge count as inside (the image edge is no
    boundary); callers pad crops by one voxel wherever the crop is not at the
    image edge, so this rule is exact on crops too.
    """
    inner = region.copy()
    nd = region.ndim
    for k in range(nd):
        lo = tuple(slice(None, -1) if a == k else slice(None) for a in range(nd))
        hi = tuple(slice(1, None) if a == k else slice(None) for a in range(nd))
        inner[hi] &= region[lo]
        inner[lo] &= region[hi]
    return inner


def _signed_distance(mask: np.ndarray, spacing: tuple[float, ...], backend: str) -> np.ndarray:
    """φ_G of a boolean ``mask`` (validated), float32, same shape."""
    count = np.count_nonzero(mask)
    if count == 0 or count == mask.size:
        return np.zeros(mask.shape, dtype=np.float32)

    # |φ| is the distance to the nearest voxel of ∂G: one transform whose zero
    # set is ∂G, true on ~G and on the interior G \ ∂G.
    # Negating only the interior keeps ∂G at +0.0.
    inner = _interior(mask)
    dist = distance_transform(~mask | inner, spacing, backend)
    np.negative(dist, out=dist, where=inner)
    return dist


def _slice_index(ndim: int, axis: int, i: int) -> tuple[slice | int, ...]:
    return tuple(i if a == axis else slice(None) for a in range(ndim))


def iter_signed_distance_map(
    mask: Any,
    spacing: float | Sequence[float] | None = None,
    axis: int | None = None,
    *,
    backend: str = "auto",
) -> Generator[Progress, None, np.ndarray]:
    """Signed distance map φ_G of a binary mask, in physical units, yielding progress.

    Yields ``Progress(0, total)`` first, then one event after the map
    (``axis=None``, total 1) or after each slice (``axis=k``). A generator
    function: bad arguments raise on the first ``next()``, and
    ``backend="auto"`` is resolved in the thread that runs it.
    :func:`signed_distance_map` is its blocking form.

    Parameters
    ----------
    mask
        Binary array ``(*spatial)`` of any dimensionality: bool, or numbers that
        are all 0 or 1.
    spacing
        Voxel size per axis in numpy axis order (e.g. napari ``layer.scale``),
        one positive value per axis of ``mask``, or one number for all axes.
        Default 1.0 each.
    axis
        ``None``: one map of the whole N-D mask. ``k``: independent maps of each
        slice ``mask[..., i, ...]`` along axis ``k`` (2D maps of a 3D stack, as
        the paper's 2D training uses); the spacing of axis ``k`` is ignored, and
        an empty or full slice gets a zero slice.
    backend
        ``"auto"`` (``edt`` for 1D-3D transforms when installed, else scipy),
        ``"edt"`` or ``"scipy"``.

    Returns
    -------
    np.ndarray
        The generator's return value: float32, same shape as ``mask``, negative
        inside ``G``, positive outside, exactly 0 on ``∂G``; all zeros if ``G``
        or ``∂G`` is empty.

    Raises
    ------
    ValueError
        Non-binary mask, wrong number of spacing values, non-positive spacing,
        axis out of range, unknown or unavailable backend.
    TypeError
        Non-numeric mask, non-integer axis, non-numeric spacing.
    """
    m = _as_binary_mask(mask)
    spc = _check_spacing(spacing, m.ndim)
    ax = _check_axis(axis, m.ndim)
    if ax is None:
        yield Progress(0, 1, "distance map")
        out = _signed_distance(m, spc, resolve_backend(backend, m.ndim))
        yield Progress(1, 1, "distance map")
        return out
    slice_spacing = spc[:ax] + spc[ax + 1 :]
    resolved = resolve_backend(backend, m.ndim - 1)
    out = np.empty(m.shape, dtype=np.float32)
    total = m.shape[ax]
    yield Progress(0, total, "distance maps per slice")
    for i in range(total):
        idx = _slice_index(m.ndim, ax, i)
        out[idx] = _signed_distance(m[idx], slice_spacing, resolved)
        yield Progress(i + 1, total, f"distance map of slice {i}")
    return out


signed_distance_map = blocking(iter_signed_distance_map)


def iter_class_distance_maps(
    labels: Any,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    axis: int | None = None,
    *,
    backend: str = "auto",
) -> Generator[Progress, None, np.ndarray]:
    """Signed distance maps of every class of a label image, background included,
    yielding progress.

    Yields ``Progress(0, total)`` first, then ``Progress(done, total)`` after each
    class (``axis=None``) or each slice (``axis=k``, all classes of that slice).
    A generator function (napari's ``thread_worker`` and ``create_worker`` run
    it as a generator worker); bad arguments raise on the first ``next()``.
    :func:`class_distance_maps` is its blocking form.

    Parameters
    ----------
    labels
        Integer (or bool) label image ``(*spatial)`` with values in
        ``[0, num_classes)``.
    num_classes
        Number of classes ``C`` (class 0 is the background).
    spacing, axis, backend
        As for :func:`iter_signed_distance_map`.

    Returns
    -------
    np.ndarray
        The generator's return value: ``(C, *spatial)`` float32; ``out[c]`` is
        φ of ``labels == c``, in physical units.

    Raises
    ------
    ValueError
        Non-integer labels, labels outside ``[0, num_classes)``, bad spacing,
        axis or backend.
    """
    lab = _as_labels(labels, num_classes)
    spc = _check_spacing(spacing, lab.ndim)
    ax = _check_axis(axis, lab.ndim)
    resolved = resolve_backend(backend, lab.ndim if ax is None else lab.ndim - 1)
    return (yield from _iter_class_maps(lab, num_classes, spc, ax, resolved))


def _iter_class_maps(
    lab: np.ndarray,
    num_classes: int,
    spacing: tuple[float, ...],
    axis: int | None,
    backend: str,
) -> Generator[Progress, None, np.ndarray]:
    out = np.empty((num_classes, *lab.shape), dtype=np.float32)
    if axis is None:
        yield Progress(0, num_classes, "distance maps")
        for c in range(num_classes):
            out[c] = _signed_distance(lab == c, spacing, backend)
            yield Progress(c + 1, num_classes, f"distance map of class {c}")
        return out
    slice_spacing = spacing[:axis] + spacing[axis + 1 :]
    total = lab.shape[axis]
    yield Progress(0, total, "distance maps per slice")
    for i in range(total):
        idx = _slice_index(lab.ndim, axis, i)
        part = lab[idx]
        for c in range(num_classes):
            out[(c, *idx)] = _signed_distance(part == c, slice_spacing, backend)
        yield Progress(i + 1, total, f"distance maps of slice {i}")
    return out


class_distance_maps = blocking(iter_class_distance_maps)


def phi_maps(
    labels: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
    distance: str = "3d",
    units: str = "mm",
    empty_slices: str = "distance",
    *,
    compute: Any = None,
) -> np.ndarray:
    """The φ of a prepared stack of slices ``labels (D, H, W)`` (slices along axis 0)
    under a units rule and an empty-slice rule: ``(C, D, H, W)`` float32.

    ``distance``: ``"3d"`` (one map of the stack with ``spacing``) or ``"2d"`` (a
    map per slice); ``units``: one of :data:`PHI_UNITS`; ``empty_slices``: one of
    :data:`EMPTY_SLICE_PHI` (the foreground is every class but 0). ``compute``
    replaces :func:`class_distance_maps` as ``compute(labels, num_classes,
    spacing, distance)`` (a cache); the rules are applied to a copy of its maps.
    """
    if units not in PHI_UNITS:
        raise ValueError(f"phi units must be one of {PHI_UNITS}, got {units!r}")
    if empty_slices not in EMPTY_SLICE_PHI:
        raise ValueError(f"empty-slice φ must be one of {EMPTY_SLICE_PHI}, got {empty_slices!r}")
    used = (1.0,) * len(spacing) if units == "voxels" else tuple(float(s) for s in spacing)
    if compute is None:
        maps = class_distance_maps(
            labels, num_classes, spacing=used, axis=None if distance == "3d" else 0
        )
    else:
        maps = compute(labels, num_classes, used, distance)
    if units == "mm" and empty_slices == "distance":
        return maps
    maps = np.array(maps, dtype=np.float32, copy=True)
    if units == "clipped":
        np.clip(maps, -PHI_CLIP_MM, PHI_CLIP_MM, out=maps)
        maps /= PHI_CLIP_MM
    if empty_slices == "zero":
        empty = ~np.asarray(labels).reshape(len(labels), -1).any(axis=1)
        maps[:, empty] = 0.0
    return maps
