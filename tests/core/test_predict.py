"""Inference: geometry of the output, preprocessing from the checkpoint, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_boundary_seg.core.checkpoint import (
    CHECKPOINT_FORMAT,
    checkpoint_modalities,
    load_checkpoint,
    save_checkpoint,
)
from napari_boundary_seg.core.data import PreprocessConfig
from napari_boundary_seg.core.predict import iter_predict_volume, modality_order, predict_volume
from napari_boundary_seg.core.progress import Progress, run_to_end
from napari_boundary_seg.core.train import TrainConfig
from napari_boundary_seg.core.unet import UNet


class Threshold(nn.Module):
    """Logits ``(0, 20 * (mean over channels - 0.5))``: class 1 where the scaled
    intensity is above 0.5. Tracks the slice sizes it sees."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dummy = nn.Parameter(torch.zeros(()))
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape))
        fg = 20.0 * (x.mean(dim=1, keepdim=True) - 0.5) + self.dummy
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def blocky(shape, seed=0):
    """Values in {0, 1} in blocks of 4 voxels, so that resizing keeps them."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 2, size=tuple(-(-s // 4) for s in shape))
    for axis in range(len(shape)):
        coarse = np.repeat(coarse, 4, axis=axis)
    return coarse[tuple(slice(0, s) for s in shape)].astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_3d_geometry_and_labels_without_resize(axis):
    volume = blocky((12, 16, 8)) * 100.0 + 7.0  # raw intensities, scaled to [0, 1] inside
    model = Threshold()
    prep = PreprocessConfig(slice_size=None, axis=axis)
    probs, labels = predict_volume(model, volume, (1.0, 1.0, 2.0), preprocess=prep, batch_size=5)
    assert probs.shape == (2, 12, 16, 8) and probs.dtype == np.float32
    assert labels.shape == (12, 16, 8) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, (volume > 50).astype(np.int64))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    # the network saw slices across the chosen axis, in batches of 5
    slice_shape = tuple(s for k, s in enumerate((12, 16, 8)) if k != axis)
    assert model.sizes[0] == (5, 1, *slice_shape)
    assert sum(s[0] for s in model.sizes) == (12, 16, 8)[axis]


@pytest.mark.parametrize("axis", [0, 2])
def test_resize_to_training_size_and_back(axis):
    volume = blocky((24, 20, 8), seed=1)
    model = Threshold()
    probs, labels = predict_volume(
        model, volume, preprocess=PreprocessConfig(slice_size=32, axis=axis)
    )
    assert model.sizes[0][-2:] == (32, 32)
    assert probs.shape == (2, 24, 20, 8) and labels.shape == volume.shape
    assert np.mean(labels == volume.astype(np.int64)) > 0.95


def test_2d_and_multichannel_inputs():
    image = blocky((16, 12))
    probs, labels = predict_volume(
        Threshold(), image, (1.0, 1.0), preprocess=PreprocessConfig(slice_size=None)
    )
    assert probs.shape == (2, 16, 12)
    np.testing.assert_array_equal(labels, image.astype(np.int64))
    two = np.stack([image, image])  # (M=2, H, W): spacing has 2 values
    _, labels2 = predict_volume(
        Threshold(2), two, (1.0, 1.0), preprocess=PreprocessConfig(slice_size=None)
    )
    np.testing.assert_array_equal(labels2, labels)
    with pytest.raises(ValueError, match=r"\(2, 16, 12\) has 2 channel\(s\) but the model takes 3"):
        predict_volume(Threshold(3), two, (1.0, 1.0))


def _checkpoint(tmp_path, slice_size=16, axis=0):
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_channels=4)
    # the paper's min-max scaling: the hand computations below use it
    config = TrainConfig(
        slice_size=slice_size,
        axis=axis,
        depth=2,
        base_channels=4,
        normalize="minmax",
        crop_to_head=False,
    )
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
    return model, path


def test_checkpoint_preprocessing_is_used_and_iter_matches(tmp_path):
    model, path = _checkpoint(tmp_path, slice_size=16, axis=0)
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training and ckpt["config"]["slice_size"] == 16
    volume = np.random.default_rng(0).random((3, 10, 12)).astype(np.float32)
    events = []
    gen = iter_predict_volume(str(path), volume, (2.0, 1.0, 1.0), batch_size=2)
    probs, labels = run_to_end(gen, events.append)
    assert all(isinstance(e, Progress) for e in events)
    assert (events[0].done, events[-1].done, events[-1].total) == (0, 2, 2)
    again, _ = predict_volume((loaded, ckpt), volume, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(probs, again, atol=1e-6)  # batch 2 vs 8: rounding only
    # by hand: scale to [0, 1], slice along axis 0, resize to 16x16, UNet, back to 10x12
    scaled = (volume - volume.min()) / (volume.max() - volume.min())
    x = torch.nn.functional.interpolate(
        torch.from_numpy(scaled)[:, None], size=(16, 16), mode="bilinear", antialias=True
    )
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    p = torch.nn.functional.interpolate(p, size=(10, 12), mode="bilinear").numpy()
    np.testing.assert_allclose(probs, np.moveaxis(p, 0, 1), atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_model_mode_and_device_are_restored():
    model = UNet(1, 2, depth=2, base_channels=4).train()
    predict_volume(model, np.zeros((8, 8, 2), np.float32), (1.0, 1.0, 1.0), slice_size=8)
    assert model.training


def test_the_caller_is_not_left_in_inference_mode_between_progress_events():
    """A generator paused at a yield must not leave its caller's thread in inference mode
    (a training step run meanwhile would then fail on inference tensors)."""
    gen = iter_predict_volume(Threshold(), blocky((8, 8, 6)), (1.0, 1.0, 1.0), slice_size=8)
    seen = []
    for event in gen:
        seen.append(torch.is_inference_mode_enabled())
        assert isinstance(event, Progress)
    assert len(seen) >= 2 and not any(seen)


def test_bad_input_leaves_the_model_where_it_was():
    model = UNet(1, 2, depth=2, base_channels=4).train()
    with pytest.raises(ValueError):
        predict_volume(model, np.zeros((3, 8, 8, 2), np.float32), (1.0, 1.0, 1.0), slice_size=8)
    assert model.training


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt.pt is not a readable checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not a napari-boundary-seg checkpoint"):
        load_checkpoint(foreign)
    _, path = _checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["base_channels"] = 8
    mismatch = tmp_path / "mismatch.pt"
    torch.save(ckpt, mismatch)
    with pytest.raises(ValueError, match="mismatch.pt: weights do not match"):
        load_checkpoint(mismatch)
    with pytest.raises(ValueError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_modality_order_only_for_the_same_names_in_another_order():
    assert modality_order(["FLAIR", "T1"], ["T1", "FLAIR"]) == [1, 0]
    assert modality_order(["a", "b", "c"], ["c", "a", "b"]) == [1, 2, 0]
    assert modality_order(["FLAIR", "T1"], ["FLAIR", "T1"]) is None  # already right
    assert modality_order(["FLAIR", "T1"], ["flair", "t1"]) is None  # cannot tell
    assert modality_order(["FLAIR", "T1"], ["T1"]) is None  # channel count: checked elsewhere
    assert modality_order([], ["T1", "FLAIR"]) is None  # names unknown
    assert modality_order(["x", "x"], ["x", "x"]) is None


def test_checkpoint_modalities_reads_the_names_cheaply(tmp_path):
    model = UNet(2, 2, depth=2, base_channels=4)
    path = tmp_path / "named.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.hparams,
            "model_state": model.state_dict(),
            "config": TrainConfig().to_dict(),
            "modalities": ["FLAIR", "T1"],
        },
    )
    assert checkpoint_modalities(path) == ["FLAIR", "T1"]
    _, unnamed = _checkpoint(tmp_path)
    assert checkpoint_modalities(unnamed) == []
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert checkpoint_modalities(broken) == []
    assert checkpoint_modalities(tmp_path / "missing.pt") == []


# ---------------------------------------------------------------------------
# 3D: sliding window, dispatch on the checkpoint's mode


class Pointwise(nn.Module):
    """A 1x1x1 convolution: translation-equivariant, so every window agrees."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.spatial_dims = 3
        torch.manual_seed(0)
        self.conv = nn.Conv3d(in_channels, 3, 1)
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(x.shape))
        return self.conv(x)


