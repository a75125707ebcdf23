"""The Predict and Finetune widgets with a model package: File > Open Sample >
Starter model, then Predict docked and clicked with no further setup, predicts
the case with the starter model; fine-tuning starts from the package's embedded
checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_boundary_seg import _sample_data
from napari_boundary_seg._widgets.finetune import FinetuneWidget
from napari_boundary_seg._widgets.inference import InferenceWidget

pytestmark = pytest.mark.skipif(
    _sample_data.starter_model_path() is None, reason="the starter model is not built"
)


PLUGIN = "napari-boundary-seg"


def _sample_viewer(make_napari_viewer, key="lesion_case"):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    return viewer


def test_starter_model_sample_predicts_on_the_first_click(
    make_napari_viewer, qtbot, plugin_cache, errors
):
    viewer = _sample_viewer(make_napari_viewer, "starter_model")
    assert [layer.name for layer in viewer.layers] == ["FLAIR", "T1", "lesions"]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    starter = str(_sample_data.starter_model_path())
    assert widget.checkpoint.text() == starter  # shown before the click
    assert widget.images.selected_names() == ["FLAIR", "T1"]
    widget.run_button.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    truth = viewer.layers["lesions"].data > 0
    found = viewer.layers["FLAIR prediction"].data > 0
    assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.7
    _, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, "Finetune")
    assert finetune.checkpoint.text() == starter


def test_a_chosen_model_is_kept_and_a_cleared_field_takes_the_layers_model(
    make_napari_viewer, qtbot, plugin_cache, errors, tmp_path
):
    viewer = make_napari_viewer()
    widget = InferenceWidget(viewer)
    assert widget.checkpoint.text() == ""  # no layer names a model
    widget.checkpoint.setText(str(tmp_path / "mine.pt"))
    viewer.open_sample(PLUGIN, "lesion_case")
    assert widget.checkpoint.text() == str(tmp_path / "mine.pt")
    widget.checkpoint.setText("")
    widget.images.select(["FLAIR", "T1"])
    assert widget.start() is not None, errors
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    assert widget.checkpoint.text() == str(_sample_data.starter_model_path())


def test_finetune_from_a_package(make_napari_viewer, qtbot, plugin_cache, errors, tmp_path):
    viewer = _sample_viewer(make_napari_viewer)
    widget = FinetuneWidget(viewer)
    widget.images.select(["FLAIR", "T1"])
    package = _sample_data.starter_model_path()
    widget.checkpoint.setText(str(package))
    assert widget.predict() is not None, errors
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    layer = viewer.layers["FLAIR corrections"]
    parent = layer.metadata["finetune"]["checkpoint"]
    assert parent.endswith(".pt") and str(plugin_cache) in parent  # the embedded checkpoint
    z = layer.data.shape[2] // 2
    layer.data_setitem((np.array([40]), np.array([50]), np.array([z])), 1 - layer.data[40, 50, z])
    widget.epochs.setValue(1)
    widget.out_folder.setText(str(tmp_path / "ft"))
    widget.device.setCurrentText("cpu")
    assert widget.start_finetune() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert errors == []
    lineage = json.loads((tmp_path / "ft" / "lineage.json").read_text())
    assert lineage["parent"] == parent
