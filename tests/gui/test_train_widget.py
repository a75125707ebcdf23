"""Training widget on tiny data under Xvfb: end to end, pause / stop, closing,
the event-loop bar, the live α plot, the boundary-loss warning and the errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QElapsedTimer, QTimer

from napari_boundary_seg._widgets.train import (
    BL_ALONE_WARNING,
    TrainingCurves,
    TrainWidget,
    build_config,
    check_output_folder,
    schedule_params,
    validation_block,
)

SHAPE = (8, 32, 32)
#: a tiny run: 2-level UNet of width 4, 32x32 slices, 2 steps per epoch
TINY = {"depth": 2, "base_channels": 4, "batch_size": 4, "slice_size": 32}


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[1:7, 10:18, 12:20] = 1
    flair = (rng.normal(0.3, 0.05, SHAPE) + 0.5 * labels).astype(np.float32)
    t1 = (rng.normal(0.6, 0.05, SHAPE) - 0.3 * labels).astype(np.float32)
    return flair, t1, labels


def _add_case(viewer) -> None:
    flair, t1, labels = _case(np.random.default_rng(0))
    geometry = {"scale": (3.0, 1.0, 1.0), "translate": (6.0, 0.0, 0.0)}
    viewer.add_image(flair, name="FLAIR", **geometry)
    viewer.add_image(t1, name="T1", **geometry)
    viewer.add_labels(labels, name="lesions", **geometry)


def _tiny_widget(viewer, out: Path) -> TrainWidget:
    w = TrainWidget(viewer)
    w.images.select(["FLAIR", "T1"])
    w.labels.set_layer("lesions")
    w.depth.setValue(TINY["depth"])
    w.base_channels.setValue(TINY["base_channels"])
    w.batch_size.setValue(TINY["batch_size"])
    w.slice_size.setValue(TINY["slice_size"])
    w.val_fraction.setValue(0.25)
    w.output.setText(str(out))
    w.device.set_device("cpu")
    return w


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _add_case(viewer)
    w = _tiny_widget(viewer, tmp_path / "runs")
    viewer.window.add_dock_widget(w, name="train")
    yield w
    w.shutdown()


def _steps(w: TrainWidget) -> int:
    return sum(type(e).__name__ == "StepEvent" for e in w.events)


# -- pure helpers -----------------------------------------------------------------


def test_validation_block_by_hand():
    labels = np.zeros((6, 2, 2), dtype=np.int32)
    labels[1, 0, 0] = 1  # per-slice foreground: [0, 1, 0, 3, 2, 0]
    labels[3] = 1
    labels[3, 1, 1] = 0
    labels[4, 0] = 1
    # k = round(0.34 * 6) = 2; windows [1, 1, 3, 5, 2]: the best leaves slice 1 for training
    assert validation_block(labels, 0, 0.34) == slice(3, 5)
    # along axis 1 (2 slices) there is nothing to split
    assert validation_block(labels, 1, 0.5) is None
    # all the foreground in one slice: no block leaves foreground for training
    only = np.zeros((6, 2, 2), dtype=np.int32)
    only[2, 0, 0] = 1
    assert validation_block(only, 0, 0.2) is None
    assert validation_block(labels[0], 0, 0.5) is None  # 2D: no split
    assert validation_block(labels, 0, 0.0) is None


def test_schedule_fields_map_to_core_kinds():
    assert schedule_params("paper", 1.0, 0.01, 0.01) == {"start": 1.0, "step": 0.01, "floor": 0.01}
    assert schedule_params("constant", 0.3, 0.0, 0.0) == {"alpha": 0.3}
    cfg = build_config(
        {
            "schedule_kind": "reference-code",
            "schedule_params": schedule_params("reference-code", 0.02, 0.05, 0.2),
            "epochs": 3,
            "unknown_key": 1,
        }
    )
    assert cfg.schedule == {
        "kind": "reference-code",
        "step": 0.05,
        "region_floor": 0.2,
        "boundary_start": 0.02,
    }
    assert cfg.epochs == 3


def test_check_output_folder(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(ValueError, match="not writable"):
        check_output_folder(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match="No output folder"):
        check_output_folder("  ")


# -- live α plot and warning ------------------------------------------------------------


def test_alpha_plot_follows_fields_and_collapse_warning(widget):
    w = widget
    w.epochs.setValue(50)
    x, y = w.alpha_plot.region_line.get_data()
    assert len(x) == 50 and y[0] == 1.0 and y[10] == pytest.approx(0.9)
    w.alpha_step.setValue(0.1)
    _, y = w.alpha_plot.region_line.get_data()
    assert y[5] == pytest.approx(0.5) and y[20] == pytest.approx(0.01)  # floor
    w.alpha_floor.setValue(0.2)
    _, y = w.alpha_plot.region_line.get_data()
    assert y[20] == pytest.approx(0.2)
    _, yb = w.alpha_plot.boundary_line.get_data()
    assert yb[20] == pytest.approx(0.8)
    w.epochs.setValue(7)
    assert len(w.alpha_plot.region_line.get_data()[0]) == 7
    w.schedule.setCurrentIndex(w.schedule.findData("constant"))
    w.alpha_start.setValue(0.25)
    _, y = w.alpha_plot.region_line.get_data()
    assert set(np.round(y, 6)) == {0.25}
    w.loss.setCurrentIndex(w.loss.findData("gdl"))
    _, y = w.alpha_plot.region_line.get_data()
    assert set(y) == {1.0}
    assert not w.alpha_start.isEnabled()  # the schedule only drives GDL + BL
    # the warning: boundary loss alone (or α = 0 from the start), binary labels
    w.schedule.setCurrentIndex(w.schedule.findData("paper"))

    assert w.warning.isHidden()
    w.loss.setCurrentIndex(w.loss.findData("bl"))
    assert not w.warning.isHidden() and w.warning.text() == BL_ALONE_WARNING
    w.loss.setCurrentIndex(w.loss.findData("gdl+bl"))
    assert w.warning.isHidden()  # paper schedule: α = 1 at epoch 0
    w.schedule.setCurrentIndex(w.schedule.findData("constant"))
    w.alpha_start.setValue(0.0)  # α = 0 from the start
    assert not w.warning.isHidden()
    w.alpha_start.setValue(0.1)
    assert w.warning.isHidden()
    # three classes: not a binary problem, no collapse warning
    w.loss.setCurrentIndex(w.loss.findData("bl"))
    lab = w.viewer.layers["lesions"]
    data = lab.data.copy()
    data[2, 2, 2] = 2
    w.viewer.add_labels(data, name="three")
    w.labels.set_layer("three")
    assert w.num_classes.value() == 3 and w.warning.isHidden()


# -- training runs ----------------------------------------------------------------------


def test_train_from_layers_end_to_end_and_event_loop_bar(widget, qtbot, errors):
    w = widget
    w.epochs.setValue(12)
    clock = QElapsedTimer()
    gaps: list[int] = []
    last = [0]

    def tick():
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    clock.start()
    timer.start()
    assert w.start(), errors
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    timer.stop()
    worst = max(gaps[1:])
    print(f"\nevent loop while training: {len(gaps)} ticks, worst gap {worst} ms")
    assert worst < 100

    done = w.last_done
    assert errors == []
    assert done is not None and not done.stopped and done.reason == "completed"
    assert Path(done.best_checkpoint).is_file() and Path(done.last_checkpoint).is_file()
    assert len(done.history) == 12
    assert w.device_used == "cpu"
    # validation on a held-out block of 2 slices along the viewer's slicing axis 0
    # (foreground on slices 1-6: the first 2-slice block with the most of it is 1-2)
    assert w._val_block == slice(1, 3)
    info = [e for e in w.events if type(e).__name__ == "InfoEvent" and e.steps_per_epoch]
    assert (info[0].num_train_cases, info[0].num_val_cases) == (2, 1)
    assert info[0].num_train_slices == 6 and info[0].steps_per_epoch == 2
    assert [e.epoch for e in w.events if type(e).__name__ == "EpochEvent"] == list(range(12))
    assert w.curves.epochs == list(range(12))
    assert w.curves.alpha == pytest.approx([1.0 - 0.01 * e for e in range(12)])
    assert np.isfinite(w.curves.dsc).all() and len(w.curves.steps) == _steps(w) > 0
    # the best model's prediction arrives as a Labels layer with the image's geometry
    qtbot.waitUntil(lambda: w.prediction_layer is not None, timeout=10_000)
    layer = w.viewer.layers["FLAIR prediction"]
    assert layer._type_string == "labels" and layer.data.shape == SHAPE
    np.testing.assert_allclose(layer.scale, (3.0, 1.0, 1.0))
    np.testing.assert_allclose(layer.translate, (6.0, 0.0, 0.0))
    assert set(np.unique(layer.data)) <= {0, 1}
    # a second run goes to a new folder, never over the first one
    w.predict_after.setChecked(False)
    w.epochs.setValue(1)
    assert w.start()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    assert Path(w.last_done.last_checkpoint).parent != Path(done.last_checkpoint).parent
    # an error raised inside the worker arrives as a notification: fine-tuning a
    # 2-class model on 3-class labels
    three = w.viewer.layers["lesions"].data.copy()
    three[4, 12, 14] = 2
    w.viewer.add_labels(three, name="three classes", scale=(3.0, 1.0, 1.0))
    w.labels.set_layer("three classes")
    w.finetune.setText(done.best_checkpoint)
    assert w.start()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30_000)
    assert len(errors) == 1 and "num_classes=2" in errors[0], errors
    assert w.start_button.isEnabled()


def test_live_curves_paint_with_gaps(qtbot):
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    curves.resize(400, 260)
    curves.show()
    curves.reset(3)
    for k in range(600):  # more points than a chart draws: shown as bin means
        curves.add_step(k / 200, 1.0 - k / 1000, 0.5, -2.0 + k / 100)
    curves.add_epoch(0, 1.0, float("nan"), float("nan"))  # no validation figure yet
    curves.add_epoch(1, 0.99, 0.5, 12.0)
    before = curves.boundary_chart.paint_count
    curves._redraw_if_dirty()
    qtbot.waitUntil(lambda: curves.boundary_chart.paint_count > before, timeout=2_000)
    xs, ys, _ = curves.boundary_chart.series[0]
    assert len(xs) == 300 and ys[0] == pytest.approx(np.mean(-2.0 + np.arange(2) / 100))
    assert curves.boundary_chart._y_limits()[0] < -1.9  # follows the data
    assert curves.dsc_chart._y_limits() == (-0.03, 1.03)  # fixed


def test_pause_resume_stop_then_close(widget, qtbot, errors):
    w = widget
    w.epochs.setValue(200)
    assert w.start()
    qtbot.waitUntil(lambda: _steps(w) >= 2, timeout=20_000)
    w.toggle_pause()
    assert w.pause_button.text() == "Resume"
    qtbot.waitUntil(lambda: any(type(e).__name__ == "PauseEvent" for e in w.events), timeout=10_000)
    paused_at = _steps(w)
    qtbot.wait(600)
    assert _steps(w) == paused_at  # no step while paused
    assert w.runner.running
    w.toggle_pause()
    qtbot.waitUntil(lambda: _steps(w) > paused_at, timeout=10_000)
    w.stop()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20_000)
    done = w.last_done
    assert done.stopped and done.reason.startswith("stopped by request")
    assert Path(done.last_checkpoint).is_file()
    assert errors == []
    assert w.start_button.isEnabled() and not w.stop_button.isEnabled()
    qtbot.waitUntil(lambda: w.prediction_layer is not None, timeout=10_000)

    # closing the widget while a run goes on stops it cleanly
    assert w.start()
    qtbot.waitUntil(lambda: _steps(w) >= 1, timeout=20_000)
    out = Path(w._config.out_dir)
    tic = time.perf_counter()
    w.viewer.window.remove_dock_widget(w)
    assert time.perf_counter() - tic < 10
    assert w.runner._ended.is_set()  # the trainer ended, not abandoned
    assert (out / "last.pt").is_file()

    # closing napari's window: before closing, napari cancels its running tasks
    # (worker.quit()); for a training worker that asks the trainer to stop, and
    # it saves last.pt and ends instead of being dropped mid-run
    w.viewer.window.add_dock_widget(w, name="train again")
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10_000)
    assert w.start()
    qtbot.waitUntil(lambda: _steps(w) >= 1, timeout=20_000)
    out = Path(w._config.out_dir)
    w.viewer.window._task_status_manager.cancel_all()  # what closeEvent does
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20_000)
    assert w.runner._ended.is_set() and (out / "last.pt").is_file()
    assert w.last_done.stopped and w.last_done.reason.startswith("stopped by request")


# -- errors ------------------------------------------------------------------------------


def _corrupt(tmp_path: Path) -> str:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    return str(path)


PROBLEMS = [
    ("no image", "No image layer"),
    ("shapes", "Shapes do not match"),
    ("float labels", "not integer labels"),
    ("empty labels", "no foreground"),
    ("nan image", "NaN"),
    ("output", "not writable"),
    ("device", "not available"),
    ("checkpoint", "broken.pt"),
    ("folder", "Dataset folder not found"),
    ("no labels", "No labels layer"),  # last: removes the case's layers
]


def test_bad_inputs_notify_and_keep_viewer_usable(make_napari_viewer, errors, tmp_path):
    viewer = make_napari_viewer()
    _add_case(viewer)
    for problem, expected in PROBLEMS:
        w = _tiny_widget(viewer, tmp_path / "runs")
        errors.clear()
        if problem == "no image":
            w.images.select([])
        elif problem == "shapes":
            viewer.add_image(np.zeros((8, 32, 30), np.float32), name="small")
            w.images.select(["FLAIR", "small"])
        elif problem == "float labels":
            viewer.add_image(np.full(SHAPE, 0.5, np.float32), name="probabilities")
            w.labels.set_layer("probabilities")
        elif problem == "empty labels":
            viewer.add_labels(np.zeros(SHAPE, np.int32), name="empty")
            w.labels.set_layer("empty")
        elif problem == "nan image":
            bad = viewer.layers["FLAIR"].data.copy()
            bad[0, 0, 0] = np.nan
            viewer.add_image(bad, name="nan")
            w.images.select(["nan"])
        elif problem == "output":
            (tmp_path / "file").write_text("x")
            w.output.setText(str(tmp_path / "file" / "runs"))
        elif problem == "device":
            w.device.addItem("cuda:7")
            w.device.setCurrentText("cuda:7")
        elif problem == "checkpoint":
            w.finetune.setText(_corrupt(tmp_path))
        elif problem == "folder":
            w.from_folder.setChecked(True)
            w.folder.setText(str(tmp_path / "nowhere"))
        elif problem == "no labels":
            for name in [layer.name for layer in viewer.layers]:
                viewer.layers.remove(name)
        assert not w.start(), problem
        assert len(errors) == 1 and expected in errors[0], (problem, errors)
        assert not w.runner.running and w.start_button.isEnabled()
        w.close()
    viewer.add_points([[0, 0, 0]])  # the viewer is still usable
    assert not any(Path(tmp_path / "runs").glob("run-*"))  # nothing was started


def test_train_from_dataset_folder(widget, qtbot, errors, tmp_path):
    from napari_boundary_seg.core.io import write_nifti

    rng = np.random.default_rng(3)
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for name in ("a", "b"):
        flair, t1, labels = _case(rng)
        write_nifti(tmp_path / "data" / "imagesTr" / f"{name}_0000.nii.gz", flair)
        write_nifti(tmp_path / "data" / "imagesTr" / f"{name}_0001.nii.gz", t1)
        write_nifti(tmp_path / "data" / "labelsTr" / f"{name}.nii.gz", labels)
    w = widget
    w.from_folder.setChecked(True)
    w.folder.setText(str(tmp_path / "data"))
    w.val_fraction.setValue(0.5)
    w.axis.setCurrentIndex(w.axis.findData(0))
    w.epochs.setValue(1)
    assert w.start(), errors
    qtbot.waitUntil(lambda: not w.busy, timeout=30_000)
    assert errors == []
    info = [e for e in w.events if type(e).__name__ == "InfoEvent" and e.steps_per_epoch]
    assert (info[0].num_train_cases, info[0].num_val_cases) == (1, 1)
    assert info[0].num_train_slices == 8  # one case, 8 slices along axis 0
    assert not w.last_done.stopped and np.isfinite(w.curves.dsc[0])
    # the image layers chosen in the viewer get the best model's prediction
    assert w.prediction_layer is not None and w.prediction_layer.data.shape == SHAPE
