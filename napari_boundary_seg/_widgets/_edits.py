"""The corrections of a prediction, with no Qt import: which slices of a Labels
layer the user edited (:class:`EditTracker`, from napari's paint events and
their history atoms, :func:`atom_slices`) and where a prediction has
foreground (:func:`foreground_flags`). Used by the Finetune widget.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

META_KEY = "finetune"
"""Key of the links in ``layer.metadata``."""

CHANGE_COLORS = {1: "#00e676", 2: "#ff1744", 3: "#ffd600"}
"""Changed-voxel layer: green gained, red lost, yellow other class."""


def atom_slices(atom: Any, axis: int, ndim: int) -> set[int]:
    """Slices along ``axis`` that one napari Labels history atom changed.

    Parameters
    ----------
    atom
        A mask-based atom (``slice_key``, ``mask`` of the bounding box or None
        when the whole box changed; from paint, fill and polygon) or the
        ``(indices, old_values, new_values)`` tuple of ``data_setitem``.
    axis
        Slicing axis of the layer's data.
    ndim
        Number of data dimensions (a 2D layer has the single slice 0).
    """
    if ndim == 2:
        return {0}
    key = getattr(atom, "slice_key", None)
    if key is not None:
        part = key[axis]
        start = int(part.start or 0)
        mask = getattr(atom, "mask", None)
        if mask is None or np.ndim(mask) != ndim or part.stop is None:
            stop = int(part.stop) if part.stop is not None else start + 1
            return set(range(start, stop))
        other = tuple(k for k in range(ndim) if k != axis)
        return {start + int(i) for i in np.flatnonzero(np.asarray(mask).any(axis=other))}
    if isinstance(atom, tuple) and len(atom) == 3:
        indices = atom[0]
        return {int(i) for i in np.unique(np.asarray(indices[axis]))}
    logger.debug("unknown labels history atom %r", type(atom))
    return set()


class EditTracker:
    """Slices of a Labels layer edited since it was linked, from its paint events.

    Parameters
    ----------
    layer
        The napari Labels layer (2D or 3D).
    axis
        Slicing axis (the checkpoint's training axis).
    on_change
        Called with no argument after every change of the list.

    Attributes
    ----------
    painted
        Slices reported by paint events (or every slice after a wholesale
        replacement of the data with the same shape).
    manual
        Slices added by hand (kept even when unchanged).
    replaced
        The data was replaced wholesale at least once.
    reset_reason
        Why tracking stopped (the data changed shape), or "".
    """

    def __init__(self, layer: Any, axis: int, on_change: Callable[[], None] | None = None) -> None:
        self.layer = layer
        self.axis = int(axis) if layer.ndim == 3 else 0
        self.shape = tuple(np.shape(layer.data))
        self.on_change = on_change
        self.painted: set[int] = set()
        self.manual: set[int] = set()
        self.replaced = False
        self.reset_reason = ""
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)

    @property
    def depth(self) -> int:
        return 1 if len(self.shape) == 2 else int(self.shape[self.axis])

    @property
    def slices(self) -> list[int]:
        """Every listed slice (painted or added), sorted."""
        return sorted(self.painted | self.manual)

    def detach(self) -> None:
        for emitter, slot in (
            (self.layer.events.paint, self._on_paint),
            (self.layer.events.data, self._on_data),
        ):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _on_paint(self, event: Any) -> None:
        ndim = len(self.shape)
        before = len(self.painted)
        for atom in getattr(event, "value", None) or []:
            self.painted |= atom_slices(atom, self.axis, ndim)
        if len(self.painted) != before:
            self._changed()

    def _on_data(self, event: Any) -> None:
        shape = tuple(np.shape(self.layer.data))
        if shape == self.shape:
            self.replaced = True
            self.painted = set(range(self.depth))
        else:
            self.reset_reason = (
                f"the data of '{self.layer.name}' changed shape {self.shape} -> {shape}; "
                "predict again to start a new correction"
            )
            self.painted.clear()
            self.manual.clear()
            self.detach()
        self._changed()

    def add(self, index: int) -> None:
        if not 0 <= int(index) < self.depth:
            raise ValueError(f"slice {index} is out of range (0..{self.depth - 1})")
        self.manual.add(int(index))
        self._changed()

    def clear(self) -> None:
        self.painted.clear()
        self.manual.clear()
        self._changed()


def foreground_flags(pred: np.ndarray, slices: Sequence[int], axis: int) -> dict[str, bool]:
    """``{"corrected": any foreground on ``slices``, "untouched": on the others}``
    (a 2D image is its one slice 0)."""
    pred = np.asarray(pred) > 0
    if pred.ndim == 2:
        return {"corrected": bool(pred.any()) and 0 in slices, "untouched": False}
    per_slice = pred.any(axis=tuple(k for k in range(pred.ndim) if k != axis))
    chosen = np.zeros(per_slice.shape, bool)
    chosen[list(slices)] = True
    return {
        "corrected": bool(per_slice[chosen].any()),
        "untouched": bool(per_slice[~chosen].any()),
    }
