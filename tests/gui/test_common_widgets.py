"""The shared widget pieces: magicgui layer pickers that offer only what fits,
and dock widgets that scroll and fit a 1366×768 laptop screen."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_boundary_seg._widgets._fields import (
    LayerCombo,
    LayerList,
    PathEdit,
    double_spin,
    int_spin,
)
from napari_boundary_seg._widgets._layers import (
    format_duration,
    is_integer_labels,
    mark_output,
    unique_layer_name,
)
from napari_boundary_seg._widgets._progress import ProgressPanel

PLUGIN = "napari-boundary-seg"
MY_WIDGETS = ("Distance", "Compare", "Finetune", "Predict")


def test_pickers_are_magicgui_and_offer_only_what_fits(make_napari_viewer):
    from magicgui.widgets import ComboBox, FileEdit, Select

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 4), np.float32), name="FLAIR")
    viewer.add_image(np.zeros((3, 4), np.float32), name="φ", metadata=mark_output("phi"))
    viewer.add_image(np.zeros((3, 4), np.float32), name="prob", metadata=mark_output("probability"))
    viewer.add_labels(np.zeros((3, 4), np.uint8), name="lesions")
    labels = LayerCombo(viewer, (Labels,), accept=is_integer_labels)
    images = LayerList(viewer, Image)
    assert isinstance(labels.magic, ComboBox) and isinstance(images.magic, Select)
    assert labels.names() == ["lesions"] and labels.layer() is viewer.layers["lesions"]
    assert [images.item(i).text() for i in range(images.count())] == ["FLAIR"]
    assert images.selected_names() == ["FLAIR"]  # first look: every scan chosen
    images.show_all.setChecked(True)
    assert [images.item(i).text() for i in range(images.count())] == ["FLAIR", "φ", "prob"]
    assert images.selected_names() == ["FLAIR"]  # the choice survives the refresh
    # the pickers follow the layer list
    viewer.add_labels(np.zeros((3, 4), np.int32), name="more")
    assert labels.names() == ["lesions", "more"]
    viewer.layers["lesions"].name = "renamed"
    assert labels.names() == ["renamed", "more"] and labels.layer().name == "renamed"
    none = LayerCombo(viewer, (Labels,), allow_none=True)
    assert none.names()[0] == "(none)" and none.layer() is None
    # files and numbers come from magicgui too
    path = PathEdit("folder", placeholder="somewhere")
    assert isinstance(path.magic, FileEdit) and path.text() == ""
    path.setText(" /tmp ")
    assert path.text() == "/tmp"
    spin, fspin = int_spin(5, 1, 9), double_spin(0.25, 0.0, 1.0, 0.05, 3)
    assert spin.value() == 5 and fspin.value() == 0.25 and fspin.decimals() == 3
    assert type(spin.magic).__module__.startswith("magicgui")


def test_unique_layer_name(make_napari_viewer):
    viewer = make_napari_viewer()
    assert unique_layer_name(viewer, "a prediction") == "a prediction"
    viewer.add_labels(np.zeros((2, 2), np.uint8), name="a prediction")
    assert unique_layer_name(viewer, "a prediction") == "a prediction [2]"
    viewer.add_labels(np.zeros((2, 2), np.uint8), name="a prediction [2]")
    assert unique_layer_name(viewer, "a prediction") == "a prediction [3]"


def test_progress_panel_shows_elapsed_and_remaining(qtbot, monkeypatch):
    from napari_boundary_seg._widgets import _progress

    now = [100.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    panel = ProgressPanel()
    qtbot.addWidget(panel)
    panel.start("predicting")
    assert panel.isVisibleTo(None) or not panel.isHidden()
    now[0] = 110.0
    panel.set(1, 4, "slice 1/4")
    panel.flush()
    assert panel.bar.maximum() == 4 and panel.bar.value() == 1
    assert panel.text() == "slice 1/4, elapsed 0:10, about 0:30 left"
    now[0] = 140.0
    panel.set(4, 4)
    panel.finish("done")
    assert panel.text() == "done in 0:40" and panel.bar.value() == panel.bar.maximum()
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == format_duration(float("inf")) == "–"
    assert format_duration(float("nan")) == "–" and format_duration(-3) == "0:00"


@pytest.mark.parametrize("name", MY_WIDGETS)
def test_dock_scrolls_and_fits_1366x768(make_napari_viewer, qtbot, name):
    from qtpy.QtWidgets import QApplication, QScrollArea

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    for _ in range(5):
        QApplication.processEvents()
    area = widget.scroll_area
    assert isinstance(area, QScrollArea) and area.widgetResizable()
    # the dock asks for little: it scrolls instead of forcing a taller window
    assert widget.minimumSizeHint().height() <= 200, widget.minimumSizeHint()
    assert dock.minimumSizeHint().height() <= 300
    assert window.height() <= 768 and window.width() <= 1366
    assert dock.geometry().bottom() <= window.height()  # not cut off at the bottom
    body = area.widget()
    if body.sizeHint().height() > area.viewport().height():
        assert area.verticalScrollBar().maximum() > 0  # the rest is reachable
    assert widget.minimumSizeHint().width() <= 1366 // 3
    assert area.horizontalScrollBar().maximum() == 0  # nothing cut off sideways


def test_layer_steps_add_a_layer_in_three_turns(make_napari_viewer, qtbot):
    """A delivered layer is inserted hidden and not activated (one turn), shown
    (the next), then made active and handed to ``done`` (the last); nothing
    runs in the turn that queues the steps (the worker's end is shown there)."""
    from napari_boundary_seg._widgets._runner import Delivery, layer_steps

    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((3, 4), np.float32), name="FLAIR")
    done: list = []
    seen: list[tuple[bool, bool]] = []  # after each step: visible, active

    def watched(step):
        def run():
            step()
            layer = viewer.layers["p"]
            seen.append((layer.visible, viewer.layers.selection.active is layer))

        return run

    steps = layer_steps(viewer, "labels", np.ones((3, 4), np.int32), done.append, name="p")
    delivery = Delivery()
    delivery.run(*(watched(step) for step in steps))
    assert delivery.pending and "p" not in viewer.layers and not seen  # nothing yet
    qtbot.waitUntil(lambda: not delivery.pending, timeout=5_000)
    assert seen == [(False, False), (True, False), (True, True)]
    layer = viewer.layers["p"]
    assert viewer.layers.selection.active is layer and done == [layer] and first in viewer.layers


