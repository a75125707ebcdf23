"""Tests of core/distance.py: φ_G values by hand, against brute force, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_boundary_seg.core.distance import (
    class_distance_maps,
    edt_available,
    iter_class_distance_maps,
    iter_signed_distance_map,
    signed_distance_map,
)
from napari_boundary_seg.core.progress import Progress, run_to_end

BACKENDS = ["scipy", "edt"] if edt_available() else ["scipy"]


def brute_force_map(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """φ_G straight from the definition: min distance to every voxel of ∂G."""
    m = mask.astype(bool)
    cross = ndimage.generate_binary_structure(m.ndim, 1)
    boundary = m & ~ndimage.binary_erosion(m, cross, border_value=1)
    if not boundary.any():
        return np.zeros(m.shape)
    sp = np.asarray(spacing, dtype=float)
    points = np.argwhere(boundary) * sp
    grid = np.indices(m.shape).reshape(m.ndim, -1).T * sp
    dist = np.sqrt(((grid[:, None, :] - points[None]) ** 2).sum(-1)).min(1)
    dist = dist.reshape(m.shape)
    return np.where(m, -dist, dist)


def boundary_of(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, cross, border_value=1)


# ---------------------------------------------------------------------------
# values computed by hand
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_line_1d_by_hand(backend):
    mask = np.array([0, 0, 1, 1, 1, 1, 1, 0], dtype=np.uint8)
    # ∂G = indices 2 and 6; interior 3..5.
    expected = [2, 1, 0, -1, -2, -1, 0, 1]
    np.testing.assert_array_equal(signed_distance_map(mask, backend=backend), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_square_3x3_in_5x5_by_hand(backend):
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    s2 = np.sqrt(2)
    expected = np.array(
        [
            [s2, 1, 1, 1, s2],
            [1, 0, 0, 0, 1],
            [1, 0, -1, 0, 1],
            [1, 0, 0, 0, 1],
            [s2, 1, 1, 1, s2],
        ]
    )
    out = signed_distance_map(mask, backend=backend)
    assert out.dtype == np.float32 and out.shape == (5, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_square_anisotropic_by_hand(backend):
    """Spacing (2, 1): rows 2 mm apart, columns 1 mm apart."""
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:4, 1:4] = True
    out = signed_distance_map(mask, spacing=(2.0, 1.0), backend=backend)
    # centre (2, 2): nearest ∂G voxels (2, 1) and (2, 3) at 1 mm; the rows are 2 mm apart.
    assert out[2, 2] == pytest.approx(-1.0)
    # (0, 2) is one row (2 mm) above ∂G; (2, 0) is one column (1 mm) left of it.
    assert out[0, 2] == pytest.approx(2.0)
    assert out[2, 0] == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(np.sqrt(5.0))
    assert np.all(out[boundary_of(mask)] == 0)
    # the reference code's -(edt(G) - 1) is -1, not 0, on the top row of ∂G
    reference = ndimage.distance_transform_edt(mask, sampling=(2.0, 1.0)) - 1
    assert reference[1, 2] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anisotropic_interior_differs_from_reference_formula(backend):
    """A 5x5x5 cube, spacing (1, 1, 3): φ(centre) = -2 (two 1 mm steps to a face).

    The reference formula puts edt - 1 = 3 - 1 = 2 on the voxels of ∂G whose
    outside neighbours lie along the 3 mm axis only; φ keeps them at 0.
    """
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[1:6, 1:6, 1:6] = True
    spacing = (1.0, 1.0, 3.0)
    out = signed_distance_map(mask, spacing, backend=backend)
    boundary = boundary_of(mask)
    assert np.all(out[boundary] == 0)
    assert out[3, 3, 3] == pytest.approx(-2.0)  # two 1 mm steps to the side faces
    reference = ndimage.distance_transform_edt(mask, sampling=spacing) - 1
    assert reference[3, 3, 1] == pytest.approx(2.0)  # on ∂G, yet not 0
    assert out[3, 3, 1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_cube_3d_by_hand(backend):
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1:4, 1:4, 1:4] = True
    out = signed_distance_map(mask, backend=backend)
    assert out[2, 2, 2] == pytest.approx(-1.0)
    assert out[0, 2, 2] == pytest.approx(1.0)
    assert out[0, 0, 2] == pytest.approx(np.sqrt(2))
    assert out[0, 0, 0] == pytest.approx(np.sqrt(3))
    assert np.count_nonzero(out == 0) == 26  # the 3x3x3 cube's surface


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_edge_is_not_boundary(backend):
    # G fills the left three columns; ∂G is column 2 only, not the image edge.
    mask = np.zeros((3, 5), dtype=bool)
    mask[:, :3] = True
    out = signed_distance_map(mask, backend=backend)
    np.testing.assert_array_equal(out, np.tile([-2, -1, 0, 1, 2], (3, 1)))


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


def random_masks(ndim: int, rng: np.random.Generator):
    shape = tuple(int(n) for n in rng.integers(4, 10 if ndim == 3 else 16, ndim))
    yield rng.random(shape) < 0.3  # scattered, touches the edge
    yield rng.random(shape) < 0.85  # mostly foreground
    blobs = ndimage.binary_dilation(rng.random(shape) < 0.04, iterations=2)
    yield blobs
    yield ~blobs


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force_random_anisotropic(ndim, backend):
    rng = np.random.default_rng(10 + ndim)
    for _ in range(3):
        spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, ndim))
        for mask in random_masks(ndim, rng):
            out = signed_distance_map(mask, spacing, backend=backend)
            np.testing.assert_allclose(out, brute_force_map(mask, spacing), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_outside_equals_edt_of_outside(ndim):
    """Outside G, φ is the distance to the nearest voxel of G (the reference code's term)."""
    rng = np.random.default_rng(ndim)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, ndim))
    for mask in random_masks(ndim, rng):
        out = signed_distance_map(mask, spacing)
        outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
        np.testing.assert_allclose(out[~mask], outside[~mask], rtol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_sign_and_zero_on_boundary(ndim):
    rng = np.random.default_rng(20 + ndim)
    spacing = (1.0,) * (ndim - 1) + (3.0,)
    for mask in random_masks(ndim, rng):
        out = signed_distance_map(mask, spacing)
        boundary = boundary_of(mask)
        assert np.all(out[boundary] == 0)
        assert not np.any(np.signbit(out[boundary]))  # +0.0, not -0.0
        assert np.all(out[mask & ~boundary] < 0)
        assert np.all(out[~mask] > 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_spacing_scales_the_map(ndim):
    rng = np.random.default_rng(30 + ndim)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 2.0, ndim))
    mask = next(random_masks(ndim, rng))
    once = signed_distance_map(mask, spacing)
    twice = signed_distance_map(mask, tuple(2 * s for s in spacing))
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6)
    np.testing.assert_allclose(
        signed_distance_map(mask, 2.5), 2.5 * signed_distance_map(mask), rtol=1e-6
    )


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
@pytest.mark.parametrize("fill", [0, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_full_masks_give_zeros(shape, fill, backend):
    out = signed_distance_map(np.full(shape, fill, dtype=np.uint8), backend=backend)
    assert out.dtype == np.float32 and out.shape == shape
    assert np.all(out == 0) and np.all(np.isfinite(out))


@pytest.mark.parametrize("ndim", [2, 3])
def test_backends_agree(ndim):
    if not edt_available():
        pytest.fail("the edt package is a runtime dependency and must be installed")
    rng = np.random.default_rng(40 + ndim)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, ndim))
    for mask in random_masks(ndim, rng):
        a = signed_distance_map(mask, spacing, backend="edt")
        b = signed_distance_map(mask, spacing, backend="scipy")
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)


