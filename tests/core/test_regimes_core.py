"""The map's core pieces: adaptive schedules, φ rules, MONAI's boundary loss arm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.config import TrainConfig, loss_weights, uses_schedule
from napari_boundary_seg.core.distance import PHI_CLIP_MM, class_distance_maps, phi_maps
from napari_boundary_seg.core.losses import LossKind, loss_for_kind, one_hot
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.schedule import (
    SCHEDULE_CLASSES,
    BasinHoldSchedule,
    WarmStartSchedule,
    make_schedule,
    schedule_from_dict,
)
from napari_boundary_seg.core.settings import settings

# ---------------------------------------------------------------------------
# adaptive schedules


def test_warm_start_switches_after_patience_epochs_without_a_better_dsc():
    s = WarmStartSchedule(patience=2, step=0.25, floor=0.1)
    history = [0.1, 0.3, 0.3, 0.2, 0.5]  # best at epoch 1; epochs 2 and 3 are no better
    assert s.switch_epoch(history) == 4
    weights = [s.at(e, history) for e in range(7)]
    assert weights[:4] == [(1.0, 0.0)] * 4
    assert weights[4] == (0.75, 0.25) and weights[5] == (0.5, 0.5)
    assert weights[6] == (0.25, 0.75)
    assert s.at(20, history) == (0.1, 0.9)  # the floor
    # the history the trainer has at epoch e is epochs 0 .. e-1: no look ahead
    assert s.at(3, history) == (1.0, 0.0)
    assert s.switch_epoch([0.1, 0.2, 0.3]) is None  # still improving
    assert s.switch_epoch([math.nan, math.nan, math.nan]) == 3  # NaN never improves


def test_basin_hold_switches_when_the_validation_dsc_reaches_the_threshold():
    s = BasinHoldSchedule(threshold=0.2, step=0.5, floor=0.01)
    history = [0.0, 0.05, 0.3, 0.01]
    assert s.switch_epoch(history) == 3
    assert [s.at(e, history) for e in range(5)] == [(1.0, 0.0)] * 3 + [(0.5, 0.5), (0.01, 0.99)]
    assert s.switch_epoch([0.0, 0.01]) is None
    with pytest.raises(ValueError, match="above 0"):
        BasinHoldSchedule(threshold=0.0)


def test_adaptive_kinds_are_declared_like_the_others():
    for kind in ("warm-start", "basin-hold"):
        cls = SCHEDULE_CLASSES[kind]
        names = {d.name for d in settings(cls)}
        assert names >= {"step", "floor"} and all(d.help for d in settings(cls))
        s = make_schedule(kind)
        assert s.uses_validation and schedule_from_dict(s.to_dict()) == s
        assert not s.starts_boundary_only and s.weights(0) == (1.0, 0.0)
    # a form's number box gives floats: an integral patience is taken
    assert make_schedule("warm-start", patience=3.0).patience == 3
    with pytest.raises(ValueError):
        make_schedule("warm-start", patience=0)
    # the planned curve (no history): the earliest switch the rule allows
    assert WarmStartSchedule(patience=1, step=0.5).curve(4)[2:] == [(0.5, 0.5), (0.01, 0.99)]
    assert not make_schedule("paper").uses_validation
    assert make_schedule("paper").at(3, [0.9, 0.9, 0.9]) == make_schedule("paper")(3)


def test_the_widget_offers_the_adaptive_kinds():
    from napari_boundary_seg._widgets._logic import (
        SCHEDULE_CHOICES,
        planned_weights,
        schedule_fields,
        schedule_params,
    )

    kinds = [value for _, value in SCHEDULE_CHOICES]
    assert "warm-start" in kinds and "basin-hold" in kinds
    assert [name for name, *_ in schedule_fields("warm-start")] == ["patience", "step", "floor"]
    params = schedule_params("warm-start", 2.0, 0.5, 0.01)
    assert planned_weights("gdl+bl", "warm-start", params, 5)[3] == (0.5, 0.5)


# ---------------------------------------------------------------------------
# φ rules


def _stack():
    labels = np.zeros((4, 12, 12), np.int64)
    labels[1, 3:6, 3:6] = 1  # slices 0, 2, 3 have no foreground
    return labels


def test_phi_units_voxels_clipped_and_the_zero_map_of_empty_slices():
    labels, spacing = _stack(), (3.0, 2.0, 2.0)
    mm = phi_maps(labels, 2, spacing)
    np.testing.assert_array_equal(mm, class_distance_maps(labels, 2, spacing=spacing))
    voxels = phi_maps(labels, 2, spacing, units="voxels")
    np.testing.assert_array_equal(voxels, class_distance_maps(labels, 2, spacing=(1, 1, 1)))
    clipped = phi_maps(labels, 2, spacing, units="clipped")
    np.testing.assert_allclose(clipped, np.clip(mm, -PHI_CLIP_MM, PHI_CLIP_MM) / PHI_CLIP_MM)
    assert np.abs(clipped).max() <= 1.0
    zero = phi_maps(labels, 2, spacing, empty_slices="zero")
    assert np.all(zero[:, [0, 2, 3]] == 0) and np.any(mm[1, 0] != 0)  # 3D φ reaches them
    np.testing.assert_array_equal(zero[:, 1], mm[:, 1])
    with pytest.raises(ValueError, match="phi units"):
        phi_maps(labels, 2, spacing, units="cm")


def test_the_slice_dataset_and_the_train_config_take_the_phi_rules():
    from napari_boundary_seg.core.data import SliceDataset, case_from_arrays
    from napari_boundary_seg.core.preprocess import PreprocessConfig

    labels = np.moveaxis(_stack(), 0, 2)  # slices along axis 2
    case = case_from_arrays([labels.astype(np.float32)], labels, (2.0, 2.0, 3.0), case_id="c")
    prep = PreprocessConfig(slice_size=None, axis=2)
    plain = SliceDataset([case], 2, prep)
    zero = SliceDataset([case], 2, prep, phi_units="clipped", empty_slices="zero")
    empty = ~plain.labels.reshape(len(plain), -1).bool().any(dim=1)
    assert empty.sum() == 3 and torch.all(zero.dist[empty] == 0)
    assert torch.any(plain.dist[empty] != 0) and zero.dist.abs().max() <= 1.0
    config = TrainConfig(phi_units="voxels", empty_slice_phi="zero")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="2D slices"):
        TrainConfig(dims=3, phi_units="voxels")


# ---------------------------------------------------------------------------
# MONAI's boundary loss, the peer arm


def test_monai_arm_follows_the_schedule_and_matches_monai():
    pytest.importorskip("monai.losses.boundary_loss", reason="MONAI < 1.6 has no BoundaryLoss")
    from monai.losses import BoundaryLoss

    assert uses_schedule("gdl+monai-bl") and uses_schedule(LossKind.GDL_BL)
    assert not uses_schedule("gdl")
    assert loss_weights("gdl+monai-bl", (0.7, 0.3)) == (0.7, 0.3)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 4:9, 5:10] = 1
    target = one_hot(labels, 2).float()
    logits = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    probs = torch.softmax(logits, 1)
    parts = loss_for_kind("gdl+monai-bl", probs, target, None, (0.6, 0.4))
    expected = BoundaryLoss(include_background=False)(probs, target)
    boundary, region, total = (
        float(t.detach()) for t in (parts.boundary, parts.region, parts.total)
    )
    assert boundary == pytest.approx(float(expected.detach()))
    assert total == pytest.approx(0.6 * region + 0.4 * boundary)
    parts.total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mask"):
        loss_for_kind("gdl+monai-bl", probs, target, None, (0.5, 0.5), mask=torch.ones(2, 16, 16))


def test_monai_arm_refuses_clearly_without_monai(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name.startswith("monai"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ValueError, match="pip install -U monai"):
        TrainConfig(loss="gdl+monai-bl")
    from napari_boundary_seg.core.losses import monai_available

    assert not monai_available()


# ---------------------------------------------------------------------------
# the train loop passes the validation DSC; the warm start restarts from the best


def _cases():
    from napari_boundary_seg.core.data import case_from_arrays

    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        labels = np.zeros((20, 24, 4), np.int64)
        labels[4 + i : 9 + i, 6:12, 1:3] = 1
        image = (rng.normal(0, 0.2, labels.shape) + labels).astype(np.float32)
        cases.append(case_from_arrays([image], labels, (1.0, 1.2, 2.0), case_id=f"case{i}"))
    return cases


def test_train_loop_feeds_the_validation_history_to_an_adaptive_schedule(tmp_path):
    from napari_boundary_seg.core.train import EpochEvent, InfoEvent, train

    tiny = dict(slice_size=32, depth=2, base_channels=4, batch_size=4, device="cpu", loss="gdl+bl")
    # threshold just above 0: any non-empty validation prediction ends the hold
    schedule = {"kind": "basin-hold", "threshold": 1e-9, "step": 0.5, "floor": 0.01}
    config = TrainConfig(
        out_dir=str(tmp_path / "hold"), epochs=3, val_fraction=0.34, schedule=schedule, **tiny
    )
    events = []
    run_to_end(train(config, _cases()), events.append)
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    s = schedule_from_dict(schedule)
    history = [e.val_dice for e in epochs]
    for e in epochs:
        assert (e.w_region, e.w_boundary) == s.at(e.epoch, history)
    # the warm start (patience 1) loads the best weights at its switch
    warm = {"kind": "warm-start", "patience": 1, "step": 0.5, "floor": 0.01}
    config = config.replace(out_dir=str(tmp_path / "warm"), schedule=warm, epochs=4, lr=0.5)
    events = []
    run_to_end(train(config, _cases()), events.append)
    history = [e.val_dice for e in events if isinstance(e, EpochEvent)]
    switch = schedule_from_dict(warm).switch_epoch(history)
    notes = [e.message for e in events if isinstance(e, InfoEvent) and "best weights" in e.message]
    if switch is not None and switch < 4:
        assert notes == [
            f"epoch {switch + 1}: the boundary term starts from the best weights so far"
        ]
    else:
        assert not notes
    # no validation cases: an adaptive schedule refuses to start
    with pytest.raises(ValueError, match="validation"):
        run_to_end(train(config.replace(out_dir=str(tmp_path / "none")), _cases(), val_cases=[]))
