"""Distance-map widget: the signed distance map φ_G of one class of a Labels layer.

Layers in: a Labels layer (an Image layer of integers works too) and a class.
Core call: :func:`core.distance.iter_signed_distance_map` on the class mask,
in the widget's ``_runner.Runner`` with a napari progress bar; spacing from
``layer.scale``.
Layers out:

- ``"φ<c> <name> 3D (mm)"`` (or ``2D``: per slice, or a 2D image): an Image layer, diverging colormap centred on 0
  (blue inside G = negative, white on ∂G, red outside), symmetric contrast
  limits, drawn translucent (opacity :data:`PHI_OPACITY`) so the scan under it
  stays readable, with napari's colorbar overlay (ticks in mm); napari's status
  bar shows the name with "(mm)" and the value under the cursor.
- ``"∂G<c> <name>"``: a Labels layer: 1 on ∂G (the voxels where φ = 0), 2 on
  the voxels just outside G that touch it in the slicing plane. In 2D views
  the outline (2) is drawn in black and ∂G itself (1) is left transparent, so
  the contour hugs the white φ = 0 ring without hiding it; in 3D views ∂G is
  drawn as a surface and φ is hidden (a volume rendering of φ is a solid box).

Recomputing (same labels layer and class) updates both layers' data in place;
the layers, the outline and the contrast limits are built in the worker.
See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import Colormap
from qtpy.QtWidgets import QPushButton, QWidget

from napari_boundary_seg._widgets._fields import (
    Form,
    LayerCombo,
    compact_combo,
    int_spin,
    note_label,
    scroll_layout,
)
from napari_boundary_seg._widgets._layers import (
    fixed_label_colormap,
    geometry_kwargs,
    is_segmentation_labels,
    labels_array,
    layer_spacing,
    mark_output,
    notify_errors,
    output_kind,
    require_layer,
    slicing_axis,
)
from napari_boundary_seg._widgets._runner import (
    NUMBER_GLYPHS,
    Delivery,
    Runner,
    RunsWork,
    glyph_steps,
    layer_steps,
    overlay_part_steps,
    run_steps_now,
)
from napari_boundary_seg.core.distance import iter_signed_distance_map

logger = logging.getLogger(__name__)

#: ColorBrewer RdBu: dark blue (deep inside, negative) - white (0, the boundary) -
#: dark red (far outside), with the light tints squeezed within 3 % of the range
#: around 0 and saturated ones beyond, so that the inside of a small lesion
#: (φ ≈ −2 mm against limits of ±25 mm) reads blue, also over orange labels.
PHI_COLORMAP = Colormap(
    colors=[
        [0.020, 0.188, 0.380, 1.0],
        [0.129, 0.400, 0.675, 1.0],
        [0.100, 0.400, 0.850, 1.0],
        [1.000, 1.000, 1.000, 1.0],
        [0.957, 0.520, 0.380, 1.0],
        [0.698, 0.094, 0.169, 1.0],
        [0.404, 0.000, 0.122, 1.0],
    ],
    controls=[0.0, 0.25, 0.47, 0.5, 0.53, 0.75, 1.0],
    name="phi (blue in, red out)",
)
BOUNDARY_COLOR = "black"
#: The colorbar's unit, shown by the viewer's text overlay beside it.
PHI_UNIT_TEXT = "φ (mm): − inside, + outside"
#: Opacity of the φ layer over the anatomy (and over the labels, whose colour
#: would turn a lighter φ grey).
PHI_OPACITY = 0.7
#: Values of the ∂G layer: ∂G itself (φ = 0) and the outline just outside G.
ZERO_LEVEL, OUTLINE = 1, 2
#: ∂G layer colours in 2D views (outline only) and in 3D views (∂G as a surface).
BOUNDARY_COLORS_2D = {ZERO_LEVEL: "transparent", OUTLINE: BOUNDARY_COLOR}
BOUNDARY_COLORS_3D = {ZERO_LEVEL: "#ffd54f", OUTLINE: "transparent"}


def text_overlay(viewer: Any) -> Any:
    """The viewer's canvas text overlay (``viewer.canvas.overlays.text`` since
    napari 0.9, ``viewer.text_overlay`` before)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and "text" in overlays:
        return overlays["text"]
    return viewer.text_overlay