def test_four_dimensions_use_scipy():
    rng = np.random.default_rng(4)
    mask = rng.random((3, 4, 3, 4)) < 0.4
    spacing = (1.0, 2.0, 1.0, 0.5)
    out = signed_distance_map(mask, spacing)
    np.testing.assert_allclose(out, brute_force_map(mask, spacing), atol=1e-5)
    with pytest.raises(ValueError, match="1 to 3 dimensions, got 4"):
        signed_distance_map(mask, spacing, backend="edt")


# ---------------------------------------------------------------------------
# per-slice mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_per_slice_equals_stacked_2d_maps(axis):
    rng = np.random.default_rng(50)
    mask = rng.random((5, 6, 7)) < 0.3
    k = axis % 3
    mask[(slice(None),) * k + (1,)] = False  # an empty slice
    mask[(slice(None),) * k + (2,)] = True  # a full slice
    spacing = (0.5, 2.0, 3.0)
    out = signed_distance_map(mask, spacing, axis=axis)
    plane = spacing[:k] + spacing[k + 1 :]
    expected = np.stack(
        [signed_distance_map(np.take(mask, i, axis=k), plane) for i in range(mask.shape[k])],
        axis=k,
    )
    np.testing.assert_array_equal(out, expected)
    assert np.all(np.take(out, 1, axis=k) == 0)
    assert np.all(np.take(out, 2, axis=k) == 0)
    # the spacing of the slicing axis does not matter
    other = tuple(99.0 if a == k else s for a, s in enumerate(spacing))
    np.testing.assert_array_equal(signed_distance_map(mask, other, axis=axis), out)


