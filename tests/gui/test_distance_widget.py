"""Distance-map widget end to end on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_boundary_seg._widgets import _layers, _plots, _runner
from napari_boundary_seg._widgets.distance import (
    OUTLINE,
    ZERO_LEVEL,
    DistanceMapWidget,
    Mode,
    boundary_layer_name,
    phi_layer_name,
)
from napari_boundary_seg.core.distance import signed_distance_map


def _run(widget, qtbot, name):
    worker = widget.compute()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    return widget.viewer.layers[name]


def test_2d_values_by_hand(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    data = np.zeros((7, 7), dtype=np.uint8)
    data[2:5, 2:5] = 1  # a 3x3 square: ∂G is its ring, the centre is 1 voxel inside
    viewer.add_labels(data, name="sq", scale=(2.0, 1.0))
    widget = DistanceMapWidget(viewer)
    phi = _run(widget, qtbot, phi_layer_name("sq", 1, "2D"))
    assert phi.data.dtype == np.float32
    assert phi.data[3, 3] == pytest.approx(-1.0)  # centre: 1 mm to the ring along axis 1
    assert phi.data[2, 3] == 0.0 and phi.data[4, 2] == 0.0  # ring
    assert phi.data[3, 5] == pytest.approx(1.0)  # 1 voxel right of the ring, 1 mm
    assert phi.data[1, 3] == pytest.approx(2.0)  # 1 voxel above: spacing 2 mm
    assert phi.data[1, 1] == pytest.approx(np.hypot(2.0, 1.0))
    np.testing.assert_array_equal(phi.scale, (2.0, 1.0))
    lo, hi = phi.contrast_limits
    assert lo == -hi and hi > 0
    # ∂G layer: 1 exactly on the ring (φ = 0), 2 on the outline just outside
    ring_layer = viewer.layers[boundary_layer_name("sq", 1)]
    ring = ring_layer.data
    assert (ring == ZERO_LEVEL).sum() == 8 and ring[3, 3] == 0 and ring[2, 2] == ZERO_LEVEL
    # the outline takes the corners too: a continuous contour, not a dotted one
    assert (ring == OUTLINE).sum() == 16 and ring[1, 3] == OUTLINE and ring[1, 1] == OUTLINE
    assert ring_layer.opacity == 1.0
    # in 2D the black outline does not hide φ = 0: ∂G itself is transparent
    colors = ring_layer.colormap.map([0, ZERO_LEVEL, OUTLINE])
    np.testing.assert_allclose(colors[2], [0, 0, 0, 1])
    assert colors[1][3] == 0 and colors[0][3] == 0
    # φ is translucent over the anatomy, with a colorbar; marked as a map
    assert phi.blending == "translucent" and phi.opacity < 1.0
    assert phi.colorbar.visible
    assert phi.metadata["boundary_seg_output"] == "phi"
    # the status bar shows φ under the cursor, named with its unit
    assert viewer.layers.selection.active is phi
    viewer.mouse_over_canvas = True
    viewer.cursor.position = phi.data_to_world((3, 3))
    viewer.update_status_from_cursor()
    status = viewer.status
    assert "φ1 sq 2D (mm)" in str(status) and "-1" in str(status)
    # the colorbar's unit, beside it, while φ is shown
    from napari_boundary_seg._widgets.distance import text_overlay

    overlay = text_overlay(viewer)
    assert overlay.visible and "mm" in overlay.text
    assert overlay.position == phi.colorbar.position
    phi.visible = False
    assert not overlay.visible
    phi.visible = True
    assert overlay.visible
    viewer.layers.remove(phi)
    assert not overlay.visible
    assert errors == []


@pytest.mark.parametrize("mode", [Mode.VOLUME, Mode.SLICES])
def test_3d_matches_core_and_recompute_replaces(make_napari_viewer, qtbot, errors, mode):
    viewer = make_napari_viewer()
    data = np.zeros((5, 8, 9), dtype=np.int32)
    data[1:4, 2:6, 3:7] = 2
    data[0, 0, 0] = 1
    lab = viewer.add_labels(data, name="les", scale=(3.0, 1.0, 0.5), translate=(1, 2, 3))
    widget = DistanceMapWidget(viewer)
    widget.class_spin.setValue(2)
    widget.set_mode(mode)
    viewer.dims.order = (2, 0, 1)  # slicing along data axis 2
    dims = "3D" if mode is Mode.VOLUME else "2D"  # the name says how φ was computed
    phi = _run(widget, qtbot, phi_layer_name("les", 2, dims))
    axis = None if mode is Mode.VOLUME else 2
    expected = signed_distance_map(data == 2, spacing=(3.0, 1.0, 0.5), axis=axis)
    np.testing.assert_allclose(phi.data, expected, atol=1e-6)
    np.testing.assert_allclose(phi.translate, (1, 2, 3))
    n_layers = len(viewer.layers)

    lab.data = np.where(data == 2, 0, data).astype(np.int32)
    lab.data[2, 3, 4] = 2
    _run(widget, qtbot, phi_layer_name("les", 2, dims))
    assert len(viewer.layers) == n_layers  # replaced, not stacked
    assert viewer.layers[phi_layer_name("les", 2, dims)].data[2, 3, 4] == 0.0
    assert viewer.layers[phi_layer_name("les", 2, dims)].data[2, 4, 4] == pytest.approx(1.0)
    assert errors == []


def test_bad_inputs_notify_and_add_nothing(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    widget = DistanceMapWidget(viewer)
    assert widget.compute() is None
    assert "No labels layer" in errors[-1]

    # float images (φ maps, probabilities, scans) are not offered as labels
    viewer.add_image(np.random.default_rng(0).random((4, 4)).astype(np.float32), name="float")
    nan = np.zeros((4, 4), dtype=np.float32)
    nan[0, 0] = np.nan
    viewer.add_image(nan, name="nan")
    assert widget.labels_combo.names() == []
    widget.labels_combo.set_layer("float")
    assert widget.labels_combo.layer() is None
    assert widget.compute() is None
    assert "No labels layer" in errors[-1]

    viewer.add_labels(np.zeros((4, 4), dtype=np.uint8), name="empty")
    widget.labels_combo.set_layer("empty")
    assert widget.compute() is None
    assert "no voxel of class 1" in errors[-1]

    viewer.add_labels(np.ones((4, 4), dtype=np.uint8), name="full")
    widget.labels_combo.set_layer("full")
    assert widget.compute() is None
    assert "fills all" in errors[-1]
    assert len(errors) == 4
    assert [layer.name for layer in viewer.layers] == ["float", "nan", "empty", "full"]


def test_combo_follows_layer_list(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = DistanceMapWidget(viewer)
    assert widget.labels_combo.count() == 0
    viewer.add_image(np.zeros((3, 3), dtype=np.uint8), name="img")
    viewer.add_labels(np.zeros((3, 3), dtype=np.uint8), name="lab")
    viewer.add_labels(np.zeros((3, 3), dtype=np.int32), name="other")
    assert widget.labels_combo.names() == ["lab", "other"]  # integer Labels layers only
    viewer.layers["lab"].name = "renamed"
    assert widget.labels_combo.findText("renamed") >= 0
    viewer.layers.remove("other")
    assert widget.labels_combo.count() == 1


def test_worker_error_becomes_notification(make_napari_viewer, qtbot, errors):
    make_napari_viewer()
    returned = []

    def failing():
        yield _runner.Progress(0, 2)
        raise ValueError("spacing (0, 1) must be positive")

    worker = _runner.start_progress_worker(failing, returned.append, "test", start=False)
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        worker.start()
    assert returned == []
    assert errors == ["spacing (0, 1) must be positive"]


def test_unexpected_worker_error_names_its_type(make_napari_viewer, qtbot, errors):
    make_napari_viewer()
    events: list[object] = []

    def failing():
        yield _runner.Progress(1, 3, "half")
        yield "not progress"
        raise ZeroDivisionError("boom")  # not RuntimeError: superqt skips `errored` for it

    worker = _runner.start_progress_worker(
        failing, events.append, "test", on_event=events.append, start=False
    )
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        worker.start()
    assert events == ["not progress"]  # only the non-Progress event; nothing returned
    assert errors == ["test failed: ZeroDivisionError: boom"]
    _layers.notify_error(KeyError("k"))
    _layers.notify_error("plain text")
    assert errors[1:] == ["KeyError: 'k'", "plain text"]


def test_docks_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-boundary-seg", "Distance")
    assert isinstance(widget, DistanceMapWidget)
    viewer.add_labels(np.zeros((3, 3), dtype=np.uint8), name="lab")
    assert widget.labels_combo.currentText() == "lab"  # it listens to this viewer


def test_plot_canvas_helper(qtbot):
    canvas = _plots.PlotCanvas()
    qtbot.addWidget(canvas)
    canvas.plot([0, 1, 2], {"α": [1.0, 0.99, 0.98], "1 - α": [0.0, 0.01, 0.02]}, title="alpha")
    lines = canvas.axes.get_lines()
    assert [line.get_label() for line in lines] == ["α", "1 - α"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.0, 0.01, 0.02])
    assert canvas.axes.get_legend() is not None and canvas.axes.get_title() == "alpha"


def test_3d_view_draws_the_zero_level_surface_not_a_projection(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    data = np.zeros((6, 7, 8), dtype=np.uint8)
    data[2:5, 2:5, 3:6] = 1
    viewer.add_labels(data, name="les")
    widget = DistanceMapWidget(viewer)
    phi = _run(widget, qtbot, phi_layer_name("les", 1, "3D"))
    ring = viewer.layers[boundary_layer_name("les", 1)]
    np.testing.assert_array_equal(ring.data == ZERO_LEVEL, (phi.data == 0) & (data > 0))
    viewer.dims.ndisplay = 3
    assert not phi.visible  # no max projection of φ (a solid red box)
    assert ring.visible and ring.colormap.map([ZERO_LEVEL])[0][3] == 1.0
    assert ring.colormap.map([OUTLINE])[0][3] == 0.0
    viewer.dims.ndisplay = 2
    assert phi.visible and ring.colormap.map([ZERO_LEVEL])[0][3] == 0.0


def test_small_lesion_interiors_read_blue_over_orange_labels():
    """φ = -2 mm against limits of ±25 mm, drawn at the layer's opacity over
    napari's orange label colour: clearly blue, not grey."""
    from napari_boundary_seg._widgets.distance import PHI_COLORMAP, PHI_OPACITY

    lo, hi = -25.0, 25.0
    rgba = PHI_COLORMAP.map(np.array([(-2.0 - lo) / (hi - lo)]))[0]
    orange = np.array([1.0, 0.6, 0.2])
    seen = PHI_OPACITY * rgba[:3] + (1 - PHI_OPACITY) * orange
    assert seen[2] - seen[0] > 0.25 and seen[2] > seen[1]
    far = PHI_COLORMAP.map(np.array([0.05]))[0]  # deep inside: dark blue
    assert far[2] > far[0] + 0.2


