"""Tests of core/metrics.py: answers known by geometry or counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from napari_boundary_seg.core import metrics as M

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def ball(shape, center, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, center, strict=True)) <= radius**2


def face_dilate(mask, axes=None):
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    if axes is not None:  # dilate along the given axes only
        structure = np.zeros_like(structure)
        centre = (1,) * mask.ndim
        structure[centre] = True
        for ax in axes:
            for off in (0, 2):
                idx = list(centre)
                idx[ax] = off
                structure[tuple(idx)] = True
    return ndimage.binary_dilation(mask, structure)


def brute_force(pred, target, spacing, tol=1.0):
    """Reference figures from explicit point sets and all pairwise distances."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)

    def surface_points(m):
        s = m & ~ndimage.binary_erosion(m, structure, border_value=1)
        return np.argwhere(s) * np.asarray(spacing)

    a, b = surface_points(pred), surface_points(target)
    d = cdist(a, b)
    ab, ba = d.min(axis=1), d.min(axis=0)
    return {
        "hd": max(ab.max(), ba.max()),
        "hd95": max(np.percentile(ab, 95), np.percentile(ba, 95)),
        "assd": (ab.sum() + ba.sum()) / (ab.size + ba.size),
        "surface_dice": (np.sum(ab <= tol) + np.sum(ba <= tol)) / (ab.size + ba.size),
        "dice": 2 * np.sum(pred & target) / (pred.sum() + target.sum()),
    }


def random_blobs(rng, shape, n, radius):
    m = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.integers(0, shape)
        m |= ball(shape, c, radius)
    return m


# --------------------------------------------------------------------------
# surface metrics
# --------------------------------------------------------------------------


@pytest.fixture(params=["edt", "kdtree"])
def method(request, monkeypatch):
    """Force one of the two exact surface-distance paths."""
    ratio = 10**12 if request.param == "edt" else 0
    monkeypatch.setattr(M, "_KDTREE_VOXELS_PER_POINT", ratio)
    return request.param


@pytest.mark.parametrize("d", [1, 3, 5])
@pytest.mark.parametrize("ndim", [2, 3])
def test_offset_balls_hd_equals_offset(ndim, d, method):
    shape = (30,) * ndim
    centre = (12,) * ndim
    a = ball(shape, centre, 6)
    b = ball(shape, (12 + d,) + (12,) * (ndim - 1), 6)
    m = M.surface_metrics(a, b)
    assert m["hd"] == pytest.approx(d)
    assert 0 < m["assd"] < m["hd95"] <= m["hd"]
    assert m["dice"] == pytest.approx(2 * np.sum(a & b) / (a.sum() + b.sum()))
    assert M.hausdorff_distance(a, b) == pytest.approx(d)
    # spacing of the offset axis scales HD exactly
    assert M.hausdorff_distance(a, b, spacing=(2.5,) + (1.0,) * (ndim - 1)) == pytest.approx(
        2.5 * d
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_ball_and_its_face_dilation(ndim, method):
    shape = (21,) * ndim
    s = ball(shape, (10,) * ndim, 5)
    d = face_dilate(s)
    sd = M.surface_distances(d, s)
    np.testing.assert_allclose(sd.pred_to_target, 1.0)  # every ∂D voxel is 1 from ∂S
    assert M.hausdorff_distance(d, s) == pytest.approx(1.0)
    assert M.hausdorff_distance(d, s, percentile=95) == pytest.approx(1.0)
    assert M.average_symmetric_surface_distance(d, s) == pytest.approx(1.0)
    assert M.surface_dice(d, s, tolerance=1.0) == pytest.approx(1.0)
    assert M.surface_dice(d, s, tolerance=0.5) == pytest.approx(0.0)
    # isotropic scaling
    assert M.hausdorff_distance(d, s, spacing=(0.7,) * ndim) == pytest.approx(0.7, rel=1e-6)


def test_anisotropic_spacing_ball_dilation(method):
    s = ball((21, 21, 21), (10, 10, 10), 5)
    d = face_dilate(s)
    # the poles along the coarse axis are 3 mm away from the ball; nothing farther
    assert M.hausdorff_distance(d, s, spacing=(1.0, 1.0, 3.0)) == pytest.approx(3.0)
    # dilation along axis 0 only: every surface displacement is one step of axis 0
    d0 = face_dilate(s, axes=[0])
    assert M.hausdorff_distance(d0, s, spacing=(0.5, 1.0, 3.0)) == pytest.approx(0.5)
    assert M.surface_dice(d0, s, spacing=(0.5, 1.0, 3.0), tolerance=0.5) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 20), (1.0, 1.0)), ((24, 20), (0.6, 2.0)), ((14, 12, 10), (1.0, 0.8, 2.5))],
)
def test_against_brute_force(shape, spacing, method):
    rng = np.random.default_rng(len(shape) + int(10 * spacing[-1]))
    pred = random_blobs(rng, shape, 4, 2.5)  # blobs may touch the image edge
    target = random_blobs(rng, shape, 3, 3.0)
    ref = brute_force(pred, target, spacing, tol=1.5)
    got = M.surface_metrics(pred, target, spacing=spacing, tolerance=1.5)
    for key in M.SURFACE_METRIC_KEYS:
        assert got[key] == pytest.approx(ref[key], rel=1e-5), key


