"""Inference widget: a checkpoint and image layer(s) -> probability and label layers.

The widget is thin: it checks the chosen layers and the checkpoint, runs
:func:`napari_boundary_seg.core.predict.iter_predict_volume` in a napari
``thread_worker`` (progress in a napari progress bar) and adds the results as
layers with the input's ``scale`` and ``translate``. The helpers
:func:`load_checked_checkpoint` and :func:`predict_job` are also used by the
training widget (prediction after training) and by the fine-tuning loop, and
:func:`add_prediction_layers` adds a prediction's layers from a script; the layer and Qt helpers they
share (image stacks, layer lists, device choice, progress, errors) live in
``_common``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from napari_boundary_seg._widgets._common import (
    STEP_PAUSE_MS,
    Delivery,
    DeviceCombo,
    ImageStack,
    LayerList,
    PathEdit,
    ProgressPanel,
    check_device,
    compact_combo,
    freeze_long_lived_objects,
    images_from_layers,
    insert_layer_quietly,
    layer_steps,
    mark_output,
    notify_error,
    notify_info,
    output_label_colormap,
    scroll_layout,
    start_progress_worker,
    unique_layer_name,
)
from napari_boundary_seg.core.progress import Progress

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


#: What the status and the tables say when a prediction has no foreground voxel.
NO_FOREGROUND = "no foreground predicted"


def probability_colormap() -> Any:
    """magma, transparent up to 0.2 and opaque from 0.6 up: a probability layer
    that does not tint the whole view (most voxels are near 0, and a young
    model's background sits at 0.1-0.3)."""
    from napari.utils.colormaps import Colormap, ensure_colormap

    controls = np.linspace(0.0, 1.0, 41)
    colors = np.asarray(ensure_colormap("magma").map(controls), dtype=np.float32)
    colors[:, 3] = np.clip((controls - 0.2) / 0.4, 0.0, 1.0)
    return Colormap(colors=colors, controls=controls, name="magma (transparent at 0)")


def probability_layer_kwargs() -> dict[str, Any]:
    """Display settings of a foreground-probability Image layer (0..1)."""
    return {
        "colormap": probability_colormap(),
        "contrast_limits": (0.0, 1.0),
        "blending": "translucent",
        "opacity": 0.8,
    }


def prediction_outputs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(foreground probability (*spatial) float32, labels (*spatial) int32)``:
    the layers' data, built in the worker so the GUI thread only adds layers."""
    foreground = probs if probs.ndim == np.ndim(labels) else 1.0 - probs[0]
    return (
        np.ascontiguousarray(foreground, dtype=np.float32),
        np.ascontiguousarray(labels, dtype=np.int32),
    )


def checkpoint_in_channels(checkpoint: Any) -> int | None:
    """The number of input channels (modalities) a loaded checkpoint expects.

    ``checkpoint`` is what :func:`core.checkpoint.load_checkpoint` returns,
    ``(model, checkpoint dict)``, or the dict alone.
    """
    if isinstance(checkpoint, tuple):
        model, checkpoint = checkpoint
        if getattr(model, "in_channels", None) is not None:
            return int(model.in_channels)
    hparams = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if isinstance(hparams, dict) and hparams.get("in_channels") is not None:
        return int(hparams["in_channels"])
    return None


def check_checkpoint_channels(checkpoint: Any, n_channels: int, path: str) -> None:
    """Raise ValueError if the checkpoint expects another number of modalities."""
    expected = checkpoint_in_channels(checkpoint)
    if expected is not None and expected != n_channels:
        raise ValueError(
            f"Checkpoint '{Path(path).name}' is a model for {expected} modality "
            f"channel(s) but {n_channels} image layer(s) are selected: choose "
            f"{expected} image layer(s) or another checkpoint."
        )


def check_checkpoint_path(path: str | Path) -> str:
    """Raise ValueError when ``path`` is empty or not an existing file."""
    text = str(path).strip()
    if not text:
        raise ValueError("No checkpoint chosen: pick a best.pt or last.pt file.")
    resolved = Path(text).expanduser()
    if not resolved.is_file():
        raise ValueError(f"Checkpoint file not found: '{resolved}'.")
    return str(resolved)


def modalities_of(path: str | Path) -> list[str]:
    """:func:`core.checkpoint.checkpoint_modalities` of the file at ``path``,
    read once per file version (path, size, modification time): the widgets
    read it when a checkpoint is chosen, and the Start click then costs no
    ``torch.load`` (≈ 80 ms under load, measured). ``[]`` for no file."""
    resolved = Path(path).expanduser()
    try:
        stat = resolved.stat()
    except OSError:
        return []
    if not resolved.is_file():
        return []
    return list(_modalities_cached(str(resolved.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _modalities_cached(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    from napari_boundary_seg.core.checkpoint import checkpoint_modalities

    return tuple(checkpoint_modalities(path))


def load_checked_checkpoint(path: str | Path, n_channels: int | None) -> Any:
    """Load a checkpoint and check it fits ``n_channels`` input modalities.

    Returns
    -------
    (model, checkpoint dict)
        As :func:`core.checkpoint.load_checkpoint`.

    Raises
    ------
    ValueError
        No path, a missing file, a file that is not a checkpoint of this plugin
        (corrupted, foreign), or a model for another channel count.
    """
    from napari_boundary_seg.core.checkpoint import load_checkpoint

    path = Path(check_checkpoint_path(path))
    try:
        loaded = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise ValueError(f"Checkpoint file not found: '{path}'.") from exc
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"Cannot use checkpoint '{path.name}': {exc}") from exc
    if n_channels is not None:
        check_checkpoint_channels(loaded, n_channels, str(path))
    return loaded


def stack_for_checkpoint(stack: ImageStack, trained: Sequence[str]) -> ImageStack:
    """``stack`` with its channels in the ``trained`` modality order of a checkpoint.

    Layers stack in the viewer's layer order; when their names are the
    checkpoint's modality names (its ``modalities``, or
    :func:`core.checkpoint.checkpoint_modalities` of its path) in another order,
    the channels are put in the model's order and an info notification says
    so. Otherwise ``stack`` is returned as it is.
    """
    from napari_boundary_seg.core.predict import modality_order

    order = modality_order(trained, stack.names)
    if order is None:
        return stack
    names = [stack.names[i] for i in order]
    notify_info(
        f"Image layers stacked in the modality order the model was trained on: {', '.join(names)}."
    )
    return dataclasses.replace(stack, images=stack.images[order], names=names)


def predict_job(
    checkpoint: Any,
    images: np.ndarray,
    spacing: tuple[float, ...],
    device: str = "auto",
    axis: int | None = None,
    affine: np.ndarray | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Worker body: predict a volume, yielding progress.

    Parameters
    ----------
    checkpoint
        A checkpoint path (loaded and checked here, in the worker:
        :func:`load_checked_checkpoint`), ``(model, checkpoint dict)`` from
        :func:`core.checkpoint.load_checkpoint`, or a model.
    images
        ``(M, *spatial)`` float32 modalities.
    spacing
        Voxel size, numpy axis order.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    axis
        Slicing axis; None: the one the model was trained with.
    affine
        The volume's voxel-to-world affine (the layers'): the model sees the
        volume reoriented as in training.

    Returns
    -------
    probs, labels
        ``(C, *spatial)`` float32 probabilities and ``(*spatial)`` labels.
    """
    from napari_boundary_seg.core.predict import iter_predict_volume

    if isinstance(checkpoint, str | Path):
        yield Progress(0, 0, "loading the checkpoint")
        checkpoint = load_checked_checkpoint(checkpoint, images.shape[0])
    result = yield from iter_predict_volume(
        checkpoint, images, tuple(spacing), device=device, axis=axis, affine=affine
    )
    return result


def prediction_layer_kwargs(
    viewer: Any, stack: ImageStack, prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments of the probability Image and the prediction Labels
    layers of a new prediction: names that overwrite no earlier prediction
    (``"<prefix> prediction [2]"`` and ``"<prefix> probability [2]"`` when the
    first exist), the input's geometry, and this plugin's output marks."""
    geometry = dict(stack.geometry)
    metadata = geometry.pop("metadata", None)
    name = unique_layer_name(viewer, f"{prefix} prediction")
    suffix = name[len(f"{prefix} prediction") :]
    probability = {
        "name": unique_layer_name(viewer, f"{prefix} probability{suffix}"),
        "metadata": mark_output("probability", metadata),
        **probability_layer_kwargs(),
        **geometry,
    }
    prediction = {
        "name": name,
        "metadata": mark_output("prediction", metadata),
        "colormap": output_label_colormap("prediction"),
        **geometry,
    }
    return probability, prediction


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
    plugin's outputs (``_common.mark_output``), so image pickers leave the
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


def prediction_status(labels: np.ndarray, name: str = "") -> str:
    """``"Done: N foreground voxels predicted in 'name'."`` or, when there is
    none, the words of :data:`NO_FOREGROUND`."""
    n_fg = int(np.count_nonzero(labels))
    where = f" in '{name}'" if name else ""
    if n_fg == 0:
        return f"Done: {NO_FOREGROUND}{where} (the model found no lesion)."
    return f"Done: {n_fg} foreground voxels predicted{where}."


# ---------------------------------------------------------------------------
# The inference widget
# ---------------------------------------------------------------------------


class InferenceWidget(QWidget):
    """Dock widget: checkpoint + image layer(s) -> probability and prediction layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from magicgui.widgets import ComboBox
        from napari.layers import Image

        self.viewer = napari_viewer
        self.worker = None
        self.last_result: tuple[np.ndarray, np.ndarray] | None = None
        self.prediction_layer: Any = None
        self.delivery = Delivery(self)

        self.checkpoint = PathEdit(
            "file", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)", "best.pt"
        )
        self.images = LayerList(napari_viewer, Image)
        self.checkpoint.magic.changed.connect(self._show_modalities)
        self.device = DeviceCombo()
        self.output_choice = ComboBox(choices=["probability and labels", "labels only"])
        self.probability = compact_combo(self.output_choice.native)
        self.run_button = QPushButton("Predict")
        self.run_button.clicked.connect(self.start)
        self.progress = ProgressPanel(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("Image layer(s)", self.images)
        form.addRow("Device", self.device)
        form.addRow("Output", self.probability)
        layout = scroll_layout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

    @property
    def busy(self) -> bool:
        """True while a prediction runs or its layers are being shown."""
        return self.worker is not None or self.delivery.pending

    def _show_modalities(self, *_: Any) -> None:
        """Show the loaded checkpoint's modality names under the image picker."""
        names = modalities_of(self.checkpoint.text()) if self.checkpoint.text() else []
        self.images.set_hint(f"model trained on: {', '.join(names)}" if names else "")

    # -- validation, then the worker -------------------------------------------------
    def _validate(self) -> tuple[str, ImageStack, str]:
        """Check the cheap things here; the worker loads and checks the checkpoint."""
        stack = images_from_layers(self.images.selected_layers())
        device = check_device(self.device.device())
        checkpoint = check_checkpoint_path(self.checkpoint.text())
        return checkpoint, stack_for_checkpoint(stack, modalities_of(checkpoint)), device

    def start(self) -> Any | None:
        """Check the inputs and start prediction; returns the worker (or None)."""
        if self.worker is not None:
            notify_error("a prediction is already running")
            return None
        try:
            checkpoint, stack, device = self._validate()
        except (ValueError, TypeError) as exc:
            notify_error(exc)
            return None
        self._stack = stack

        def job() -> Generator[Progress, None, tuple[np.ndarray, ...]]:
            probs, labels = yield from predict_job(
                checkpoint, stack.images, stack.spacing, device, affine=stack.affine
            )
            # the layers' data is built here, not in the GUI thread
            return (probs, labels, *prediction_outputs(probs, labels))

        worker = start_progress_worker(
            job,
            self._on_returned,
            "Predicting",
            on_event=None,
            start=False,
            button=self.run_button,
        )
        worker.yielded.connect(self._on_yielded)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText("Predicting…")
        self.progress.start("loading the checkpoint")
        worker.start()
        return worker

    def _on_yielded(self, event: Any) -> None:
        if isinstance(event, Progress):
            self.progress.set(event.done, event.total, event.message)

    def _on_returned(self, result: tuple[np.ndarray, ...]) -> None:
        probs, labels, foreground, labels32 = result
        self.last_result = (probs, labels)
        probability, prediction = prediction_layer_kwargs(
            self.viewer, self._stack, self._stack.names[0]
        )
        name = prediction["name"]
        with_probability = self.probability.currentIndex() == 0

        def labels_added(layer: Any) -> None:
            self.prediction_layer = layer
            self.status.setText(prediction_status(labels32, name))

        # each layer added in three event-loop turns (the window draws in
        # between); the layers of add_prediction_layers (prediction_layer_kwargs)
        steps = []
        if with_probability:
            steps += layer_steps(self.viewer, "image", foreground, activate=False, **probability)
        steps += layer_steps(self.viewer, "labels", labels32, done=labels_added, **prediction)
        self.delivery.run(*steps)

    def _on_error(self, exc: BaseException) -> None:
        self.progress.finish("failed")
        self.status.setText("Prediction failed.")  # start_progress_worker notifies

    def _on_finished(self) -> None:
        if self.progress.running:
            self.progress.finish("done")
        self.worker = None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        if self.worker is not None:
            self.worker.quit()
        super().closeEvent(event)
