"""Compiled kernels of the warped-sample path (numba, the optional extra ``fast``).

docs/DESIGN.md, "φ of a warped patch". Each kernel has a numpy/scipy
counterpart that gives the same numbers; callers use the kernel when
:data:`NUMBA` is true and the counterpart otherwise.

- :func:`patch_squared_distance`: the squared Euclidean distance (mm²) from
  every voxel of a patch to the nearest of a set of seed voxels, by the exact
  separable transform (Felzenszwalb & Huttenlocher's lower envelope of
  parabolas), restricted to the lines that reach the patch: pass 1 along the
  first axis only at the patch's coordinates of that axis (from the sorted
  seeds of each line), pass 2 only on the lines through those coordinates,
  pass 3 only on the lines through the patch. The cost is that of the box's
  cross-section times the patch's extent, not that of the box.
- :func:`warped_foreground`: the nearest-neighbour warped labels on a set of
  blocks of the output grid, keeping the foreground voxels; the coordinates
  are computed by the same sequence of float64 operations as
  ``augment.Warp.coords`` (so the rounding to the nearest voxel agrees bit
  for bit).
- :func:`linear_sample`: linear interpolation of every channel of an image at
  a set of points, as ``scipy.ndimage.map_coordinates(order=1,
  mode="constant", cval=0)`` computes it (a point outside ``[0, n-1]`` on any
  axis gets 0).

Compiled with ``cache=True`` (the first call of a process compiles or loads
the cached machine code).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - exercised only without numba installed
    numba = None

__all__ = [
    "NUMBA",
    "abs_max",
    "boundary_voxels",
    "candidate_blocks",
    "linear_sample",
    "nearest_labels",
    "patch_squared_distance",
    "warp_coords",
    "warped_foreground",
]

NUMBA = numba is not None
"""Whether numba is installed (the kernels run compiled)."""


def _jit(func):
    """``numba.njit(cache=True, nogil=True)`` when numba is installed, else ``func``
    (plain Python: correct, slow; for tests of the kernels' logic on small arrays)."""
    if numba is None:  # pragma: no cover - exercised only without numba installed
        return func
    return numba.njit(cache=True, nogil=True)(func)


@_jit
def _envelope_line(f, n, w2, v, z, lo, count, dst):  # pragma: no cover - compiled
    """``dst[i] = min_q f[q] + w2 (lo + i - q)²`` for ``i < count`` (``f[q] = inf``
    marks no seed); ``v`` (n) and ``z`` (n + 1) are work space."""
    inf = np.inf
    k = -1
    for q in range(n):
        fq = f[q]
        if fq == inf:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -inf
            z[1] = inf
            continue
        s = 0.0
        while k >= 0:
            r = v[k]
            s = ((fq + w2 * q * q) - (f[r] + w2 * r * r)) / (2.0 * w2 * (q - r))
            if s <= z[k]:
                k -= 1
            else:
                break
        k += 1
        v[k] = q
        z[k] = s if k > 0 else -inf
        z[k + 1] = inf
    if k < 0:
        for i in range(count):
            dst[i] = inf
        return
    j = 0
    for i in range(count):
        p = lo + i
        while z[j + 1] < p:
            j += 1
        r = v[j]
        d = p - r
        dst[i] = w2 * d * d + f[r]


@_jit
def _separable(keys, starts, box, plo, pshape, spacing):  # pragma: no cover - compiled
    """The three passes on axes already in the order of the passes (module doc).

    ``keys``: the seeds' first-axis coordinates sorted by line, then coordinate;
    ``starts``: offsets of the lines ``l = c * box[1] + b`` in ``keys``
    (``box[1] * box[2] + 1``); ``box``, ``plo``, ``pshape``: the box's shape,
    the patch's corner in the box and its shape; ``spacing``: mm per axis.
    """
    inf = np.inf
    b0, b1, b2 = box[0], box[1], box[2]
    p0, p1, p2 = pshape[0], pshape[1], pshape[2]
    lines = b1 * b2
    w0 = spacing[0] * spacing[0]
    # per coordinate i of the patch on axis 0: pass 1 on the plane (axis 1 and 2
    # of the box), pass 2 on its lines along axis 1, pass 3 on the patch's lines
    # along axis 2 (the work space of a plane stays in the cache)
    g1 = np.empty((b2, b1))
    flat1 = g1.reshape(lines)
    g2 = np.empty((p1, b2))
    v = np.empty(max(b0, b1, b2), dtype=np.int64)
    z = np.empty(max(b0, b1, b2) + 1)
    line_out = np.empty(max(p0, p1, p2))
    w1 = spacing[1] * spacing[1]
    w2 = spacing[2] * spacing[2]
    out = np.empty((p0, p1, p2))
    ptr = starts[:lines].copy()
    for i in range(p0):
        x = plo[0] + i
        for line in range(lines):
            s0 = starts[line]
            s1 = starts[line + 1]
            if s0 == s1:
                flat1[line] = inf
                continue
            p = ptr[line]
            while p < s1 and keys[p] < x:
                p += 1
            ptr[line] = p
            best = inf
            if p < s1:
                best = keys[p] - x
            if p > s0 and x - keys[p - 1] < best:
                best = x - keys[p - 1]
            flat1[line] = w0 * best * best if best < inf else inf
        for c in range(b2):
            _envelope_line(g1[c], b1, w1, v, z, plo[1], p1, line_out)
            for j in range(p1):
                g2[j, c] = line_out[j]
        for j in range(p1):
            _envelope_line(g2[j], b2, w2, v, z, plo[2], p2, out[i, j])
    return out


def _pass_order(box: np.ndarray, pshape: np.ndarray) -> tuple[int, int, int]:
    """The order of axes with the fewest line evaluations (module doc)."""

    def cost(order: tuple[int, ...]) -> float:
        a, b, c = order
        return 2.0 * pshape[a] * box[b] * box[c] + float(pshape[a]) * pshape[b] * box[c]

    return min(itertools.permutations(range(3)), key=cost)


def patch_squared_distance(
    seeds: np.ndarray, patch_lo: np.ndarray, patch_shape: tuple[int, ...], spacing: np.ndarray
) -> np.ndarray:
    """Squared distance (mm², float64) from every voxel of a 3D patch to the nearest seed.

    Parameters
    ----------
    seeds
        ``(k, 3)`` integer voxel indices, ``k >= 1``.
    patch_lo, patch_shape
        The patch's first voxel (same grid as ``seeds``) and its shape.
    spacing
        Voxel size (mm) per axis.

    Returns
    -------
    np.ndarray
        ``patch_shape`` float64: ``min_s Σ_a (spacing_a (q_a - s_a))²``, exact
        up to float64 rounding.
    """
    seeds = np.asarray(seeds, dtype=np.int64)
    plo = np.asarray(patch_lo, dtype=np.int64)
    pshape = np.asarray(patch_shape, dtype=np.int64)
    lo = np.minimum(plo, seeds.min(axis=0))
    box = np.maximum(plo + pshape, seeds.max(axis=0) + 1) - lo
    order = _pass_order(box, pshape)
    a, b, c = order
    local = seeds - lo
    line = local[:, c] * box[b] + local[:, b]
    keys_order = np.lexsort((local[:, a], line))
    keys = np.ascontiguousarray(local[keys_order, a])
    starts = np.searchsorted(line[keys_order], np.arange(box[b] * box[c] + 1)).astype(np.int64)
    sp = np.asarray(spacing, dtype=np.float64)
    out = _separable(
        keys,
        starts,
        np.ascontiguousarray(box[list(order)]),
        np.ascontiguousarray((plo - lo)[list(order)]),
        np.ascontiguousarray(pshape[list(order)]),
        np.ascontiguousarray(sp[list(order)]),
    )
    return out.transpose(np.argsort(order))


@_jit
def _linear3(block, coords, out):  # pragma: no cover - compiled
    """Linear interpolation of ``block (M, n0, n1, n2)`` at ``coords (3, N)`` into
    ``out (M, N)``; a point outside ``[0, n-1]`` on any axis gets 0."""
    m = block.shape[0]
    n0, n1, n2 = block.shape[1], block.shape[2], block.shape[3]
    for p in range(coords.shape[1]):
        x, y, zc = coords[0, p], coords[1, p], coords[2, p]
        if not (0.0 <= x <= n0 - 1 and 0.0 <= y <= n1 - 1 and 0.0 <= zc <= n2 - 1):
            for ch in range(m):
                out[ch, p] = 0.0
            continue
        i0 = min(int(math.floor(x)), n0 - 1)
        j0 = min(int(math.floor(y)), n1 - 1)
        k0 = min(int(math.floor(zc)), n2 - 1)
        fx, fy, fz = x - i0, y - j0, zc - k0
        i1, j1, k1 = min(i0 + 1, n0 - 1), min(j0 + 1, n1 - 1), min(k0 + 1, n2 - 1)
        gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
        for ch in range(m):
            c00 = block[ch, i0, j0, k0] * gz + block[ch, i0, j0, k1] * fz
            c01 = block[ch, i0, j1, k0] * gz + block[ch, i0, j1, k1] * fz
            c10 = block[ch, i1, j0, k0] * gz + block[ch, i1, j0, k1] * fz
            c11 = block[ch, i1, j1, k0] * gz + block[ch, i1, j1, k1] * fz
            out[ch, p] = (c00 * gy + c01 * fy) * gx + (c10 * gy + c11 * fy) * fx


def linear_sample(block: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``block (M, n0, n1, n2)`` interpolated linearly at ``coords (3, *S)`` (voxel
    indices of the block): ``(M, *S)`` float32, 0 outside the block."""
    flat = np.ascontiguousarray(coords.reshape(3, -1), dtype=np.float64)
    data = np.asarray(block, dtype=np.float32)  # strided views as they are
    out = np.empty((data.shape[0], flat.shape[1]), dtype=np.float32)
    _linear3(data, flat, out)
    return out.reshape(data.shape[0], *coords.shape[1:])


@_jit
def _warp_blocks(lo, hi, centre, matrix, box_lo, field, labels):  # pragma: no cover - compiled
    """Foreground voxels ``(n, 3)`` and labels of the warped ``labels`` on the blocks
    ``[lo, hi]`` (inclusive, ``(b, 3)``); ``field (3, *box_shape)`` (empty: no
    elastic part) is added on the box at ``box_lo``."""
    n0, n1, n2 = labels.shape
    f0, f1, f2 = field.shape[1], field.shape[2], field.shape[3]
    total = 0
    for b in range(lo.shape[0]):
        total += (hi[b, 0] - lo[b, 0] + 1) * (hi[b, 1] - lo[b, 1] + 1) * (hi[b, 2] - lo[b, 2] + 1)
    points = np.empty((total, 3), dtype=np.int64)
    values = np.empty(total, dtype=np.int64)
    y = np.empty(3)
    rel = np.empty(3)
    count = 0
    for b in range(lo.shape[0]):
        for x0 in range(lo[b, 0], hi[b, 0] + 1):
            for x1 in range(lo[b, 1], hi[b, 1] + 1):
                for x2 in range(lo[b, 2], hi[b, 2] + 1):
                    rel[0] = x0 - centre[0]
                    rel[1] = x1 - centre[1]
                    rel[2] = x2 - centre[2]
                    for i in range(3):
                        v = matrix[i, 0] * rel[0]
                        v += matrix[i, 1] * rel[1]
                        v += matrix[i, 2] * rel[2]
                        v += centre[i]
                        y[i] = v
                    l0, l1, l2 = x0 - box_lo[0], x1 - box_lo[1], x2 - box_lo[2]
                    if 0 <= l0 < f0 and 0 <= l1 < f1 and 0 <= l2 < f2:
                        y[0] += field[0, l0, l1, l2]
                        y[1] += field[1, l0, l1, l2]
                        y[2] += field[2, l0, l1, l2]
                    i0 = np.int64(np.rint(y[0]))
                    i1 = np.int64(np.rint(y[1]))
                    i2 = np.int64(np.rint(y[2]))
                    if 0 <= i0 < n0 and 0 <= i1 < n1 and 0 <= i2 < n2:
                        value = np.int64(labels[i0, i1, i2])
                        if value > 0:
                            points[count, 0] = x0
                            points[count, 1] = x1
                            points[count, 2] = x2
                            values[count] = value
                            count += 1
    return points[:count], values[:count]


def warped_foreground(
    labels: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    centre: np.ndarray,
    matrix: np.ndarray,
    box_lo: np.ndarray,
    field: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground voxels of the nearest-neighbour warped 3D ``labels`` on output blocks.

    Parameters
    ----------
    labels
        ``(n0, n1, n2)`` integer class indices (background 0).
    lo, hi
        ``(b, 3)`` inclusive corners of the output blocks.
    centre, matrix, box_lo, field
        The warp ``x -> centre + matrix (x - centre) + field(x - box_lo)``
        (``field (3, *box_shape)``, zero outside the box; None: no field).

    Returns
    -------
    points, values
        ``(3, n)`` int64 output voxels whose warped label is not 0, and the labels.
    """
    data = np.asarray(labels)
    if field is None:
        field = np.zeros((3, 0, 0, 0))
    points, values = _warp_blocks(
        np.ascontiguousarray(lo, dtype=np.int64),
        np.ascontiguousarray(hi, dtype=np.int64),
        np.ascontiguousarray(centre, dtype=np.float64),
        np.ascontiguousarray(matrix, dtype=np.float64),
        np.ascontiguousarray(box_lo, dtype=np.int64),
        np.ascontiguousarray(field, dtype=np.float64),
        data if data.flags.c_contiguous else np.ascontiguousarray(data),
    )
    return points.T, values


@_jit
def _abs_max(flat):  # pragma: no cover - compiled
    out = np.zeros(flat.shape[0])
    for i in range(flat.shape[0]):
        best = 0.0
        for v in flat[i]:
            a = abs(v)
            if a > best:
                best = a
        out[i] = best
    return out


def abs_max(field: np.ndarray) -> np.ndarray:
    """``max |field[i]|`` over every axis but the first (one read of ``field``)."""
    return _abs_max(np.ascontiguousarray(field).reshape(field.shape[0], -1))


@_jit
def _coords(lo, shape, centre, matrix, box_lo, field, out):  # pragma: no cover - compiled
    f0, f1, f2 = field.shape[1], field.shape[2], field.shape[3]
    rel = np.empty(3)
    for a in range(shape[0]):
        x0 = lo[0] + a
        for b in range(shape[1]):
            x1 = lo[1] + b
            for c in range(shape[2]):
                x2 = lo[2] + c
                rel[0] = x0 - centre[0]
                rel[1] = x1 - centre[1]
                rel[2] = x2 - centre[2]
                l0, l1, l2 = x0 - box_lo[0], x1 - box_lo[1], x2 - box_lo[2]
                inside = 0 <= l0 < f0 and 0 <= l1 < f1 and 0 <= l2 < f2
                for i in range(3):
                    v = matrix[i, 0] * rel[0]
                    v += matrix[i, 1] * rel[1]
                    v += matrix[i, 2] * rel[2]
                    v += centre[i]
                    if inside:
                        v += field[i, l0, l1, l2]
                    out[i, a, b, c] = v


def warp_coords(
    lo: np.ndarray,
    shape: tuple[int, ...],
    centre: np.ndarray,
    matrix: np.ndarray,
    box_lo: np.ndarray,
    field: np.ndarray | None,
) -> np.ndarray:
    """``(3, *shape)`` float64: ``centre + matrix (x - centre) + field(x - box_lo)`` at
    the voxels ``x`` of the region at ``lo``, by the operations of
    :func:`warped_foreground` (and ``augment.Warp.coords``)."""
    if field is None:
        field = np.zeros((3, 0, 0, 0))
    out = np.empty((3, *shape))
    _coords(
        np.asarray(lo, dtype=np.int64),
        np.asarray(shape, dtype=np.int64),
        np.ascontiguousarray(centre, dtype=np.float64),
        np.ascontiguousarray(matrix, dtype=np.float64),
        np.asarray(box_lo, dtype=np.int64),
        np.ascontiguousarray(field, dtype=np.float64),
        out,
    )
    return out


@_jit
def _nearest(labels, coords, out):  # pragma: no cover - compiled
    n0, n1, n2 = labels.shape
    for p in range(coords.shape[1]):
        i0 = np.int64(np.rint(coords[0, p]))
        i1 = np.int64(np.rint(coords[1, p]))
        i2 = np.int64(np.rint(coords[2, p]))
        if 0 <= i0 < n0 and 0 <= i1 < n1 and 0 <= i2 < n2:
            out[p] = labels[i0, i1, i2]
        else:
            out[p] = 0


def nearest_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``labels (n0, n1, n2)`` at the nearest voxel of ``coords (3, *S)``: ``(*S)``
    int64, 0 outside the volume (only the voxels read are touched)."""
    data = np.asarray(labels)
    flat = np.ascontiguousarray(coords.reshape(3, -1), dtype=np.float64)
    out = np.empty(flat.shape[1], dtype=np.int64)
    _nearest(data if data.flags.c_contiguous else np.ascontiguousarray(data), flat, out)
    return out.reshape(coords.shape[1:])


@_jit
def _preimage_meets(table, centre, matrix, reach, box_lo, box_hi, shape, lo, hi, cell, eps):
    """Whether the pre-image box of the output block ``[lo, hi]`` meets a foreground
    cell (``table``: summed-area table of the cells); as
    ``warp_distance._may_hold_foreground``."""  # pragma: no cover - compiled
    meets = True
    for a in range(3):
        if hi[a] < box_lo[a] or lo[a] > box_hi[a]:
            meets = False
    c0 = c1 = c2 = d0 = d1 = d2 = 0
    for i in range(3):
        ymid = centre[i]
        spread = 0.5 + eps
        for j in range(3):
            mid = (lo[j] + hi[j]) / 2.0
            ymid += matrix[i, j] * (mid - centre[j])
            spread += abs(matrix[i, j]) * (hi[j] - lo[j]) / 2.0
        if meets:
            spread += reach[i]
        ilo = max(math.ceil(ymid - spread), 0)
        ihi = min(math.floor(ymid + spread), shape[i] - 1)
        if ilo > ihi:
            return False
        if i == 0:
            c0, d0 = ilo // cell, ihi // cell + 1
        elif i == 1:
            c1, d1 = ilo // cell, ihi // cell + 1
        else:
            c2, d2 = ilo // cell, ihi // cell + 1
    total = (
        table[d0, d1, d2]
        - table[c0, d1, d2]
        - table[d0, c1, d2]
        - table[d0, d1, c2]
        + table[c0, c1, d2]
        + table[c0, d1, c2]
        + table[d0, c1, c2]
        - table[c0, c1, c2]
    )
    return total > 0


@_jit
def _candidates(table, centre, matrix, reach, box_lo, box_hi, shape, block, cell, eps):
    # pragma: no cover - compiled
    half = block // 2
    n = 8 * ((shape[0] + block - 1) // block)
    n *= ((shape[1] + block - 1) // block) * ((shape[2] + block - 1) // block)
    out_lo = np.empty((n, 3), dtype=np.int64)
    out_hi = np.empty((n, 3), dtype=np.int64)
    lo = np.empty(3, dtype=np.int64)
    hi = np.empty(3, dtype=np.int64)
    slo = np.empty(3, dtype=np.int64)
    shi = np.empty(3, dtype=np.int64)
    count = 0
    for x0 in range(0, shape[0], block):
        for x1 in range(0, shape[1], block):
            for x2 in range(0, shape[2], block):
                lo[0], lo[1], lo[2] = x0, x1, x2
                for a in range(3):
                    hi[a] = min(lo[a] + block, shape[a]) - 1
                if not _preimage_meets(
                    table, centre, matrix, reach, box_lo, box_hi, shape, lo, hi, cell, eps
                ):
                    continue
                for k in range(8):
                    ok = True
                    for a in range(3):
                        slo[a] = lo[a] + half * ((k >> (2 - a)) & 1)
                        shi[a] = min(slo[a] + half - 1, hi[a])
                        if slo[a] > shi[a]:
                            ok = False
                    if ok and _preimage_meets(
                        table, centre, matrix, reach, box_lo, box_hi, shape, slo, shi, cell, eps
                    ):
                        for a in range(3):
                            out_lo[count, a] = slo[a]
                            out_hi[count, a] = shi[a]
                        count += 1
    return out_lo[:count], out_hi[:count]


def candidate_blocks(
    table: np.ndarray,
    centre: np.ndarray,
    matrix: np.ndarray,
    reach: np.ndarray,
    box: tuple[slice, ...],
    shape: tuple[int, ...],
    block: int,
    cell: int,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Output blocks of ``block // 2`` voxels (inclusive corners ``(n, 3)``) whose
    pre-image box meets a foreground cell, tested first as blocks of ``block``
    (``warp_distance._candidate_blocks``; ``reach``: the largest elastic
    displacement per axis, zeros without one, added where a block meets
    ``box``)."""
    return _candidates(
        np.ascontiguousarray(table, dtype=np.int32),
        np.ascontiguousarray(centre, dtype=np.float64),
        np.ascontiguousarray(matrix, dtype=np.float64),
        np.ascontiguousarray(reach, dtype=np.float64),
        np.array([b.start for b in box], dtype=np.int64),
        np.array([b.stop - 1 for b in box], dtype=np.int64),
        np.asarray(shape, dtype=np.int64),
        int(block),
        int(cell),
        float(eps),
    )


@_jit
def _boundary(rel, values, local):  # pragma: no cover - compiled
    n = values.shape[0]
    l0, l1, l2 = local[0], local[1], local[2]
    dense = np.zeros((l0, l1, l2), dtype=values.dtype)
    for p in range(n):
        dense[rel[0, p], rel[1, p], rel[2, p]] = values[p]
    seen = np.zeros((l0, l1, l2), dtype=np.bool_)
    edge = np.zeros(n, dtype=np.bool_)
    background = np.empty((6 * n, 3), dtype=np.int64)
    count = 0
    for p in range(n):
        x = (rel[0, p], rel[1, p], rel[2, p])
        own = values[p]
        for k in range(6):
            axis = k // 2
            step = 1 if k % 2 else -1
            y0, y1, y2 = x[0], x[1], x[2]
            if axis == 0:
                y0 += step
            elif axis == 1:
                y1 += step
            else:
                y2 += step
            if not (0 <= y0 < l0 and 0 <= y1 < l1 and 0 <= y2 < l2):
                continue
            other = dense[y0, y1, y2]
            if other != own:
                edge[p] = True
            if other == 0 and not seen[y0, y1, y2]:
                seen[y0, y1, y2] = True
                background[count, 0] = y0
                background[count, 1] = y1
                background[count, 2] = y2
                count += 1
    return edge, background[:count]


def boundary_voxels(
    rel: np.ndarray, values: np.ndarray, local: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground voxels ``rel (3, n)`` (in a grid of shape ``local``, every other
    voxel background, labels ``values > 0``): which have a face neighbour of
    another class (``(n,)`` bool), and the background voxels next to one (``(m, 3)``)."""
    return _boundary(
        np.ascontiguousarray(rel, dtype=np.int64),
        np.ascontiguousarray(values, dtype=np.uint8 if values.max() < 256 else np.int64),
        np.asarray(local, dtype=np.int64),
    )