def test_three_distance_backends_agree(monkeypatch):
    rng = np.random.default_rng(1)
    pred = random_blobs(rng, (16, 14, 12), 3, 2.5)
    target = random_blobs(rng, (16, 14, 12), 3, 2.5)
    sp = (1.0, 0.5, 2.0)
    monkeypatch.setattr(M, "_KDTREE_VOXELS_PER_POINT", 0)
    tree = M.surface_distances(pred, target, spacing=sp)
    monkeypatch.setattr(M, "_KDTREE_VOXELS_PER_POINT", 10**12)
    fast = M.surface_distances(pred, target, spacing=sp)
    monkeypatch.setattr(M, "_DISTANCE_BACKEND", "scipy")
    slow = M.surface_distances(pred, target, spacing=sp)
    for other in (fast, slow):
        np.testing.assert_allclose(tree.pred_to_target, other.pred_to_target, rtol=1e-6)
        np.testing.assert_allclose(tree.target_to_pred, other.target_to_pred, rtol=1e-6)
    assert tree.pred_to_target.size == np.count_nonzero(M._surface(pred))


def test_one_and_four_dimensional(method):
    a = np.zeros(20, bool)
    b = np.zeros(20, bool)
    a[3:8] = True  # surface {3, 7}
    b[5:12] = True  # surface {5, 11}
    assert M.hausdorff_distance(a, b, spacing=(2.0,)) == pytest.approx(8.0)  # 7 -> 11
    assert M.dice_score(a, b) == pytest.approx(2 * 3 / 12)
    a4 = np.zeros((6, 6, 6, 6), bool)
    a4[1:4, 1:4, 1:4, 1:4] = True
    b4 = np.roll(a4, 2, axis=3)
    assert M.hausdorff_distance(a4, b4, spacing=(1, 1, 1, 1.5)) == pytest.approx(3.0)


def test_mask_filling_the_image_has_finite_distances(method):
    full = np.ones((8, 8), bool)
    small = np.zeros((8, 8), bool)
    small[3:5, 3:5] = True
    # full's surface falls back to its edge voxels; corner (0, 0) is sqrt(18) from (3, 3)
    assert M.hausdorff_distance(full, small) == pytest.approx(math.hypot(3, 3))
    assert M.hausdorff_distance(full, full) == 0.0
    assert M.dice_score(full, small) == pytest.approx(2 * 4 / 68)


@pytest.mark.parametrize("ndim", [2, 3])
def test_both_empty(ndim):
    z = np.zeros((5,) * ndim, np.uint8)
    m = M.surface_metrics(z, z)
    assert m == {"dice": 1.0, "hd": 0.0, "hd95": 0.0, "assd": 0.0, "surface_dice": 1.0}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("empty_side", ["pred", "target"])
