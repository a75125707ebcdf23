"""Augmentation keeps φ exact: φ of the augmented sample is the map of the augmented labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_boundary_seg.core import augment as A
from napari_boundary_seg.core.distance import class_distance_maps


def assert_same_map(dist, ref):
    """Equal up to float32 rounding of the distance transform (the scan order of
    ``edt`` changes with a flip); the zero set (∂G) and the signs exactly."""
    assert dist.shape == ref.shape
    assert np.array_equal(dist == 0, ref == 0)
    assert np.array_equal(np.sign(dist), np.sign(ref))
    np.testing.assert_allclose(dist, ref, rtol=1e-6, atol=1e-5)


NONE = A.AugmentConfig(
    flip=0, permute=0, rot90=0, warp=0, gamma=0, contrast=0, brightness=0, noise=0, blur=0
)


def _volume(shape=(40, 44, 20), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    labels[10:16, 28:35, 5:10] = 1
    labels[12:14, 30:32, 7] = 0  # a hole: inner boundary too
    labels[30:33, 5:9, 12:15] = 2
    image = rng.random((2, *shape)).astype(np.float32)
    return image, labels


@pytest.mark.parametrize(
    "which",
    [{"flip": 1.0}, {"permute": 1.0}, {"rot90": 1.0}, {"flip": 0.5, "permute": 1, "rot90": 1}],
)
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.5), (0.8, 1.0, 1.0)])
def test_exact_transforms_move_phi_to_the_map_of_the_moved_labels(which, spacing):
    labels = np.zeros((16, 16, 16), np.int64)
    labels[3:8, 4:10, 2:6] = 1
    labels[10:12, 2:4, 9:14] = 2
    dist = class_distance_maps(labels, 3, spacing=spacing)
    image = labels[None].astype(np.float32)
    config = dataclasses.replace(NONE, **which)
    changed = 0
    for seed in range(8):
        out = A.exact_transform(
            A.Sample(image, labels, dist), spacing, config, np.random.default_rng(seed)
        )
        ref = class_distance_maps(np.ascontiguousarray(out.labels), 3, spacing=spacing)
        assert_same_map(out.dist, ref)
        assert np.array_equal(out.image[0], out.labels.astype(np.float32))
        changed += not np.array_equal(out.labels, labels)
    assert changed > 0


def test_permutations_and_rotations_use_only_axes_of_equal_spacing():
    labels = np.zeros((8, 8, 8), np.int64)
    labels[1:3, 2:7, 4:5] = 1
    dist = class_distance_maps(labels, 2, spacing=(1.0, 1.0, 3.0))
    config = dataclasses.replace(NONE, permute=1.0, rot90=1.0)
    for seed in range(10):
        out = A.exact_transform(
            A.Sample(labels[None].astype(np.float32), labels, dist),
            (1.0, 1.0, 3.0),
            config,
            np.random.default_rng(seed),
        )
        # axis 2 (3 mm) is never exchanged with the others: its profile is kept
        assert sorted(out.labels.sum(axis=(0, 1)).tolist()) == sorted(
            labels.sum(axis=(0, 1)).tolist()
        )


def test_intensity_transforms_change_the_image_only_and_repeat_per_seed():
    image = np.random.default_rng(0).random((2, 10, 10, 6)).astype(np.float32)
    config = dataclasses.replace(NONE, gamma=1, contrast=1, brightness=1, noise=1, blur=1)
    a = A.intensity_transform(image, config, np.random.default_rng(3))
    b = A.intensity_transform(image, config, np.random.default_rng(3))
    c = A.intensity_transform(image, config, np.random.default_rng(4))
    assert a.dtype == np.float32 and a.shape == image.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, image)


@pytest.mark.parametrize("margin_mm", [0.0, 4.0, 40.0])
def test_warped_phi_equals_the_map_recomputed_on_the_whole_warped_labels(margin_mm):
    image, labels = _volume()
    spacing = (1.0, 1.2, 2.0)
    config = dataclasses.replace(NONE, warp=1.0, margin_mm=margin_mm, rotate_deg=25)
    stats: dict = {}
    patch_size = (16, 16, 8)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        if seed % 2:  # near the lesion (certified from the context when the margin is wide)
            start = (6, 24, 3)
        else:
            start = tuple(
                int(rng.integers(0, n - p + 1))
                for n, p in zip(labels.shape, patch_size, strict=True)
            )
        patch = tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
        warp = A.draw_warp(labels.shape, spacing, patch, config, rng)
        out = A.warped_sample(image, labels, spacing, patch, warp, 3, stats, phi="context")
        whole = A.warp_labels(labels, warp, tuple(slice(0, n) for n in labels.shape))
        ref = class_distance_maps(whole, 3, spacing=spacing)[(slice(None), *patch)]
        assert np.array_equal(out.labels, whole[patch])
        assert np.array_equal(out.dist, ref), seed
        new = A.warped_sample(image, labels, spacing, patch, warp, 3)  # the default path
        assert np.array_equal(new.labels, out.labels) and np.array_equal(new.image, out.image)
        np.testing.assert_allclose(new.dist, ref, rtol=0, atol=1e-4)
        assert out.image.shape == (2, *patch_size) and out.image.dtype == np.float32
    assert stats["samples"] == 6
    if margin_mm == 0.0:
        assert stats["grown"] >= 6  # nothing is certified from an empty margin: it grows
    if margin_mm == 40.0:
        assert "grown" not in stats and stats["full"] == 6  # the context is the whole volume


def test_a_patch_on_a_lesion_is_certified_from_its_context():
    labels = np.zeros((60, 64, 30), np.int64)
    labels[25:34, 25:36, 12:18] = 1
    labels[28:30, 28:30, 14] = 0
    image = labels[None].astype(np.float32)
    spacing = (1.0, 1.2, 2.0)
    config = dataclasses.replace(NONE, warp=1.0, margin_mm=12.0)
    patch = (slice(22, 38), slice(22, 38), slice(11, 19))
    stats: dict = {}
    for seed in range(4):
        warp = A.draw_warp(labels.shape, spacing, patch, config, np.random.default_rng(seed))
        out = A.warped_sample(image, labels, spacing, patch, warp, 2, stats, phi="context")
        whole = A.warp_labels(labels, warp, tuple(slice(0, n) for n in labels.shape))
        ref = class_distance_maps(whole, 2, spacing=spacing)[(slice(None), *patch)]
        assert np.array_equal(out.dist, ref)
    assert "full" not in stats and stats["samples"] == 4  # never the whole volume


def test_identity_warp_reproduces_the_patch():
    image, labels = _volume()
    patch = (slice(5, 21), slice(20, 36), slice(2, 10))
    warp = A.Warp(np.array([13.0, 27.5, 5.5]), np.eye(3), patch, None)
    out = A.warped_sample(image, labels, (1, 1, 1), patch, warp, 3)
    assert np.array_equal(out.labels, labels[patch])
    np.testing.assert_allclose(out.image, image[(slice(None), *patch)], atol=1e-6)
    whole = class_distance_maps(labels, 3, spacing=(1, 1, 1))
    assert np.array_equal(out.dist, whole[(slice(None), *patch)])


def test_full_augmentation_2d_keeps_phi_exact():
    labels = np.zeros((32, 32), np.int64)
    labels[10:18, 12:20] = 1
    image = labels[None].astype(np.float32)
    spacing = (0.9, 0.9)
    config = A.AugmentConfig(warp=1.0)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        whole = (slice(0, 32), slice(0, 32))
        warp = A.draw_warp(labels.shape, spacing, whole, config, rng)
        sample = A.warped_sample(image, labels, spacing, whole, warp, 2)
        out = A.augment_sample(sample, spacing, config, rng)
        ref = class_distance_maps(out.labels, 2, spacing=spacing)
        assert_same_map(out.dist, ref)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="flip"):
        A.AugmentConfig(flip=1.5)
    for name in ("noise", "blur"):  # probabilities too, as the docstring says
        with pytest.raises(ValueError, match=name):
            A.AugmentConfig(**{name: 1.5})
