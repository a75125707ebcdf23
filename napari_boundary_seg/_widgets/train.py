"""Training widget: layers or a dataset folder in, a trained UNet and its prediction out.

The widget is thin. Its form is five sections (``_train_sections``: data,
mode, schedule, advanced, run) whose fields are made from
``_logic.train_fields()``; a preset fills them ("Quick start",
:func:`core.presets.quick_start_config`, or the paper's). It builds a
:class:`core.train.TrainConfig` from its fields (:meth:`TrainWidget.settings`,
``_logic.build_config``), checks the inputs, and runs ``_jobs.training_job``
in its ``_runner.Runner`` (start, pause, resume, stop, shutdown). It only
listens to the trainer's events (``_train_status.RunStatus``: epoch and step
bars, napari's progress bar, live curves, the status and its
``_logic.RunState``) and after each epoch shows the slice on view predicted
in the worker (``_preview.LivePreview``). The cases (and their distance maps),
the preview and the prediction's layer are built in the worker, never in the
GUI thread. After a run the prediction comes from ``best.pt`` (never from the
untrained ``last.pt`` of a run stopped in its first epoch).

The slice plane comes from the scan's orientation (the layer's affine), never
from the view; after Start a 2D view is turned to show it. 3D patches are
clipped to the labels layer and at Start to the longest training part beside
the validation block (``_logic.fit_patch``); "Fine-tune from" sets the form to
the checkpoint's mode and patch (:meth:`TrainWidget.follow_checkpoint`). A run
that ends badly (:func:`core.verdict.judge_run`) says so.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QPoint, Qt, QTimer
from qtpy.QtWidgets import QLabel, QScrollArea, QVBoxLayout, QWidget

from napari_boundary_seg._widgets._checkpoints import (
    check_checkpoint_channels,
    load_checked_checkpoint,
)
from napari_boundary_seg._widgets._fields import compact_children, section_title
from napari_boundary_seg._widgets._jobs import (
    PreviewEvent,
    prediction_layer_job,
    preload_training_modules,
    training_job,
)
from napari_boundary_seg._widgets._layers import (
    images_from_layers,
    labels_array,
    layer_affine,
    native_slice_axis,
    notify_error,
    require_layer,
    unique_layer_name,
)
from napari_boundary_seg._widgets._logic import (
    BL_ALONE_WARNING,
    PRESET_CHOICES,
    PRESET_HELP,
    PREVIEW_NAME,
    RunState,
    build_config,
    cases_from_layers,
    check_device,
    check_labels,
    check_output_folder,
    default_patch,
    fit_patch,
    fitting_cases,
    new_run_folder,
    path_text,
    preset_values,
    schedule_params,
    settings_from_values,
    train_fields,
    validation_block,
)
from napari_boundary_seg._widgets._plots import REDRAW_INTERVAL_MS, TrainingCurves
from napari_boundary_seg._widgets._preview import LivePreview
from napari_boundary_seg._widgets._runner import (
    Delivery,
    Runner,
    _disconnect,
    start_progress_worker,
)
from napari_boundary_seg._widgets._train_sections import (
    AdvancedSection,
    DataSection,
    ModeSection,
    RunSection,
    ScheduleSection,
    TrainFormLogic,
)
from napari_boundary_seg._widgets._train_status import RunStatus

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "BL_ALONE_WARNING",
    "PREVIEW_NAME",
    "REDRAW_INTERVAL_MS",
    "PreviewEvent",
    "TrainWidget",
    "TrainingCurves",
    "build_config",
    "cases_from_layers",
    "check_output_folder",
    "fit_patch",
    "prediction_layer_job",
    "preset_values",
    "schedule_params",
    "unique_layer_name",
    "validation_block",
]


class TrainWidget(TrainFormLogic, RunStatus, LivePreview, QWidget):
    """Dock widget: train (or fine-tune) a UNet with the boundary loss.

    The form is five sections of magicgui fields in a scroll area (the rarely
    changed settings folded away under "Advanced settings"); every field is
    also an attribute of the widget (``widget.epochs``, ``widget.lr``...).

    Parameters
    ----------
    napari_viewer
        The viewer whose layers give the data and receive the prediction.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from magicgui import widgets as mw

        self.viewer = napari_viewer
        self.runner = Runner(self, "Training", notify=False)
        self._preview_delivery = Delivery(self)
        self._waiting_preview: PreviewEvent | None = None
        self._preview_shown = threading.Event()  # the worker waits for it after a preview
        self.events: list[Any] = []
        self.last_done: Any = None
        self.device_used = ""
        self._predict_worker: Any = None
        self.prediction_layer: Any = None
        self.preview_layer: Any = None
        self._steps_total = 0
        self._start_epoch = 0
        self._stack: Any = None
        self._closing = False
        self._val_block: slice | None = None
        #: the stored (numpy) axis the run slices along (layers source)
        self._native_axis: int | None = None
        self._config: Any = None
        self._last_position: tuple[int, int] | None = None  # (epoch, step), 0-based
        self._preview_at: tuple[int, int] | None = None
        self._applying_preset = False
        self.verdict: Any = None
        #: extra TrainConfig fields for the next runs (tests, fine-tuning)
        self.overrides: dict[str, Any] = {}

        preload_training_modules()

        self.preset = mw.ComboBox(choices=PRESET_CHOICES, value="quick", label="Preset")
        self.preset_help = QLabel(PRESET_HELP["quick"])
        self.preset_help.setWordWrap(True)
        self.preset_help.setStyleSheet("font-size: 10px; color: #aaaaaa;")
        self.data = DataSection(napari_viewer)
        self.mode = ModeSection()
        self.schedule_section = ScheduleSection()
        self.advanced = AdvancedSection()
        self.run_section = RunSection()
        self.sections = (
            self.data,
            self.mode,
            self.schedule_section,
            self.advanced,
            self.run_section,
        )
        for section in self.sections:  # every field is an attribute of the widget
            for name, field in section.fields.items():
                setattr(self, name, field)
        self.patch, self.patch_row = self.mode.patch, self.mode.patch_row
        run = self.run_section
        self.alpha_plot, self.warning = (
            self.schedule_section.alpha_plot,
            self.schedule_section.warning,
        )
        self.start_button, self.pause_button, self.stop_button = (
            run.start_button,
            run.pause_button,
            run.stop_button,
        )
        self.progress, self.status, self.curves = run.progress, run.status, run.curves
        self.verdict_label = run.verdict_label
        self._patch_auto = default_patch(None)

        title = QLabel("Train a UNet (GDL, or GDL + the boundary loss)")
        title.setStyleSheet("font-size: 14px; font-weight: bold;")
        title.setWordWrap(True)
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(4, 4, 4, 4)
        column.setSpacing(4)
        for widget in (
            title,
            self.preset.native,
            self.preset_help,
            section_title("Data"),
            self.data,
            section_title("Mode"),
            self.mode,
            section_title("Training"),
            self.schedule_section,
            self.advanced,
            run,
        ):
            column.addWidget(widget)
        column.addStretch(1)
        self.settings_widgets = (
            self.preset.native,
            self.data,
            self.mode,
            self.schedule_section,
            self.advanced,
            run.form,
        )
        compact_children(content)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # a scroll bar that comes and goes would resize the plots (a matplotlib redraw)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.scroll.setWidget(content)
        # the form fits the dock's width (down to 300 px); Qt may still scroll a
        # focused field into view sideways (at the end of a run): never
        horizontal = self.scroll.horizontalScrollBar()
        horizontal.valueChanged.connect(lambda value: value and horizontal.setValue(0))
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        self.setMinimumWidth(300)
        self._connect()
        self.reset_choices()
        self._apply_preset("quick")
        self._on_source()
        self._on_dims()
        self._set_running(False)

    def _connect(self) -> None:
        from qtpy.QtWidgets import QApplication

        self.preset.changed.connect(self._on_preset)
        for box in (self.alpha_start, self.alpha_step, self.alpha_floor, self.epochs, self.loss):
            box.changed.connect(self._update_schedule_view)
        for spec in train_fields():  # a preset's field changed by hand: "Custom"
            if spec.preset:
                getattr(self, spec.name).changed.connect(self._to_custom)
        for box in self.patch:
            box.changed.connect(self._to_custom)
        self.dims.changed.connect(self._on_dims)
        self.schedule.changed.connect(self._on_schedule_kind)
        self.labels.changed.connect(self._on_labels)
        self.num_classes.changed.connect(self._update_schedule_view)
        self.source.changed.connect(self._on_source)
        self.viewer.dims.events.current_step.connect(self._update_preview_at)
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.runner.event.connect(self._on_event)
        self.runner.done.connect(self._on_done)
        self.runner.failed.connect(self._on_failed)
        self.runner.finished.connect(self._on_finished)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        runner = self.runner  # the lambda keeps the Python side alive after deletion
        self.destroyed.connect(lambda *_: runner.shutdown())

    # -- pickers ---------------------------------------------------------------
    def _image_choices(self, _: Any = None) -> list[tuple[str, Any]]:
        return self.images._choices()

    def _labels_choices(self, _: Any = None) -> list[tuple[str, Any]]:
        return self.labels._choices()

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer pickers (napari calls this when layers change)."""
        self.images.refresh()
        self.labels.refresh()

    def image_layers(self) -> list[Any]:
        """The chosen image layers, in the viewer's order."""
        chosen = {id(layer) for layer in self.images.value}
        return [layer for layer in self.viewer.layers if id(layer) in chosen]

    def labels_layer(self) -> Any:
        """The chosen labels layer (None when there is none)."""
        return self.labels.value

    def configure(
        self, images: Sequence[str] | None = None, labels: str | None = None, **fields: Any
    ) -> None:
        """Set the form from code (scripts, benchmarks, tests).

        Parameters
        ----------
        images, labels
            Layer names for the image and labels pickers.
        **fields
            Field names of this widget and their values, e.g. ``epochs=2``,
            ``slice_size=128`` (0: native), ``base_channels=16``, ``device="cpu"``,
            ``output="/tmp/runs"``, ``preset="quick"``.
        """
        self.reset_choices()
        if "preset" in fields:
            self.preset.value = fields.pop("preset")
        if images is not None:
            self.images.value = [self.viewer.layers[name] for name in images]
        if labels is not None:
            self.labels.value = self.viewer.layers[labels]
        for name, value in fields.items():
            widget = getattr(self, name, None)
            if widget is None or not hasattr(widget, "value"):
                raise ValueError(f"TrainWidget has no field {name!r}")
            widget.value = value

    @property
    def busy(self) -> bool:
        """True while a run, or the prediction after it, is going on."""
        return self.runner.running or self._predict_worker is not None

    # -- settings -> config ------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The widget's fields as ``TrainConfig`` keyword arguments (plus the
        schedule fields, see ``_logic.build_config``); data fields are added by
        :meth:`validate`."""
        values = {
            spec.name: path_text(field) if spec.type is Path else field.value
            for spec in train_fields()
            for field in (getattr(self, spec.name),)
        }
        settings = settings_from_values(values)
        settings["patch_size"] = self.patch_size() if self.dims.value == 3 else None
        return settings

    def validate(
        self, **overrides: Any
    ) -> tuple[Any, Callable[[], tuple[list[Any], list[Any] | None]] | None]:
        """Check every input; return the config and the case builder.

        ``overrides`` replace settings (e.g. ``max_steps_per_epoch`` in tests or
        the fine-tuning loop). Raises ValueError / TypeError naming the problem.
        """
        settings = {**self.settings(), **overrides}
        check_device(settings["device"])
        output = check_output_folder(settings["out_dir"] or "")
        loaded = None
        if settings["init_checkpoint"]:
            loaded = load_checked_checkpoint(settings["init_checkpoint"], None)
            settings.update(self.follow_checkpoint(loaded[1]))
        make_cases = None
        n_channels = None
        self._stack = None
        plane = self.axis.value
        axis = None
        self._native_axis = None
        if self.source.value == "layers":
            labels_layer = require_layer(self.labels.value, "labels")
            stack = images_from_layers(self.image_layers())
            labels = labels_array(labels_layer)
            settings["num_classes"] = check_labels(
                labels, labels_layer.name, stack.images.shape[1:]
            )
            # the data says the axis (its affine), never the viewer
            axis = native_slice_axis(labels_layer, plane)
            self._native_axis = axis
            make_cases, block = cases_from_layers(
                stack,
                labels,
                axis,
                settings["val_fraction"],
                affine=layer_affine(labels_layer),
            )
            if settings.get("dims") == 3:
                if labels.ndim != 3:
                    raise ValueError(
                        f"3D patches need a 3D volume: labels '{labels_layer.name}' has shape "
                        f"{tuple(labels.shape)}. Choose 'Train on: 2D slices'."
                    )
                settings["patch_size"] = fit_patch(
                    settings["patch_size"], labels.shape, axis, block
                )
                make_cases = fitting_cases(make_cases, settings["patch_size"])
            self._val_block = block
            n_channels = stack.images.shape[0]
            self._stack = stack
        else:
            text = path_text(self.folder)
            folder = Path(text).expanduser()
            if not text or not folder.is_dir():
                raise ValueError(f"Dataset folder not found: '{text}'.")
            from napari_boundary_seg.core.data import find_cases

            if not find_cases(folder):
                raise ValueError(f"No cases found in '{folder}' (generic, WMH or ISLES layout).")
            settings["data"] = str(folder)
            if self.image_layers():
                try:
                    self._stack = images_from_layers(self.image_layers())
                except (TypeError, ValueError):
                    self._stack = None  # no prediction afterwards, training still runs
        settings["axis"] = plane  # resolved per case from its affine, as on the command line
        if loaded is not None and n_channels is not None:
            check_checkpoint_channels(loaded, n_channels, settings["init_checkpoint"])
        settings["out_dir"] = str(new_run_folder(output))
        return build_config(settings), make_cases

    def follow_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """Fine-tuning follows the checkpoint's mode: its ``dims`` and 3D patch
        size go into the form (shown) and are returned as settings."""
        from napari_boundary_seg.core.checkpoint import training_mode

        mode = training_mode(checkpoint)
        self.dims.value = mode["dims"]
        if mode["dims"] == 3:
            for box, value in zip(self.patch, mode["patch_size"], strict=True):
                box.value = int(value)
        return {"dims": mode["dims"], "patch_size": mode["patch_size"]}

    # -- run control -------------------------------------------------------------
    def start(self) -> bool:
        """Validate the inputs and start training; False (and a notification)
        when an input is bad."""
        if self.runner.running:
            notify_error("A training run is already going on: stop it first.")
            return False
        try:
            config, make_cases = self.validate(**self.overrides)
        except (ValueError, TypeError, OSError) as exc:
            notify_error(exc)
            return False
        self.events = []
        self.last_done = None
        self.device_used = ""
        self.prediction_layer = None
        self._steps_total = 0
        self._start_epoch = 0
        self._closing = False
        self._last_position = None
        self._preview_text = ""
        self.verdict = None
        self.verdict_label.setVisible(False)
        self._config = config
        self._update_preview_at()
        # the view follows in a turn of its own: napari slices every layer again
        QTimer.singleShot(0, self._follow_training_plane)
        self.curves.reset(config.epochs, loss=config.loss)
        self.curves.start_timer()
        self.progress.reset(config.epochs)
        self.progress.busy("preparing data")
        # napari's activity-dialog bar costs 20-300 ms to build (the first one
        # shows the dialog's widgets): the runner's relay builds it on its first
        # tick, so the click itself stays short and the status shows "Preparing"
        QTimer.singleShot(0, self._open_progress)
        preview = None
        if self._stack is not None and self.source.value == "layers":
            preview = (self._stack, self._preview_where)
        from napari_boundary_seg.core.train import TrainControl

        control, ended = TrainControl(), threading.Event()
        self._preview_shown = threading.Event()
        self.runner.start(
            training_job,
            config,
            make_cases,
            control,
            ended,
            preview,
            self._preview_shown,
            control=control,
            ended=ended,
        )
        self.runner.set_progress(0, 0, "preparing data")
        self._set_running(True)
        self._set_state(RunState.PREPARING, f"checkpoints go to {config.out_dir}")
        return True

    def _open_progress(self) -> None:
        # a run is what the user now watches: bring the buttons, the bars, the
        # status and the start of the curves into view (the form is taller than
        # most docks): the Start row goes to the top of the dock. Not
        # ensureWidgetVisible(curves): curves taller than the dock get centred,
        # which scrolls the bars above them out of view.
        content = self.scroll.widget()
        content.layout().activate()  # the geometry of the state just set
        top = self.start_button.mapTo(content, QPoint(0, 0)).y() - 4
        bar = self.scroll.verticalScrollBar()
        bar.setValue(max(0, min(top, bar.maximum())))

    def toggle_pause(self) -> None:
        if not self.runner.running or self.state in (RunState.STOPPING, RunState.PREPARING):
            return
        if self.runner.paused:
            self.runner.resume()
            self.pause_button.setText("Pause")
            self._set_state(RunState.RUNNING, self._position_text("resumed"))
        else:
            self.runner.pause()
            self.pause_button.setText("Resume")
            self._set_state(RunState.PAUSING)

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.pause_button.setText("Pause")
            self.pause_button.setEnabled(False)
            self._set_state(RunState.STOPPING)

    def shutdown(self) -> None:
        """Stop a run cleanly (the trainer keeps its last checkpoint); used when
        the widget or napari closes."""
        self._closing = True
        self.curves.stop_timer()
        self.runner.shutdown()
        worker, self._predict_worker = self._predict_worker, None
        if worker is not None:
            _disconnect(worker.returned, worker.errored)
            worker.quit()

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        for widget in self.settings_widgets:
            widget.setEnabled(not running)
        if not running:
            self.pause_button.setText("Pause")

    def _on_finished(self) -> None:
        self._set_running(False)
        done = self.last_done
        if done is not None and not self._closing and self.predict_after.value:
            self._predict_after(done)

    # -- prediction after training -------------------------------------------------
    def _predict_after(self, done: Any) -> Any:
        """Predict the current image with the best model; returns the worker."""
        checkpoint, why = self.prediction_checkpoint(done)
        stack = self._stack
        if stack is None:
            return None
        if checkpoint is None:
            self._detail = f"{self._detail}. No prediction: {why}"
            self._show_status()
            return None
        run = Path(checkpoint).parent.name  # run-YYYYmmdd-HHMMSS[-k]: keep the time
        run = run.split("-", 2)[-1] if run.startswith("run-") else run
        name = unique_layer_name(self.viewer, f"prediction {Path(checkpoint).stem} {run}")
        detail = self._detail
        self._set_state(RunState.PREDICTING, f"with {why}")

        def returned(layer: Any) -> None:
            layer = self._deliver_prediction(layer)
            self.prediction_layer = layer
            found = int(layer.metadata["napari_boundary_seg"]["foreground_voxels"])
            what = f"{found} foreground voxels" if found else "no foreground predicted"
            self._set_state(
                RunState.DONE, f"{detail}. Prediction with {why} added as '{layer.name}': {what}."
            )
            self._show_verdict(self.judge(found))

        def finished() -> None:
            if self._closing:  # the widget may be gone
                return
            self._predict_worker = None
            if self.state is RunState.PREDICTING:  # no prediction came back
                self._set_state(RunState.DONE, detail)
                self._show_verdict(self.judge())

        device = self.device_used or "auto"
        worker = start_progress_worker(
            lambda: prediction_layer_job(checkpoint, stack, device, name),
            returned,
            "Predicting with the trained model",
            start=False,
        )
        worker.finished.connect(finished)
        self._predict_worker = worker
        worker.start()
        return worker

    # -- closing ---------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        self.shutdown()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        # napari's remove_dock_widget un-parents the widget: stop the run then.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            if self.runner.running:
                self.shutdown()
        return super().event(event)
