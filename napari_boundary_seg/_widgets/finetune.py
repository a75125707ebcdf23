"""Fine-tuning widget: predict → correct with the label brush → fine-tune → see the gain.

1. **Predict**: a checkpoint and image layer(s) give a probability Image layer
   and an editable Labels layer ``"<image> corrections"``; or **Use layer**
   links an existing prediction (e.g. the inference widget's ``"<image>
   prediction"``). The links live in ``layer.metadata["finetune"]``: the image
   layer names, the checkpoint, the probability layer, the slicing axis (the
   checkpoint's training axis) and the prediction the layer started from.
2. **Correct**: the user paints and erases. :class:`EditTracker` listens to
   ``Labels.events.paint`` (one event per brush stroke, fill, polygon or
   ``data_setitem``; its ``value`` is the list of history atoms of the edit)
   and records the slices along the slicing axis that the edit changed: only
   the edited region is looked at, never the whole volume. Undo/redo emit no
   paint event: a slice painted and then undone stays listed, but when
   fine-tuning starts the listed slices are checked once against the starting
   prediction and those that equal it again are left out. Replacing
   ``layer.data`` wholesale (``layer.data = array``) with an array of the same
   shape makes every slice a candidate (the same check keeps the slices that
   differ); with another shape the tracking is reset and the link dropped
   (predict again). "Mark slice checked" (Shift-K on the linked layer) lists
   the slice shown as checked and right as predicted: it teaches like a
   corrected slice (``verified_slices`` of the fine-tune), while the slices
   nobody painted or checked do not (docs/DESIGN.md, "Fine-tuning").
3. **Fine-tune**: :func:`napari_boundary_seg.core.finetune.finetune` on a copy
   of the labels and images, in a napari ``thread_worker``, with progress,
   stop and live curves; then :func:`~napari_boundary_seg.core.finetune.evaluate_finetune`.
   The layer's data is never written by the worker: what the user painted
   survives a failure or a stop.
4. **See the gain**: a table of DSC and HD95 of the old and the new model:
   on the corrected slices against the corrections; on the untouched slices
   against the reference (ground-truth) layer when one is chosen, else "n/a" (there the
   corrections are the old prediction, so the old model would score 1.000 by
   construction). An HD95 of a group with no foreground predicted shows "—"
   (with a tooltip), not an image diagonal. A layer of the voxels whose
   prediction changed, and Keep / Discard (both checkpoints stay on disk with
   their ``lineage.json``; Discard goes on with the parent).
5. **Rounds**: each fine-tune that ran to its end adds a point to a small
   curve (``_rounds.py``): the slices taught against the DSC on the untouched
   slices against the reference labels, or, with no reference, the agreement
   with the previous round's prediction (:mod:`napari_boundary_seg.core.rounds`).
   "Undo round" makes the checkpoint active before the last kept round active
   again; the lineage notes it and nothing is deleted.

The form scrolls (it fits a 1366×768 screen); the fine-tuning settings but
the epochs fold away ("Advanced settings"); progress with elapsed and
remaining time shows inside the widget.

"Save corrected labels" writes NIfTI with the image's affine (asking before
overwriting a file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QLabel,
    QPushButton,
    QWidget,
)

from napari_boundary_seg._widgets._checkpoints import (
    NO_FOREGROUND,
    check_checkpoint_path,
    checkpoint_axis,
    finetune_checkpoint_path,
    load_checked_checkpoint,
    modalities_of,
    probability_layer_kwargs,
    stack_for_checkpoint,
)
from napari_boundary_seg._widgets._edits import (  # noqa: F401 - the module's API
    CHANGE_COLORS,
    META_KEY,
    EditTracker,
    atom_slices,
    foreground_flags,
)
from napari_boundary_seg._widgets._fields import (
    Form,
    LayerCombo,
    PathEdit,
    button_row,
    collapsible,
    declared_spin,
    double_spin,
    group_box,
    note_label,
    scroll_layout,
)
from napari_boundary_seg._widgets._finetune_parts import Corrections, Gain
from napari_boundary_seg._widgets._gain import GainTable
from napari_boundary_seg._widgets._jobs import (  # noqa: F401 - the module's API
    finetune_job,
    finetune_layers_job,
    predict_for_correction,
)
from napari_boundary_seg._widgets._layers import (
    ImageStack,
    check_same_geometry,
    check_same_shape,
    geometry_kwargs,
    images_from_layers,
    is_segmentation_labels,
    labels_array,
    layer_affine,
    layer_spacing,
    mark_output,
    notify_error,
    output_label_colormap,
    unique_layer_name,
)
from napari_boundary_seg._widgets._logic import check_device
from napari_boundary_seg._widgets._plots import FinetuneCurves
from napari_boundary_seg._widgets._progress import ProgressPanel
from napari_boundary_seg._widgets._rounds import RoundsPart
from napari_boundary_seg._widgets._runner import Delivery, Runner, RunsWork, layer_steps
from napari_boundary_seg._widgets._sections import ModelInputs
from napari_boundary_seg.core.config import FinetuneConfig

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

CHECK_KEY = "Shift-K"
"""The shortcut, on the linked layer, that marks the slice shown as checked."""

__all__ = ["EditTracker", "FinetuneWidget", "atom_slices", "finetune_job"]

#: The live curves redraw at most this often (ms).
REDRAW_MS = 400


class FinetuneWidget(Corrections, Gain, RoundsPart, RunsWork, QWidget):
    """Dock widget of the predict → correct → fine-tune loop (see the module docstring)."""

    TABLE_COLUMNS = ("slices", "n", "DSC old", "DSC new", "HD95 old (mm)", "HD95 new (mm)")
    """Columns of the comparison table: DSC (0-1) and HD95 (mm) of the model
    before (old) and after (new) fine-tuning; n: the number of slices."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari.layers import Labels

        self.viewer = napari_viewer
        self.layer: Any = None
        self.tracker: EditTracker | None = None
        self.current_pred: np.ndarray | None = None
        self.pending: tuple[Any, dict[str, Any]] | None = None
        self.last_result: Any = None
        self.comparison: dict[str, dict[str, float]] | None = None
        self.used_slices: list[int] = []
        self._returned: Callable[[Any], None] | None = None
        self._steps: list[float] = []
        self._loss: dict[str, list[float]] = {"total": [], "region": [], "α": []}
        self._dirty = False
        self.delivery = Delivery(self)

        # 1. predict or link
        self.inputs = ModelInputs(napari_viewer)
        self.checkpoint, self.images, self.device = (
            self.inputs.checkpoint,
            self.inputs.images,
            self.inputs.device,
        )
        self.predict_button = QPushButton("Predict")
        self.predict_button.setToolTip("Predict into an editable '<image> corrections' layer")
        self.predict_button.clicked.connect(self.predict)
        self.labels_combo = LayerCombo(napari_viewer, (Labels,), accept=is_segmentation_labels)
        self.use_button = QPushButton("Use layer")
        self.use_button.setToolTip("Correct an existing prediction (e.g. the Predict widget's)")
        self.use_button.clicked.connect(lambda: self.use_layer(self.labels_combo.layer()))
        self.inputs.add(self.predict_button, None)
        self.inputs.add_row(
            button_row(QLabel("or"), self.labels_combo, self.use_button, stretch=(0, 1))
        )
        box1 = group_box("1. Predict", self.inputs)

        # 2. correct
        self.edited_label = note_label("No layer linked yet.")
        self.add_button = QPushButton(f"Mark slice checked ({CHECK_KEY})")
        self.add_button.setToolTip(
            "The slice shown is right as predicted: it teaches like a corrected slice. "
            f"Only corrected and checked slices teach. Shortcut on the layer: {CHECK_KEY}."
        )
        self.add_button.clicked.connect(self.add_current_slice)
        self.clear_button = QPushButton("Clear list")
        self.clear_button.clicked.connect(self.clear_slices)
        self.save_button = QPushButton("Save corrected labels…")
        self.save_button.clicked.connect(lambda: self.save_corrected())
        box2 = group_box(
            "2. Correct (paint / erase on the layer)",
            self.edited_label,
            button_row(self.add_button, self.clear_button),
            self.save_button,
        )

        # 3. fine-tune
        # the fine-tune's settings as FinetuneConfig declares them
        self.alpha_start = declared_spin(FinetuneConfig, "alpha_start", decimals=2)
        self.alpha_step = declared_spin(FinetuneConfig, "alpha_step", decimals=2)
        self.epochs = declared_spin(FinetuneConfig, "epochs", high=500)
        self.lr = double_spin(5e-4, 1e-6, 1.0, 1e-4, 6)
        self.mix_folder = PathEdit("folder", placeholder="(optional) original training data")
        self.mix_ratio = declared_spin(FinetuneConfig, "mix_ratio", decimals=1, high=20.0)
        self.out_folder = PathEdit("folder", placeholder="(default) beside the checkpoint")
        self.finetune_button = QPushButton("Fine-tune on the edited slices")
        self.finetune_button.clicked.connect(self.start_finetune)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.curves = FinetuneCurves()
        advanced = Form(
            [
                ("α start", self.alpha_start),
                ("α step", self.alpha_step),
                ("Learning rate", self.lr),
                ("Mix with", self.mix_folder),
                ("Mix ratio", self.mix_ratio),
                ("Output", self.out_folder),
            ]
        )
        self.advanced = collapsible("Advanced settings", advanced)
        self.progress = ProgressPanel(self)
        self.truth_combo = LayerCombo(
            napari_viewer, (Labels,), allow_none=True, accept=is_segmentation_labels
        )
        self.truth_combo.setToolTip(
            "Reference labels (ground truth) for the untouched slices: their row of the "
            "gain table and the rounds curve. (none): the row is n/a (there the corrections "
            "are the old prediction) and the curve shows agreement with the previous round."
        )
        form3 = Form(
            [("Epochs", self.epochs), ("Reference", self.truth_combo), (None, self.advanced)]
        )
        form3.add_row(button_row(self.finetune_button, self.stop_button, stretch=(1, 0)))
        form3.add(self.progress, None)
        form3.add(self.curves, None)
        box3 = group_box("3. Fine-tune", form3)

        # 4. the gain
        self.table = GainTable()
        self.keep_button = QPushButton("Keep new model")
        self.discard_button = QPushButton("Discard")
        self.keep_button.clicked.connect(lambda: self.decide(True))
        self.discard_button.clicked.connect(lambda: self.decide(False))
        for b in (self.keep_button, self.discard_button):
            b.setEnabled(False)
        box4 = group_box(
            "4. Gain",
            self.table,
            button_row(self.keep_button, self.discard_button),
        )

        self.status = note_label("")
        layout = scroll_layout(self)
        for w in (box1, box2, box3, box4, self._rounds_box(), self.status):
            layout.addWidget(w)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.runner = Runner(
            self,
            panel=self.progress,
            buttons=[self.predict_button, self.use_button, self.finetune_button],
            notify=False,
        )
        self.runner.event.connect(self._on_event)
        self.runner.done.connect(lambda result: self._returned and self._returned(result))
        self.runner.failed.connect(self._on_error)
        self.runner.finished.connect(self._on_finished)
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()

    # -- state ------------------------------------------------------------------------
    @property
    def link(self) -> dict[str, Any]:
        return self.layer.metadata.get(META_KEY, {}) if self.layer is not None else {}

    def _linked_layers(self) -> list[Any]:
        names = self.link.get("images") or []
        missing = [n for n in names if n not in self.viewer.layers]
        if missing:
            raise ValueError(f"The linked image layer(s) {missing} are gone; predict again.")
        if not names:
            raise ValueError("No image layer linked: predict (or use a layer) first.")
        return [self.viewer.layers[n] for n in names]

    # -- 1. predict / link ------------------------------------------------------------
    def predict(self) -> Any:
        """Predict with the checkpoint on the chosen images (in a worker)."""
        if self.busy:
            notify_error("a prediction or fine-tune is already running")
            return None
        self.inputs.take_layer_model()  # the model the layers name, if none is chosen
        try:
            path = finetune_checkpoint_path(self.checkpoint.text())
            stack = images_from_layers(self.images.selected_layers())
            device = check_device(self.device.device())
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        stack = stack_for_checkpoint(stack, modalities_of(path))

        def done(result: tuple[np.ndarray, np.ndarray, int]) -> None:
            foreground, labels, axis = result
            self._add_correction_layer(stack, path, foreground, labels, axis)

        self.status.setText("Predicting…")
        return self._run(
            predict_for_correction,
            (path, stack.images, stack.spacing, device, stack.affine),
            done,
        )

    def _add_correction_layer(
        self,
        stack: ImageStack,
        checkpoint: str,
        foreground: np.ndarray,
        labels: np.ndarray,
        axis: int,
    ) -> Any:
        """Add the probability layer, then the corrections layer and its link
        (``_runner.layer_steps``, one step per event-loop turn); returns the
        correction layer when all ran at once, else None."""
        prefix = stack.names[0]
        geometry = dict(stack.geometry)
        metadata = geometry.pop("metadata", None)
        name = f"{prefix} corrections"
        prob_name = unique_layer_name(self.viewer, f"{prefix} probability")
        added: list[Any] = []

        def keep_previous() -> None:
            if name in self.viewer.layers:  # never drop earlier corrections: keep them renamed
                previous = unique_layer_name(self.viewer, f"{name} (previous)")
                self.viewer.layers[name].name = previous

        def link(layer: Any) -> None:
            self._link(layer, stack.names, checkpoint, prob_name, axis, np.array(labels, copy=True))
            empty = f" ({NO_FOREGROUND}: paint the lesions in)" if not labels.any() else ""
            self.status.setText(
                f"Prediction in '{name}'{empty}: paint or erase to correct it, then fine-tune."
            )
            added.append(layer)

        # each layer added in three event-loop turns: the window draws in between
        self.delivery.run(
            *layer_steps(
                self.viewer,
                "image",
                foreground,
                activate=False,
                name=prob_name,
                visible=False,
                metadata=mark_output("probability", metadata),
                **probability_layer_kwargs(),
                **geometry,
            ),
            keep_previous,
            *layer_steps(
                self.viewer,
                "labels",
                labels,
                done=link,
                name=name,
                metadata=mark_output("prediction", metadata),
                colormap=output_label_colormap("prediction"),
                **geometry,
            ),
        )
        return added[0] if added else None

    def use_layer(self, layer: Any) -> None:
        """Link an existing prediction Labels layer (its current data = the model's)."""
        try:
            if layer is None:
                raise ValueError("No labels layer chosen to correct.")
            labels = labels_array(layer)
            stack = images_from_layers(self.images.selected_layers())
            if tuple(stack.images.shape[1:]) != labels.shape:
                raise ValueError(
                    f"Shapes do not match: '{layer.name}' is {labels.shape}, the images "
                    f"{tuple(stack.images.shape[1:])}."
                )
            check_same_geometry(self.images.selected_layers()[0], layer)
            path = finetune_checkpoint_path(self.checkpoint.text())
            loaded = load_checked_checkpoint(path, stack.images.shape[0])
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return
        stack = stack_for_checkpoint(stack, loaded[1].get("modalities") or [])
        axis = checkpoint_axis(loaded[1], labels.ndim, stack.affine, stack.spacing)
        prob = None
        if " prediction" in layer.name:  # "<image> prediction" or "<image> prediction [2]"
            candidate = layer.name.replace(" prediction", " probability", 1)
            prob = candidate if candidate in self.viewer.layers else None
        self._link(layer, stack.names, path, prob, axis, labels.copy())

    def _link(
        self,
        layer: Any,
        image_names: list[str],
        checkpoint: str,
        probability: str | None,
        axis: int,
        prediction: np.ndarray,
    ) -> None:
        if self.tracker is not None:
            self.tracker.detach()
            try:  # the shortcut follows the linked layer
                self.tracker.layer.bind_key(CHECK_KEY, None)
            except (KeyError, ValueError, TypeError):
                pass
        layer.bind_key(CHECK_KEY, lambda _layer: self.add_current_slice(), overwrite=True)
        layer.metadata[META_KEY] = {
            "images": list(image_names),
            "checkpoint": str(checkpoint),
            "probability": probability,
            "axis": int(axis),
            "prediction": prediction,
            "lineage": [],
        }
        self.layer = layer
        self.current_pred = prediction
        self.tracker = EditTracker(layer, axis, self._update_edited)
        self.checkpoint.setText(str(checkpoint))
        self._update_edited()
        self._reset_rounds(str(checkpoint))

    # -- 3. fine-tune -----------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        mix = self.mix_folder.text()
        ratio = float(self.mix_ratio.value())
        if ratio > 0 and not mix:
            raise ValueError("A mix ratio is set but no folder of original training data.")
        if mix and not Path(mix).is_dir():
            raise ValueError(f"Mix folder not found: '{mix}'.")
        out = self.out_folder.text() or None
        return {
            "alpha_start": float(self.alpha_start.value()),
            "alpha_step": float(self.alpha_step.value()),
            "epochs": int(self.epochs.value()),
            "lr": float(self.lr.value()),
            "mix_cases": mix if (mix and ratio > 0) else None,
            "mix_ratio": ratio,
            "out_dir": out,
            "device": check_device(self.device.device()),
        }

    def start_finetune(self) -> Any:
        """Fine-tune the linked checkpoint on the edited slices (in a worker)."""
        if self.busy:
            notify_error("a prediction or fine-tune is already running")
            return None
        try:
            if self.layer is None or self.tracker is None or self.layer not in self.viewer.layers:
                raise ValueError("No corrected layer: predict (or use a layer) and edit it first.")
            if self.tracker.reset_reason:
                raise ValueError(self.tracker.reset_reason)
            labels = np.array(labels_array(self.layer), copy=True)  # the worker's own copy
            layers = self._linked_layers()  # stacked and checked in the worker
            check_same_shape(layers[0], self.layer)
            check_same_geometry(layers[0], self.layer)
            slices = self.slices_to_use(labels)
            if not slices:
                raise ValueError(
                    "No edited slice differs from the prediction: paint corrections first "
                    f"(or mark the current slice checked, {CHECK_KEY})."
                )
            checked = self.checked_slices(labels)
            settings = {**self.settings(), "verified_slices": tuple(checked)}
            checkpoint = check_checkpoint_path(self.link["checkpoint"])
            truth = self._reference(labels.shape)
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        from napari_boundary_seg.core.train import TrainControl

        control = TrainControl()
        self.used_slices = slices
        self.pending = None
        self._reset_curves()
        self._set_table(None)
        for b in (self.keep_button, self.discard_button):
            b.setEnabled(False)
        self.status.setText(f"Fine-tuning on {len(slices)} slice(s): {slices}…")
        # names and geometry now; the images are stacked in the worker
        stack = ImageStack(
            np.empty((0,), np.float32),
            layer_spacing(layers[0]),
            geometry_kwargs(layers[0]),
            [layer.name for layer in layers],
            layer_affine(layers[0]),
        )
        self._stack_used = stack
        return self._run(
            finetune_layers_job,
            (
                layers,
                checkpoint,
                labels,
                stack.spacing,
                [s for s in slices if s not in checked],
                settings,
                self.current_pred,
                control,
                truth,
            ),
            self._on_finetuned,
            control=control,
        )

    def stop(self) -> None:
        """Ask the fine-tune to stop at its next step (the parent stays the model)."""
        if self.control is not None:
            self.control.stop()  # also wakes a paused run
            self.status.setText("Stopping…")

    def _on_event(self, event: Any) -> None:
        name = type(event).__name__
        if name == "StepEvent":
            total = max(event.steps_per_epoch, 1)
            self._steps.append(event.epoch + (event.step + 1) / total)
            self._loss["total"].append(event.loss)
            self._loss["region"].append(event.region)
            self._loss["boundary"].append(event.boundary)
            self._loss["α"].append(event.w_region)
            self._dirty = True
            done = event.epoch * total + event.step + 1
            n_epochs = int(self.epochs.value())
            message = f"epoch {event.epoch + 1}/{n_epochs}, step {event.step + 1}/{total}"
            self.runner.set_progress(done, total * n_epochs, message)
        elif name == "InfoEvent":
            self.status.setText(event.message)

    def _reset_curves(self) -> None:
        self._steps = []
        self._loss = {"total": [], "region": [], "boundary": [], "α": []}
        self._dirty = True  # the redraw timer draws it, not the click

    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self.curves.set_data(self._steps, self._loss, max(float(self.epochs.value()), 1.0))

    # -- worker plumbing ----------------------------------------------------------------
    def _run(
        self,
        func: Callable[..., Generator[Any, Any, Any]],
        args: tuple,
        on_returned: Callable[[Any], None],
        control: Any = None,
    ) -> Any:
        """Run ``func(*args)`` in the runner; a ``control`` makes it stoppable
        (napari's window close then stops a fine-tune at its next step, which
        saves last.pt, instead of dropping it mid-run)."""
        self._returned = on_returned
        self.undo_button.setEnabled(False)
        stoppable = control is not None
        self.stop_button.setEnabled(stoppable)
        what = "Fine-tuning" if stoppable else "Predicting"
        return self.runner.start(func, *args, control=control, description=what)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Failed: {exc}. Your corrections are unchanged.")
        notify_error(exc)

    def _on_finished(self) -> None:
        self.stop_button.setEnabled(False)
        self._refresh_rounds()
        # the curves' last state: drawn by the redraw timer, in a turn of its own

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        if self.control is not None:
            self.control.stop()  # the trainer saves last.pt and returns at its next step
        if self.tracker is not None:
            self.tracker.detach()
        try:
            self._timer.stop()
        except RuntimeError:
            pass
        super().closeEvent(event)