def _unet3d():
    torch.manual_seed(0)
    return UNet(1, 2, depth=2, base_channels=2, spatial_dims=3, strides=((1, 2, 2),)).eval()


def _scaled(volume):
    return (volume - volume.min()) / (volume.max() - volume.min())


def _full_pass(model, volume):
    with torch.no_grad():
        x = torch.from_numpy(_scaled(volume))[None, None]
        return torch.softmax(model(x), dim=1)[0].numpy()


def test_one_window_covering_the_volume_is_the_full_pass():
    volume = np.random.default_rng(0).random((5, 11, 9)).astype(np.float32)
    model = _unet3d()
    probs, labels = predict_volume(model, volume, (3.0, 1.0, 1.0), patch_size=(5, 11, 9))
    assert probs.shape == (2, 5, 11, 9) and labels.shape == volume.shape
    np.testing.assert_allclose(probs, _full_pass(model, volume), atol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(0))


@pytest.mark.parametrize(
    ("shape", "patch"), [((9, 14, 11), (4, 6, 5)), ((7, 13, 5), (8, 8, 8)), ((3, 5, 4), (3, 5, 4))]
)
def test_overlapping_windows_of_an_equivariant_net_give_the_full_pass(shape, patch):
    volume = np.random.default_rng(1).random(shape).astype(np.float32)
    model = Pointwise()
    probs, labels = predict_volume(model, volume, patch_size=patch, overlap=0.5, sw_batch_size=3)
    assert probs.shape == (3, *shape) and labels.shape == shape  # odd sizes, padding
    assert model.batches and all(b[0] <= 3 and b[2:] == patch for b in model.batches)
    np.testing.assert_allclose(probs, _full_pass(model, volume), atol=1e-5)


