"""The quick-start preset, the slice split of one volume and the live-preview slice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_boundary_seg.core.presets import (
    QUICK_START,
    quick_start_config,
    split_slices,
    validation_block,
)


def test_quick_start_config_values_and_overrides():
    config = quick_start_config()
    # the measured preset (README, "Quick start"): GDL, narrow UNet, native slices;
    # the schedule it keeps for gdl+bl
    assert config.loss.value == "gdl"
    assert (config.epochs, config.lr, config.batch_size) == (15, 2e-3, 8)
    assert (config.depth, config.base_channels, config.slice_size) == (4, 16, None)
    assert config.schedule == {"kind": "paper", "start": 1.0, "step": 0.02, "floor": 0.5}
    assert not config.skip_empty_slices and config.max_steps_per_epoch is None
    assert config.val_fraction == 0.2
    changed = quick_start_config(epochs=3, device="cpu", out_dir="x")
    assert (changed.epochs, changed.device, changed.out_dir) == (3, "cpu", "x")
    assert changed.base_channels == QUICK_START["base_channels"]
    with pytest.raises(ValueError, match="epochs"):
        quick_start_config(epochs=-1)
    # the paper's preset keeps the paper's objective; the loss's help cites the map
    from napari_boundary_seg.core.config import BOUNDARY_LOSS_EVIDENCE, TrainConfig
    from napari_boundary_seg.core.presets import preset_config
    from napari_boundary_seg.core.settings import settings

    assert preset_config("paper").loss.value == "gdl+bl" and TrainConfig().loss.value == "gdl"
    help_text = next(s.help for s in settings(TrainConfig) if s.name == "loss")
    assert BOUNDARY_LOSS_EVIDENCE in help_text and "regimes_delta.png" in help_text


def test_validation_block_by_hand():
    labels = np.zeros((6, 2, 2), dtype=np.int32)
    labels[1, 0, 0] = 1  # per-slice foreground: [0, 1, 0, 3, 2, 0]
    labels[3] = 1
    labels[3, 1, 1] = 0
    labels[4, 0] = 1
    # k = round(0.34 * 6) = 2; windows [1, 1, 3, 5, 2]: the best (5 of 6 voxels) would
    # leave less than half for training; the next (3 of 6) leaves half
    assert validation_block(labels, 0, 0.34) == slice(2, 4)
    assert validation_block(labels, 1, 0.5) is None  # 2 slices: nothing to split
    only = np.zeros((6, 2, 2), dtype=np.int32)
    only[2, 0, 0] = 1  # all the foreground in one slice: nothing left to train on
    assert validation_block(only, 0, 0.2) is None
    assert validation_block(labels[0], 0, 0.5) is None  # 2D
    # nearly all the foreground in one block: the block leaving half is chosen
    packed = np.zeros((10, 4, 4), dtype=np.int32)
    packed[4:6] = 1  # 32 voxels in slices 4-5
    packed[0, 0, 0] = 1  # 1 voxel elsewhere
    assert validation_block(packed, 0, 0.2) == slice(3, 5)  # 16 of 33 voxels held out
    assert validation_block(labels, 0, 0.0) is None
    # the block with the most foreground (6 of 8 voxels) would leave a quarter to
    # train on; the block chosen holds at most half
    half = np.zeros((8, 2, 2), dtype=np.int32)
    half[0, 0, 0] = half[5, 0, 0] = 1  # per-slice foreground: [1, 0, 3, 3, 0, 1, 0, 0]
    half[2:4, 0, :] = 1
    half[2:4, 1, 0] = 1
    assert validation_block(half, 0, 0.25) == slice(1, 3)  # 3 of 8 voxels held out


def test_split_slices_holds_out_the_block():
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 5, 10), dtype=np.int64)
    labels[1:3, 1:3, 2:8] = 1
    images = rng.random((2, 4, 5, 10)).astype(np.float32)
    train, val = split_slices(images, labels, (1.0, 1.0, 2.0), 2, 0.2, case_id="s")
    # axis 2, k = 2, blocks of 2 slices with 4 foreground voxels each: the first, 2-3
    assert [c.case_id for c in val] == ["s-val-2-4"]
    assert [c.case_id for c in train] == ["s-0-2", "s-4-10"]
    assert val[0].images.shape == (2, 4, 5, 2) and val[0].spacing == (1.0, 1.0, 2.0)
    np.testing.assert_array_equal(val[0].images, images[..., 2:4])
    np.testing.assert_array_equal(train[1].labels, labels[..., 4:])
    whole, none = split_slices(images, labels, (1.0, 1.0, 2.0), 2, 0.0)
    assert len(whole) == 1 and none == [] and whole[0].images.shape == images.shape


def test_quick_start_trains_on_tiny_data_and_previews_a_slice():
    from napari_boundary_seg.core.data import PreprocessConfig
    from napari_boundary_seg.core.preview import SlicePreview
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.train import train

    rng = np.random.default_rng(1)
    labels = np.zeros((16, 16, 12), dtype=np.int64)
    labels[5:11, 5:11, 2:10] = 1
    images = (rng.normal(0.3, 0.05, (1, 16, 16, 12)) + 0.5 * labels).astype(np.float32)
    config = quick_start_config(epochs=1, depth=2, base_channels=4, device="cpu")
    train_cases, val_cases = split_slices(images, labels, (1.0, 1.0, 1.0), 2, config.val_fraction)
    done = run_to_end(train(config, train_cases, val_cases=val_cases))
    assert not done.stopped and len(done.history) == 1
    assert np.isfinite(done.history[0]["val_dice"])
    preview = SlicePreview(images, (1.0, 1.0, 1.0), PreprocessConfig(slice_size=None))
    plane = preview.predict(done.model, 2, 5)
    assert plane.shape == (16, 16) and plane.dtype == np.int64
    assert preview.predict(done.model, 0, 3).shape == (16, 12)
    # the whole volume is scaled once: a slice is scaled as in the full prediction
    assert preview.images.max() == pytest.approx(1.0) and preview.images.min() == 0.0
    with pytest.raises(ValueError, match="outside"):
        preview.predict(done.model, 2, 12)
