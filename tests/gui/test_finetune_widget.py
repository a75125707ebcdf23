"""Fine-tuning widget under Xvfb: predict on a tiny sample-like case with a tiny
model, edit two slices through the Labels layer API (which emits napari's paint
events), fine-tune one epoch, and check the slices used, the comparison table,
the changed-voxel layer, keep/discard, saving, and the edit tracking itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_boundary_seg._widgets.finetune import EditTracker, FinetuneWidget, atom_slices
from napari_boundary_seg.core.io import read_nifti

SHAPE = (32, 32, 6)  # slices along the last axis, as the sample case (axial)
SPACING = (1.0, 1.0, 2.0)


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[8:16, 10:20, 1:5] = 1
    flair = (rng.normal(0.3, 0.05, SHAPE) + 0.5 * labels).astype(np.float32)
    t1 = (rng.normal(0.6, 0.05, SHAPE) - 0.3 * labels).astype(np.float32)
    return flair, t1, labels


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, train_tiny) -> str:
    flair, t1, labels = _volumes()
    out = tmp_path_factory.mktemp("ckpt") / "run"
    done = train_tiny(out, [flair, t1], labels, SPACING, 2, modalities=["FLAIR", "T1"])
    return done.last_checkpoint


def _viewer_with_images(make_napari_viewer):
    viewer = make_napari_viewer()
    flair, t1, _ = _volumes()
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (5.0, -2.0, 1.0)
    viewer.add_image(flair, name="FLAIR", scale=SPACING, metadata={"affine": affine})
    viewer.add_image(t1, name="T1", scale=SPACING)
    return viewer, affine


def _predicted(make_napari_viewer, qtbot, checkpoint):
    """A viewer with the two images and a fine-tuning widget that has predicted
    into "FLAIR corrections": ``(viewer, widget, FLAIR affine)``."""
    viewer, affine = _viewer_with_images(make_napari_viewer)
    widget = FinetuneWidget(viewer)
    widget.images.select(["FLAIR", "T1"])
    widget.checkpoint.setText(checkpoint)
    assert widget.predict() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    return viewer, widget, affine


def _start_long_finetune(viewer, widget, tmp_path):
    """Correct one voxel of slice 2 and start a 50-epoch fine-tune (to be
    stopped): ``(corrections layer, its data as painted)``."""
    layer = viewer.layers["FLAIR corrections"]
    layer.data_setitem((np.array([3]), np.array([3]), np.array([2])), 1 - layer.data[3, 3, 2])
    painted = np.array(layer.data, copy=True)
    widget.epochs.setValue(50)
    widget.out_folder.setText(str(tmp_path / "ft"))
    widget.device.setCurrentText("cpu")
    assert widget.start_finetune() is not None
    return layer, painted


def _finetune_one_epoch(widget, qtbot, out: Path) -> None:
    """Fine-tune one epoch on the CPU into ``out`` and wait for the end."""
    widget.epochs.setValue(1)
    widget.out_folder.setText(str(out))
    widget.device.setCurrentText("cpu")
    assert widget.start_finetune() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def test_predict_correct_finetune_compare(make_napari_viewer, qtbot, checkpoint, errors, tmp_path):
    viewer, widget, affine = _predicted(make_napari_viewer, qtbot, checkpoint)
    assert errors == []
    layer = viewer.layers["FLAIR corrections"]
    link = layer.metadata["finetune"]
    assert link["images"] == ["FLAIR", "T1"] and link["checkpoint"] == checkpoint
    assert link["probability"] == "FLAIR probability" and link["axis"] == 2
    assert "FLAIR probability" in viewer.layers
    original = np.array(layer.data, copy=True)

    # edit slices 1 and 4 along axis 2 through the Labels API (paint events)
    layer.selected_label = 1
    layer.brush_size = 3
    layer.paint((24, 24, 1), 1 - layer.data[24, 24, 1])  # a brush stroke on slice 1
    index = np.nonzero(np.ones((4, 4), bool))
    square = (index[0] + 2, index[1] + 2, np.full(16, 4))
    layer.data_setitem(square, 1 - layer.data[2, 2, 4])  # a square on slice 4
    assert widget.tracker.slices == [1, 4]
    assert "2 edited slice(s)" in widget.edited_label.text()
    assert "1, 4" in widget.edited_label.text()
    painted = np.array(layer.data, copy=True)
    assert not np.array_equal(painted, original)

    widget.alpha_start.setValue(0.6)
    _finetune_one_epoch(widget, qtbot, tmp_path / "ft")
    assert errors == []
    # the edited slices were used, the comparison table appeared
    assert widget.used_slices == [1, 4]
    assert widget.last_result.slices == (1, 4)
    lineage = json.loads((tmp_path / "ft" / "lineage.json").read_text())
    assert lineage["slices"] == [1, 4] and lineage["parent"] == str(Path(checkpoint).resolve())
    assert lineage["settings"]["alpha_start"] == 0.6
    assert set(lineage["metrics"]) == {"corrected", "untouched"}
    assert widget.table.item(0, 0).text() == "corrected"
    assert widget.table.item(0, 1).text() == "2"
    assert widget.table.item(1, 0).text() == "untouched"
    assert widget.table.item(1, 1).text() == "4"
    headers = [widget.table.horizontalHeaderItem(c).text() for c in range(6)]
    assert headers[4:] == ["HD95\nold\n(mm)", "HD95\nnew\n(mm)"]  # with their unit
    # untouched slices without a ground truth: n/a, not a DSC of 1 by construction
    assert [widget.table.item(1, c).text() for c in range(2, 6)] == ["n/a"] * 4
    assert "ground truth" in widget.table.item(1, 2).toolTip()
    assert "done" in widget.progress.text()
    assert "FLAIR changes" in viewer.layers and "FLAIR fine-tuned prediction" in viewer.layers
    assert viewer.layers["FLAIR changes"].data.shape == SHAPE
    changes, new_pred = viewer.layers["FLAIR changes"], viewer.layers["FLAIR fine-tuned prediction"]
    assert changes.visible and not new_pred.visible
    np.testing.assert_allclose(changes.colormap.map([1])[0], [0.0, 0xE6 / 255, 0x76 / 255, 1.0])
    assert widget._loss["total"], "no live curve points"
    # loss, the boundary term (a distance) and α each on an axis of their own
    widget._dirty = True
    widget._redraw()
    curves = widget.curves
    assert "mm" in curves.boundary_chart.title and curves.alpha_chart.y_range == (-0.03, 1.03)
    assert all(len(chart.series[0][1]) == len(widget._steps) for chart in curves.charts)
    assert set(curves.alpha_chart.series[0][1]) <= {0.6}  # α of the one epoch
    # nothing the user painted was touched
    np.testing.assert_array_equal(layer.data, painted)

    widget.decide(True)
    assert widget.checkpoint.text() == widget.last_result.checkpoint
    # the kept model takes the same named inputs as its parent (not "0, 1")
    from napari_boundary_seg.core.checkpoint import checkpoint_modalities

    assert checkpoint_modalities(widget.checkpoint.text()) == ["FLAIR", "T1"]
    assert widget.images.hint.text() == "model trained on: FLAIR, T1"
    assert json.loads((tmp_path / "ft" / "lineage.json").read_text())["decision"] == "kept"
    assert Path(checkpoint).exists()

    out = widget.save_corrected(tmp_path / "corrected.nii.gz")
    assert out is not None and errors == []
    saved = read_nifti(out)
    np.testing.assert_array_equal(saved.data, painted)
    np.testing.assert_allclose(saved.affine, affine)
    widget.close()


def test_stop_keeps_corrections(make_napari_viewer, qtbot, checkpoint, errors, tmp_path):
    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    layer, painted = _start_long_finetune(viewer, widget, tmp_path)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    assert widget.last_result.stopped
    assert widget.checkpoint.text() == checkpoint  # the parent stays the model
    assert widget.table.item(0, 0) is None  # no comparison after a stop
    np.testing.assert_array_equal(layer.data, painted)


def test_window_close_stops_finetune_cleanly(
    make_napari_viewer, qtbot, checkpoint, errors, tmp_path
):
    """napari's window close quits every running worker (task status cancel_all):
    the fine-tune then stops at its next step and writes last.pt, as the
    training widget's run does, instead of being dropped mid-run."""
    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    _start_long_finetune(viewer, widget, tmp_path)
    qtbot.waitUntil(lambda: len(widget._steps) >= 1, timeout=30_000)  # training has begun
    viewer.window._task_status_manager.cancel_all()  # what napari's closeEvent does
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    ft = widget.last_result
    assert ft is not None and ft.stopped and ft.reason.startswith("stopped by request")
    assert (Path(ft.out_dir) / "last.pt").is_file()
    assert widget.checkpoint.text() == checkpoint  # the parent stays the model
    assert json.loads(Path(ft.lineage_path).read_text())["stopped"] is True


