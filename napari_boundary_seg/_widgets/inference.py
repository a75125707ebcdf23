"""Predict widget: a checkpoint and image layer(s) -> probability and label layers.

The widget is thin: its "checkpoint + images + device" section
(``_sections.ModelInputs``, shared with the Finetune widget) is checked here,
:func:`~napari_boundary_seg._widgets._jobs.predict_job` runs in the widget's
``_runner.Runner`` (progress in the widget and in napari's activity dialog),
and the results are added as layers with the input's geometry, one step per
event-loop turn (``_runner.Delivery``). :func:`add_prediction_layers` adds a
prediction's layers from a script. The checkpoint checks live in
``_checkpoints``, the worker bodies in ``_jobs``.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QPushButton, QWidget

from napari_boundary_seg._widgets._checkpoints import (  # noqa: F401 - the module's API
    NO_FOREGROUND,
    _modalities_cached,  # noqa: F401
    check_checkpoint_channels,
    check_checkpoint_path,
    checkpoint_in_channels,
    load_checked_checkpoint,
    modalities_of,
    prediction_layer_kwargs,
    prediction_outputs,
    prediction_status,
    probability_colormap,
    probability_layer_kwargs,
    stack_for_checkpoint,
)
from napari_boundary_seg._widgets._fields import compact_combo, note_label, scroll_layout
from napari_boundary_seg._widgets._jobs import predict_job
from napari_boundary_seg._widgets._layers import (
    ImageStack,
    images_from_layers,
    insert_layer_quietly,
    notify_error,
)
from napari_boundary_seg._widgets._logic import check_device
from napari_boundary_seg._widgets._progress import ProgressPanel
from napari_boundary_seg._widgets._runner import (
    STEP_PAUSE_MS,
    Delivery,
    Runner,
    RunsWork,
    freeze_long_lived_objects,
    layer_steps,
)
from napari_boundary_seg._widgets._sections import ModelInputs
from napari_boundary_seg.core.config import FLIPS_HELP
from napari_boundary_seg.core.progress import Progress
from napari_boundary_seg.core.settings import plain_help

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "NO_FOREGROUND",
    "InferenceWidget",
    "add_prediction_layers",
    "check_checkpoint_channels",
    "predict_job",
    "stack_for_checkpoint",
]


def add_prediction_layers(
    viewer: napari.Viewer,
    probs: np.ndarray,
    labels: np.ndarray,
    stack: ImageStack,
    prefix: str,
    with_probability: bool = True,
) -> tuple[Any, Any]:
    """Add the probability Image and prediction Labels layers, as new layers
    (the labels layer becomes the active one in the next event-loop turn).

    An earlier prediction is never overwritten: when ``"<prefix> prediction"``
    exists, the new layers are ``"<prefix> prediction [2]"`` (and
    ``"<prefix> probability [2]"``), and so on. Both are marked as this
    plugin's outputs (``_layers.mark_output``), so image pickers leave the
    probability out.

    Parameters
    ----------
    probs
        ``(C, *spatial)`` class probabilities (the layer shows the foreground
        probability ``1 - probs[0]``), or ``(*spatial)`` foreground
        probabilities already (:func:`prediction_outputs`).
    labels
        ``(*spatial)`` integer prediction.
    stack
        The input images, whose geometry the layers take.
    prefix
        Layer names start with ``f"{prefix} probability"`` and ``f"{prefix} prediction"``.

    Returns
    -------
    (probability layer or None, labels layer)
    """
    freeze_long_lived_objects()  # no full GC scan of napari and torch while adding layers
    foreground, labels = prediction_outputs(probs, labels)
    probability, prediction = prediction_layer_kwargs(viewer, stack, prefix)
    from napari.layers import Image, Labels
    from qtpy.QtCore import QTimer

    prob_layer = None
    if with_probability:
        prob_layer = insert_layer_quietly(viewer, Image(foreground, **probability))
    label_layer = insert_layer_quietly(viewer, Labels(labels, **prediction))

    def activate() -> None:  # a later event-loop turn: napari's controls switch then
        if label_layer in viewer.layers:
            viewer.layers.selection.active = label_layer

    QTimer.singleShot(STEP_PAUSE_MS, activate)
    return prob_layer, label_layer


class InferenceWidget(RunsWork, QWidget):
    """Dock widget: checkpoint + image layer(s) -> probability and prediction layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from magicgui.widgets import CheckBox, ComboBox

        self.viewer = napari_viewer
        self.last_result: tuple[np.ndarray, np.ndarray] | None = None
        self.prediction_layer: Any = None
        self.delivery = Delivery(self)

        self.inputs = ModelInputs(napari_viewer)
        self.checkpoint, self.images, self.device = (
            self.inputs.checkpoint,
            self.inputs.images,
            self.inputs.device,
        )
        self.output_choice = ComboBox(choices=["probability and labels", "labels only"])
        self.probability = compact_combo(self.output_choice.native)
        self.inputs.add(self.probability, "Output")
        self.flips = CheckBox(
            value=False,
            text="mirror (test-time flips)",
            tooltip=plain_help(FLIPS_HELP),
        )
        self.inputs.add(self.flips)
        self.run_button = QPushButton("Predict")
        self.run_button.clicked.connect(self.start)
        self.progress = ProgressPanel(self)
        self.status = note_label("")
        self.runner = Runner(self, "Predicting", panel=self.progress, buttons=[self.run_button])
        self.runner.done.connect(self._on_returned)
        self.runner.failed.connect(self._on_error)

        layout = scroll_layout(self)
        layout.addWidget(self.inputs)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

    # -- validation, then the worker -------------------------------------------------
    def _validate(self) -> tuple[str, ImageStack, str]:
        """Check the cheap things here; the worker loads and checks the checkpoint."""
        layers = self.images.selected_layers()
        stack = images_from_layers(layers)
        device = check_device(self.device.device())
        self.inputs.take_layer_model()  # the model the layers name, if none is chosen
        checkpoint = check_checkpoint_path(self.checkpoint.text())
        return checkpoint, stack_for_checkpoint(stack, modalities_of(checkpoint)), device

    def start(self) -> Any | None:
        """Check the inputs and start prediction; returns the worker (or None)."""
        if self.runner.running:
            notify_error("a prediction is already running")
            return None
        try:
            checkpoint, stack, device = self._validate()
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        self._stack = stack
        flips = bool(self.flips.value)

        def job() -> Generator[Progress, None, tuple[np.ndarray, ...]]:
            probs, labels = yield from predict_job(
                checkpoint, stack.images, stack.spacing, device, affine=stack.affine, flips=flips
            )
            # the layers' data is built here, not in the GUI thread
            return (probs, labels, *prediction_outputs(probs, labels))

        self.status.setText("Predicting…")
        return self.runner.start(job, message="loading the checkpoint")

    def _on_returned(self, result: tuple[np.ndarray, ...]) -> None:
        probs, labels, foreground, label_data = result
        self.last_result = (probs, labels)
        probability, prediction = prediction_layer_kwargs(
            self.viewer, self._stack, self._stack.names[0]
        )
        name = prediction["name"]
        with_probability = self.probability.currentIndex() == 0

        def labels_added(layer: Any) -> None:
            self.prediction_layer = layer
            self.status.setText(prediction_status(label_data, name))

        # each layer added in three event-loop turns (the window draws in
        # between); the layers of add_prediction_layers (prediction_layer_kwargs)
        steps = []
        if with_probability:
            steps += layer_steps(self.viewer, "image", foreground, activate=False, **probability)
        steps += layer_steps(self.viewer, "labels", label_data, done=labels_added, **prediction)
        self.delivery.run(*steps)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText("Prediction failed.")  # the runner notifies

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.runner.shutdown()
        super().closeEvent(event)