class Mode(Enum):
    """3D map of the whole volume, or independent 2D maps of each slice."""

    VOLUME = "3D (whole volume)"
    SLICES = "2D per slice (viewer's slicing axis)"


def phi_layer_name(labels_name: str, label: int, dims: str = "3D") -> str:
    """Name of the distance-map layer of class ``label`` of ``labels_name``:
    ``dims`` says how φ was computed, "3D" (the whole volume) or "2D" (per
    slice, or a 2D image)."""
    return f"φ{label} {labels_name} {dims} (mm)"


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


def boundary_labels(phi: np.ndarray, mask: np.ndarray, axis: int | None) -> np.ndarray:
    """``(*spatial)`` uint8: :data:`ZERO_LEVEL` on ∂G (φ = 0 inside G),
    :data:`OUTLINE` on the voxels outside G with a neighbour in G (edges and
    corners) in the plane across ``axis`` (the viewer's slicing axis; None:
    a 2D image, or face neighbours along every axis of a volume)."""
    from scipy import ndimage

    inside = mask > 0
    # in-plane 8-neighbours: a continuous contour (face neighbours alone leave
    # a dotted staircase along diagonal edges)
    full = inside.ndim if (axis is not None or inside.ndim == 2) else 1
    structure = ndimage.generate_binary_structure(inside.ndim, full)
    if axis is not None and inside.ndim >= 3:
        flat = np.zeros_like(structure)
        index = [slice(None)] * inside.ndim
        index[axis] = 1
        flat[tuple(index)] = structure[tuple(index)]
        structure = flat
    out = np.zeros(inside.shape, dtype=np.uint8)
    out[ndimage.binary_dilation(inside, structure) & ~inside] = OUTLINE
    out[(phi == 0) & inside] = ZERO_LEVEL
    return out