def test_one_empty_is_inf_not_nan(ndim, empty_side):
    z = np.zeros((5,) * ndim, np.uint8)
    f = z.copy()
    f[(2,) * ndim] = 1
    pred, target = (z, f) if empty_side == "pred" else (f, z)
    m = M.surface_metrics(pred, target)
    assert m["dice"] == 0.0 and m["surface_dice"] == 0.0
    for key in ("hd", "hd95", "assd"):
        assert m[key] == math.inf
    # one voxel on both sides: surface == the voxel, all distances 0
    assert M.surface_metrics(f, f) == pytest.approx(
        {"dice": 1.0, "hd": 0.0, "hd95": 0.0, "assd": 0.0, "surface_dice": 1.0}
    )


def test_replace_inf():
    out = M.replace_inf([1.0, math.inf, math.nan], shape=(3, 4), spacing=(2.0, 1.5))
    np.testing.assert_allclose(out, [1.0, math.hypot(6.0, 6.0), math.nan])
    assert M.replace_inf(math.inf, (3, 4, 12)) == pytest.approx(13.0)
    assert M.replace_inf(2.0, (3, 4)) == 2.0
    with pytest.raises(ValueError, match="spacing"):
        M.replace_inf(1.0, (3, 4), spacing=(1.0,))


def test_label_arrays_select_class():
    target = np.zeros((10, 10), np.int16)
    target[1:4, 1:4] = 1  # 9 voxels
    target[6:9, 6:9] = 2
    pred = np.zeros_like(target)
    pred[1:4, 1:3] = 1  # 6 of class 1 inside
    pred[6:9, 6:9] = 1  # class 2 region predicted as class 1
    assert M.dice_score(pred, target, label=1) == pytest.approx(2 * 6 / (15 + 9))
    assert M.dice_score(pred, target, label=2) == 0.0
    assert M.hausdorff_distance(pred, target, label=2) == math.inf
    # a union of classes equals the binary reading of the arrays
    assert M.dice_score(pred, target, label=[1, 2]) == M.dice_score(pred, target)
    assert M.dice_score(pred, target) == pytest.approx(2 * 15 / 33)
    # a float array with integral values counts as labels
    assert M.dice_score(pred.astype(np.float32), target, label=1) == pytest.approx(0.5)


def test_per_slice_metrics(method):
    vol_p = np.zeros((4, 12, 12), bool)
    vol_t = np.zeros((4, 12, 12), bool)
    vol_t[1] = ball((12, 12), (5, 5), 3)
    vol_p[1] = ball((12, 12), (7, 5), 3)  # offset 2 along in-slice axis 0
    vol_p[3, 2:4, 2:4] = True  # false positive slice
    rows = M.per_slice_metrics(vol_p, vol_t, spacing=(5.0, 0.5, 1.0), axis=0)
    assert [r["slice"] for r in rows] == [1, 3]
    assert rows[0]["hd"] == pytest.approx(1.0)  # 2 voxels * 0.5 mm, axis 0 dropped
    assert rows[0]["dice"] == pytest.approx(M.dice_score(vol_p[1], vol_t[1]))
    assert rows[0]["area_target"] == pytest.approx(vol_t[1].sum() * 0.5)
    assert rows[1]["dice"] == 0.0 and rows[1]["hd"] == math.inf
    # slicing along the last axis
    rows2 = M.per_slice_metrics(vol_p, vol_t, axis=-1)
    assert all(set(M.SURFACE_METRIC_KEYS) <= set(r) for r in rows2)
    assert [r["slice"] for r in rows2] == sorted(
        set(np.flatnonzero((vol_p | vol_t).any(axis=(0, 1))))
    )


# --------------------------------------------------------------------------
# volume difference
# --------------------------------------------------------------------------


