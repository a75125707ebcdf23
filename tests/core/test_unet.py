"""UNet: shapes for any input size, parameter count by hand, bad input rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.unet import UNet, pooling_strides


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


# ---------------------------------------------------------------------------
# N-D: 3D layers, anisotropic strides, the 0.1 network unchanged


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize(
    ("size", "strides"),
    [
        ((8, 8, 8), None),
        ((5, 13, 7), None),
        ((6, 16, 12), ((1, 2, 2), (2, 2, 2))),
        ((3, 9, 10), ((1, 2, 2), (1, 2, 2))),
    ],
)
def test_3d_output_has_input_shape(size, strides, upsample):
    model = UNet(1, 2, depth=3, base_channels=2, upsample=upsample, spatial_dims=3, strides=strides)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()
    assert isinstance(model.encoders[0][0], torch.nn.Conv3d)


def test_anisotropic_strides_pool_and_pad_per_axis():
    model = UNet(1, 2, depth=3, base_channels=2, spatial_dims=3, strides=((1, 2, 2), (2, 2, 2)))
    assert model.size_multiples == (2, 4, 4) and model.size_multiple == 4
    seen = []
    model.encoders[2].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model.eval()(torch.randn(1, 1, 5, 14, 16))  # padded to (6, 16, 16)
    assert seen == [(1, 8, 3, 4, 4)]
    assert model.decoders[0].up.stride == (2, 2, 2)
    assert model.decoders[1].up.stride == (1, 2, 2)
    # hparams rebuild the same network, strides included
    clone = UNet(**model.hparams)
    assert clone.strides == model.strides and clone.spatial_dims == 3
    clone.load_state_dict(model.state_dict())


def test_default_2d_state_dict_keys_and_hparams():
    model = UNet(1, 2, depth=2, base_channels=4)
    assert model.hparams["spatial_dims"] == 2 and model.hparams["strides"] == [[2, 2]]
    assert model.size_multiples == (2, 2) and model.size_multiple == 2
    assert sorted(model.state_dict()) == sorted(OLD_KEYS_DEPTH2)


# the state_dict keys of the 0.1 UNet(1, 2, depth=2, transpose): checkpoints hold them
OLD_KEYS_DEPTH2 = [
    *(f"encoders.{e}.{i}.weight" for e in (0, 1) for i in (0, 3)),
    *(
        f"encoders.{e}.{i}.{k}"
        for e in (0, 1)
        for i in (1, 4)
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ),
    "decoders.0.up.weight",
    "decoders.0.up.bias",
    *(f"decoders.0.block.{i}.weight" for i in (0, 3)),
    *(
        f"decoders.0.block.{i}.{k}"
        for i in (1, 4)
        for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ),
    "head.weight",
    "head.bias",
]


def _reference_unet_depth2(x, sd):
    """The 0.1 UNet (depth 2, transpose, eval) written with torch.nn.functional."""
    F = torch.nn.functional

    def block(t, prefix):
        for conv, bn in ((0, 1), (3, 4)):
            t = F.conv2d(t, sd[f"{prefix}.{conv}.weight"], padding=1)
            t = F.batch_norm(
                t,
                sd[f"{prefix}.{bn}.running_mean"],
                sd[f"{prefix}.{bn}.running_var"],
                sd[f"{prefix}.{bn}.weight"],
                sd[f"{prefix}.{bn}.bias"],
                training=False,
            )
            t = F.relu(t)
        return t

    s0 = block(x, "encoders.0")
    s1 = block(F.max_pool2d(s0, 2), "encoders.1")
    up = F.conv_transpose2d(s1, sd["decoders.0.up.weight"], sd["decoders.0.up.bias"], stride=2)
    d = block(torch.cat([s0, up], dim=1), "decoders.0.block")
    return F.conv2d(d, sd["head.weight"], sd["head.bias"])


def test_a_0_1_checkpoint_loads_and_predicts_as_the_0_1_network(tmp_path):
    from napari_boundary_seg.core.checkpoint import (
        CHECKPOINT_FORMAT,
        load_checkpoint,
        save_checkpoint,
    )

    gen = torch.Generator().manual_seed(0)
    shapes = dict(UNet(1, 2, depth=2, base_channels=4).state_dict().items())
    sd = {}
    for key, value in shapes.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            sd[key] = torch.randn(value.shape, generator=gen) * 0.5
    old_hparams = {
        "in_channels": 1,
        "num_classes": 2,
        "depth": 2,
        "base_channels": 4,
        "upsample": "transpose",
    }  # as version 0.1 wrote them: no spatial_dims, no strides
    save_checkpoint(
        tmp_path / "old.pt",
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "model": old_hparams,
            "model_state": sd,
            "config": {"slice_size": 16, "axis": 0},
        },
    )
    model, _ = load_checkpoint(tmp_path / "old.pt")
    x = torch.randn(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), _reference_unet_depth2(x, sd), atol=1e-5)


def test_bad_n_d_arguments_raise():
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        UNet(1, 2, spatial_dims=1)
    with pytest.raises(ValueError, match="depth - 1 = 2 levels"):
        UNet(1, 2, depth=3, spatial_dims=3, strides=((2, 2, 2),))
    with pytest.raises(ValueError, match="3 of them"):
        UNet(1, 2, depth=2, spatial_dims=3, strides=((2, 2),))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        UNet(1, 2, depth=2, base_channels=2, spatial_dims=3)(torch.randn(1, 1, 8, 8))


def test_pooling_strides_follows_nnunet():
    # isotropic: pool every axis while large enough (>= 2 * 4)
    assert pooling_strides((1.0, 1.0, 1.0), (32, 32, 8), 4) == (
        (2, 2, 2),
        (2, 2, 1),
        (2, 2, 1),
    )
    # thick slices: the 3 mm axis waits until the in-plane spacing is within 2x
    assert pooling_strides((3.0, 1.0, 1.0), (32, 128, 128), 4) == (
        (1, 2, 2),
        (2, 2, 2),
        (2, 2, 2),
    )
    assert pooling_strides((2.0, 1.0, 1.0), None, 3) == ((1, 2, 2), (2, 2, 2))
    assert pooling_strides((1.0, 1.0), (256, 256), 1) == ()
    assert pooling_strides((1.0, 1.0), (4, 4), 3) == ((1, 1), (1, 1))  # too small to pool
    with pytest.raises(ValueError, match="one positive size per axis"):
        pooling_strides((1.0, 1.0, 1.0), (8, 8), 3)
    with pytest.raises(ValueError, match="spacing must be positive"):
        pooling_strides((0.0, 1.0), None, 3)
    with pytest.raises(ValueError, match="min_size must be an integer >= 1, got 0"):
        pooling_strides((1.0, 1.0), None, 3, min_size=0)


def test_parameter_estimate_matches_and_absurd_sizes_are_refused_before_allocating():
    from napari_boundary_seg.core.validate import check_unet_fits, unet_parameter_count

    for args in [(1, 2, 4, 8), (3, 4, 2, 5)]:
        model = UNet(*args)
        assert unet_parameter_count(*args) == sum(p.numel() for p in model.parameters())
    model3d = UNet(1, 2, depth=3, base_channels=4, spatial_dims=3)
    assert unet_parameter_count(1, 2, 3, 4, 3) == sum(p.numel() for p in model3d.parameters())
    with pytest.raises(ValueError, match="depth"):
        UNet(1, 2, depth=200000, base_channels=4)
    with pytest.raises(ValueError, match="parameters"):
        UNet(1, 2, depth=4, base_channels=2**31)
    with pytest.raises(ValueError, match="--depth 8 needs slices of at least 128"):
        check_unet_fits(8, 32, "--depth")
    check_unet_fits(6, (32, 20))  # 2**5 = 32 fits
