"""core.modes: the mode is chosen once; each mode's batches, predictor and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.checkpoint import InferenceSettings
from napari_boundary_seg.core.data import PreprocessConfig, SliceDataset, case_from_arrays
from napari_boundary_seg.core.modes import PatchMode, SliceMode, TrainingData, mode_for
from napari_boundary_seg.core.modes.base import PredictOptions
from napari_boundary_seg.core.predict import predict_volume
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import TrainConfig, collate, epoch_order, preprocess_config
from napari_boundary_seg.core.unet import UNet


def _cases(n=2, shape=(12, 16, 8)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        labels = np.zeros(shape, np.int64)
        labels[3 + i : 7 + i, 4:9, 2:5] = 1
        image = (rng.normal(0, 0.2, shape) + labels).astype(np.float32)
        out.append(case_from_arrays([image], labels, (1.0, 1.0, 2.0), case_id=f"c{i}"))
    return out


def test_the_mode_is_chosen_from_a_config_a_checkpoint_or_a_model():
    assert mode_for(TrainConfig()) == SliceMode()
    assert mode_for(TrainConfig(dims=3)) == PatchMode((96, 96, 32))
    assert mode_for({"config": {"slice_size": 256}}) == SliceMode()  # version 1: 2D
    assert mode_for({"dims": 3, "patch_size": [8, 8, 4], "config": {}}) == PatchMode((8, 8, 4))
    assert mode_for(UNet(1, 2, depth=2, base_channels=4)) == SliceMode()
    model3d = UNet(1, 2, depth=2, base_channels=4, spatial_dims=3)
    assert mode_for(model3d, (8, 8, 8)) == PatchMode((8, 8, 8))
    assert mode_for(InferenceSettings(3, (4, 4, 4), PreprocessConfig())).patch_size == (4, 4, 4)
    assert mode_for(SliceMode()) == SliceMode() and mode_for(2).items == "slices"
    with pytest.raises(ValueError, match="dims must be one of"):
        mode_for(4)


def test_what_an_epoch_holds_and_the_depth_check():
    assert mode_for(TrainConfig()).items_text(TrainConfig()) == "slices"
    config = TrainConfig(dims=3, patch_size=(16, 16, 8))
    assert mode_for(config).items_text(config) == "augmented 3D patches of 16×16×8"
    config = config.replace(augment=False)
    assert mode_for(config).items_text(config) == "3D patches of 16×16×8"
    mode_for(config).check_config(config.replace(depth=9), "--depth")  # strides fit the patch
    with pytest.raises(ValueError, match="--depth"):
        SliceMode().check_config(TrainConfig(slice_size=16, depth=6), "--depth")


def test_slice_batches_follow_the_epoch_order():
    config = TrainConfig(slice_size=16, batch_size=3, depth=2, base_channels=4)
    dataset = SliceDataset(_cases(), 2, preprocess_config(config))
    mode = mode_for(config)
    data = mode.training_items(config, TrainingData([], [], dataset, 1, []))
    order = epoch_order(len(dataset), config.seed, 1)
    got = list(mode.batches(data, config, 1, 0, 2))
    assert len(got) == 2
    for k, batch in enumerate(got):
        want = collate(dataset, order[3 * k : 3 * (k + 1)].tolist())
        assert all(torch.equal(a, b) for a, b in zip(batch, want, strict=True))


def test_patch_mode_refuses_a_slice_data_set_and_needs_a_window():
    config = TrainConfig(slice_size=16, depth=2, base_channels=4)
    dataset = SliceDataset(_cases(1), 2, preprocess_config(config))
    SliceMode().check_prebuilt(dataset)
    with pytest.raises(ValueError, match="patch data set"):
        PatchMode((8, 8, 4)).check_prebuilt(dataset)
    settings = InferenceSettings(3, None, PreprocessConfig())
    with pytest.raises(ValueError, match="needs a patch_size"):
        PatchMode().inference_settings(settings, None)
    assert PatchMode().inference_settings(settings, [8, 8, 4]).patch_size == (8, 8, 4)
    assert SliceMode().inference_settings(settings, [8, 8, 4]) is settings


@pytest.mark.parametrize("dims", [2, 3])
def test_each_predictor_is_what_predict_volume_runs(dims):
    torch.manual_seed(0)
    case = _cases(1)[0]
    model = UNet(1, 2, depth=2, base_channels=4, spatial_dims=dims).eval()
    prep = PreprocessConfig(slice_size=None)
    patch = (8, 8, 4) if dims == 3 else None
    mode = mode_for(model, patch)
    settings = mode.inference_settings(InferenceSettings(dims, None, prep), patch)
    probs, labels = run_to_end(
        mode.iter_predict(model, case.images, case.spacing, settings, PredictOptions())
    )
    want_probs, want_labels = predict_volume(
        model, case.images, case.spacing, preprocess=prep, patch_size=patch
    )
    assert probs.shape == (2, *case.labels.shape)
    np.testing.assert_array_equal(probs, want_probs)
    np.testing.assert_array_equal(labels, want_labels)


def test_an_epoch_is_every_slice_once_or_a_fixed_number_of_3d_steps():
    two = TrainConfig(batch_size=4, steps_per_epoch=3)  # 2D ignores steps_per_epoch
    assert SliceMode().epoch_size(two, 10) == (3, 10)
    assert SliceMode().epoch_size(two.replace(max_steps_per_epoch=2), 10) == (2, 10)
    assert SliceMode().epoch_size(two, 10, world_size=2) == (2, 10)  # 5 slices a process
    three = TrainConfig(dims=3, patch_size=(16, 16, 8), batch_size=4, steps_per_epoch=3)
    mode = mode_for(three)
    assert mode.epoch_size(three, 6) == (3, 12)  # 3 steps of 4 fresh patches; a tiling is 2
    assert mode.epoch_size(three, 6, world_size=2) == (3, 24)
    assert mode.epoch_size(three.replace(max_steps_per_epoch=2), 6) == (2, 8)
    assert mode.epoch_size(three.replace(steps_per_epoch=None), 6) == (2, 6)  # one tiling
    assert TrainConfig(dims=3).steps_per_epoch == 250
    assert "steps_per_epoch" in SliceMode.ignores and not PatchMode.ignores
