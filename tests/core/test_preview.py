"""The live preview of a 3D model: the slab of the covering windows gives exactly
the whole volume's sliding-window prediction of that slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.data import PreprocessConfig
from napari_boundary_seg.core.predict import predict_volume
from napari_boundary_seg.core.preview import SlicePreview, covering_slab
from napari_boundary_seg.core.unet import UNet


class _Centred(torch.nn.Module):
    """An untrained UNet whose class-1 logit is shifted so both classes occur."""

    spatial_dims = 3
    in_channels = 1

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out + torch.tensor([0.0, 0.41]).view(1, 2, 1, 1, 1)


def test_covering_slab_by_hand():
    # windows of 8 stepping 4 on 20 voxels: starts 0, 4, 8, 12
    assert covering_slab(20, 8, 0) == slice(0, 8)
    assert covering_slab(20, 8, 5) == slice(0, 12)  # windows at 0 and 4
    assert covering_slab(20, 8, 19) == slice(12, 20)
    # 22 voxels: starts 0, 4, 8, 12, 14 (the last flush with the edge)
    assert covering_slab(22, 8, 15) == slice(8, 22)
    assert covering_slab(6, 8, 3) == slice(0, 6)  # shorter than the window: whole
    with pytest.raises(ValueError, match="outside"):
        covering_slab(6, 8, 6)


def test_3d_preview_is_the_slice_of_the_full_prediction():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 1.0, (1, 18, 13, 10)).astype(np.float32)
    images[0, 5:12, 4:9, 3:7] += 2.0
    model = _Centred(UNet(1, 2, depth=2, base_channels=4, spatial_dims=3))
    prep = PreprocessConfig(slice_size=None)
    patch = (8, 8, 8)
    probs, full = predict_volume(model, images, (1.0, 1.0, 1.0), preprocess=prep, patch_size=patch)
    preview = SlicePreview(images, (1.0, 1.0, 1.0), prep)
    for axis, index in ((0, 0), (0, 9), (1, 12), (2, 4)):
        plane = preview.predict(model, axis, index, patch_size=patch)
        assert plane.dtype == np.int64
        np.testing.assert_array_equal(plane, np.take(full, index, axis=axis))
    assert 0.05 < full.mean() < 0.95  # both classes: the comparison means something
    assert model.training  # left in its mode
    with pytest.raises(ValueError, match="patch_size"):
        preview.predict(model, 0, 0)