def test_absolute_volume_difference_anisotropic():
    t = np.zeros((6, 6), bool)
    p = np.zeros((6, 6), bool)
    t[1:3, 1:3] = True  # 4 voxels
    p[2:5, 2:4] = True  # 6 voxels
    assert M.absolute_volume_difference(p, t, spacing=(0.5, 2.0)) == pytest.approx(50.0)
    assert M.absolute_volume_difference(t, p, spacing=(0.5, 2.0)) == pytest.approx(100 * 2 / 6)
    c = M.case_metrics(p, t, spacing=(0.5, 3.0))
    assert c["volume_pred"] == pytest.approx(9.0)
    assert c["volume_target"] == pytest.approx(6.0)
    assert c["avd"] == pytest.approx(50.0)


def test_absolute_volume_difference_empty():
    z = np.zeros((4, 4, 4), bool)
    f = z.copy()
    f[1, 1, 1] = True
    assert M.absolute_volume_difference(z, z) == 0.0
    assert M.absolute_volume_difference(f, z) == math.inf
    assert M.absolute_volume_difference(z, f) == 100.0


# --------------------------------------------------------------------------
# lesion detection
# --------------------------------------------------------------------------


def embed(mask2d, ndim):
    """A 2D pattern as is, or as a 3-slice-thick slab in 3D."""
    if ndim == 2:
        return mask2d
    out = np.zeros((5, *mask2d.shape), bool)
    out[1:4] = mask2d
    return out


