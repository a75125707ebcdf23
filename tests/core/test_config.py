"""The declared configuration: descriptors, checks generated from the metadata,
the loss-weight rules, and the fine-tune config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from napari_boundary_seg.core.config import (
    DEFAULT_PATCH_SIZE,
    FinetuneConfig,
    LossKind,
    TrainConfig,
    boundary_only_from_start,
    form_options,
    loss_weights,
    settings,
)
from napari_boundary_seg.core.schedule import SCHEDULE_CLASSES, PaperSchedule


def test_config_module_imports_no_torch() -> None:
    code = "import sys, napari_boundary_seg.core.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_train_field_is_a_declared_setting() -> None:
    specs = {s.name: s for s in settings(TrainConfig)}
    assert list(specs) == [f for f in TrainConfig.__dataclass_fields__]
    patience = specs["lr_patience"]
    assert (patience.kind, patience.default, patience.flag) == ("int", 20, "--lr-patience")
    assert (patience.bounds, patience.section, patience.label) == (
        (1, None),
        "schedule",
        "lr patience",
    )
    assert specs["out_dir"].flag == "--out" and specs["schedule"].flag == ""
    assert specs["slice_size"].optional and specs["slice_size"].none_as == 0
    assert specs["normalize"].choices == ("robust", "zscore", "minmax")
    assert specs["patch_size"].none_text == " ".join(map(str, DEFAULT_PATCH_SIZE))
    assert {s.section for s in specs.values()} <= {"data", "model", "schedule", "run", "advanced"}


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (
            {"lr_patience": 0},
            ValueError,
            r"TrainConfig\.lr_patience must be an integer >= 1, got 0",
        ),
        ({"lr_patience": "3"}, TypeError, r"TrainConfig\.lr_patience must be an integer"),
        ({"lr": 0.0}, ValueError, r"TrainConfig\.lr must be a finite number > 0"),
        ({"val_fraction": 1.0}, ValueError, r"TrainConfig\.val_fraction .*< 1"),
        (
            {"normalize": "z"},
            ValueError,
            r"TrainConfig\.normalize must be robust, zscore or minmax",
        ),
        ({"dims": 4}, ValueError, r"TrainConfig\.dims must be 2 or 3"),
        ({"canonical": 1}, ValueError, r"TrainConfig\.canonical must be True or False"),
        ({"augment": "yes"}, ValueError, r"TrainConfig\.augment must be True, False or None"),
        ({"patch_size": (8, 8)}, ValueError, r"TrainConfig\.patch_size must be 3 positive"),
    ],
)
def test_checks_come_from_the_metadata(changes, error, match) -> None:
    with pytest.raises(error, match=match):
        TrainConfig(**changes)


def test_normalised_values() -> None:
    config = TrainConfig(data=Path("d"), dims=3, axis=-1, lr=1)
    assert (config.data, config.patch_size, config.axis) == ("d", DEFAULT_PATCH_SIZE, 2)
    assert isinstance(config.lr, float)


def test_loss_weights_and_boundary_alone() -> None:
    assert loss_weights("gdl+bl", (0.7, 0.3)) == (0.7, 0.3)
    assert loss_weights(LossKind.BL, (0.7, 0.3)) == (0.0, 1.0)
    assert loss_weights("ce", (0.7, 0.3)) == (1.0, 0.0)
    assert boundary_only_from_start("bl", {"kind": "paper"})
    assert not boundary_only_from_start("gdl+bl", {"kind": "paper"})
    assert boundary_only_from_start("gdl+bl", {"kind": "constant", "alpha": 0.0})
    assert not boundary_only_from_start("gdl", {"kind": "constant", "alpha": 0.0})


def test_schedule_forms_and_form_options() -> None:
    start = settings(PaperSchedule)[0]
    assert (start.name, start.bounds, start.step) == ("start", (0, 1), 0.05)
    assert all(settings(cls) for cls in SCHEDULE_CLASSES.values())
    lr = next(s for s in settings(TrainConfig) if s.name == "lr")
    assert form_options(lr) == {
        "label": "learning rate",
        "tooltip": "Adam learning rate",
        "min": 0,
        "step": 1e-4,
    }


def test_finetune_config() -> None:
    config = FinetuneConfig(epochs=3, alpha_start=0.6, alpha_step=0.2)
    assert config.schedule == {"kind": "paper", "start": 0.6, "step": 0.2, "floor": 0.01}
    assert FinetuneConfig(alpha_start=0.005).schedule["floor"] == 0.005
    with pytest.raises(ValueError, match=r"FinetuneConfig\.epochs must be an integer >= 1"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="mix_ratio"):
        FinetuneConfig(mix_ratio=-1.0)
    with pytest.raises(ValueError, match="unknown device"):
        FinetuneConfig(device="tpu")


def test_steps_per_epoch_is_one_declared_setting() -> None:
    spec = {s.name: s for s in settings(TrainConfig)}["steps_per_epoch"]
    assert (spec.default, spec.flag, spec.none_as, spec.bounds) == (
        250,
        "--steps-per-epoch",
        0,
        (1, None),
    )
    assert spec.same_on_resume and spec.optional and "3D" in spec.help
    assert TrainConfig(steps_per_epoch=None).steps_per_epoch is None  # one tiling
    config = TrainConfig(dims=3, steps_per_epoch=7, max_steps_per_epoch=5)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"TrainConfig\.steps_per_epoch must be an integer >= 1"):
        TrainConfig(steps_per_epoch=0)
