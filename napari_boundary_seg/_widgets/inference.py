"""Inference widget: a checkpoint and image layer(s) -> probability and label layers.

The widget is thin: it checks the chosen layers and the checkpoint, runs
:func:`napari_boundary_seg.core.predict.iter_predict_volume` in a napari
``thread_worker`` (progress in a napari progress bar) and adds the results as
layers with the input's ``scale`` and ``translate``. The helpers
:func:`load_checked_checkpoint`, :func:`predict_job` and
:func:`add_prediction_layers` are also used by the training widget (prediction
after training) and by the fine-tuning loop; the layer and Qt helpers they
share (image stacks, layer lists, device choice, progress, errors) live in
``_common``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg._widgets._common import (
    DeviceCombo,
    ImageStack,
    LayerList,
    PathEdit,
    check_device,
    images_from_layers,
    notify_error,
    notify_info,
    replace_or_add_layer,
    start_progress_worker,
)
from napari_boundary_seg.core.progress import Progress

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "InferenceWidget",
    "add_prediction_layers",
    "check_checkpoint_channels",
    "predict_job",
    "stack_for_checkpoint",
]


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
        checkpoint, images, tuple(spacing), device=device, axis=axis
    )
    return result


def add_prediction_layers(
    viewer: napari.Viewer,
    probs: np.ndarray,
    labels: np.ndarray,
    stack: ImageStack,
    prefix: str,
    with_probability: bool = True,
) -> tuple[Any, Any]:
    """Add (or replace) the probability Image and prediction Labels layers.

    Parameters
    ----------
    probs
        ``(C, *spatial)`` class probabilities; the layer shows the foreground
        probability ``1 - probs[0]``.
    labels
        ``(*spatial)`` integer prediction.
    stack
        The input images, whose scale and translate the layers take.
    prefix
        Layer names are ``f"{prefix} probability"`` and ``f"{prefix} prediction"``.

    Returns
    -------
    (probability layer or None, labels layer)
    """
    geometry = stack.geometry
    prob_layer = None
    if with_probability:
        foreground = (1.0 - probs[0]).astype(np.float32)
        prob_layer = replace_or_add_layer(
            viewer,
            f"{prefix} probability",
            "image",
            foreground,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            blending="additive",
            opacity=0.6,
            **geometry,
        )
    label_layer = replace_or_add_layer(
        viewer,
        f"{prefix} prediction",
        "labels",
        np.asarray(labels).astype(np.int32, copy=False),
        **geometry,
    )
    return prob_layer, label_layer


# ---------------------------------------------------------------------------
# The inference widget
# ---------------------------------------------------------------------------


class InferenceWidget(QWidget):
    """Dock widget: checkpoint + image layer(s) -> probability and prediction layers."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.worker = None
        self.last_result: tuple[np.ndarray, np.ndarray] | None = None

        self.checkpoint = PathEdit(
            "file", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)", "best.pt"
        )
        self.images = LayerList(napari_viewer, Image)
        self.device = DeviceCombo()
        self.probability = QComboBox()
        self.probability.addItems(["probability and labels", "labels only"])
        self.run_button = QPushButton("Predict")
        self.run_button.clicked.connect(self.start)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("Image layer(s)", self.images)
        form.addRow("Device", self.device)
        form.addRow("Output", self.probability)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

    @property
    def busy(self) -> bool:
        """True while a prediction runs."""
        return self.worker is not None

    # -- validation, then the worker -------------------------------------------------
    def _validate(self) -> tuple[str, ImageStack, str]:
        """Check the cheap things here; the worker loads and checks the checkpoint."""
        from napari_boundary_seg.core.checkpoint import checkpoint_modalities

        stack = images_from_layers(self.images.selected_layers())
        device = check_device(self.device.device())
        checkpoint = check_checkpoint_path(self.checkpoint.text())
        return checkpoint, stack_for_checkpoint(stack, checkpoint_modalities(checkpoint)), device

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
        worker = start_progress_worker(
            lambda: predict_job(checkpoint, stack.images, stack.spacing, device),
            self._on_returned,
            "Predicting",
            start=False,
            button=self.run_button,
        )
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText("Predicting…")
        worker.start()
        return worker

    def _on_returned(self, result: tuple[np.ndarray, np.ndarray]) -> None:
        probs, labels = result
        self.last_result = (probs, labels)
        prefix = self._stack.names[0]
        add_prediction_layers(
            self.viewer,
            probs,
            labels,
            self._stack,
            prefix,
            with_probability=self.probability.currentIndex() == 0,
        )
        n_fg = int((np.asarray(labels) > 0).sum())
        self.status.setText(f"Done: {n_fg} foreground voxels predicted.")

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText("Prediction failed.")  # start_progress_worker notifies

    def _on_finished(self) -> None:
        self.worker = None

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        if self.worker is not None:
            self.worker.quit()
        super().closeEvent(event)
