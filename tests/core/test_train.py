"""Trainer: events, schedule, checkpoints, CSV, stop/pause, resume, NaN, fine-tune."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from napari_boundary_seg.core import train as train_mod
from napari_boundary_seg.core.checkpoint import load_checkpoint, read_checkpoint
from napari_boundary_seg.core.data import case_from_arrays
from napari_boundary_seg.core.device import available_devices, resolve_device
from napari_boundary_seg.core.losses import LossKind, LossParts
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import (
    METRICS_COLUMNS,
    DoneEvent,
    EpochEvent,
    InfoEvent,
    PauseEvent,
    StepEvent,
    TrainConfig,
    TrainControl,
    train,
    train_step,
)
from napari_boundary_seg.core.unet import UNet

TINY = {
    "loss": "gdl+bl",  # the engine's tests run the boundary term (the default is GDL)
    "slice_size": 32,
    "depth": 2,
    "base_channels": 4,
    "batch_size": 4,
    "val_fraction": 0.34,
    "device": "cpu",
}


def make_cases(n=3, modalities=1, seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        labels = np.zeros((20, 24, 4), np.int64)
        labels[4 + i : 9 + i, 6:12, 1:3] = 1
        images = [
            (rng.normal(0, 0.2, labels.shape) + (m + 1) * labels).astype(np.float32)
            for m in range(modalities)
        ]
        cases.append(case_from_arrays(images, labels, (1.0, 1.2, 2.0), case_id=f"case{i}"))
    return cases


@pytest.fixture(scope="module")
def cases():
    return make_cases()


def run(config, cases, control=None, on_event=None):
    events = []

    def record(event):
        events.append(event)
        if on_event is not None:
            on_event(event, control)

    done = run_to_end(train(config, cases, control), record)
    return done, events


def test_events_in_order_losses_finite_alpha_follows_schedule(cases, tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY)
    done, events = run(config, cases)
    assert isinstance(events[0], InfoEvent) and events[0].device == "cpu"
    assert isinstance(events[-1], DoneEvent) and events[-1] is done
    assert done.reason == "completed" and not done.stopped
    steps = [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert [e.epoch for e in epochs] == [0, 1, 2]
    # 2 training cases x 4 slices, batch 4: 2 steps per epoch, in order
    assert [(s.epoch, s.step) for s in steps] == [(e, k) for e in range(3) for k in range(2)]
    kinds = [type(e).__name__ for e in events if isinstance(e, StepEvent | EpochEvent)]
    assert kinds == ["StepEvent", "StepEvent", "EpochEvent"] * 3
    for s in steps:
        assert math.isfinite(s.loss) and math.isfinite(s.region) and math.isfinite(s.boundary)
        alpha = 1.0 - 0.01 * s.epoch  # the paper's schedule
        assert (s.w_region, s.w_boundary) == pytest.approx((alpha, 1 - alpha))
        assert s.loss == pytest.approx(alpha * s.region + (1 - alpha) * s.boundary, rel=1e-5)
        assert s.lr == 1e-3 and s.steps_per_epoch == 2
    for e in epochs:
        assert e.w_region == pytest.approx(1.0 - 0.01 * e.epoch)
        assert 0.0 <= e.val_dice <= 1.0 and math.isfinite(e.val_hd)
        mine = [s.loss for s in steps if s.epoch == e.epoch]
        assert e.train_loss == pytest.approx(sum(mine) / len(mine))
    assert epochs[0].is_best  # the first epoch always sets the reference


def test_checkpoints_and_metrics_csv(cases, tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), epochs=2, **TINY)
    done, _ = run(config, cases)
    assert done.best_checkpoint == str(tmp_path / "best.pt")
    assert done.last_checkpoint == str(tmp_path / "last.pt")
    model, ckpt = load_checkpoint(tmp_path / "last.pt")
    assert isinstance(model, UNet) and model.in_channels == 1 and model.depth == 2
    assert ckpt["position"] == {"epoch": 2, "step": 0}
    assert ckpt["schedule"] == {"kind": "paper", "start": 1.0, "step": 0.01, "floor": 0.01}
    assert TrainConfig.from_dict(ckpt["config"]) == config
    assert ckpt["seed"] == 0 and "torch" in ckpt["versions"]
    assert len(ckpt["history"]) == 2 and ckpt["val_cases"] and ckpt["train_cases"]
    # the saved weights are the final ones
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, ckpt["model_state"][key]), key
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["position"]["epoch"] - 1 in [r["epoch"] for r in done.history if r["is_best"]]
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == METRICS_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # counted from 1, as messages count
    assert float(rows[1]["train_loss"]) == pytest.approx(done.history[1]["train_loss"])
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    # a second run into the same folder is refused
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        run(config, cases)


def _stop_at(epoch, step):
    def on_event(event, control):
        if isinstance(event, StepEvent) and (event.epoch, event.step) == (epoch, step):
            control.stop()

    return on_event


def test_stop_takes_effect_at_the_next_step(cases, tmp_path):
    control = TrainControl()
    config = TrainConfig(out_dir=str(tmp_path), epochs=2, **TINY)
    done, events = run(config, cases, control, _stop_at(0, 0))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 1 and done.stopped and "stopped" in done.reason
    assert isinstance(events[-1], DoneEvent)
    assert read_checkpoint(tmp_path / "last.pt")["position"] == {"epoch": 0, "step": 1}


def test_pause_holds_before_the_next_step_and_resume_continues(cases):
    control = TrainControl()
    seen = []

    def on_event(event, control):
        seen.append(event)
        if isinstance(event, StepEvent) and event.step == 0 and event.epoch == 0:
            control.pause()
        elif isinstance(event, PauseEvent):
            control.resume()

    config = TrainConfig(epochs=1, **TINY)
    done, events = run(config, cases, control, on_event)
    names = [type(e).__name__ for e in events if not isinstance(e, InfoEvent)][-5:]
    assert names == ["StepEvent", "PauseEvent", "StepEvent", "EpochEvent", "DoneEvent"]
    pause = next(e for e in events if isinstance(e, PauseEvent))
    assert (pause.epoch, pause.step) == (0, 1)
    assert not done.stopped and done.best_checkpoint is None  # out_dir None: nothing written


def test_stop_while_paused_ends_the_run(cases):
    control = TrainControl()

    def on_event(event, control):
        if isinstance(event, StepEvent):
            control.pause()
        elif isinstance(event, PauseEvent):
            control.stop()

    done, events = run(TrainConfig(epochs=1, **TINY), cases, control, on_event)
    assert done.stopped and sum(isinstance(e, StepEvent) for e in events) == 1


@pytest.mark.parametrize("stop_at", [None, (0, 0), (1, 0)])
def test_resume_equals_uninterrupted(cases, tmp_path, stop_at):
    straight = TrainConfig(out_dir=str(tmp_path / "a"), epochs=2, **TINY)
    reference, _ = run(straight, cases)

    part = TrainConfig(out_dir=str(tmp_path / "b"), epochs=1 if stop_at is None else 2, **TINY)
    control = TrainControl()
    first, _ = run(part, cases, control, None if stop_at is None else _stop_at(*stop_at))
    resumed_config = part.replace(epochs=2, resume_from=str(tmp_path / "b" / "last.pt"))
    resumed, events = run(resumed_config, cases)
    assert not resumed.stopped
    steps = [(e.epoch, e.step) for e in events if isinstance(e, StepEvent)]
    expected_first = (1, 0) if stop_at is None else (stop_at[0], stop_at[1] + 1)
    assert steps[0] == expected_first
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for a, b in zip(reference.history, resumed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_dice"] == b["val_dice"]
    with open(tmp_path / "b" / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]  # counted from 1


def test_resume_with_a_different_config_names_the_field(cases, tmp_path):
    run(TrainConfig(out_dir=str(tmp_path), epochs=1, **TINY), cases)
    bad = TrainConfig(
        out_dir=str(tmp_path),
        epochs=2,
        resume_from=str(tmp_path / "last.pt"),
        **{**TINY, "batch_size": 2},
    )
    with pytest.raises(ValueError, match="batch_size"):
        run(bad, cases)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cases, tmp_path, monkeypatch):
    real = train_mod.loss_for_kind
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        parts = real(*args, **kwargs)
        if calls["n"] == 3:  # the first step of epoch 1
            return LossParts(parts.total * math.nan, parts.region, parts.boundary)
        return parts

    monkeypatch.setattr(train_mod, "loss_for_kind", poisoned)
    done, events = run(TrainConfig(out_dir=str(tmp_path), epochs=3, **TINY), cases)
    assert (
        done.stopped and "non-finite loss" in done.reason and "at epoch 2, step 1 " in done.reason
    )  # counted from 1
    assert len(done.history) == 1
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["position"] == {"epoch": 1, "step": 0}
    assert all(
        torch.isfinite(v).all() for v in ckpt["model_state"].values() if v.is_floating_point()
    )
    # the in-memory model was not updated by the bad step either
    for key, value in done.model.state_dict().items():
        assert torch.equal(value, ckpt["model_state"][key]), key


def test_train_step_skips_the_update_on_nan():
    model = UNet(1, 2, depth=2, base_channels=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(2, 1, 16, 16)
    images[0, 0, 0, 0] = math.nan
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    dist = torch.ones(2, 2, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_step(
        model, optimizer, (images, labels, dist), LossKind.GDL, (1.0, 0.0), num_classes=2
    )
    assert not result.stepped and math.isnan(result.loss)
    for key, value in model.state_dict().items():
        if "num_batches" not in key:
            assert torch.equal(value, before[key]), key


def test_fine_tune_from_checkpoint(cases, tmp_path):
    run(TrainConfig(out_dir=str(tmp_path / "a"), epochs=1, **TINY), cases)
    parent = str(tmp_path / "a" / "best.pt")
    # the fine-tune takes the network shape from its checkpoint, not the config
    config = TrainConfig(
        out_dir=str(tmp_path / "b"),
        epochs=1,
        init_checkpoint=parent,
        schedule={"kind": "constant", "alpha": 0.5},
        **{**TINY, "base_channels": 16},
    )
    done, events = run(config, make_cases(2, seed=5))
    assert any("fine-tuning" in e.message for e in events if isinstance(e, InfoEvent))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert steps[0].w_region == 0.5
    ckpt = read_checkpoint(done.last_checkpoint)
    assert ckpt["parent"].endswith("best.pt") and ckpt["model"]["base_channels"] == 4


def test_fine_tune_mismatch_is_a_clear_error(cases, tmp_path):
    run(TrainConfig(out_dir=str(tmp_path / "a"), epochs=1, **TINY), cases)
    config = TrainConfig(epochs=1, init_checkpoint=str(tmp_path / "a" / "best.pt"), **TINY)
    with pytest.raises(ValueError, match="has 2 modalities but .*best.pt takes 1"):
        run(config, make_cases(3, modalities=2))
    with pytest.raises(ValueError, match="num_classes"):
        run(config.replace(num_classes=3), cases)


def test_config_round_trip_and_validation():
    config = TrainConfig(
        loss="bl", schedule={"kind": "list", "alphas": [1, 0.5]}, percentiles=(1, 99)
    )
    assert config.loss is LossKind.BL
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    default = TrainConfig()
    assert (default.lr, default.batch_size, default.lr_patience) == (1e-3, 8, 20)
    # real scans: no square resizing, resampled to the training spacing, canonical
    # orientation, z-scored within the head, the plane from the scan
    assert (default.slice_size, default.slice_spacing, default.canonical) == (None, "auto", True)
    assert (default.normalize, default.axis) == ("robust", "auto")
    # GDL by default (the regimes map); the paper's α schedule when gdl+bl is asked for
    assert default.loss is LossKind.GDL and default.schedule["kind"] == "paper"
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"epochs": 1, "epoch": 2})
    for bad in (
        {"loss": "focal"},
        {"batch_size": 0},
        {"val_fraction": 1.0},
        {"device": "gpu"},
        {"distance": "4d"},
        {"lr": -1},
        {"schedule": {"kind": "nope"}},
    ):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_plateau_halves_after_patience_never_at_epoch_zero():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    plateau = train_mod._Plateau(patience=2, factor=0.5, mode="max")
    lrs = []
    for value in [0.1, 0.1, 0.05, 0.2, 0.2, 0.2, 0.2]:
        plateau.update(value, optimizer)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    one = train_mod._Plateau(patience=1, factor=0.5, mode="max")
    optimizer.param_groups[0]["lr"] = 1.0
    assert one.update(0.0, optimizer) and optimizer.param_groups[0]["lr"] == 1.0


def test_devices():
    assert available_devices()[-1] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == available_devices()[0].split(":")[0]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"'cuda' is not available here; available: \['cpu"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_batches_with_workers_equal_batches_without(cases):
    from napari_boundary_seg.core.data import PreprocessConfig, SliceDataset

    dataset = SliceDataset(cases[:1], 2, PreprocessConfig(slice_size=16))
    order = train_mod.epoch_order(len(dataset), seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(4))
    plain = list(train_mod.iter_batches(dataset, order, 3, 0, 2))
    workers = list(train_mod.iter_batches(dataset, order, 3, 0, 2, num_workers=1))
    assert [b[0].shape[0] for b in plain] == [3, 1]
    for a, b in zip(plain, workers, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    first = order[:3]
    assert torch.equal(plain[0][2], dataset.dist[first])


@pytest.mark.parametrize(
    ("loss", "schedule", "warned"),
    [
        ("bl", {"kind": "paper"}, True),
        ("gdl+bl", {"kind": "constant", "alpha": 0.0}, True),
        ("gdl+bl", {"kind": "paper"}, False),
    ],
)
def test_boundary_loss_alone_from_the_start_warns(cases, loss, schedule, warned):
    config = TrainConfig(
        epochs=1, schedule=schedule, max_steps_per_epoch=1, **{**TINY, "loss": loss}
    )
    _, events = run(config, cases)
    messages = [e.message for e in events if isinstance(e, InfoEvent)]
    assert any("collapses to an empty foreground" in m for m in messages) == warned


@pytest.mark.parametrize("kind", ["gdl", "gdl+bl", "ce"])
def test_train_step_passes_a_batch_mask_to_the_loss(kind):
    """A batch with a fourth tensor (a fine-tune's verified voxels) is trained on those
    voxels only: with a per-voxel network, the same step as on the verified rows alone."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn((2, 1, 6, 5), generator=gen)
    labels = torch.randint(0, 2, (2, 6, 5), generator=gen)
    dist = torch.randn((2, 2, 6, 5), generator=gen)
    mask = torch.zeros((2, 6, 5))
    mask[:, :3] = 1

    def step(batch):
        torch.manual_seed(0)
        model = torch.nn.Conv2d(1, 2, 1)  # each voxel on its own
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        result = train_step(model, optimizer, batch, kind, (0.5, 0.5), num_classes=2)
        return result, [p.detach().clone() for p in model.parameters()]

    masked, w_masked = step((images, labels, dist, mask))
    rows, w_rows = step((images[..., :3, :], labels[:, :3], dist[..., :3, :]))
    assert masked.loss == pytest.approx(rows.loss, rel=1e-5)
    for a, b in zip(w_masked, w_rows, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    unmasked, w_all = step((images, labels, dist))
    assert unmasked.loss != pytest.approx(masked.loss, rel=1e-5)
    ones, w_ones = step((images, labels, dist, torch.ones_like(mask)))
    assert ones.loss == pytest.approx(unmasked.loss, rel=1e-6)


def test_poly_lr_decay_follows_the_epoch_and_resumes_exactly(cases, tmp_path):
    from napari_boundary_seg.core.train import poly_lr

    config = TrainConfig(out_dir=str(tmp_path / "a"), epochs=3, lr=1e-2, lr_decay="poly", **TINY)
    reference, events = run(config, cases)
    lrs = [e.lr for e in events if isinstance(e, EpochEvent)]
    assert lrs == pytest.approx([poly_lr(1e-2, k, 3) for k in range(3)])
    assert lrs[0] == pytest.approx(1e-2) and lrs[2] == pytest.approx(1e-2 * (1 / 3) ** 0.9)

    part = config.replace(out_dir=str(tmp_path / "b"))
    control = TrainControl()
    run(part, cases, control, _stop_at(1, 0))
    resumed, _ = run(part.replace(resume_from=str(tmp_path / "b" / "last.pt")), cases)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay="cosine")


def test_weight_average_is_validated_saved_and_resumed_exactly(cases, tmp_path):
    config = TrainConfig(out_dir=str(tmp_path / "a"), epochs=2, ema=0.9, **TINY)
    reference, _ = run(config, cases)
    saved = read_checkpoint(tmp_path / "a" / "last.pt")
    trained, averaged = saved["trained_model_state"], saved["model_state"]
    # the saved (and returned) model is the average, not the last step's weights
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    assert saved["ema_updates"] > 1
    model, _ = load_checkpoint(tmp_path / "a" / "last.pt")  # predictors load the average
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())

    part = config.replace(out_dir=str(tmp_path / "b"))
    run(part, cases, TrainControl(), _stop_at(1, 1))
    resumed, _ = run(part.replace(resume_from=str(tmp_path / "b" / "last.pt")), cases)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_ema_average_fn_warms_up_then_keeps_the_decay():
    from napari_boundary_seg.core.train import ema_average_fn

    update = ema_average_fn(0.99)
    avg, cur = [torch.zeros(3), torch.tensor([5])], [torch.ones(3), torch.tensor([7])]
    update(avg, cur, torch.tensor(0))  # warm-up: decay (1 + 0) / 10 = 0.1
    assert torch.allclose(avg[0], torch.full((3,), 0.9)) and avg[1].item() == 7
    avg[0].zero_()
    update(avg, cur, torch.tensor(10_000))  # later: the decay itself
    assert torch.allclose(avg[0], torch.full((3,), 0.01))
