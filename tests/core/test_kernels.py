"""The compiled kernels of the warped-sample path give the numbers of their numpy/scipy
counterparts (the warped φ itself is checked against the whole volume in
test_warp_distance.py, on whichever path is installed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_boundary_seg.core import augment as A
from napari_boundary_seg.core import kernels as K
from napari_boundary_seg.core import warp_distance as W

needs_numba = pytest.mark.skipif(not K.NUMBA, reason="numba is not installed (extra 'fast')")


@pytest.fixture
def numpy_path(monkeypatch):
    """Runs the callers' numpy/scipy counterparts while the fixture is active."""

    def use(flag: bool) -> None:
        monkeypatch.setattr(K, "NUMBA", flag)

    return use


def _random_mask(rng, shape):
    mask = rng.random(shape) < rng.choice([0.002, 0.02, 0.2])
    if not mask.any():
        mask[tuple(int(rng.integers(0, n)) for n in shape)] = True
    return mask


def test_patch_squared_distance_is_scipys_transform_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(2, 22, size=3))
        spacing = rng.uniform(0.4, 3.0, size=3)
        mask = _random_mask(rng, shape)
        ref = ndimage.distance_transform_edt(~mask, sampling=spacing) ** 2
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape, strict=True)]
        size = tuple(b - a for a, b in zip(lo, hi, strict=True))
        got = K.patch_squared_distance(np.argwhere(mask), np.array(lo), size, spacing)
        window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.testing.assert_allclose(got, ref[window], rtol=1e-12, atol=1e-9)


def test_patch_squared_distance_with_seeds_outside_the_patch_and_one_seed():
    spacing = np.array([0.9, 1.1, 2.5])
    seeds = np.array([[-7, 40, 3]])  # one seed, outside the patch (and any volume)
    got = K.patch_squared_distance(seeds, np.array([0, 0, 0]), (4, 5, 3), spacing)
    grid = np.indices((4, 5, 3)).reshape(3, -1).T
    ref = (((grid - seeds[0]) * spacing) ** 2).sum(axis=1).reshape(4, 5, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_linear_sample_is_scipys_map_coordinates():
    rng = np.random.default_rng(1)
    for _ in range(10):
        shape = tuple(int(n) for n in rng.integers(2, 12, size=3))
        image = rng.random((2, *shape)).astype(np.float32)
        coords = rng.uniform(-1.5, np.array(shape)[:, None] + 0.5, size=(3, 400))
        coords[:, :40] = np.round(coords[:, :40])  # grid points, the edges among them
        coords[0, 40:50], coords[1, 50:60] = shape[0] - 1, 0
        ref = np.stack(
            [ndimage.map_coordinates(c, coords, order=1, mode="constant", cval=0.0) for c in image]
        )
        np.testing.assert_allclose(K.linear_sample(image, coords), ref, rtol=0, atol=1e-6)
        strided = np.asarray(image[:, ::-1])  # a view, as _read_block hands over
        ref = np.stack(
            [ndimage.map_coordinates(c, coords, order=1, mode="constant") for c in strided]
        )
        np.testing.assert_allclose(K.linear_sample(strided, coords), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 36, 20), (1, 5, 7), (30, 33)])
def test_elastic_field_is_the_trilinear_upsampling_times_the_taper(shape):
    rng = np.random.default_rng(2)
    nd = len(shape)
    coarse = rng.standard_normal((nd, *([4] * nd))) * 2.0
    mode = "bilinear" if nd == 2 else "trilinear"
    up = F.interpolate(torch.from_numpy(coarse)[None], size=shape, mode=mode, align_corners=True)
    taper = np.ones(shape)
    for axis, n in enumerate(shape):
        t = np.sin(np.pi * (np.arange(n) + 0.5) / n)
        taper = taper * t.reshape([-1 if a == axis else 1 for a in range(nd)])
    field, bound = A._elastic_field(coarse, shape)
    np.testing.assert_allclose(field, up[0].numpy() * taper, rtol=0, atol=1e-12)
    assert np.all(np.abs(field).reshape(nd, -1).max(axis=1) <= bound)


def _warps(shape, spacing, count, seed):
    config = dataclasses.replace(A.AugmentConfig(), warp=1.0, rotate_deg=30, scale=(0.8, 1.25))
    rng = np.random.default_rng(seed)
    for _ in range(count):
        start = [int(rng.integers(0, n - 12)) for n in shape]
        patch = tuple(slice(s, s + 12) for s in start)
        yield patch, A.draw_warp(shape, spacing, patch, config, rng)


def _labels(shape, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    grid = np.indices(shape)
    for k in range(6):
        centre = [rng.integers(0, n) for n in shape]
        ball = (
            sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= rng.uniform(2, 6) ** 2
        )
        labels[ball] = 1 + k % 2
    return labels


@needs_numba
def test_compiled_warp_steps_match_the_numpy_path(numpy_path):
    """Coordinates bit for bit, nearest labels, candidate blocks, foreground and ∂G."""
    shape, spacing = (34, 30, 22), (0.9, 1.1, 2.0)
    labels = _labels(shape, 3)
    fg = np.argwhere(labels > 0)
    for _patch, warp in _warps(shape, spacing, 5, 4):
        region = tuple(slice(0, n) for n in shape)
        numpy_path(True)
        coords = warp.coords(region)
        fast = (
            coords,
            A.warp_labels(labels, warp, region),
            W._candidate_blocks(labels, warp, fg),
            W.foreground_voxels(labels, warp, fg),
        )
        seeds, counts = W.warped_boundaries(*fast[3], shape, 3)
        numpy_path(False)
        assert np.array_equal(coords, warp.coords(region))  # bit for bit
        assert np.array_equal(fast[1], A.warp_labels(labels, warp, region))
        lo, hi = W._candidate_blocks(labels, warp, fg)
        assert {tuple(r) for r in np.hstack(fast[2])} == {tuple(r) for r in np.hstack([lo, hi])}
        points, values = W.foreground_voxels(labels, warp, fg)
        order = np.lexsort(points[::-1])
        fast_order = np.lexsort(fast[3][0][::-1])
        assert np.array_equal(fast[3][0][:, fast_order], points[:, order])
        assert np.array_equal(fast[3][1][fast_order], values[order])
        ref_seeds, ref_counts = W.warped_boundaries(points, values, shape, 3)
        assert np.array_equal(counts, ref_counts)
        for got, ref in zip(seeds, ref_seeds, strict=True):
            assert sorted(map(tuple, got)) == sorted(map(tuple, ref))


@needs_numba
def test_compiled_patch_phi_matches_the_edt_path(numpy_path):
    shape, spacing = (34, 30, 22), (1.0, 0.8, 2.5)
    labels = _labels(shape, 5)
    for patch, warp in _warps(shape, spacing, 4, 6):
        patch_labels = A.warp_labels(labels, warp, patch)
        numpy_path(True)
        fast = W.patch_class_distances(labels, warp, patch, patch_labels, 3, spacing)
        numpy_path(False)
        ref = W.patch_class_distances(labels, warp, patch, patch_labels, 3, spacing)
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-4)
