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
from napari_boundary_seg.core.progress import Progress
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
    config = TrainConfig(slice_size=slice_size, axis=axis, depth=2, base_channels=4)
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
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            probs, labels = stop.value
            break
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