def test_per_slice_differs_from_3d():
    mask = np.zeros((3, 5, 5), dtype=bool)
    mask[1, 1:4, 1:4] = True  # a 3x3 square in the middle slice only
    per_slice = signed_distance_map(mask, axis=0)
    assert np.all(per_slice[0] == 0) and np.all(per_slice[2] == 0)
    assert per_slice[1, 2, 2] == -1
    full = signed_distance_map(mask)
    assert full[0, 2, 2] == 1 and full[1, 2, 2] == 0  # in 3D the slab is all ∂G


# ---------------------------------------------------------------------------
# class maps and progress
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_class_maps_shape_and_values(shape):
    rng = np.random.default_rng(60)
    labels = rng.integers(0, 3, shape).astype(np.int16)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 2.0, len(shape)))
    maps = class_distance_maps(labels, 4, spacing)
    assert maps.shape == (4, *shape) and maps.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(maps[c], signed_distance_map(labels == c, spacing))
    assert np.all(maps[3] == 0)  # class absent


def test_class_maps_by_hand():
    labels = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 2]])
    maps = class_distance_maps(labels, 3)
    r2, r5, r8, r10, r13 = np.sqrt([2, 5, 8, 10, 13])
    np.testing.assert_allclose(maps[1], [[r2, 1, 1, r2], [1, 0, 0, 1], [r2, 1, 1, r2]])
    np.testing.assert_allclose(maps[2], [[r13, r8, r5, 2], [r10, r5, r2, 1], [3, 2, 1, 0]])
    # background B: ∂B are the background pixels next to classes 1 and 2; the
    # three corners (0, 0), (0, 3), (2, 0) are interior, one pixel from ∂B.
    np.testing.assert_allclose(maps[0], [[-1, 0, 0, -1], [0, 1, 1, 0], [-1, 0, 0, 1]])


def test_class_maps_per_slice():
    rng = np.random.default_rng(61)
    labels = rng.integers(0, 3, (3, 6, 5))
    maps = class_distance_maps(labels, 3, (4.0, 1.0, 2.0), axis=0)
    for c in range(3):
        np.testing.assert_array_equal(
            maps[c], signed_distance_map(labels == c, (4.0, 1.0, 2.0), axis=0)
        )


@pytest.mark.parametrize("axis", [None, 1])
def test_progress_generator_yields_and_returns(axis):
    labels = np.zeros((3, 4, 5), dtype=np.uint8)
    labels[1, 1:3, 1:4] = 1
    events = []
    result = run_to_end(iter_class_distance_maps(labels, 2, axis=axis), events.append)
    total = 2 if axis is None else 4
    assert all(isinstance(e, Progress) for e in events)
    assert [(e.done, e.total) for e in events] == [(i, total) for i in range(total + 1)]
    np.testing.assert_array_equal(result, class_distance_maps(labels, 2, axis=axis))