def test_undo_and_replacement(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((4, 5, 6), np.int32))
    changes: list[int] = []
    tracker = EditTracker(layer, axis=0, on_change=lambda: changes.append(1))
    layer.data_setitem((np.array([2]), np.array([1]), np.array([1])), 3)
    layer.data_setitem((np.array([2]), np.array([1]), np.array([1])), 3)  # no change, no event
    assert tracker.slices == [2] and len(changes) == 1
    # same shape, replaced wholesale: every slice is a candidate
    layer.data = np.ones((4, 5, 6), np.int32)
    assert tracker.replaced and tracker.slices == [0, 1, 2, 3]
    # another shape: tracking stops
    layer.data = np.zeros((2, 5, 6), np.int32)
    assert tracker.slices == [] and "changed shape" in tracker.reset_reason


def test_widget_filters_undone_slices(make_napari_viewer, qtbot, checkpoint, errors):
    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    layer = viewer.layers["FLAIR corrections"]
    for z in (3, 5):  # flip one voxel on slices 3 and 5
        layer.data_setitem((np.array([0]), np.array([0]), np.array([z])), 1 - layer.data[0, 0, z])
    layer.undo()  # slice 5 back to the prediction: listed, but not used
    assert widget.tracker.slices == [3, 5]
    labels = np.asarray(layer.data)
    assert widget.slices_to_use(labels) == [3]
    viewer.dims.set_point(2, 2 * 2.0)  # world z of slice 2 (scale 2)
    widget.add_current_slice()
    assert widget.slices_to_use(labels) == [2, 3]
    widget.clear_slices()
    assert widget.start_finetune() is None
    assert errors and "No edited slice" in errors[-1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_atom_slices(ndim):
    class Atom:
        def __init__(self, key, mask):
            self.slice_key, self.mask = key, mask

    if ndim == 2:
        assert atom_slices(Atom((slice(0, 2), slice(0, 2)), None), 0, 2) == {0}
        return
    mask = np.zeros((1, 3, 2), bool)
    mask[0, 1, 1] = True
    assert atom_slices(Atom((slice(4, 5), slice(2, 5), slice(0, 2)), mask), 0, 3) == {4}
    assert atom_slices(Atom((slice(4, 5), slice(2, 5), slice(0, 2)), mask), 1, 3) == {3}
    assert atom_slices(Atom((slice(4, 5), slice(2, 5), slice(0, 2)), None), 1, 3) == {2, 3, 4}
    fancy = ((np.array([1, 1]), np.array([0, 3]), np.array([2, 2])), np.zeros(2), 1)
    assert atom_slices(fancy, 1, 3) == {0, 3}


def test_untouched_row_against_ground_truth(
    make_napari_viewer, qtbot, checkpoint, errors, tmp_path
):
    from napari_boundary_seg.core.finetune import compare_models

    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    _, _, truth = _volumes()
    viewer.add_labels(truth.astype(np.uint8), name="truth", scale=SPACING)
    layer = viewer.layers["FLAIR corrections"]
    layer.data_setitem((np.array([3]), np.array([3]), np.array([2])), 1 - layer.data[3, 3, 2])
    widget.truth_combo.set_layer("truth")
    widget.epochs.setValue(1)
    widget.out_folder.setText(str(tmp_path / "ft"))
    widget.device.setCurrentText("cpu")
    assert widget.start_finetune() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert errors == []
    ft, evaluation = widget.pending
    expected = compare_models(
        evaluation["old_pred"], evaluation["new_pred"], truth, SPACING, ft.slices, 2
    )["untouched"]
    assert widget.table.item(1, 2).text() == f"{expected['dice_old']:.3f}"
    assert widget.table.item(1, 3).text() == f"{expected['dice_new']:.3f}"
    # the round's point: the same DSC, after the start (the parent's)
    start, point = widget.rounds.curve()
    assert start == ("reference", 0.0, pytest.approx(expected["dice_old"]), "start", 0)
    assert point == ("reference", 1.0, pytest.approx(expected["dice_new"]), "pending", 1)
    assert "against the reference 'truth'" in widget.rounds_label.text()


def test_gain_table_dashes_hd95_of_an_empty_prediction(make_napari_viewer):
    from napari_boundary_seg._widgets.finetune import foreground_flags

    viewer = make_napari_viewer()
    widget = FinetuneWidget(viewer)
    pred = np.zeros((4, 4, 5), np.int32)
    pred[1, 1, 3] = 1
    assert foreground_flags(pred, [3], 2) == {"corrected": True, "untouched": False}
    row = {"n_slices": 2, "dice_old": 0.5, "dice_new": 0.0, "hd95_old": 4.0, "hd95_new": 297.0}
    comparison = {"corrected": row, "untouched": {**row, "n_slices": 3}}
    flags = {"old": {"corrected": True, "untouched": True}, "new": {"corrected": False}}
    widget._set_table(comparison, {**row, "n_slices": 3}, flags)
    assert widget.table.item(0, 5).text() == "—"  # not a 297 mm diagonal
    assert "no foreground predicted" in widget.table.item(0, 5).toolTip()
    assert widget.table.item(0, 4).text() == "4.0"
    assert widget.table.item(1, 2).text() == "0.500"


def test_a_correction_placed_differently_from_the_image_is_refused(
    make_napari_viewer, qtbot, checkpoint, errors
):
    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    _, _, labels = _volumes()
    other = viewer.add_labels(labels.astype(np.int32), name="unscaled")  # scale 1 1 1
    widget.use_layer(other)
    assert errors and "Geometry does not match" in errors[-1]
    assert "'FLAIR'" in errors[-1] and "'unscaled'" in errors[-1]
    assert widget.layer is viewer.layers["FLAIR corrections"]  # the link is kept
    # a linked layer moved after linking: fine-tuning is refused, naming both
    layer = viewer.layers["FLAIR corrections"]
    layer.data_setitem((np.array([3]), np.array([3]), np.array([2])), 1 - layer.data[3, 3, 2])
    layer.translate = (0.0, 0.0, 4.0)
    assert widget.start_finetune() is None
    assert "Geometry does not match" in errors[-1] and "'FLAIR corrections'" in errors[-1]


def test_mark_slice_checked_passes_verified_slices(
    make_napari_viewer, qtbot, checkpoint, errors, tmp_path
):
    from napari.utils.key_bindings import KeyBinding

    from napari_boundary_seg._widgets.finetune import CHECK_KEY

    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    layer = viewer.layers["FLAIR corrections"]
    assert KeyBinding.from_str(CHECK_KEY) in layer.keymap  # the shortcut on the linked layer
    layer.data_setitem((np.array([3]), np.array([3]), np.array([4])), 1 - layer.data[3, 3, 4])
    viewer.dims.set_point(2, 2 * 2.0)  # world z of slice 2 (scale 2)
    layer.keymap[KeyBinding.from_str(CHECK_KEY)](layer)  # what the key press calls
    assert widget.tracker.manual == {2}
    text = widget.edited_label.text()
    assert "1 edited slice(s): 4" in text and "1 checked: 2" in text
    _finetune_one_epoch(widget, qtbot, tmp_path / "ft")
    assert errors == []
    assert widget.used_slices == [2, 4]
    lineage = json.loads((tmp_path / "ft" / "lineage.json").read_text())
    assert lineage["slices"] == [4] and lineage["verified_slices"] == [2]
    assert widget.table.item(0, 1).text() == "2"  # both taught: the "corrected" row
    assert "slices [4] and checked slices [2]" in widget.status.text()


def _correct_slice(layer, z: int) -> None:
    """Flip one voxel of slice ``z`` of the corrections layer (a paint event)."""
    layer.data_setitem((np.array([3]), np.array([3]), np.array([z])), 1 - layer.data[3, 3, z])


def test_two_rounds_add_two_points_and_undo_restores_the_previous_checkpoint(
    make_napari_viewer, qtbot, checkpoint, errors, tmp_path
):
    viewer, widget, _ = _predicted(make_napari_viewer, qtbot, checkpoint)
    layer = viewer.layers["FLAIR corrections"]
    assert widget.rounds.curve() == [] and not widget.undo_button.isEnabled()
    assert widget.undo_round() is False  # nothing kept yet: refused, named
    assert "No round to undo" in errors.pop()

    _correct_slice(layer, 2)
    _finetune_one_epoch(widget, qtbot, tmp_path / "ft1")
    assert [p[3] for p in widget.rounds.curve()] == ["pending"]
    assert not widget.undo_button.isEnabled()  # Keep or Discard first
    widget.decide(True)
    first = widget.last_result
    _correct_slice(layer, 4)
    _finetune_one_epoch(widget, qtbot, tmp_path / "ft2")
    widget.decide(True)
    second = widget.last_result
    assert errors == []
    assert second.parent == str(Path(first.checkpoint).resolve())
    # two points, without a reference: agreement with the previous round
    curve = widget.rounds.curve()
    assert [(p[0], p[1], p[3], p[4]) for p in curve] == [
        ("agreement", 1.0, "kept", 1),
        ("agreement", 2.0, "kept", 2),
    ]
    assert all(0.0 <= p[2] <= 1.0 for p in curve)
    assert widget.rounds_plot.points == curve
    axes = widget.rounds_plot.axes  # labelled, with units
    assert axes.get_xlabel() == "slices taught (corrected + checked)"
    assert axes.get_ylabel() == "DSC (0–1)"
    assert widget.link["lineage"] == [first.lineage_path, second.lineage_path]
    assert "Round 2: 2 slice(s) taught" in widget.rounds_label.text()
    lineage = json.loads(Path(second.lineage_path).read_text())
    assert lineage["round"]["index"] == 2 and lineage["round"]["measure"] == "agreement"
    assert widget.undo_button.isEnabled()

    assert widget.undo_round() is True  # round 1's checkpoint is active again
    assert widget.link["checkpoint"] == first.checkpoint == widget.checkpoint.text()
    assert "Undid round 2" in widget.status.text()
    assert json.loads(Path(second.lineage_path).read_text())["undone"]["active"] == first.checkpoint
    np.testing.assert_array_equal(
        widget.current_pred, viewer.layers["FLAIR fine-tuned prediction"].data
    )
    for ft in (first, second):  # nothing deleted
        assert Path(ft.checkpoint).is_file() and Path(ft.lineage_path).is_file()
    assert widget.undo_button.isEnabled()  # round 1 can be undone in turn
    assert widget.undo_round() is True
    assert widget.link["checkpoint"] == checkpoint and not widget.undo_button.isEnabled()
    assert [p[3] for p in widget.rounds.curve()] == ["undone", "undone"]
    assert errors == []
    widget.close()
