"""Comparison widget end to end on tiny data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_boundary_seg._widgets import compare
from napari_boundary_seg._widgets.compare import FN, FP, TP, CompareWidget, overlay_name

SCALE = (2.0, 1.0, 0.5)
TRANSLATE = (10.0, 0.0, -4.0)


@pytest.fixture
def warnings_shown(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(compare, "show_warning", shown.append)
    return shown


def _cubes():
    gt = np.zeros((4, 6, 6), dtype=np.uint8)
    gt[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred = np.zeros_like(gt)
    pred[1:3, 1:3, 2:4] = 1  # shifted by one voxel (0.5 mm) along axis 2
    return pred, gt


def _run(widget, qtbot):
    assert widget.compare() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)


@pytest.fixture
def compared(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    pred, gt = _cubes()
    viewer.add_labels(gt, name="gt", scale=SCALE, translate=TRANSLATE)
    viewer.add_labels(pred, name="pred", scale=SCALE, translate=TRANSLATE)
    widget = CompareWidget(viewer)
    widget.pred_combo.set_layer("pred")
    widget.gt_combo.set_layer("gt")
    _run(widget, qtbot)
    return viewer, widget


def test_counts_metrics_and_table(compared, qtbot, errors):
    viewer, widget = compared
    overlay = viewer.layers[overlay_name("pred", "gt")]
    counts = np.bincount(overlay.data.ravel(), minlength=4)
    assert overlay.opacity == 1.0 and overlay.colormap.map([0])[0][3] == 0
    np.testing.assert_allclose(overlay.colormap.map([TP])[0], [0, 0x9E / 255, 0x73 / 255, 1])
    assert (counts[TP], counts[FP], counts[FN]) == (4, 4, 4)
    assert (
        overlay.data[1, 1, 2] == TP and overlay.data[1, 1, 3] == FP and overlay.data[1, 1, 1] == FN
    )
    np.testing.assert_allclose(overlay.scale, SCALE)
    # by hand: DSC = 2*4 / (8+8); the surfaces are one voxel (0.5 mm) apart
    assert widget.volume_metrics["dice"] == pytest.approx(0.5)
    assert widget.volume_metrics["hd"] == pytest.approx(0.5)
    # rows: volume + slices 1 and 2 along axis 0 (the viewer's slicing axis)
    assert widget.table.rowCount() == 3
    assert [widget.table.item(i, 0).text() for i in range(3)] == ["volume", "1", "2"]
    headers = [
        widget.table.horizontalHeaderItem(j).text() for j in range(widget.table.columnCount())
    ]
    assert headers[:5] == ["slice", "DSC", "HD (mm)", "HD95 (mm)", "ASSD (mm)"]
    assert "lesion F1" in headers
    assert widget.table.item(1, 1).text() == "0.500" and widget.table.item(1, 2).text() == "0.500"
    assert errors == []


def test_recompute_replaces_overlay(compared, qtbot):
    viewer, widget = compared
    n_layers = len(viewer.layers)
    viewer.layers["pred"].data = viewer.layers["gt"].data.copy()
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers
    overlay = viewer.layers[overlay_name("pred", "gt")].data
    assert (overlay == TP).sum() == 8 and not np.isin(overlay, [FP, FN]).any()
    assert widget.table.item(0, 1).text() == "1.000"


def test_row_click_moves_viewer_to_slice(compared, qtbot):
    viewer, widget = compared
    rect = widget.table.visualItemRect(widget.table.item(2, 0))
    qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    # slice 2 along axis 0: world = translate + 2 * scale
    assert viewer.dims.point[0] == pytest.approx(10.0 + 2 * 2.0)
    widget.go_to_row(1)
    assert viewer.dims.point[0] == pytest.approx(12.0)


def test_csv_export(compared, tmp_path, monkeypatch):
    _, widget = compared
    out = tmp_path / "table.csv"
    widget.export_csv(out)
    rows = list(csv.DictReader(out.open()))
    assert [r["scope"] for r in rows] == ["volume", "slice", "slice"]
    assert [r["slice"] for r in rows] == ["", "1", "2"]
    assert float(rows[0]["dice"]) == pytest.approx(0.5)
    assert {"hd", "hd95", "assd", "lesion_f1"} <= set(rows[0])
    with pytest.raises(FileExistsError):
        widget.export_csv(out)
    # the dialog (which confirms replacing) may overwrite
    out.write_text("old")
    monkeypatch.setattr(compare.QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    widget.export_dialog()
    assert out.read_text().startswith("scope,slice,dice")


def test_bad_inputs_notify(make_napari_viewer, errors, warnings_shown, qtbot):
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    assert widget.compare() is None and "No prediction layer" in errors[-1]
    viewer.add_labels(np.zeros((3, 4, 4), dtype=np.uint8), name="a")
    viewer.add_labels(np.zeros((3, 4, 5), dtype=np.uint8), name="b")
    widget.pred_combo.set_layer("a")
    widget.gt_combo.set_layer("b")
    assert widget.compare() is None
    assert "(3, 4, 4)" in errors[-1] and "(3, 4, 5)" in errors[-1]
    widget.gt_combo.set_layer("a")
    assert widget.compare() is None and "nothing to compare" in errors[-1]
    # float images (probabilities, φ) are not offered as labels
    viewer.add_image(np.full((3, 4, 4), 0.5, dtype=np.float32), name="soft")
    assert "soft" not in widget.pred_combo.names() and "soft" not in widget.gt_combo.names()
    widget.pred_combo.set_layer("soft")
    assert widget.pred_combo.layer() is viewer.layers["a"]
    assert len(errors) == 3
    # an empty ground truth is allowed (all false positives), with a warning
    viewer.add_labels(np.ones((3, 4, 4), dtype=np.uint8), name="c")
    widget.pred_combo.set_layer("c")
    _run(widget, qtbot)
    assert "has no foreground" in warnings_shown[-1]
    assert widget.table.item(0, 2).text() == "—"  # HD: undefined, not a number
    assert "undefined" in widget.table.item(0, 2).toolTip()
    assert "No foreground in the ground truth" in widget.summary.text()
    assert len(errors) == 3


def test_empty_prediction_reads_no_foreground_and_dashes(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    _, gt = _cubes()
    viewer.add_labels(gt, name="gt", scale=SCALE)
    viewer.add_labels(np.zeros_like(gt), name="empty pred", scale=SCALE)
    widget = CompareWidget(viewer)
    widget.pred_combo.set_layer("empty pred")
    widget.gt_combo.set_layer("gt")
    _run(widget, qtbot)
    assert "No foreground predicted in 'empty pred'" in widget.summary.text()
    headers = [
        widget.table.horizontalHeaderItem(j).text() for j in range(widget.table.columnCount())
    ]
    for header in ("HD (mm)", "HD95 (mm)", "ASSD (mm)"):
        j = headers.index(header)
        for i in range(widget.table.rowCount()):  # the volume and every slice row
            assert widget.table.item(i, j).text() == "—", (header, i)
            assert "no foreground predicted" in widget.table.item(i, j).toolTip()
    assert widget.table.item(0, headers.index("DSC")).text() == "0.000"
    assert widget.table_rows()[0]["hd"] == float("inf")  # the CSV keeps inf
    assert errors == []


def test_format_number_cells():
    from napari_boundary_seg._widgets._layers import format_number

    assert [format_number(v) for v in (None, 3, np.int64(7), 0.12345, float("nan"))] == [
        "",
        "3",
        "7",
        "0.123",
        "n/a",
    ]
    assert format_number(float("inf")) == "inf"
    assert format_number(12.345, 1, nan="–", none="–") == "12.3"  # the fine-tuning table
    assert format_number(float("nan"), 1, nan="–", none="–") == "–"
    assert format_number(None, 1, nan="–", none="–") == "–"


def test_defaults_never_compare_a_layer_with_itself(make_napari_viewer):
    from napari_boundary_seg._widgets._layers import mark_output

    viewer = make_napari_viewer()
    pred, gt = _cubes()
    viewer.add_labels(gt, name="lesions")
    widget = CompareWidget(viewer)
    assert widget.gt_combo.layer() is viewer.layers["lesions"]
    viewer.add_labels(gt, name="other labels")
    # two labels layers: not the same one in both pickers
    assert widget.pred_combo.layer() is not widget.gt_combo.layer()
    assert widget.gt_combo.layer() is viewer.layers["lesions"]
    # a new prediction becomes the prediction; the ground truth stays
    viewer.add_labels(pred, name="prediction best x", metadata=mark_output("prediction"))
    assert widget.pred_combo.layer() is viewer.layers["prediction best x"]
    assert widget.gt_combo.layer() is viewer.layers["lesions"]
    # the wording: 0 means any foreground label, not the background class
    assert widget.class_spin.specialValueText() == "any label (> 0)"
    assert widget.class_spin.text() == "any label (> 0)"


def test_labels_pickers_offer_segmentations_only(make_napari_viewer):
    from napari_boundary_seg._widgets._layers import mark_output
    from napari_boundary_seg._widgets.distance import DistanceMapWidget
    from napari_boundary_seg._widgets.finetune import FinetuneWidget
    from napari_boundary_seg._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    _, gt = _cubes()
    viewer.add_labels(gt, name="lesions")
    viewer.add_labels(gt, name="∂G1 lesions", metadata=mark_output("boundary"))
    viewer.add_labels(gt, name="TP/FP/FN a vs b", metadata=mark_output("outcome"))
    viewer.add_labels(gt, name="training preview", metadata=mark_output("preview"))
    viewer.add_labels(gt, name="FLAIR changes", metadata=mark_output("changes"))
    viewer.add_labels(gt, name="∂G1 reopened")  # saved and opened again: no mark
    viewer.add_labels(gt, name="prediction", metadata=mark_output("prediction"))
    compare_w = CompareWidget(viewer)
    distance_w = DistanceMapWidget(viewer)
    finetune_w = FinetuneWidget(viewer)
    train_w = TrainWidget(viewer)
    offered = ["lesions", "prediction"]
    for combo in (compare_w.pred_combo, compare_w.gt_combo, distance_w.labels_combo,
                  finetune_w.labels_combo):  # fmt: skip
        assert combo.names() == offered
    assert finetune_w.truth_combo.names()[1:] == offered  # after "(none)"
    assert [name for name, _ in train_w._labels_choices()] == offered
    train_w.shutdown()


def test_outcome_map_goes_under_the_corrections_layer(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    pred, gt = _cubes()
    viewer.add_labels(gt, name="gt")
    fixing = viewer.add_labels(pred, name="FLAIR corrections", metadata={"finetune": {}})
    widget = CompareWidget(viewer)
    widget.pred_combo.set_layer("FLAIR corrections")
    widget.gt_combo.set_layer("gt")
    _run(widget, qtbot)
    names = [layer.name for layer in viewer.layers]
    outcome = overlay_name("FLAIR corrections", "gt")
    assert names.index(outcome) < names.index("FLAIR corrections")  # drawn below it
    assert viewer.layers.selection.active is fixing and errors == []


def test_predictions_and_previews_have_their_own_colours(make_napari_viewer):
    from napari_boundary_seg._widgets._layers import output_label_colormap

    viewer = make_napari_viewer()
    _, gt = _cubes()
    truth = viewer.add_labels(gt, name="gt")
    pred = viewer.add_labels(gt, name="p", colormap=output_label_colormap("prediction"))
    preview = viewer.add_labels(gt, name="v", colormap=output_label_colormap("preview"))
    colours = [tuple(np.round(x.colormap.map(np.array([1]))[0], 2)) for x in (truth, pred, preview)]
    assert len(set(colours)) == 3  # label 1: the default orange, magenta, cyan
