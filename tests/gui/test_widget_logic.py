"""The widgets' logic without Qt: importable without a display, and the form's
fields as data (presets, settings, fields generated from declared settings)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from napari_boundary_seg._widgets._logic import (
    TRAIN_FIELDS,
    RunState,
    preset_values,
    settings_from_values,
    specs_from_settings,
    train_fields,
)

QT_FREE = ("_logic", "_layers", "_checkpoints", "_edits", "_jobs")


def test_logic_modules_import_without_qt():
    code = "; ".join(
        [
            "import sys",
            *(f"import napari_boundary_seg._widgets.{name}" for name in QT_FREE),
            "assert 'qtpy' not in sys.modules, 'qtpy imported'",
        ]
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_are_field_values_and_map_back_to_the_config():
    quick = preset_values("quick")
    assert quick["max_steps"] == 0 and quick["slice_size"] == 0 and quick["schedule"] == "paper"
    settings = settings_from_values({**{s.name: s.default for s in TRAIN_FIELDS}, **quick})
    assert settings["max_steps_per_epoch"] is None and settings["slice_size"] is None
    assert settings["skip_empty_slices"] is False and settings["augment"] is None
    assert settings["schedule_kind"] == "paper" and settings["schedule_params"]["floor"] == 0.5
    # the Quick start's 3D epochs: one tiling (0 in the field); the paper's: 250 steps
    assert quick["steps_per_epoch"] == 0 and settings["steps_per_epoch"] is None
    assert preset_values("paper")["steps_per_epoch"] == 250
    assert RunState("running") is RunState.RUNNING and RunState.RUNNING == "running"
    assert RunState.PAUSED.active and not RunState.DONE.active


def _declared(name, kind, default, **facts):
    base = {"optional": False, "help": f"{name} help", "bounds": None, "step": None,
            "choices": None, "label": name.replace("_", " "), "none_as": None,
            "none_text": None, "form": True}  # fmt: skip
    return SimpleNamespace(name=name, kind=kind, default=default, **{**base, **facts})


def test_a_declared_setting_shows_up_in_the_form():
    declared = [
        _declared("lr_patience", "int", 20, bounds=(1, None)),
        _declared("new_knob", "float", 0.25, bounds=(0, 1), step=0.05),
        _declared("percentiles", "", None),  # structured: the form leaves it out
        _declared("old_alias", "bool", False, form=False),  # the command line only
    ]
    specs = {s.name: s for s in specs_from_settings(declared)}
    knob = specs["new_knob"]
    assert knob.section == "advanced" and knob.config == "new_knob" and knob.default == 0.25
    assert knob.bounds == (0, 1) and knob.step == 0.05 and knob.help == "new_knob help"
    assert "percentiles" not in specs and "old_alias" not in specs
    # a field the widget shows keeps its presentation, the declaration fills the rest
    patience = specs["lr_patience"]
    assert patience.label == "lr patience" and patience.bounds == (1, 1_000_000)
    assert patience.default == 20 and patience.section == "advanced" and patience.preset


def test_train_fields_come_from_the_declared_config():
    from napari_boundary_seg.core.config import TrainConfig
    from napari_boundary_seg.core.settings import settings

    specs = {s.config: s for s in train_fields() if s.config}
    declared = {d.name: d for d in settings(TrainConfig)}
    assert specs["lr_patience"].help == declared["lr_patience"].help
    assert specs["lr_factor"].section == "advanced"  # declared, not placed by the widget
    steps = specs["steps_per_epoch"]  # declared; placed in the Mode section, by the patch
    assert steps.section == "mode" and steps.help == declared["steps_per_epoch"].help
    assert steps.zero_is_none and steps.default == 250 and steps.bounds[0] == 0
    assert specs["augment"].choices[0][0] == f"default ({declared['augment'].none_text})"
    # command-line-only settings stay out of the form
    assert not declared["amp"].form and "amp" not in specs
    assert not declared["overwrite"].form and "overwrite" not in specs


def test_output_colormaps_map_each_value_and_avoid_the_direct_colormap():
    """The plugin's Labels colours are fixed per value (0 transparent, missing
    values transparent or the default) and are not napari's DirectLabelColormap,
    whose first use compiles numba's typed dict (seconds) where numba is installed."""
    import numpy as np
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_boundary_seg._widgets._layers import (
        PREDICTION_COLORS,
        fixed_label_colormap,
        output_label_colormap,
    )

    cmap = fixed_label_colormap({1: "red", 3: "blue"})
    rgba = cmap.map(np.array([0, 1, 2, 3], dtype=np.uint8))
    np.testing.assert_allclose(rgba[1], [1, 0, 0, 1])
    np.testing.assert_allclose(rgba[3], [0, 0, 1, 1])
    assert rgba[0][3] == 0 and rgba[2][3] == 0
    pred = output_label_colormap("prediction")
    assert not isinstance(pred, DirectLabelColormap)
    rgba = pred.map(np.array([1, 5, 7, 255], dtype=np.uint8))
    np.testing.assert_allclose(rgba[0], transform_color(PREDICTION_COLORS[1])[0], atol=1e-6)
    np.testing.assert_allclose(rgba[1], transform_color(PREDICTION_COLORS[5])[0], atol=1e-6)
    np.testing.assert_allclose(rgba[2], transform_color("#bdbdbd")[0], atol=1e-6)
    np.testing.assert_allclose(rgba[3], transform_color("#bdbdbd")[0], atol=1e-6)


