"""Precision: config mapping (amp), plans per device, float32 losses, bf16 on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.data import case_from_arrays
from napari_boundary_seg.core.losses import LossKind, boundary_loss
from napari_boundary_seg.core.precision import (
    PRECISIONS,
    autocast,
    memory_format,
    plan_precision,
)
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import (
    InfoEvent,
    StepEvent,
    TrainConfig,
    step_losses,
    train,
    train_step,
)
from napari_boundary_seg.core.unet import UNet

CPU = torch.device("cpu")
# bf16 keeps 8 bits of mantissa (relative rounding 2**-9 ≈ 2e-3 per operation):
# over the 4 steps of this test the losses of a bf16 run stay within 1 % of the
# float32 run's (the largest relative difference seen here: 2.4e-4).
BF16_LOSS_RTOL = 0.01


def test_config_precision_and_amp_mapping():
    assert TrainConfig().precision == "32" and PRECISIONS == ("32", "bf16", "16-mixed")
    old = TrainConfig(amp=True)  # an old config
    assert old.precision == "16-mixed"
    assert TrainConfig.from_dict(old.to_dict()) == old
    legacy = old.to_dict()
    del legacy["precision"], legacy["channels_last"], legacy["compile"]  # 0.1 checkpoint config
    assert TrainConfig.from_dict(legacy).precision == "16-mixed"
    with pytest.raises(ValueError, match="'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="amp=True means precision='16-mixed'"):
        TrainConfig(amp=True, precision="bf16")
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig(channels_last="yes")
    assert not TrainConfig().compile and not TrainConfig().channels_last


def test_plans_per_device():
    assert plan_precision("32", CPU) == (None, False, "")
    assert plan_precision("bf16", CPU) == (torch.bfloat16, False, "")
    cpu16 = plan_precision("16-mixed", CPU)
    assert cpu16.dtype is None and not cpu16.scaler and "float32" in cpu16.note
    mps = torch.device("mps")  # planning needs no MPS device
    assert plan_precision("16-mixed", mps) == (torch.float16, True, "")
    with pytest.raises(ValueError, match="'64'"):
        plan_precision("64", CPU)


def test_memory_format_follows_the_network_dims():
    assert memory_format(UNet(1, 2, depth=2, base_channels=4)) == torch.channels_last
    conv3d = torch.nn.Conv3d(1, 2, 3)
    assert memory_format(conv3d) == torch.channels_last_3d


def _batch(seed=0, b=2, size=24):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, size, size, dtype=torch.long)
    labels[:, 8:12, 9:14] = 1
    dist = torch.randn(b, 2, size, size, generator=g) * 10
    logits = torch.randn(b, 2, size, size, generator=g) * 3
    return logits, labels, dist


@pytest.mark.parametrize("kind", list(LossKind))
def test_losses_under_bf16_autocast_equal_float32(kind):
    """The boundary term (and every loss) of bf16 network logits, computed by the
    trainer under bf16 autocast, equals its float32 value to 1e-6 relative."""
    logits, labels, dist = _batch()
    low = logits.to(torch.bfloat16)  # what the network gives under bf16 autocast
    weights = (0.3, 0.7)
    reference = step_losses(low.float(), labels, dist, kind, weights, num_classes=2)
    with autocast(CPU, torch.bfloat16):
        parts = step_losses(low, labels, dist, kind, weights, num_classes=2)
    for name in ("total", "region", "boundary"):
        got, want = getattr(parts, name), getattr(reference, name)
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_boundary_term_in_bf16_would_not_be_exact():
    """What the float32 cast prevents: the term of bf16 probabilities, rounded to bf16."""
    logits, labels, dist = _batch()
    exact = step_losses(logits, labels, dist, LossKind.BL, (0.0, 1.0), num_classes=2).boundary
    probs16 = torch.softmax(logits.to(torch.bfloat16), dim=1)
    sloppy = (probs16[:, 1:] * dist[:, 1:].to(torch.bfloat16)).mean()
    assert abs(float(sloppy) - float(exact)) > 1e-6 * abs(float(exact))
    assert boundary_loss(probs16.float(), dist, validate=False).dtype == torch.float32


def test_train_step_bf16_autocast_on_cpu_runs_the_network_in_bf16():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_channels=4)
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    _, labels, dist = _batch()
    images = torch.rand(2, 1, 24, 24)
    result = train_step(
        model,
        optimizer,
        (images, labels, dist),
        LossKind.GDL_BL,
        (0.5, 0.5),
        num_classes=2,
        autocast_dtype=torch.bfloat16,
    )
    assert seen == [torch.bfloat16] and result.stepped
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        labels = np.zeros((20, 24, 4), np.int64)
        labels[4 + i : 9 + i, 6:12, 1:3] = 1
        image = (rng.normal(0, 0.2, labels.shape) + labels).astype(np.float32)
        cases.append(case_from_arrays([image], labels, (1.0, 1.2, 2.0), case_id=f"c{i}"))
    return cases


def _losses(precision, **extra):
    config = TrainConfig(
        epochs=2,
        batch_size=4,
        slice_size=32,
        depth=2,
        base_channels=4,
        device="cpu",
        val_fraction=0.0,
        precision=precision,
        **extra,
    )
    events = []
    run_to_end(train(config, _cases()), events.append)
    return [e.loss for e in events if isinstance(e, StepEvent)], events


def test_bf16_training_follows_float32_within_tolerance():
    full, _ = _losses("32")
    half, events = _losses("bf16")
    assert len(full) == len(half) == 4
    assert half != full  # bf16 really ran
    np.testing.assert_allclose(half, full, rtol=BF16_LOSS_RTOL)
    assert any("precision bf16" in e.message for e in events if isinstance(e, InfoEvent))


def test_amp_on_cpu_says_it_maps_and_runs_float32():
    full, _ = _losses("32")
    mixed, events = _losses("32", amp=True)
    messages = [e.message for e in events if isinstance(e, InfoEvent)]
    assert any("amp" in m and "deprecated" in m and "16-mixed" in m for m in messages)
    assert any("running in float32 on cpu" in m for m in messages)
    assert mixed == full


def test_channels_last_gives_the_same_losses():
    full, _ = _losses("32")
    last, events = _losses("32", channels_last=True)
    np.testing.assert_allclose(last, full, rtol=1e-4)
    assert any("channels-last" in e.message for e in events if isinstance(e, InfoEvent))


def test_gradient_scaler_state_is_checkpointed_and_restored(tmp_path, monkeypatch):
    """float16 runs scale gradients; the scaler's state (scale, growth tracker)
    goes into last.pt and a resumed run continues from it. On the CPU the test
    forces a scaler (with bf16 autocast) since 16-mixed is CUDA/MPS only."""
    from napari_boundary_seg.core import train as train_mod
    from napari_boundary_seg.core.checkpoint import read_checkpoint
    from napari_boundary_seg.core.precision import PrecisionPlan
    from napari_boundary_seg.core.train import TrainControl

    monkeypatch.setattr(
        train_mod, "plan_precision", lambda precision, device: PrecisionPlan(torch.bfloat16, True)
    )
    tiny = {"batch_size": 4, "slice_size": 32, "depth": 2, "base_channels": 4, "device": "cpu"}
    straight = TrainConfig(out_dir=str(tmp_path / "a"), epochs=2, val_fraction=0.0, **tiny)
    run_to_end(train(straight, _cases()))
    reference = read_checkpoint(tmp_path / "a" / "last.pt")["scaler_state"]
    assert reference["_growth_tracker"] == 4 and reference["scale"] == 2.0**16  # 4 good steps

    control = TrainControl()
    part = straight.replace(out_dir=str(tmp_path / "b"))

    def stop_after_three(event):
        if isinstance(event, StepEvent) and (event.epoch, event.step) == (1, 0):
            control.stop()

    run_to_end(train(part, _cases(), control), stop_after_three)
    stopped = read_checkpoint(tmp_path / "b" / "last.pt")
    assert stopped["position"] == {"epoch": 1, "step": 1}
    assert stopped["scaler_state"]["_growth_tracker"] == 3
    run_to_end(train(part.replace(resume_from=str(tmp_path / "b" / "last.pt")), _cases()))
    assert read_checkpoint(tmp_path / "b" / "last.pt")["scaler_state"] == reference
