"""φ of a warped patch from the boundary voxels equals the whole warped volume's φ."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_boundary_seg.core import augment as A
from napari_boundary_seg.core import warp_distance as W
from napari_boundary_seg.core.distance import _interior, class_distance_maps

NONE = A.AugmentConfig(
    flip=0, permute=0, rot90=0, warp=0, gamma=0, contrast=0, brightness=0, noise=0, blur=0
)
TOL = 1e-4  # mm


def _lesions(shape, seed, classes=3, count=5):
    """Boxes and balls of classes 1..classes-1, some touching the volume's edge."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    grid = np.indices(shape)
    for k in range(count):
        centre = [rng.integers(0, n) for n in shape]
        radius = rng.uniform(1.5, 5.0)
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
        labels[ball] = 1 + k % (classes - 1)
    labels[: shape[0] // 6, : shape[1] // 5, : shape[2] // 3] = 1  # at the edge
    return labels


def _reference(labels, warp, patch, num_classes, spacing):
    whole = A.warp_labels(labels, warp, tuple(slice(0, n) for n in labels.shape))
    dist = class_distance_maps(whole, num_classes, spacing=spacing)
    return whole, dist[(slice(None), *patch)]


def _patch(rng, shape, size):
    start = [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, size, strict=True)]
    return tuple(slice(s, s + p) for s, p in zip(start, size, strict=True))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.9, 1.1, 2.5), (2.0, 0.7, 1.0)])
def test_random_warps_give_the_whole_warped_volumes_phi(spacing):
    shape, size = (44, 40, 24), (16, 18, 8)
    labels = _lesions(shape, seed=int(spacing[2] * 10))
    config = dataclasses.replace(NONE, warp=1.0, rotate_deg=30, scale=(0.8, 1.25))
    for seed in range(8):
        rng = np.random.default_rng(seed)
        patch = _patch(rng, shape, size)
        warp = A.draw_warp(shape, spacing, patch, config, rng)
        whole, ref = _reference(labels, warp, patch, 3, spacing)
        out = A.warped_sample(labels[None].astype(np.float32), labels, spacing, patch, warp, 3)
        assert np.array_equal(out.labels, whole[patch])
        np.testing.assert_allclose(out.dist, ref, rtol=0, atol=TOL)
        assert np.array_equal(out.dist == 0, ref == 0)  # ∂G exactly
        assert np.array_equal(np.sign(out.dist), np.sign(ref))


def test_same_sample_as_the_context_path():
    """Images and labels identical, φ within 1e-4 mm, of the reference path."""
    shape, size = (40, 44, 20), (16, 16, 8)
    labels = _lesions(shape, seed=3)
    image = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    spacing = (1.0, 1.2, 2.0)
    config = dataclasses.replace(NONE, warp=1.0, rotate_deg=25, margin_mm=4.0)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        patch = _patch(rng, shape, size)
        warp = A.draw_warp(shape, spacing, patch, config, rng)
        new = A.warped_sample(image, labels, spacing, patch, warp, 3)
        old = A.warped_sample(image, labels, spacing, patch, warp, 3, phi="context")
        assert np.array_equal(new.image, old.image)
        assert np.array_equal(new.labels, old.labels)
        np.testing.assert_allclose(new.dist, old.dist, rtol=0, atol=TOL)


def test_lesions_cut_by_the_patch_edge_and_warped_in_from_outside():
    shape = (48, 48, 24)
    labels = np.zeros(shape, np.int64)
    labels[20:30, 14:22, 8:16] = 1  # cut by the patch's low face along axis 1
    labels[22:26, 40:46, 10:14] = 2  # outside the patch, brought in by the shift
    labels[24:26, 16:18, 11] = 0  # a hole: an inner boundary
    patch = (slice(16, 32), slice(18, 38), slice(6, 18))
    spacing = (1.0, 1.0, 1.5)
    centre = np.array([(s.start + s.stop - 1) / 2 for s in patch])
    whole_grid = tuple(slice(0, n) for n in shape)
    for shift in (0.0, 4.0, 9.0):  # input = output + shift along axis 1: lesion 2 moves in
        field = np.zeros((3, *shape))
        field[1] = shift
        warp = A.Warp(centre, np.eye(3), whole_grid, field)
        whole, ref = _reference(labels, warp, patch, 3, spacing)
        out = A.warped_sample(labels[None].astype(np.float32), labels, spacing, patch, warp, 3)
        np.testing.assert_allclose(out.dist, ref, rtol=0, atol=TOL)
        if shift == 9.0:
            assert (out.labels == 2).any()  # the outside lesion is in the patch