def test_label_layers_get_the_narrowest_dtype_napari_draws_without_hashing():
    import numpy as np

    from napari_boundary_seg._widgets._layers import compact_labels

    small = compact_labels(np.array([[0, 1], [2, 255]], dtype=np.int64))
    assert small.dtype == np.uint8 and small.flags.c_contiguous and small[1, 1] == 255
    assert compact_labels(np.array([0, 256])).dtype == np.int32
    assert compact_labels(np.array([-1, 3])).dtype == np.int32
    assert compact_labels(np.zeros((0, 3), np.int64)).dtype == np.uint8


def test_training_waits_for_the_preview_layer_once_and_not_past_a_stop(tmp_path, monkeypatch):
    """After the first preview the worker holds until the GUI has added the
    preview layer (napari's insert then has the CPU to itself); later previews
    do not wait, and a stop ends the wait."""
    import threading
    import time

    import numpy as np

    from napari_boundary_seg._widgets._jobs import PreviewEvent, training_job
    from napari_boundary_seg._widgets._layers import ImageStack
    from napari_boundary_seg.core.events import TrainControl
    from napari_boundary_seg.core.presets import quick_start_config, split_slices

    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16, 6), dtype=np.int64)
    labels[5:11, 5:11, 1:5] = 1
    images = (rng.normal(0.3, 0.05, (1, 16, 16, 6)) + 0.5 * labels).astype(np.float32)
    stack = ImageStack(images, (1.0, 1.0, 1.0), {})

    def run(shown, control, on_preview):
        """The seconds from each preview to the worker's next event."""
        config = quick_start_config(epochs=3, depth=2, base_channels=4, device="cpu",
                                    out_dir=str(tmp_path / "run"), overwrite=True)  # fmt: skip
        cases = split_slices(images, labels, (1.0, 1.0, 1.0), 2, config.val_fraction)
        job = training_job(
            config, lambda: cases, control, threading.Event(), (stack, lambda: (2, 3)), shown
        )
        gaps, t0 = [], None
        for event in job:
            if t0 is not None:
                gaps.append(time.monotonic() - t0)
                t0 = None
            if isinstance(event, PreviewEvent):
                t0 = time.monotonic()
                on_preview()
        return gaps

    shown = threading.Event()
    # the GUI has the layer in 0.6 s after the first preview
    gaps = run(shown, TrainControl(), lambda: threading.Timer(0.6, shown.set).start())
    assert len(gaps) == 3
    assert gaps[0] >= 0.55, gaps  # held until the layer was in
    assert max(gaps[1:]) < 0.5, gaps  # written in place from then on: no wait

    control = TrainControl()  # Stop pressed 0.2 s into the wait: not the full 5 s
    gaps = run(threading.Event(), control, lambda: threading.Timer(0.2, control.stop).start())
    assert len(gaps) == 1 and gaps[0] < 2.5, gaps

    # a layer that never comes (its delivery failed): one wait, to the limit, not one per epoch
    monkeypatch.setattr("napari_boundary_seg._widgets._jobs.PREVIEW_LAYER_WAIT_S", 0.4)
    gaps = run(threading.Event(), TrainControl(), lambda: None)
    assert len(gaps) == 3 and gaps[0] >= 0.35 and max(gaps[1:]) < 0.3, gaps