@pytest.mark.parametrize("ndim", [2, 3])
def test_three_lesions_one_missed_one_false_positive(ndim):
    t = np.zeros((20, 20), bool)
    p = np.zeros((20, 20), bool)
    t[1:4, 1:4] = True
    t[1:4, 10:13] = True
    t[12:15, 2:5] = True  # missed
    p[2:4, 2:5] = True  # overlaps lesion 1 and spills out
    p[3, 12] = True  # one voxel inside lesion 2
    p[15:18, 14:17] = True  # false positive
    res = M.lesion_detection(embed(p, ndim), embed(t, ndim))
    assert res["n_target"] == 3 and res["n_detected"] == 2
    assert res["n_pred"] == 3 and res["n_pred_matched"] == 2 and res["n_false_positive"] == 1
    assert res["lesion_recall"] == pytest.approx(2 / 3)
    assert res["lesion_precision"] == pytest.approx(2 / 3)
    assert res["lesion_f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_lesion_split_in_two_predicted_pieces(ndim):
    t = np.zeros((10, 10), bool)
    p = np.zeros((10, 10), bool)
    t[4:6, 1:9] = True
    p[4:6, 1:3] = True
    p[4:6, 6:9] = True
    res = M.lesion_detection(embed(p, ndim), embed(t, ndim))
    assert (res["n_target"], res["n_detected"]) == (1, 1)
    assert (res["n_pred"], res["n_pred_matched"], res["n_false_positive"]) == (2, 2, 0)
    assert res["lesion_recall"] == res["lesion_precision"] == res["lesion_f1"] == 1.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_diagonally_touching_lesions_face_vs_full(ndim):
    t = np.zeros((8, 8), bool)
    t[1:3, 1:3] = True
    t[3:5, 3:5] = True  # touches the first only at a corner
    p = np.zeros((8, 8), bool)
    p[1, 1] = True
    face = M.lesion_detection(embed(p, ndim), embed(t, ndim), connectivity="face")
    full = M.lesion_detection(embed(p, ndim), embed(t, ndim), connectivity="full")
    assert (face["n_target"], face["n_detected"], face["lesion_recall"]) == (2, 1, 0.5)
    assert (full["n_target"], full["n_detected"], full["lesion_recall"]) == (1, 1, 1.0)


def test_lesion_detection_empty_cases():
    z = np.zeros((6, 6, 6), bool)
    f = z.copy()
    f[2:4, 2:4, 2:4] = True
    both = M.lesion_detection(z, z)
    assert (both["lesion_recall"], both["lesion_precision"], both["lesion_f1"]) == (1, 1, 1)
    assert both["n_target"] == both["n_pred"] == 0
    no_target = M.lesion_detection(f, z)
    assert (no_target["lesion_recall"], no_target["lesion_precision"]) == (1.0, 0.0)
    assert no_target["lesion_f1"] == 0.0 and no_target["n_false_positive"] == 1
    no_pred = M.lesion_detection(z, f)
    assert (no_pred["lesion_recall"], no_pred["lesion_precision"]) == (0.0, 1.0)
    assert no_pred["lesion_f1"] == 0.0


def test_components_scipy_fallback_matches_cc3d(monkeypatch):
    rng = np.random.default_rng(3)
    t = rng.random((12, 14, 10)) < 0.08
    p = rng.random((12, 14, 10)) < 0.08
    for conn in ("face", "full"):
        fast = M.lesion_detection(p, t, connectivity=conn)
        monkeypatch.setattr(M, "_cc3d", None)
        slow = M.lesion_detection(p, t, connectivity=conn)
        monkeypatch.undo()
        assert fast == slow
        assert (
            fast["n_target"]
            == ndimage.label(t, ndimage.generate_binary_structure(3, 1 if conn == "face" else 3))[1]
        )


def test_lesion_detection_by_size():
    t = np.zeros((12, 12, 12), bool)
    p = np.zeros((12, 12, 12), bool)
    t[1, 1, 1] = True  # 1 voxel, missed
    t[4:6, 4:6, 1:3] = True  # 8 voxels, detected
    t[8:11, 8:11, 7:10] = True  # 27 voxels, detected
    p[4, 4, 1] = True
    p[9:12, 9:12, 9:12] = True  # 27 voxels, touches the big lesion
    p[1:3, 8:11, 8] = True  # 6 voxels, false positive
    vox = M.lesion_detection_by_size(p, t, unit="voxels")
    assert vox["small"]["n_target"] == 2 and vox["small"]["n_detected"] == 1
    assert vox["small"]["lesion_recall"] == 0.5
    assert vox["medium"]["n_target"] == 1 and vox["medium"]["lesion_recall"] == 1.0
    assert vox["large"]["n_target"] == 0 and math.isnan(vox["large"]["lesion_recall"])
    # predicted components by size: 1 (matched), 6 (false positive) small; 27 medium
    assert (vox["small"]["n_pred"], vox["small"]["n_pred_matched"]) == (2, 1)
    assert vox["small"]["lesion_precision"] == 0.5
    assert vox["medium"]["lesion_precision"] == 1.0
    # in mm³ with a 2 mm³ voxel the 8-voxel lesion (16 mm³) leaves the small bin
    mm = M.lesion_detection_by_size(p, t, spacing=(1.0, 1.0, 2.0))
    assert (mm["small"]["n_target"], mm["small"]["lesion_recall"]) == (1, 0.0)
    assert (mm["medium"]["n_target"], mm["medium"]["n_detected"]) == (2, 2)
    # caller's bins, as tuples
    custom = M.lesion_detection_by_size(p, t, bins=[("tiny", 0, 1), ("rest", 1, math.inf)])
    assert custom["tiny"]["lesion_recall"] == 0.0 and custom["rest"]["lesion_recall"] == 1.0


# --------------------------------------------------------------------------
# case_metrics and validation
# --------------------------------------------------------------------------


def test_case_metrics_agrees_with_single_functions():
    rng = np.random.default_rng(7)
    t = random_blobs(rng, (16, 18, 14), 5, 1.8)
    p = random_blobs(rng, (16, 18, 14), 5, 1.8) | (t & (rng.random(t.shape) < 0.5))
    sp = (1.0, 0.8, 2.0)
    c = M.case_metrics(p, t, spacing=sp)
    assert tuple(c) == M.CASE_METRIC_COLUMNS
    assert all(isinstance(v, int | float) for v in c.values())
    s = M.surface_metrics(p, t, spacing=sp)
    for key in M.SURFACE_METRIC_KEYS:
        assert c[key] == s[key]
    assert c["avd"] == M.absolute_volume_difference(p, t, spacing=sp)
    det = M.lesion_detection(p, t)
    assert {k: c[k] for k in det} == det
    by = M.lesion_detection_by_size(p, t, spacing=sp)
    assert c["lesion_recall_small"] == by["small"]["lesion_recall"] or (
        math.isnan(c["lesion_recall_small"]) and math.isnan(by["small"]["lesion_recall"])
    )
    assert c["n_target_medium"] == by["medium"]["n_target"]
    bins = [M.SizeBin("a", 0, 5), M.SizeBin("b", 5, math.inf)]
    c2 = M.case_metrics(p, t, spacing=sp, size_bins=bins, connectivity="full")
    assert tuple(c2) == M.case_metric_columns(bins)
    assert "lesion_recall_a" in c2 and "lesion_recall_small" not in c2
    # voxel bins give what the same bins in mm³ (edges times the voxel volume) give
    voxel_bins = [("tiny", 0, 4), ("mid", 4, 20), ("big", 20, math.inf)]
    v = M.case_metrics(p, t, spacing=sp, size_bins=voxel_bins, unit="voxels")
    mm3 = [(n, lo * math.prod(sp), hi * math.prod(sp)) for n, lo, hi in voxel_bins]
    np.testing.assert_equal(v, M.case_metrics(p, t, spacing=sp, size_bins=mm3))
    assert tuple(v) == M.case_metric_columns(voxel_bins) and v["n_target_big"] > 0


def test_case_metrics_empty_target():
    z = np.zeros((6, 6), bool)
    f = z.copy()
    f[2, 2] = True
    c = M.case_metrics(f, z)
    assert c["dice"] == 0.0 and c["hd"] == math.inf and c["avd"] == math.inf
    assert c["lesion_recall"] == 1.0 and c["lesion_precision"] == 0.0
    c0 = M.case_metrics(z, z)
    assert c0["dice"] == 1.0 and c0["hd95"] == 0.0 and c0["avd"] == 0.0 and c0["lesion_f1"] == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.dice_score(np.zeros((3, 4)), np.zeros((4, 3))), r"\(3, 4\) vs \(4, 3\)"),
        (lambda: M.surface_metrics(np.zeros((3, 4)), np.zeros((3, 4)), spacing=(1.0,)), "2 axes"),
        (lambda: M.hausdorff_distance(np.zeros((3, 4)), np.zeros((3, 4)), (1.0, -2.0)), "-2.0"),
        (lambda: M.hausdorff_distance(np.zeros((3, 4)), np.zeros((3, 4)), (1.0, 0.0)), "0.0"),
        (lambda: M.case_metrics(np.zeros((3, 4)), np.zeros((3, 4)), connectivity="x"), "'x'"),
        (lambda: M.hausdorff_distance(np.ones((3, 4)), np.ones((3, 4)), percentile=101), "101"),
        (lambda: M.surface_dice(np.ones((3, 4)), np.ones((3, 4)), tolerance=-1), "-1"),
        (lambda: M.dice_score(np.full((3, 4), 0.5), np.zeros((3, 4))), "threshold"),
        (lambda: M.dice_score(np.full((3, 4), np.nan), np.zeros((3, 4))), "NaN"),
        (lambda: M.lesion_detection_by_size(np.zeros(4), np.zeros(4), unit="cm3"), "cm3"),
        (
            lambda: M.lesion_detection_by_size(np.zeros(4), np.zeros(4), bins=[("A b", 0, 1)]),
            "A b",
        ),
        (lambda: M.case_metrics(np.zeros(4), np.zeros(4), size_bins=[("a", 5, 1)]), r"\(5"),
        (lambda: M.case_metrics(np.zeros(4), np.zeros(4), unit="cm3"), "cm3"),
        (lambda: M.per_slice_metrics(np.zeros(4), np.zeros(4)), r"\(4,\)"),
        (lambda: M.per_slice_metrics(np.zeros((2, 2)), np.zeros((2, 2)), axis=2), "axis 2"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_error_for_strings():
    with pytest.raises(TypeError, match="dtype"):
        M.dice_score(np.array(["a", "b"]), np.array(["a", "b"]))