def test_empty_full_and_lesion_free_patches():
    shape = (40, 40, 20)
    spacing = (1.0, 1.0, 2.0)
    config = dataclasses.replace(NONE, warp=1.0)
    patch = (slice(12, 28), slice(12, 28), slice(6, 14))
    empty = np.zeros(shape, np.int64)
    big = np.zeros(shape, np.int64)
    big[4:36, 4:36, 2:18] = 1  # the patch lies inside it: a full patch
    far = np.zeros(shape, np.int64)
    far[0:3, 0:3, 0:3] = 1  # far from the patch: no boundary in it
    everything = np.ones(shape, np.int64)  # class 1 everywhere but where the warp leaves
    for labels in (empty, big, far, everything):
        for seed in range(3):
            warp = A.draw_warp(shape, spacing, patch, config, np.random.default_rng(seed))
            whole, ref = _reference(labels, warp, patch, 2, spacing)
            out = A.warped_sample(labels[None].astype(np.float32), labels, spacing, patch, warp, 2)
            np.testing.assert_allclose(out.dist, ref, rtol=0, atol=TOL)
    identity = A.Warp(np.array([19.5, 19.5, 9.5]), np.eye(3), patch, None)
    for labels in (empty, everything):  # no boundary at all: zeros, as core.distance gives
        out = A.warped_sample(labels[None].astype(np.float32), labels, spacing, patch, identity, 2)
        assert not out.dist.any()


def test_foreground_and_boundaries_match_the_whole_warped_volume():
    shape = (36, 40, 22)
    labels = _lesions(shape, seed=7)
    spacing = (1.0, 1.0, 1.8)
    config = dataclasses.replace(NONE, warp=1.0, rotate_deg=30)
    patch = (slice(10, 26), slice(12, 28), slice(7, 15))
    for seed in range(4):
        warp = A.draw_warp(shape, spacing, patch, config, np.random.default_rng(seed))
        whole = A.warp_labels(labels, warp, tuple(slice(0, n) for n in shape))
        fg = np.argwhere(labels > 0)
        for source, known in ((labels, None), (labels.astype(np.uint8), None), (labels, fg)):
            points, values = W.foreground_voxels(source, warp, known)
            got = np.zeros(shape, np.int64)
            got[tuple(points)] = values
            assert np.array_equal(got, whole)
        seeds, counts = W.warped_boundaries(points, values, shape, 3)
        for c in range(3):
            mask = whole == c
            boundary = np.argwhere(mask & ~_interior(mask))
            assert {tuple(p) for p in seeds[c]} == {tuple(p) for p in boundary}
            assert counts[c] == mask.sum()


def test_2d_warps_of_whole_slices():
    labels = np.zeros((48, 40), np.int64)
    labels[10:18, 12:20] = 1
    labels[30:36, 5:9] = 2
    spacing = (0.9, 1.3)
    whole = (slice(0, 48), slice(0, 40))
    config = A.AugmentConfig(warp=1.0)
    for seed in range(4):
        warp = A.draw_warp(labels.shape, spacing, whole, config, np.random.default_rng(seed))
        _, ref = _reference(labels, warp, whole, 3, spacing)
        out = A.warped_sample(labels[None].astype(np.float32), labels, spacing, whole, warp, 3)
        np.testing.assert_allclose(out.dist, ref, rtol=0, atol=TOL)


def test_bad_phi_method_is_refused():
    labels = np.zeros((8, 8), np.int64)
    warp = A.Warp(np.array([3.5, 3.5]), np.eye(2), (slice(0, 8), slice(0, 8)), None)
    with pytest.raises(ValueError, match="phi"):
        A.warped_sample(labels[None].astype(np.float32), labels, (1, 1), warp.box, warp, 2, phi="x")
