"""Distance-map widget: the signed distance map φ_G of one class of a Labels layer.

Layers in: a Labels layer (an Image layer of integers works too) and a class.
Core call: :func:`core.distance.iter_signed_distance_map` on the class mask,
in a ``thread_worker`` with a napari progress bar; spacing from ``layer.scale``.
Layers out:

- ``"φ<c> <name> (mm)"``: an Image layer, diverging colormap centred on 0
  (blue inside G = negative, white on ∂G, red outside), symmetric contrast
  limits; napari's status bar shows the name with "(mm)" and the value under
  the cursor.
- ``"∂G<c> <name>"``: a Labels layer of the voxels where φ = 0 inside G (the
  zero level), drawn in black, so the boundary reads as a contour in any
  slicing, 2D or 3D maps alike.

Recomputing (same labels layer and class) replaces both layers' data.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import Colormap
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg._widgets._common import (
    LayerCombo,
    geometry_kwargs,
    int_spin,
    labels_array,
    layer_spacing,
    notify_errors,
    require_layer,
    slicing_axis,
    start_progress_worker,
    update_or_add_colored_labels,
)
from napari_boundary_seg.core.distance import iter_signed_distance_map

logger = logging.getLogger(__name__)

#: ColorBrewer RdBu: dark blue (deep inside, negative) - white (0, the boundary) -
#: dark red (far outside), with the light tints squeezed near 0 so that voxels a
#: millimetre from the boundary are already clearly blue or red.
PHI_COLORMAP = Colormap(
    colors=[
        [0.020, 0.188, 0.380, 1.0],
        [0.129, 0.400, 0.675, 1.0],
        [0.573, 0.773, 0.871, 1.0],
        [1.000, 1.000, 1.000, 1.0],
        [0.957, 0.647, 0.510, 1.0],
        [0.698, 0.094, 0.169, 1.0],
        [0.404, 0.000, 0.122, 1.0],
    ],
    controls=[0.0, 0.3, 0.46, 0.5, 0.54, 0.7, 1.0],
    name="phi (blue in, red out)",
)
BOUNDARY_COLOR = "black"


class Mode(Enum):
    """3D map of the whole volume, or independent 2D maps of each slice."""

    VOLUME = "3D (whole volume)"
    SLICES = "2D per slice (viewer's slicing axis)"


def phi_layer_name(labels_name: str, label: int) -> str:
    """Name of the distance-map layer of class ``label`` of ``labels_name``."""
    return f"φ{label} {labels_name} (mm)"


def boundary_layer_name(labels_name: str, label: int) -> str:
    """Name of the zero-level (∂G) layer of class ``label`` of ``labels_name``."""
    return f"∂G{label} {labels_name}"


def symmetric_limits(phi: np.ndarray) -> tuple[float, float]:
    """Contrast limits ``(-m, m)`` centred on 0.

    ``m`` is three times the deepest inside distance, capped by the largest
    |φ|: the inside of small lesions reads blue and far-away voxels saturate
    red (with ``m = max|φ|`` a 3 mm lesion in a 200 mm head is white).
    """
    inside = float(-phi.min()) if phi.size else 0.0
    largest = float(np.abs(phi).max()) if phi.size else 0.0
    m = min(largest, 3.0 * inside) if inside > 0 else largest
    m = m if m > 0 else 1.0
    return (-m, m)


class DistanceMapWidget(QWidget):
    """Dock widget: signed distance map of one class of a labels layer.

    Parameters
    ----------
    napari_viewer
        The viewer (npe2 passes it).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.labels_combo = LayerCombo(napari_viewer, (Labels, Image))
        self.class_spin = int_spin(1, 0, 65535)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems([m.value for m in Mode])
        self.run_button = QPushButton("Compute distance map")
        self.run_button.clicked.connect(self.compute)
        self.info = QLabel(
            "φ < 0 inside (blue), 0 on the boundary (black contour), > 0 outside (red), in mm."
        )
        self.info.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Labels", self.labels_combo)
        form.addRow("Class", self.class_spin)
        form.addRow("Mode", self.mode_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.info)
        layout.addStretch(1)

    # ---------------------------------------------------------------- inputs
    def mode(self) -> Mode:
        """The chosen :class:`Mode`."""
        return Mode(self.mode_combo.currentText())

    def set_mode(self, mode: Mode) -> None:
        """Choose ``mode``."""
        self.mode_combo.setCurrentText(mode.value)

    def _inputs(self) -> dict[str, Any]:
        """Checked inputs (raises ValueError / TypeError naming the problem)."""
        layer = require_layer(self.labels_combo.layer(), "labels")
        labels = labels_array(layer)
        label = self.class_spin.value()
        mask = labels == label
        if not mask.any():
            present = np.unique(labels)
            raise ValueError(
                f"Layer '{layer.name}' has no voxel of class {label} "
                f"(classes present: {present[:10].tolist()}); φ would be all zeros."
            )
        if mask.all():
            raise ValueError(
                f"Class {label} fills all of layer '{layer.name}': it has no boundary, "
                "so φ is all zeros."
            )
        axis = None
        if self.mode() is Mode.SLICES and labels.ndim >= 3:
            axis = slicing_axis(self.viewer, layer)
        return {
            "layer": layer,
            "mask": mask.astype(np.uint8),
            "label": label,
            "spacing": layer_spacing(layer),
            "axis": axis,
        }

    # ------------------------------------------------------------------- run
    def compute(self) -> Any:
        """Start the computation; returns the worker (None on bad input)."""
        inputs = notify_errors(self._inputs)
        if inputs is None:
            return None

        def make_generator():
            return iter_signed_distance_map(
                inputs["mask"], spacing=inputs["spacing"], axis=inputs["axis"]
            )

        def on_returned(phi: np.ndarray) -> None:
            self.show_map(inputs["layer"], inputs["label"], phi, inputs["mask"])

        where = "3D" if inputs["axis"] is None else f"2D slices along axis {inputs['axis']}"
        self.worker = start_progress_worker(
            make_generator,
            on_returned,
            description=f"φ of class {inputs['label']} ({where})",
            button=self.run_button,
        )
        return self.worker

    @property
    def busy(self) -> bool:
        """True while a computation runs."""
        return not self.run_button.isEnabled()

    def show_map(self, source: Any, label: int, phi: np.ndarray, mask: np.ndarray) -> Image:
        """Add (or update) the φ Image layer and the ∂G Labels layer."""
        name = phi_layer_name(source.name, label)
        limits = symmetric_limits(phi)
        geometry = geometry_kwargs(source)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = phi
            layer.contrast_limits_range = limits
            layer.contrast_limits = limits
        else:
            layer = self.viewer.add_image(
                phi,
                name=name,
                colormap=PHI_COLORMAP,
                contrast_limits=limits,
                blending="translucent",
                **geometry,
            )
        boundary = ((phi == 0) & (mask > 0)).astype(np.uint8)
        bname = boundary_layer_name(source.name, label)
        update_or_add_colored_labels(self.viewer, bname, boundary, {1: BOUNDARY_COLOR}, **geometry)
        self.viewer.layers.selection.active = layer  # the status bar shows φ (mm)
        logger.info(
            "φ of class %d of %s: range %.3g..%.3g mm", label, source.name, phi.min(), phi.max()
        )
        return layer