def map_layers_data(
    phi: np.ndarray, mask: np.ndarray, axis: int | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``(φ float32, ∂G labels, contrast limits)``: what the layers show, built
    in the worker."""
    phi = np.ascontiguousarray(phi, dtype=np.float32)
    return phi, boundary_labels(phi, mask, axis), symmetric_limits(phi)


class DistanceMapWidget(RunsWork, QWidget):
    """Dock widget: signed distance map of one class of a labels layer.

    Parameters
    ----------
    napari_viewer
        The viewer (npe2 passes it).
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from magicgui.widgets import ComboBox

        self.viewer = napari_viewer
        self.phi_layer: Any = None
        self.boundary_layer: Any = None
        self._hidden_in_3d: Any = None
        self._unit_followed = False
        self.delivery = Delivery(self)
        self.labels_combo = LayerCombo(napari_viewer, (Labels,), accept=is_segmentation_labels)
        self.labels_combo.setToolTip("Labels layers of integer labels")
        self.class_spin = int_spin(1, 0, 65535)
        self.mode_choice = ComboBox(choices=[(m.value, m) for m in Mode], value=Mode.VOLUME)
        self.mode_combo = compact_combo(self.mode_choice.native)
        self.run_button = QPushButton("Compute distance map")
        self.run_button.clicked.connect(self.compute)
        self.runner = Runner(self, buttons=[self.run_button])
        self.runner.done.connect(self._on_returned)
        self.info = note_label(
            "φ < 0 inside (blue), 0 on the boundary ∂G (white, outlined in black), "
            "> 0 outside (red); colorbar in mm. In 3D, ∂G is drawn as a surface."
        )

        form = Form(
            [("Labels", self.labels_combo), ("Class", self.class_spin), ("Mode", self.mode_combo)]
        )
        layout = scroll_layout(self)
        layout.addWidget(form)
        layout.addWidget(self.run_button)
        layout.addWidget(self.info)
        layout.addStretch(1)
        napari_viewer.dims.events.ndisplay.connect(self._on_ndisplay)

    # ---------------------------------------------------------------- inputs
    def mode(self) -> Mode:
        """The chosen :class:`Mode`."""
        return self.mode_choice.value

    def set_mode(self, mode: Mode) -> None:
        """Choose ``mode``."""
        self.mode_choice.value = mode

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
        view_axis = slicing_axis(self.viewer, layer) if labels.ndim >= 3 else None
        if self.mode() is Mode.SLICES:
            axis = view_axis
        return {
            "layer": layer,
            "mask": mask.astype(np.uint8),
            "label": label,
            "spacing": layer_spacing(layer),
            "axis": axis,
            "view_axis": view_axis,
        }

    # ------------------------------------------------------------------- run
    def compute(self) -> Any:
        """Start the computation; returns the worker (None on bad input)."""
        if self.runner.running:
            return None
        inputs = notify_errors(self._inputs)
        if inputs is None:
            return None

        def make_generator():
            phi = yield from iter_signed_distance_map(
                inputs["mask"], spacing=inputs["spacing"], axis=inputs["axis"]
            )
            return map_layers_data(phi, inputs["mask"], inputs["view_axis"])

        inputs["dims"] = "3D" if inputs["mask"].ndim == 3 and inputs["axis"] is None else "2D"
        self._pending_inputs = inputs
        where = "3D" if inputs["axis"] is None else f"2D slices along axis {inputs['axis']}"
        return self.runner.start(
            make_generator, description=f"φ of class {inputs['label']} ({where})"
        )

    def _on_returned(self, result: tuple[np.ndarray, np.ndarray, tuple[float, float]]) -> None:
        inputs = self._pending_inputs
        # one layer per event-loop turn: the window draws in between
        self.delivery.run(
            *self._map_steps(inputs["layer"], inputs["label"], *result, dims=inputs["dims"])
        )

    def show_map(
        self,
        source: Any,
        label: int,
        phi: np.ndarray,
        boundary: np.ndarray,
        limits: tuple[float, float] | None = None,
        dims: str | None = None,
    ) -> Image:
        """Show φ and ∂G: update the layers' data in place when they exist, else
        add them (once). :meth:`compute` runs the same steps one per event-loop
        turn (``_runner.Delivery``).

        Parameters
        ----------
        phi
            ``(*spatial)`` float32 φ in mm.
        boundary
            ``(*spatial)`` :func:`boundary_labels`.
        limits
            Contrast limits (default :func:`symmetric_limits`).
        dims
            "3D" or "2D" in the layer's name (default: the map's dimensions).
        """
        run_steps_now(self._map_steps(source, label, phi, boundary, limits, dims=dims))
        return self.phi_layer

    def _map_steps(
        self,
        source: Any,
        label: int,
        phi: np.ndarray,
        boundary: np.ndarray,
        limits: tuple[float, float] | None,
        dims: str | None = None,
    ) -> list[Any]:
        limits = limits or symmetric_limits(phi)
        geometry = geometry_kwargs(source)
        metadata = geometry.pop("metadata", None)

        name = phi_layer_name(source.name, label, dims or f"{phi.ndim}D")
        bname = boundary_layer_name(source.name, label)
        steps: list[Any] = []

        def phi_added(layer: Any) -> None:
            self.phi_layer = layer

        if name in self.viewer.layers:

            def update_phi() -> None:
                layer = self.viewer.layers[name]
                # range and limits first: the new data is then drawn once
                layer.contrast_limits_range = limits
                layer.contrast_limits = limits
                layer.data = phi
                self.phi_layer = layer

            steps.append(update_phi)
        else:
            colorbar_parts: list[Any] = []

            def build_colorbar(layer: Any) -> None:
                # napari builds the colorbar's visual now, the layer hidden:
                # nothing of it is drawn until its parts are shown (below)
                if hasattr(layer, "colorbar"):
                    colorbar_parts[:] = overlay_part_steps(self.viewer, layer, layer.colorbar)

            steps += layer_steps(
                self.viewer,
                "image",
                phi,
                done=phi_added,
                activate=False,
                hidden=build_colorbar,
                name=name,
                colormap=PHI_COLORMAP,
                contrast_limits=limits,
                blending="translucent",
                opacity=PHI_OPACITY,
                metadata=mark_output("phi", metadata),
                **geometry,
            )

            # then the unit and the colorbar's parts, a turn each: the first
            # paint of a text visual compiles its shader and renders its
            # glyphs (on the CPU); the glyphs are rendered a few a turn
            # before (glyph_steps), so the unit's paint pays its shader and
            # each colorbar part's paint its own program
            def show_unit() -> None:
                layer = self.phi_layer
                if layer is not None and hasattr(layer, "colorbar"):
                    self._show_unit(layer)

            def show_colorbar() -> list[Any]:
                return colorbar_parts  # its parts, a turn each (Delivery)

            glyphs = glyph_steps(self.viewer, PHI_UNIT_TEXT + NUMBER_GLYPHS)
            steps += [*glyphs, show_unit, show_colorbar]

        def boundary_added(layer: Any) -> None:
            self.boundary_layer = layer

        if bname in self.viewer.layers:

            def update_boundary() -> None:
                blayer = self.viewer.layers[bname]
                blayer.data = boundary
                self.boundary_layer = blayer

            steps.append(update_boundary)
        else:
            in_3d = self.viewer.dims.ndisplay == 3
            colors = BOUNDARY_COLORS_3D if in_3d else BOUNDARY_COLORS_2D
            steps += layer_steps(
                self.viewer,
                "labels",
                boundary,
                done=boundary_added,
                activate=False,
                name=bname,
                colormap=fixed_label_colormap(colors),
                opacity=1.0,
                metadata=mark_output("boundary", metadata),
                **geometry,
            )

        def finish() -> None:
            if self.viewer.dims.ndisplay == 3:
                self._on_ndisplay()
            self.viewer.layers.selection.active = self.phi_layer  # the status bar shows φ (mm)
            logger.info(
                "φ of class %d of %s: range %.3g..%.3g mm",
                label,
                source.name,
                float(phi.min()),
                float(phi.max()),
            )

        return [*steps, finish]

    def _show_unit(self, layer: Any) -> None:
        """The colorbar's unit: napari's colorbar has no title, so the viewer's
        text overlay says "φ (mm)" in the colorbar's corner (napari stacks the
        two) while this φ layer is visible. A text overlay in use for something
        else is left alone."""
        overlay = text_overlay(self.viewer)
        if overlay.visible and overlay.text != PHI_UNIT_TEXT:
            return
        overlay.text = PHI_UNIT_TEXT
        overlay.position = layer.colorbar.position
        overlay.font_size = layer.colorbar.font_size
        overlay.visible = layer.visible

        def follow(*_: Any) -> None:
            if overlay.text == PHI_UNIT_TEXT:
                shown = [x for x in self.viewer.layers if output_kind(x) == "phi" and x.visible]
                overlay.visible = bool(shown)

        layer.events.visible.connect(follow)
        if not self._unit_followed:
            self._unit_followed = True
            self.viewer.layers.events.removed.connect(follow)

    def _on_ndisplay(self, *_: Any) -> None:
        """3D view: ∂G as a surface, φ hidden; back in 2D: the outline, φ shown again."""
        phi, blayer = self.phi_layer, self.boundary_layer
        layers = self.viewer.layers
        in_3d = self.viewer.dims.ndisplay == 3
        if blayer is not None and blayer in layers:
            colors = BOUNDARY_COLORS_3D if in_3d else BOUNDARY_COLORS_2D
            blayer.colormap = fixed_label_colormap(colors)
        if phi is None or phi not in layers:
            return
        if in_3d and phi.visible:
            phi.visible = False
            self._hidden_in_3d = phi
        elif not in_3d and self._hidden_in_3d is phi:
            phi.visible = True
            self._hidden_in_3d = None
