"""UNet: shapes for any input size, parameter count by hand, bad input rejected."""

from __future__ import annotations

import pytest
import torch

from napari_boundary_seg.core.unet import UNet


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (8, 5), (1, 1)])
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_output_has_input_spatial_shape(size, upsample):
    model = UNet(2, 3, depth=3, base_channels=4, upsample=upsample).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


def test_parameter_count_by_hand():
    # depth 1: conv 1->4 (36, no bias) + BN (8) + conv 4->4 (144) + BN (8) + head 4->2 (8 + 2)
    model = UNet(1, 2, depth=1, base_channels=4)
    assert sum(p.numel() for p in model.parameters()) == 36 + 8 + 144 + 8 + 10


def test_depth_sets_the_pad_multiple_and_crop_is_exact():
    model = UNet(1, 2, depth=3, base_channels=4).eval()
    assert model.size_multiple == 4
    x = torch.randn(1, 1, 30, 30)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 2))
    with torch.no_grad():
        # padding with zeros internally is the same as the user padding with zeros
        assert torch.allclose(model(x), model(padded)[..., :30, :30], atol=1e-6)


def test_gradients_reach_the_first_layer():
    model = UNet(1, 2, depth=2, base_channels=4)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    first = model.encoders[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_hparams_rebuild_the_same_network():
    model = UNet(3, 4, depth=2, base_channels=6, upsample="bilinear")
    clone = UNet(**model.hparams)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 16, 16)
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0, "num_classes": 2},
        {"in_channels": 1, "num_classes": 1},
        {"in_channels": 1, "num_classes": 2, "depth": 0},
        {"in_channels": 1, "num_classes": 2, "base_channels": 2.5},
        {"in_channels": 1, "num_classes": 2, "upsample": "nearest"},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="UNet"):
        UNet(**kwargs)


@pytest.mark.parametrize("shape", [(1, 2, 16, 16), (1, 16, 16), (1, 1, 4, 16, 16)])
def test_bad_input_shape_names_the_shape(shape):
    model = UNet(1, 2, depth=2, base_channels=4)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.randn(*shape))


def test_parameter_estimate_matches_and_absurd_sizes_are_refused_before_allocating():
    from napari_boundary_seg.core.validate import check_unet_fits, unet_parameter_count

    for args in [(1, 2, 4, 8), (3, 4, 2, 5)]:
        model = UNet(*args)
        assert unet_parameter_count(*args) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="depth"):
        UNet(1, 2, depth=200000, base_channels=4)
    with pytest.raises(ValueError, match="parameters"):
        UNet(1, 2, depth=4, base_channels=2**31)
    with pytest.raises(ValueError, match="--depth 8 needs slices of at least 128"):
        check_unet_fits(8, 32, "--depth")
    check_unet_fits(6, (32, 20))  # 2**5 = 32 fits