def test_gc_freeze_once_and_again_after_a_library_is_imported(monkeypatch):
    """Long-lived objects go to the permanent GC generation at the first
    delivery, and again only when a job has since imported many modules
    (torch's first import), not at every delivery."""
    import gc
    import sys

    from napari_boundary_seg._widgets import _runner

    frozen: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(sys.modules)))
    monkeypatch.setattr(_runner, "_FROZEN_AT_MODULES", 0)
    _runner.freeze_long_lived_objects()
    _runner.freeze_long_lived_objects()
    assert len(frozen) == 1
    fake = {f"_fake_module_{k}": object() for k in range(_runner.REFREEZE_MODULES)}
    monkeypatch.setattr(sys, "modules", {**sys.modules, **fake})
    _runner.freeze_long_lived_objects()
    _runner.freeze_long_lived_objects()
    assert len(frozen) == 2 and frozen[1] == frozen[0] + _runner.REFREEZE_MODULES


def test_alpha_plot_draws_only_when_the_weights_change(qtbot, monkeypatch):
    """The Train form refreshes its α plot whenever a layer is added to the
    viewer; the same planned weights draw nothing (a draw costs 30-90 ms)."""
    from napari_boundary_seg._widgets._plots import AlphaPlot

    plot = AlphaPlot()
    qtbot.addWidget(plot)
    draws: list[int] = []
    monkeypatch.setattr(plot.canvas, "draw_idle", lambda: draws.append(1))
    weights = [(1.0 - 0.01 * e, 0.01 * e) for e in range(5)]
    plot.set_weights(weights)
    plot.set_weights(list(weights))
    assert len(draws) == 1
    plot.set_weights(weights[:4])
    assert len(draws) == 2 and plot.region_line.get_xdata()[-1] == 4


@pytest.mark.parametrize(
    "loss, labels",
    [
        ("gdl+bl", ("α (GDL)", "1−α (BL)")),
        ("gdl", ("GDL", "BL")),
        ("gdl+ce", ("GDL + CE", "BL")),
        ("dice", ("Dice", "BL")),
        ("bl", ("no regional term", "BL")),
    ],
)
def test_alpha_plot_legend_names_the_loss(qtbot, monkeypatch, loss, labels):
    """α belongs to the GDL + BL schedule only: for another loss the legend
    names its regional term's weight and the boundary loss's, and a change of
    loss alone (the same weights) redraws the legend."""
    from napari_boundary_seg._widgets._logic import planned_weights
    from napari_boundary_seg._widgets._plots import AlphaPlot

    plot = AlphaPlot()
    qtbot.addWidget(plot)
    draws: list[int] = []
    monkeypatch.setattr(plot.canvas, "draw_idle", lambda: draws.append(1))
    weights = planned_weights(loss, "paper", {}, 3)
    plot.set_weights(weights, "gdl+bl" if loss != "gdl+bl" else "gdl")
    plot.set_weights(weights, loss)
    assert plot.legend_labels() == labels and len(draws) == 2
    legend = [t.get_text() for t in plot.axes.get_legend().get_texts()]
    assert legend == list(labels)


def test_delivery_stops_at_a_failing_step(qtbot, errors):
    from napari_boundary_seg._widgets._runner import Delivery

    ran: list[int] = []
    delivery = Delivery()
    delivery.run(lambda: ran.append(1), lambda: 1 / 0, lambda: ran.append(3))
    qtbot.waitUntil(lambda: not delivery.pending, timeout=5_000)
    assert ran == [1] and any("ZeroDivisionError" in e for e in errors)