def test_glyph_steps_render_the_text_ahead(make_napari_viewer):
    """The colorbar's and the unit's glyphs are rendered into the canvas's
    glyph cache by delivery steps, a few a turn, not by their first paint."""
    from napari.components import ViewerModel

    viewer = make_napari_viewer()
    info = viewer.window._qt_viewer.canvas._font_info
    font = info.font_manager.get_font(info.face)
    text = "ζ(µ)"
    assert not set(text) & set(font._glyphs)
    steps = _runner.glyph_steps(viewer, text + _runner.NUMBER_GLYPHS, per_step=3)
    chars = set(_runner.LAYOUT_GLYPHS + text + _runner.NUMBER_GLYPHS)
    assert len(steps) == -(-len(chars) // 3)  # each character once, 3 a turn
    for step in steps:
        step()
    assert chars <= set(font._glyphs)
    # a viewer without a canvas (or a napari without this cache): no steps
    assert _runner.glyph_steps(ViewerModel(), text) == []


def _drawn_parts(viewer, layer):
    """The colorbar's vispy parts that a paint draws (napari's private canvas)."""
    canvas = viewer.window._qt_viewer.canvas
    node = canvas._layer_overlay_to_visual[layer][layer.colorbar].node
    parts = [p for c in node.children for p in (getattr(c, "_subvisuals", None) or [c])]
    return sum(p.visible for p in parts)


def test_overlay_part_steps_draw_the_colorbar_a_part_a_turn(make_napari_viewer):
    """The colorbar's visual is built while its layer is hidden with every
    part hidden; each step shows one part (one GL program per paint), and
    after the steps it draws what napari's own colorbar draws."""
    from napari.components import ViewerModel

    viewer = make_napari_viewer()
    data = np.linspace(-1, 1, 8 * 9, dtype=np.float32).reshape(8, 9)
    plain = viewer.add_image(data, name="plain")
    plain.colorbar.visible = True  # napari's way: every part in one paint
    expected = _drawn_parts(viewer, plain)
    assert expected >= 3  # gradient, frame, ticks and their labels

    layer = viewer.add_image(data, name="stepped", visible=False)
    steps = _runner.overlay_part_steps(viewer, layer, layer.colorbar)
    assert layer.colorbar.visible and len(steps) == expected
    assert _drawn_parts(viewer, layer) == 0
    layer.visible = True
    for done, step in enumerate(steps, start=1):
        step()
        assert _drawn_parts(viewer, layer) == done
    # where napari's canvas is not there: the colorbar is simply shown
    model = ViewerModel()
    other = model.add_image(data)
    assert _runner.overlay_part_steps(model, other, other.colorbar) == []
    assert other.colorbar.visible


def test_delivery_runs_the_steps_a_step_returns_next(qtbot):
    """A step that returns a list of steps (known only when it runs) has them
    run next, a turn each, before the steps queued after it; the same order
    when a widget runs its steps at once (run_steps_now)."""
    seen: list[str] = []

    def first():
        seen.append("first")
        return [lambda: seen.append("a"), lambda: seen.append("b")]

    steps = [first, lambda: seen.append("last")]
    delivery = _runner.Delivery()
    delivery.run(*steps)
    qtbot.waitUntil(lambda: not delivery.pending, timeout=5_000)
    assert seen == ["first", "a", "b", "last"]
    seen.clear()
    _runner.run_steps_now(steps)
    assert seen == ["first", "a", "b", "last"]


def test_a_new_phi_layer_ends_with_its_whole_colorbar_drawn(make_napari_viewer, qtbot, errors):
    """Through the widget's delivery: the φ layer's colorbar, built hidden,
    ends with every part drawn (none left hidden by the steps)."""
    viewer = make_napari_viewer()
    data = np.zeros((9, 9), dtype=np.uint8)
    data[3:6, 3:6] = 1
    viewer.add_labels(data, name="sq")
    widget = DistanceMapWidget(viewer)
    phi = _run(widget, qtbot, phi_layer_name("sq", 1, "2D"))
    reference = viewer.add_image(phi.data, name="reference")
    reference.colorbar.visible = True
    assert phi.colorbar.visible
    assert _drawn_parts(viewer, phi) == _drawn_parts(viewer, reference)
    assert errors == []