def test_blending_equals_monai_sliding_window_inference():
    from monai.inferers import sliding_window_inference

    volume = np.random.default_rng(2).random((6, 16, 13)).astype(np.float32)
    model = _unet3d()
    probs, _ = predict_volume(model, volume, patch_size=(4, 8, 8), overlap=0.5, sw_batch_size=4)
    with torch.no_grad():
        expected = sliding_window_inference(
            torch.from_numpy(_scaled(volume))[None, None],
            (4, 8, 8),
            4,
            lambda t: torch.softmax(model(t), dim=1),
            overlap=0.5,
            mode="gaussian",
        )[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # the windows disagree (a UNet sees borders), so the weighting mattered
    assert np.abs(probs - _full_pass(model, volume)).max() > 1e-4


def _checkpoint_3d(tmp_path, patch_size=(4, 8, 8)):
    model = _unet3d()
    config = {
        **TrainConfig(slice_size=None, normalize="minmax").to_dict(),
        "dims": 3,
        "patch_size": list(patch_size),
    }
    path = tmp_path / "best3d.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.hparams,
            "model_state": model.state_dict(),
            "config": config,
            "dims": 3,
            "patch_size": tuple(patch_size),
        },
    )
    return model, path


def test_a_3d_checkpoint_predicts_by_windows_without_being_told(tmp_path):
    model, path = _checkpoint_3d(tmp_path)
    volume = np.random.default_rng(3).random((5, 13, 9)).astype(np.float32) * 50 + 3
    events = []
    gen = iter_predict_volume(str(path), volume, (3.0, 1.0, 1.0), sw_batch_size=2, axis=1)
    probs, labels = run_to_end(gen, events.append)
    assert probs.shape == (2, 5, 13, 9) and labels.dtype == np.int64
    # 2 x 3 x 2 windows of (4, 8, 8) with 50 % overlap, 2 per batch: 6 batches
    assert all(isinstance(e, Progress) for e in events)
    assert [(e.done, e.total) for e in events] == [(k, 6) for k in range(7)]
    expected, _ = predict_volume(model, volume, patch_size=(4, 8, 8), sw_batch_size=5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)  # the training patch, scaled
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_3d_errors_and_model_state_restored(tmp_path):
    model = _unet3d().train()
    with pytest.raises(ValueError, match="needs a patch_size"):
        predict_volume(model, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="3 spatial axes"):
        predict_volume(model, np.zeros((8, 8), np.float32), patch_size=(4, 8, 8))
    with pytest.raises(ValueError, match="overlap must be"):
        predict_volume(model, np.zeros((4, 8, 8), np.float32), patch_size=(4, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match="patch_size must be 3 positive"):
        predict_volume(model, np.zeros((4, 8, 8), np.float32), patch_size=(4, 8))
    predict_volume(model, np.ones((4, 8, 8), np.float32), patch_size=(4, 8, 8), device="cpu")
    assert model.training
    _, path = _checkpoint_3d(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["dims"], ckpt["patch_size"] = 2, None
    with pytest.raises(ValueError, match="dims=2 but its model has spatial_dims=3"):
        predict_volume(ckpt, np.zeros((4, 8, 8), np.float32))


def test_cli_predict_follows_a_3d_checkpoint(tmp_path):
    from napari_boundary_seg.cli import main
    from napari_boundary_seg.core.io import read_nifti, write_nifti

    model, path = _checkpoint_3d(tmp_path)
    volume = np.random.default_rng(4).random((7, 10, 9)).astype(np.float32)
    write_nifti(tmp_path / "c1_0000.nii.gz", volume, spacing=(2.0, 1.0, 1.0), as_labels=False)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "c1_0000.nii.gz"), "--checkpoint", str(path),
                 "--out", str(out), "--device", "cpu", "--probabilities"]) == 0  # fmt: skip
    written = read_nifti(out / "c1.nii.gz", as_labels=True)
    probs = read_nifti(out / "c1_probs.nii.gz", as_labels=False).data
    expected, labels = predict_volume(model, volume, patch_size=(4, 8, 8))
    assert written.data.shape == volume.shape
    np.testing.assert_array_equal(written.data, labels)
    np.testing.assert_allclose(np.moveaxis(probs, -1, 0), expected, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_flips_average_the_mirrored_passes_and_are_mirror_equivariant(dims):
    torch.manual_seed(0)
    model = UNet(in_channels=1, num_classes=2, base_channels=4, depth=2, spatial_dims=dims).eval()
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(12, 16, 8) if dims == 2 else (16, 16, 16)).astype(np.float32)
    kwargs = {"spacing": (1.0, 1.0, 1.0), "preprocess": PreprocessConfig(scale=False)}
    if dims == 2:
        kwargs.update(axis=2)
    else:
        kwargs.update(patch_size=(8, 8, 8))
    plain, _ = predict_volume(model, volume, **kwargs)
    flipped, labels = predict_volume(model, volume, flips=True, **kwargs)
    assert flipped.shape == plain.shape and not np.allclose(flipped, plain, atol=1e-4)
    assert np.allclose(flipped.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(labels, flipped.argmax(axis=0))
    # mirroring the input mirrors the averaged output (exactly what single passes lack)
    mirrored, _ = predict_volume(model, volume[:, ::-1].copy(), flips=True, **kwargs)
    assert np.allclose(mirrored[:, :, ::-1], flipped, atol=1e-5)
    if dims == 2:  # 4 passes in-plane: the slicing axis is never mirrored
        counting = Threshold()
        predict_volume(counting, volume, flips=True, batch_size=16, **kwargs)
        assert len(counting.sizes) == 4


def test_an_ensemble_averages_its_models_probabilities():
    from napari_boundary_seg.core.predict import iter_predict_ensemble

    torch.manual_seed(0)
    models = [UNet(in_channels=1, num_classes=2, base_channels=4, depth=2).eval() for _ in range(2)]
    volume = np.random.default_rng(0).normal(size=(12, 16, 3)).astype(np.float32)
    kwargs = {"axis": 2, "preprocess": PreprocessConfig(scale=False)}
    single = [predict_volume(m, volume, (1.0, 1.0, 1.0), **kwargs)[0] for m in models]
    events = []
    run = iter_predict_ensemble(models, volume, (1.0, 1.0, 1.0), **kwargs)
    probs, labels = run_to_end(run, events.append)
    np.testing.assert_allclose(probs, (single[0] + single[1]) / 2, atol=1e-6)
    np.testing.assert_array_equal(labels, probs.argmax(0))
    done = [e.done for e in events if isinstance(e, Progress)]
    assert done == sorted(done) and events[-1].done == events[-1].total  # one bar, counting up
    assert "model 2/2" in events[-1].message
    alone = iter_predict_ensemble(models[:1], volume, (1.0, 1.0, 1.0), **kwargs)
    np.testing.assert_array_equal(run_to_end(alone)[0], single[0])
    three = UNet(in_channels=1, num_classes=3, base_channels=4, depth=2).eval()
    with pytest.raises(ValueError, match="classes"):
        run_to_end(iter_predict_ensemble([models[0], three], volume, (1.0, 1.0, 1.0), **kwargs))
    with pytest.raises(ValueError, match="at least one"):
        run_to_end(iter_predict_ensemble([], volume))