def test_progress_relay_makes_napari_bar_after_the_click(qtbot):
    """napari's progress bar (it relays out the window) is made by the relay's
    timer, not when the relay is made in the Start click."""
    from napari_boundary_seg._widgets._runner import ProgressRelay

    relay = ProgressRelay("work", interval_ms=20)
    assert relay.bar is None
    relay.set(1, 4, "step")
    qtbot.waitUntil(lambda: relay.bar is not None, timeout=5_000)
    qtbot.waitUntil(lambda: relay.bar.n == 1, timeout=5_000)
    assert relay.bar.total == 4
    relay.close()
    assert relay.bar is None


def test_modalities_of_reads_a_checkpoint_once_per_version(tmp_path, monkeypatch):
    import os

    from napari_boundary_seg._widgets import inference
    from napari_boundary_seg.core import checkpoint

    reads: list[str] = []
    monkeypatch.setattr(
        checkpoint, "checkpoint_modalities", lambda p: reads.append(str(p)) or ["FLAIR"]
    )
    inference._modalities_cached.cache_clear()
    path = tmp_path / "best.pt"
    path.write_bytes(b"x")
    assert inference.modalities_of(path) == ["FLAIR"] == inference.modalities_of(str(path))
    assert len(reads) == 1
    os.utime(path, ns=(1, 1))  # a new version of the file is read again
    assert inference.modalities_of(path) == ["FLAIR"] and len(reads) == 2
    assert inference.modalities_of(tmp_path / "missing.pt") == []


def test_no_futurewarning_from_the_plugin_through_naparis_proxy(make_napari_viewer, qtbot, errors):
    """Docked through napari's plugin mechanism, the widgets get a viewer proxy that
    warns (FutureWarning) on private attribute use; with those warnings turned
    into errors, the docks open and every way the plugin adds a layer works."""
    import warnings

    from napari_boundary_seg._widgets._layers import insert_layer_quietly
    from napari_boundary_seg._widgets._runner import Delivery, layer_steps
    from napari_boundary_seg._widgets.train import PREVIEW_NAME, PreviewEvent

    viewer = make_napari_viewer()
    scan = viewer.add_image(np.zeros((4, 6, 5), np.float32), name="FLAIR")
    viewer.add_labels(np.zeros((4, 6, 5), np.int32), name="lesions")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        docked = {}
        for name in ("Distance", "Compare", "Train",
                     "Predict", "Finetune"):  # fmt: skip
            _, docked[name] = viewer.window.add_plugin_dock_widget("napari-boundary-seg", name)
        train = docked["Train"]
        proxy = train.viewer
        assert type(proxy).__name__ == "PublicOnlyProxy"
        viewer.layers.selection.active = scan
        quiet = insert_layer_quietly(proxy, Labels(np.zeros((4, 6, 5), np.int32), name="q"))
        assert viewer.layers.selection.active is scan and quiet in viewer.layers
        delivery = Delivery()
        delivery.run(*layer_steps(proxy, "labels", np.ones((4, 6, 5), np.int32), name="steps"))
        qtbot.waitUntil(lambda: not delivery.pending, timeout=5_000)
        assert viewer.layers.selection.active is viewer.layers["steps"]
        from napari_boundary_seg._widgets._layers import images_from_layers

        train._stack = images_from_layers([scan])
        train._on_preview(PreviewEvent(0, 2, 1, np.ones((4, 6), np.uint8)))
        qtbot.waitUntil(lambda: PREVIEW_NAME in viewer.layers, timeout=5_000)
        qtbot.waitUntil(lambda: not train._preview_delivery.pending, timeout=5_000)
    assert errors == []


@pytest.mark.parametrize("name", (*MY_WIDGETS, "Train"))
def test_dock_title_is_not_cut_at_300_px(make_napari_viewer, qtbot, name):
    """napari titles a dock "<name> (<plugin>)"; squeezed to 300 px (or the
    least the widget takes), the whole title stays readable."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    viewer.window._qt_window.resizeDocks([dock], [300], Qt.Orientation.Horizontal)
    for _ in range(5):
        QApplication.processEvents()
    title = dock.titleBarWidget().title
    assert title.fontMetrics().horizontalAdvance(title.text()) <= title.width(), title.text()


def test_training_curves_are_titled_by_the_loss(qtbot):
    """GDL + BL: the α formula and the boundary term in mm; GDL: the boundary
    term is shown but not trained on, and its chart says so."""
    from napari_boundary_seg._widgets._plots import TrainingCurves

    curves = TrainingCurves()
    qtbot.addWidget(curves)
    assert "α·GDL + (1−α)·BL" in curves.loss_chart.title
    curves.reset(3, loss="gdl")
    assert curves.loss_chart.title == "total: GDL"
    assert "not trained" in curves.boundary_chart.title
    curves.reset(3, loss="gdl+bl")
    assert "α·GDL" in curves.loss_chart.title and "not trained" not in curves.boundary_chart.title
    assert curves.region_chart.title == "regional term (GDL)"
    curves.reset(3, loss="gdl+ce")  # the regional chart names the regional loss trained on
    assert curves.loss_chart.title == "total: GDL+CE"
    assert curves.region_chart.title == "regional term (GDL + CE)"
    curves.reset(3, loss="ce")
    assert curves.region_chart.title == "regional term (CE)"