@pytest.mark.parametrize("axis", [None, 1])
def test_one_mask_progress_generator_yields_and_returns(axis):
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 1:3, 1:4] = True
    events = []
    result = run_to_end(iter_signed_distance_map(mask, (2.0, 1.0, 1.0), axis), events.append)
    total = 1 if axis is None else 4
    assert [(e.done, e.total) for e in events] == [(i, total) for i in range(total + 1)]
    np.testing.assert_array_equal(result, signed_distance_map(mask, (2.0, 1.0, 1.0), axis))
    np.testing.assert_array_equal(result, class_distance_maps(mask, 2, (2.0, 1.0, 1.0), axis)[1])
    with pytest.raises(ValueError, match="binary|0 and 1"):
        next(iter_signed_distance_map(np.array([0, 2])))


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_non_binary_mask_names_values():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\[2, 3\]"):
        signed_distance_map(np.array([[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match="binary"):
        signed_distance_map(np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="binary"):
        signed_distance_map(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="scalar"):
        signed_distance_map(np.array(1))
    with pytest.raises(TypeError, match="dtype"):
        signed_distance_map(np.array(["a", "b"]))


@pytest.mark.parametrize(
    ("spacing", "error", "pattern"),
    [
        ((1.0, 1.0), ValueError, r"2 values \(1.0, 1.0\).*3 dimensions"),
        ((1.0, 0.0, 1.0), ValueError, r"positive.*0\.0"),
        ((1.0, -2.0, 1.0), ValueError, r"positive.*-2\.0"),
        ((1.0, np.inf, 1.0), ValueError, "finite"),
        (-1.0, ValueError, "positive"),
        ("abc", TypeError, "spacing"),
    ],
)
def test_bad_spacing(spacing, error, pattern):
    with pytest.raises(error, match=pattern):
        signed_distance_map(np.zeros((2, 3, 4), dtype=bool), spacing)


def test_bad_axis_and_backend():
    mask = np.zeros((2, 3, 4), dtype=bool)
    with pytest.raises(ValueError, match="axis 3 is out of range.*3 dimensions"):
        signed_distance_map(mask, axis=3)
    with pytest.raises(TypeError, match="axis"):
        signed_distance_map(mask, axis=1.0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        signed_distance_map(np.zeros(4, dtype=bool), axis=0)
    with pytest.raises(ValueError, match="backend.*'fast'"):
        signed_distance_map(mask, backend="fast")


def test_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 5\].*\[0, 3\)"):
        class_distance_maps(np.array([[0, 5], [1, 2]]), 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        class_distance_maps(np.array([[-1, 0], [1, 0]]), 3)
    with pytest.raises(ValueError, match=r"integer.*float64.*\(2,\)"):
        class_distance_maps(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="at least 1"):
        class_distance_maps(np.array([0, 0]), 0)
    with pytest.raises(TypeError, match="num_classes"):
        class_distance_maps(np.array([0, 0]), 2.0)
    with pytest.raises(ValueError, match="2 values"):
        class_distance_maps(np.zeros((2, 3, 4), dtype=int), 2, spacing=(1.0, 1.0))
    gen = iter_class_distance_maps(np.array([0.5]), 2)
    with pytest.raises(ValueError, match="integer"):
        next(gen)


def test_auto_backend_keeps_worker_threads_off_the_gil_holding_edt():
    """edt holds the GIL for a whole transform; napari's workers must not stall the
    event loop, so 'auto' resolves to scipy outside the main thread."""
    import threading

    from napari_boundary_seg.core.distance import resolve_backend

    main = resolve_backend("auto", 3)
    assert main == ("edt" if edt_available() else "scipy")
    seen = []
    worker = threading.Thread(target=lambda: seen.append(resolve_backend("auto", 3)))
    worker.start()
    worker.join()
    assert seen == ["scipy"]
    # an explicit choice is honoured in any thread
    if edt_available():
        worker = threading.Thread(target=lambda: seen.append(resolve_backend("edt", 3)))
        worker.start()
        worker.join()
        assert seen[-1] == "edt"


def test_maps_in_a_worker_thread_equal_the_main_thread_ones():
    import threading

    rng = np.random.default_rng(5)
    mask = rng.random((12, 10, 9)) > 0.8
    expected = signed_distance_map(mask, spacing=(1.0, 0.7, 2.5))
    got = []
    worker = threading.Thread(
        target=lambda: got.append(signed_distance_map(mask, spacing=(1.0, 0.7, 2.5)))
    )
    worker.start()
    worker.join()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=1e-5)
