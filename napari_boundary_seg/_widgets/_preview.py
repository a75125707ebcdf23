"""The Train widget's live preview: after each epoch the slice on view,
predicted in the worker (``_jobs.PreviewEvent``), is written into one
``training preview`` Labels layer in place; after the run that layer becomes
the prediction. The view follows the training plane, never the reverse.

:class:`LivePreview` is a part of ``train.TrainWidget`` (a mixin: it reads the
widget's viewer, labels picker and run state).

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from napari_boundary_seg._widgets._jobs import PreviewEvent
from napari_boundary_seg._widgets._layers import (
    mark_output,
    native_slice_axis,
    output_label_colormap,
    show_slicing_axis,
)
from napari_boundary_seg._widgets._logic import PREVIEW_NAME
from napari_boundary_seg._widgets._runner import layer_steps

logger = logging.getLogger(__name__)


class LivePreview:
    """The live-preview part of the Train widget."""

    def _update_preview_at(self, *_: Any) -> None:
        """Remember (GUI thread) which slice of the labels layer the viewer shows,
        along the training axis; the worker reads it after each epoch."""
        layer = self.labels.value if self.source.value == "layers" else None
        if layer is None:
            self._preview_at = None
            return
        axis = self._native_axis
        if axis is None:
            axis = native_slice_axis(layer, self.axis.value)
        if layer.ndim == 2:
            self._preview_at = (0, 0)
            return
        try:
            point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        except (TypeError, ValueError, IndexError):
            self._preview_at = None
            return
        n = layer.data.shape[axis]
        self._preview_at = (axis, int(np.clip(round(float(point[axis])), 0, n - 1)))

    def _follow_training_plane(self) -> None:
        """After Start, a 2D view shows the plane the run trains on (the view
        follows the training; the training never follows the view)."""
        layer = self.labels.value if self.source.value == "layers" else None
        axis = self._native_axis
        if layer is None or axis is None or layer.ndim != 3:
            return
        if self._closing or not self.runner.running:
            return
        if show_slicing_axis(self.viewer, layer, axis):
            logger.info("the view now slices along axis %d, the training plane", axis)
            self._update_preview_at()

    def _preview_where(self) -> tuple[int, int] | None:
        """The slice to preview now (read by the worker thread)."""
        return self._preview_at if self.live_preview.value else None

    def _on_preview(self, event: PreviewEvent) -> None:
        """Show the preview slice in the preview layer, updating its data in place.

        The first preview makes the layer in steps, one per event-loop turn
        (``_runner.layer_steps``: inserted hidden, shown, then filled), as
        every other result is delivered; a preview that comes meanwhile waits
        for the layer (only the newest is kept). The training waits until the
        layer is in (``_preview_shown``), so napari's insert has the CPU."""
        if self._stack is None:
            self._preview_shown.set()
            return
        shape = self._stack.images.shape[1:]
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            pending = self._preview_delivery.pending
            self._waiting_preview = event
            if not pending:
                self.preview_layer = None
                geometry = dict(self._stack.geometry)
                metadata = mark_output("preview", geometry.pop("metadata", None))
                self._preview_delivery.run(
                    *layer_steps(
                        self.viewer,
                        "labels",
                        np.zeros(shape, dtype=np.uint8),
                        done=self._preview_made,
                        activate=False,
                        name=PREVIEW_NAME,
                        opacity=0.6,
                        colormap=output_label_colormap("preview"),
                        metadata=metadata,
                        **geometry,
                    )
                )
            return
        self._write_preview(layer, event)
        self._preview_shown.set()

    def _preview_made(self, layer: Any) -> None:
        """The preview layer is in the viewer: show the newest preview in it,
        and let the training go on."""
        self.preview_layer = layer
        self._preview_shown.set()
        event, self._waiting_preview = self._waiting_preview, None
        if event is not None:
            self._write_preview(layer, event)

    def _write_preview(self, layer: Any, event: PreviewEvent) -> None:
        data = layer.data
        data[...] = 0
        if data.ndim == 2:
            data[...] = event.labels
        else:
            index = [slice(None)] * 3
            index[event.axis] = event.index
            data[tuple(index)] = event.labels
        layer.refresh()
        found = int((event.labels > 0).sum())
        what = f"{found} foreground pixels" if found else "no foreground predicted"
        layer.metadata.update(mark_output("preview"))
        layer.metadata["napari_boundary_seg"] = {"epoch": event.epoch + 1}
        self._preview_text = f"Preview (epoch {event.epoch + 1}, slice {event.index}): {what}."
        self._show_status()

    def _deliver_prediction(self, layer: Any) -> Any:
        """Put the prediction (a Labels layer built in the worker) in the viewer.

        Adding a Labels layer costs napari 0.3-0.8 s of event loop here (its
        brush and polygon overlays), so when this run's live-preview layer is
        in the viewer it becomes the prediction: its data replaced in place,
        renamed, no layer added. The next run makes a new preview layer, so an
        earlier prediction is never overwritten.
        """
        preview = self.preview_layer
        if (
            preview is not None
            and preview in self.viewer.layers
            and preview.data.shape == layer.data.shape
        ):
            self.preview_layer = None
            preview.data = layer.data
            preview.metadata = dict(layer.metadata)
            preview.name = layer.name
            preview.opacity = layer.opacity
            preview.colormap = layer.colormap
            preview.visible = True
            return preview
        self.viewer.add_layer(layer)
        return layer

    def prediction_checkpoint(self, done: Any) -> tuple[str | None, str]:
        """The checkpoint to predict with after a run, and why.

        ``best.pt`` whenever it exists (also after Stop); ``last.pt`` only when
        the run completed without writing a best one; a run stopped before
        its first epoch ended gives None (its ``last.pt`` is untrained).
        """
        if done.best_checkpoint:
            return done.best_checkpoint, "best.pt (best validation epoch)"
        if done.last_checkpoint and done.history:
            return done.last_checkpoint, "last.pt (no best.pt was written)"
        return None, "no epoch was completed, so there is no trained checkpoint"
