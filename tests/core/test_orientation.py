"""Real scans in any storage order: canonical orientation, slicing plane,
intensity rule, resampling, and predictions back on the native grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from napari_boundary_seg.core.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from napari_boundary_seg.core.data import (
    PreprocessConfig,
    case_from_arrays,
    head_mask,
    normalize_volume,
    preprocess_case,
)
from napari_boundary_seg.core.orientation import (
    canonical_orientation,
    native_slice_axis,
    slice_axis,
)
from napari_boundary_seg.core.predict import predict_volume
from napari_boundary_seg.core.train import TrainConfig
from napari_boundary_seg.core.unet import UNet

ORIENTATIONS = [("R", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("I", "L", "A"), ("A", "S", "L")]


def _ras_volume(shape=(14, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    head = np.zeros(shape, np.float32)
    head[2:-2, 2:-2, 2:-2] = 100.0  # a head in air
    image = head + rng.normal(0, 2, shape).astype(np.float32)
    image[6:9, 7:10, 5:7] += 80.0  # a bright lesion
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return image, affine


def _reoriented(data, affine, codes):
    """``data`` stored in ``codes`` order with the affine that keeps every voxel in place."""
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
    img = nib.Nifti1Image(data, affine).as_reoriented(transform)
    return np.asarray(img.dataobj), img.affine


def _oblique(affine, degrees=25.0):
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rot @ affine


@pytest.mark.parametrize("codes", ORIENTATIONS, ids=["".join(c) for c in ORIENTATIONS])
def test_orientation_matches_nibabel_and_round_trips(codes):
    data, affine = _ras_volume()
    stored, stored_affine = _reoriented(data, affine, codes)
    o = canonical_orientation(stored_affine)
    canon = nib.as_closest_canonical(nib.Nifti1Image(stored, stored_affine))
    np.testing.assert_array_equal(o.to_canonical(stored), np.asarray(canon.dataobj))
    np.testing.assert_allclose(o.affine(stored_affine, stored.shape), canon.affine, atol=1e-9)
    np.testing.assert_array_equal(o.from_canonical(o.to_canonical(stored)), stored)
    stacked = np.stack([stored, 2 * stored])  # a leading channel axis
    np.testing.assert_array_equal(o.from_canonical(o.to_canonical(stacked, 1), 1), stacked)


def test_slicing_plane_is_anatomical_and_thick_slices_win():
    assert slice_axis((1.0, 1.0, 1.0)) == 2  # axial
    assert slice_axis((1.0, 1.0, 1.0), "coronal") == 1
    assert slice_axis((1.0, 1.0, 1.0), "sagittal") == 0
    assert slice_axis((0.47, 8.0, 0.47)) == 1  # thick coronal slices: sliced along them
    assert slice_axis((0.83, 0.83, 2.0)) == 2  # 2.4x is not thick
    assert slice_axis((4.4, 0.83, 0.83), "axial") == 2  # asked for: kept
    # a PIR file: the axial (inferior-superior) axis is stored axis 1
    data, affine = _ras_volume()
    stored, stored_affine = _reoriented(data, affine, ("P", "I", "R"))
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(stored_affine))
    assert native_slice_axis(stored_affine, spacing, "axial") == 1
    assert native_slice_axis(stored_affine, spacing, "sagittal") == 2
    with pytest.raises(ValueError, match="slice plane must be one of"):
        slice_axis((1, 1, 1), "oblique")


def test_zscore_within_the_head_ignores_the_air_and_hot_voxels():
    data, _ = _ras_volume()
    mask = head_mask(data)
    assert mask[2:-2, 2:-2, 2:-2].mean() > 0.95 and not mask[0].any()
    z = normalize_volume(data, "zscore")
    inside = z[mask]
    assert abs(inside.mean()) < 0.05 and abs(inside.std() - 1) < 0.05
    hot = data.copy()
    hot[0, 0, 0] = 1e6  # a hot voxel: min-max squeezes the head, the z-score does not
    assert normalize_volume(hot, "minmax")[mask].std() < 1e-3
    # (the top of this tiny head is clipped at its 99.5 % either way: compared below it)
    below = inside < np.percentile(inside, 95)
    np.testing.assert_allclose(
        normalize_volume(hot, "zscore")[mask][below], inside[below], atol=0.05
    )
    # skull-stripped: the background is exactly 0
    stripped = np.where(mask, data, 0).astype(np.float32)
    assert abs(normalize_volume(stripped, "zscore")[mask].mean()) < 0.1
    # min-max stays available
    mm = normalize_volume(data, "minmax")
    assert mm.min() == 0 and mm.max() == 1


def test_slices_are_resampled_to_a_spacing_and_keep_their_aspect():
    data, affine = _ras_volume(shape=(20, 30, 6))
    case = case_from_arrays(data, (data > 150).astype(np.int64), (0.5, 0.5, 3.0), affine)
    prep = preprocess_case(
        case, PreprocessConfig(slice_size=None, axis="auto", canonical=True, slice_spacing=(1, 1))
    )
    assert prep.images.shape == (6, 1, 10, 15)  # 20x30 at 0.5 mm -> 10x15 at 1 mm
    assert prep.spacing == (3.0, 1.0, 1.0) and prep.native_hw == (20, 30)


def _model_checkpoint(tmp_path, in_channels=1):
    torch.manual_seed(0)
    model = UNet(in_channels, 2, depth=2, base_channels=4)
    config = TrainConfig(depth=2, base_channels=4, slice_spacing=(1.0, 1.0))
    path = tmp_path / "best.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.hparams,
            "model_state": model.state_dict(),
            "config": config.to_dict(),
        },
    )
    return path


def test_one_scan_in_five_storage_orders_gives_one_prediction(tmp_path):
    path = _model_checkpoint(tmp_path)
    data, affine = _ras_volume()
    reference = None
    for codes in ORIENTATIONS:
        stored, stored_affine = _reoriented(data, affine, codes)
        spacing = tuple(float(z) for z in nib.affines.voxel_sizes(stored_affine))
        probs, labels = predict_volume(str(path), stored, spacing, affine=stored_affine)
        assert labels.shape == stored.shape and probs.shape[1:] == stored.shape
        # back to RAS: every orientation must give the same voxels
        back = canonical_orientation(stored_affine).to_canonical(probs, lead=1)
        if reference is None:
            reference = back
        else:
            np.testing.assert_array_equal(back, reference)


@pytest.mark.parametrize("kind", ["LPS", "PIR", "oblique", "4d"])
def test_cli_predict_writes_the_native_grid_and_affine(tmp_path, kind):
    from napari_boundary_seg.cli import main
    from napari_boundary_seg.core.io import read_nifti

    path = _model_checkpoint(tmp_path)
    data, affine = _ras_volume()
    codes = {"LPS": ("L", "P", "S"), "PIR": ("P", "I", "R")}.get(kind, ("R", "A", "S"))
    stored, stored_affine = _reoriented(data, affine, codes)
    if kind == "oblique":
        stored_affine = _oblique(stored_affine)
    file_data = stored[..., None] if kind == "4d" else stored  # a trailing axis of length 1
    src = tmp_path / "scan_0000.nii.gz"
    nib.save(nib.Nifti1Image(file_data, stored_affine), src)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--checkpoint", str(path), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    written = nib.load(out / "scan.nii.gz")
    assert written.shape == stored.shape
    np.testing.assert_allclose(written.affine, stored_affine, atol=1e-6)
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(stored_affine))
    _, expected = predict_volume(str(path), stored, spacing, affine=stored_affine)
    np.testing.assert_array_equal(read_nifti(out / "scan.nii.gz", as_labels=True).data, expected)
    # the same anatomy in RAS gives the same labels where the voxels are the same
    if kind != "oblique":
        ras_spacing = tuple(float(z) for z in nib.affines.voxel_sizes(affine))
        _, ras = predict_volume(str(path), data, ras_spacing, affine=affine)
        back = canonical_orientation(stored_affine).to_canonical(expected)
        np.testing.assert_array_equal(back, ras)


def test_old_checkpoints_keep_min_max_and_the_stored_order(tmp_path):
    from napari_boundary_seg.core.checkpoint import load_checkpoint, preprocess_from_checkpoint

    path = _model_checkpoint(tmp_path)
    _, ckpt = load_checkpoint(path)
    for key in ("normalize", "canonical", "slice_spacing"):
        del ckpt["config"][key]
    ckpt["config"]["axis"] = 2
    prep = preprocess_from_checkpoint(ckpt)
    assert (prep.normalize, prep.canonical, prep.slice_spacing, prep.axis) == (
        "minmax",
        False,
        None,
        2,
    )


def test_crop_to_the_head_drops_air_and_pastes_background_back(tmp_path):
    rng = np.random.default_rng(3)
    shape = (40, 36, 30)
    image = rng.normal(0, 2, shape).astype(np.float32)
    image[12:28, 10:26, 8:22] += 100.0  # the head, with air around it
    labels = np.zeros(shape, np.int64)
    labels[18:21, 15:18, 12:14] = 1
    case = case_from_arrays(image, labels, (1.0, 1.0, 1.0))
    config = PreprocessConfig(slice_size=None, axis="axial", canonical=True, normalize="robust")
    full = preprocess_case(case, config)
    cropped = preprocess_case(case, cropped_config(config))
    assert full.images.shape == (30, 1, 40, 36)
    # the head plus 4 voxels: slices 4..25, rows 8..31, columns 6..29
    assert cropped.images.shape == (22, 1, 24, 24)
    assert list(cropped.slice_index) == list(range(4, 26))
    assert cropped.labels.sum() == labels.sum()
    np.testing.assert_array_equal(cropped.images, full.images[4:26, :, 8:32, 6:30])
    # prediction: the full grid back, background outside the crop
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_channels=4)
    probs, pred = predict_volume(model, image, (1.0, 1.0, 1.0), preprocess=cropped_config(config))
    assert probs.shape == (2, *shape)
    assert np.all(probs[0, :8] == 1) and np.all(pred[:, :, :4] == 0)
    # inside the crop but outside the head (its margin of air): background too
    head = np.zeros(shape, bool)
    head[12:28, 10:26, 8:22] = True
    assert np.all(probs[1][~head] == 0) and np.any(probs[1][head] > 0)


def cropped_config(config):
    """``config`` with the crop to the head."""
    return PreprocessConfig(**{**config.__dict__, "crop": True})


def test_robust_scaling_within_the_head_is_the_default_and_ignores_hot_voxels():
    data, _ = _ras_volume()
    mask = head_mask(data)
    r = normalize_volume(data, "robust")
    assert r.min() == 0 and r.max() == 1 and np.all(r[~mask] == 0)
    hot = data.copy()
    hot[0, 0, 0] = 1e6  # min-max squeezes the head; the robust rule does not
    assert normalize_volume(hot, "minmax")[mask].std() < 1e-3
    below = r[mask] < np.percentile(r[mask], 95)
    np.testing.assert_allclose(
        normalize_volume(hot, "robust")[mask][below], r[mask][below], atol=0.02
    )
    stripped = np.where(mask, data, 0).astype(np.float32)  # skull-stripped: the same head
    np.testing.assert_allclose(normalize_volume(stripped, "robust")[mask], r[mask], atol=0.02)
