"""Helpers shared by the dock widgets: layers in, arrays out, errors as notifications.

Everything here is thin glue between napari layers and ``core`` arrays:

- :class:`LayerCombo`, :class:`LayerList`: layer pickers on magicgui (a
  ``ComboBox`` for one choice, a ``Select`` for several) whose choices follow
  the layer list and offer only what fits (:func:`is_integer_labels`,
  :func:`is_scan_image`; the plugin's outputs are marked by
  :func:`mark_output`); :func:`unique_layer_name`: a name no layer has yet.
- :func:`labels_array`, :func:`image_array`: a layer's data as a checked numpy
  array (integer labels / finite float image), raising ``TypeError`` or
  ``ValueError`` naming the layer and the problem; :func:`images_from_layers`:
  image layers stacked as channels (:class:`ImageStack`).
- :class:`PathEdit` (magicgui ``FileEdit``), :class:`DeviceCombo`,
  :func:`device_choices`, :func:`check_device`: the devices present here;
  :func:`double_spin`, :func:`int_spin`: magicgui spin boxes in one call;
  :func:`format_number`: a metric as a table cell.
- :func:`layer_spacing`, :func:`geometry_kwargs`: voxel spacing and the layer's
  data-to-world transform, to give new layers the same geometry;
  :func:`layer_affine`, :func:`native_slice_axis`: a layer's voxel-to-world
  affine and the stored axis of an anatomical slicing plane (from the data,
  never from the view); :func:`show_slicing_axis`: the view follows it.
- :func:`slicing_axis`, :func:`move_to_slice`: the viewer's slicing axis in a
  layer's data axes, and the inverse (show a slice).
- :func:`notify_error`: show an error as a napari error notification;
  :func:`notify_errors`: run a callable, show ``ValueError`` / ``TypeError`` /
  ``OSError`` as a notification instead of raising.
- :func:`scroll_layout`, :func:`collapsible`: dock widgets that scroll, long
  sections that fold (superqt ``QCollapsible``).
- :class:`Delivery`: a result's GUI steps one per event-loop turn;
  :func:`layer_steps`: adding a layer in three such steps;
  :func:`insert_layer_quietly`: a layer appended without activating it.
- :class:`ProgressPanel`: a progress bar with elapsed and remaining time
  inside a widget; :func:`format_duration`.
- :class:`ProgressRelay`: a napari progress bar updated at most every 200 ms.
- :func:`start_progress_worker`: run a ``core`` progress generator in a
  ``thread_worker`` with a napari progress bar.
- :func:`controlled_worker_class`: a worker whose ``quit()`` (napari's window
  close, app quit) asks a trainer to stop, so it saves ``last.pt`` and ends.
- :class:`PlotCanvas`: a small matplotlib figure inside Qt.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Labels, Layer
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)

#: Errors that a widget turns into a notification (bad input, unreadable file).
USER_ERRORS = (ValueError, TypeError, OSError)


# --------------------------------------------------------------------- layers
def follow_layer_list(viewer: Any, refresh: Callable[..., Any]) -> None:
    """Call ``refresh`` whenever the viewer's layer list changes: a layer added,
    removed, moved or renamed."""
    events = viewer.layers.events
    for name in ("inserted", "removed", "moved", "reordered"):
        getattr(events, name).connect(refresh)
    events.inserted.connect(lambda event: event.value.events.name.connect(refresh))
    for layer in viewer.layers:
        layer.events.name.connect(refresh)


#: ``layer.metadata`` key marking a layer this plugin made, with its kind
#: (see :func:`mark_output`).
OUTPUT_KEY = "boundary_seg_output"
#: Output kinds that image pickers leave out unless "show all" is ticked: maps
#: and probabilities are not scans.
DERIVED_IMAGE_KINDS = frozenset({"phi", "probability"})


def mark_output(kind: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``metadata`` (a copy) marked as an output of this plugin of ``kind``
    ("phi", "probability", "prediction", "boundary", "outcome", "changes")."""
    out = dict(metadata or {})
    out[OUTPUT_KEY] = str(kind)
    return out


#: Label colours of this plugin's segmentations, apart from napari's default
#: colours (label 1 orange: the ground truth's): predictions magenta first...
PREDICTION_COLORS = {1: "#e040fb", 2: "#40c4ff", 3: "#ffee58", 4: "#69f0ae", 5: "#ff5252"}
#: ... and the live training preview cyan first.
PREVIEW_COLORS = {1: "#00e5ff", 2: "#b2ff59", 3: "#ffd740", 4: "#ea80fc", 5: "#ff8a80"}


def output_label_colormap(kind: str = "prediction") -> Any:
    """The label colours of a ``"prediction"`` or ``"preview"`` Labels layer
    (:data:`PREDICTION_COLORS`, :data:`PREVIEW_COLORS`; grey beyond them)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = PREVIEW_COLORS if kind == "preview" else PREDICTION_COLORS
    return DirectLabelColormap(color_dict={None: "#bdbdbd", 0: "transparent", **colors})


def output_kind(layer: Layer) -> str | None:
    """The kind this plugin gave ``layer`` (:func:`mark_output`), or None."""
    kind = getattr(layer, "metadata", {}).get(OUTPUT_KEY)
    return str(kind) if kind is not None else None


def is_integer_labels(layer: Layer) -> bool:
    """True for a Labels layer of integer (or boolean) data: what a Labels picker offers."""
    if not isinstance(layer, Labels):
        return False
    dtype = getattr(_full_resolution(layer), "dtype", None)
    return dtype is not None and (
        np.issubdtype(dtype, np.bool_) or np.issubdtype(dtype, np.integer)
    )


#: Output kinds of Labels layers that are not segmentations (a ∂G outline, a
#: TP/FP/FN map, a map of changed voxels, the live training preview): never
#: offered as ground truth, training target or a model's prediction.
NON_SEGMENTATION_KINDS = frozenset({"boundary", "outcome", "changes", "preview"})
#: How this plugin names those layers (a layer saved and opened again keeps its
#: name, not its metadata).
_NON_SEGMENTATION_STARTS = ("∂G", "TP/FP/FN ", "training preview")
_NON_SEGMENTATION_ENDS = (" changes",)


def is_segmentation_labels(layer: Layer) -> bool:
    """An integer Labels layer that holds a segmentation (:func:`is_integer_labels`,
    not one of this plugin's outlines, outcome maps, change maps or previews):
    what a Labels picker offers."""
    if not is_integer_labels(layer) or output_kind(layer) in NON_SEGMENTATION_KINDS:
        return False
    name = str(layer.name)
    return not (name.startswith(_NON_SEGMENTATION_STARTS) or name.endswith(_NON_SEGMENTATION_ENDS))


#: How this plugin names its maps and probabilities ("phi (blue in, red out)",
#: "FLAIR probability [2]"): a map saved and opened again keeps its name, not
#: its metadata.
_DERIVED_NAME_STARTS = ("phi (", "φ")
_DERIVED_NAME_PARTS = (" probability",)


def is_scan_image(layer: Layer) -> bool:
    """True for a greyscale Image layer that is not a map or probability of this
    plugin (:data:`DERIVED_IMAGE_KINDS`, or named as the plugin names them):
    what an image picker offers."""
    from napari.layers import Image

    if not isinstance(layer, Image) or getattr(layer, "rgb", False):
        return False
    if output_kind(layer) in DERIVED_IMAGE_KINDS:
        return False
    name = str(layer.name)
    return not (
        name.startswith(_DERIVED_NAME_STARTS) or any(p in name for p in _DERIVED_NAME_PARTS)
    )


def offered_image(layer: Layer, show_all: bool = False) -> bool:
    """What an image picker lists: scans (:func:`is_scan_image`), or every Image
    layer when "show all" is ticked."""
    from napari.layers import Image

    return is_scan_image(layer) or (show_all and isinstance(layer, Image))


def unique_layer_name(viewer: Any, name: str) -> str:
    """``name``, or ``"name [2]"``, ``"name [3]"``... : the first not in the viewer."""
    if name not in viewer.layers:
        return name
    k = 2
    while f"{name} [{k}]" in viewer.layers:
        k += 1
    return f"{name} [{k}]"


class _MagicWrapper(QWidget):
    """A QWidget holding one magicgui widget (``self.magic``); attributes it does
    not have are looked up on the magicgui widget's native Qt widget (so a
    :class:`LayerCombo` answers ``count()``, ``currentText()``,
    ``currentIndexChanged`` as the ``QComboBox`` it wraps)."""

    magic: Any = None

    def _embed(self, *widgets: QWidget) -> QVBoxLayout:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for w in widgets:
            layout.addWidget(w)
        return layout

    def __getattr__(self, name: str) -> Any:
        magic = self.__dict__.get("magic")
        if magic is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(magic.native, name)


def compact_combo(combo: QComboBox, chars: int = 14) -> QComboBox:
    """Let ``combo`` shrink to ``chars`` characters (long layer names or choices
    are elided instead of widening the dock); it grows with the form."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo


class LayerCombo(_MagicWrapper):
    """A layer picker (magicgui ``ComboBox``) of the viewer's layers, kept up to date.

    The choices are a callable over ``viewer.layers`` (napari's way for layer
    pickers), reset whenever a layer is added, removed, moved or renamed.

    Parameters
    ----------
    viewer
        The napari viewer.
    layer_types
        Layer classes listed, in this order of preference (Labels layers first,
        for example, then Image layers).
    allow_none
        Add an empty "(none)" entry at the top.
    accept
        Only layers for which ``accept(layer)`` is true are offered (e.g.
        :func:`is_integer_labels`); None: every layer of ``layer_types``.
    """

    NONE_TEXT = "(none)"

    def __init__(
        self,
        viewer: Any,
        layer_types: Sequence[type[Layer]] = (Labels,),
        allow_none: bool = False,
        parent: QWidget | None = None,
        accept: Callable[[Layer], bool] | None = None,
    ) -> None:
        super().__init__(parent)
        from magicgui.widgets import ComboBox

        self._viewer = viewer
        self._types = tuple(layer_types)
        self._allow_none = allow_none
        self._accept = accept
        self.magic = ComboBox(choices=self._choices)
        compact_combo(self.magic.native)
        self._embed(self.magic.native)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        follow_layer_list(viewer, self.refresh)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [
            (layer.name, layer)
            for kind in self._types
            for layer in self._viewer.layers
            if type(layer) is kind and (self._accept is None or self._accept(layer))
        ]
        return [(self.NONE_TEXT, None), *layers] if self._allow_none else layers

    def refresh(self, *_: Any) -> None:
        """Rebuild the list, keeping the current choice when it still exists."""
        try:
            current = self.magic.value
            combo = self.magic.native
            combo.blockSignals(True)
            combo.clear()  # magicgui keeps stale names of renamed layers otherwise
            self.magic.reset_choices()
            if current is not None and current in self.magic.choices:
                self.magic.value = current
            combo.blockSignals(False)
        except RuntimeError:  # the Qt side is gone (widget closed)
            pass

    def layer(self) -> Layer | None:
        """The chosen layer, or None when nothing (or "(none)") is chosen."""
        layer = self.magic.value
        if layer is None or layer not in self._viewer.layers:
            return None
        return layer

    def set_layer(self, layer: Layer | str) -> None:
        """Choose ``layer`` (a layer or its name); a layer not offered is not chosen."""
        self.refresh()
        name = layer if isinstance(layer, str) else layer.name
        self.magic.native.setCurrentText(name)

    def names(self) -> list[str]:
        """The names offered, in order."""
        return [self.magic.native.itemText(i) for i in range(self.magic.native.count())]


class LayerList(_MagicWrapper):
    """A compact multi-select layer picker (magicgui ``Select``) of the viewer's
    layers of one type, in the viewer's order.

    Image pickers (``layer_type`` Image) leave out this plugin's maps and
    probabilities (:func:`is_scan_image`) unless "show all" is ticked; a hint
    line under the list shows what a loaded model expects
    (:meth:`set_hint`).
    """

    def __init__(self, viewer: Any, layer_type: type, rows: int = 3) -> None:
        super().__init__()
        from magicgui.widgets import Select
        from napari.layers import Image
        from qtpy.QtWidgets import QCheckBox, QLabel

        self._viewer = viewer
        self._layer_type = layer_type
        self._filtered = layer_type is Image
        self._seen = False
        self.show_all = QCheckBox("show all layers")
        self.show_all.setToolTip("Also list this plugin's outputs (φ maps, probabilities)")
        self.magic = Select(choices=self._choices)
        native = self.magic.native
        native.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        native.setFixedHeight(rows * 20 + 6)
        native.setToolTip("Modalities, stacked as channels in this order")
        self.show_all.toggled.connect(self.refresh)
        self.show_all.setVisible(self._filtered)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setVisible(False)
        self._embed(native, self.show_all, self.hint)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        follow_layer_list(viewer, self.refresh)
        self.refresh()

    def _offered(self, layer: Layer) -> bool:
        if self._filtered:
            return offered_image(layer, self.show_all.isChecked())
        return isinstance(layer, self._layer_type)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if self._offered(layer)]

    def refresh(self, *_: Any) -> None:
        """Rebuild the list in the viewer's order, keeping the chosen layers."""
        try:
            native = self.magic.native
            chosen = [item.data(0x0100) for item in native.selectedItems()]  # UserRole
            first = not self._seen
            native.blockSignals(True)
            native.clear()
            self.magic.reset_choices()
            for i in range(native.count()):
                item = native.item(i)
                layer = item.data(0x0100)
                item.setSelected(any(layer is c for c in chosen) or (first and not chosen))
            native.blockSignals(False)
            self._seen = self._seen or native.count() > 0
        except RuntimeError:  # the Qt side is gone (widget closed)
            pass

    def set_hint(self, text: str) -> None:
        """Show ``text`` under the list (e.g. the model's modality names); "" hides it."""
        self.hint.setText(text)
        self.hint.setVisible(bool(text))

    def selected_names(self) -> list[str]:
        native = self.magic.native
        return [native.item(i).text() for i in range(native.count()) if native.item(i).isSelected()]

    def select(self, names: Sequence[str]) -> None:
        native = self.magic.native
        for i in range(native.count()):
            native.item(i).setSelected(native.item(i).text() in names)

    def selected_layers(self) -> list[Any]:
        return [self._viewer.layers[n] for n in self.selected_names() if n in self._viewer.layers]


def require_layer(layer: Layer | None, role: str) -> Layer:
    """Return ``layer`` or raise ``ValueError`` saying which ``role`` is missing."""
    if layer is None:
        raise ValueError(f"No {role} layer chosen: add or pick one first.")
    return layer


def _full_resolution(layer: Layer) -> Any:
    """The layer's data (its first level when multiscale), not converted."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _as_numpy(layer: Layer) -> np.ndarray:
    return np.asarray(_full_resolution(layer))


def labels_array(layer: Layer) -> np.ndarray:
    """The data of ``layer`` as an integer label array ``(*spatial)``.

    Raises
    ------
    TypeError
        The data is not integer (or boolean): e.g. an Image layer of floats.
    ValueError
        The data holds NaNs or negative labels.
    """
    data = _as_numpy(layer)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
            raise ValueError(f"Layer '{layer.name}' contains NaN values; labels must be integers.")
        raise TypeError(
            f"Layer '{layer.name}' has dtype {data.dtype}, not integer labels; "
            "convert it to a Labels layer first."
        )
    if data.size and data.min() < 0:
        raise ValueError(
            f"Layer '{layer.name}' has negative label {int(data.min())}; "
            "labels must be 0 (background) or positive classes."
        )
    return data


def image_array(layer: Layer) -> np.ndarray:
    """The data of ``layer`` as a finite float32 array ``(*spatial)`` (RGB refused).

    Raises
    ------
    ValueError
        The data holds NaN or infinite values, or the layer is RGB.
    """
    if getattr(layer, "rgb", False):
        raise ValueError(f"Layer '{layer.name}' is RGB; a greyscale scan is needed.")
    data = _as_numpy(layer).astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(f"Layer '{layer.name}' contains {int(bad.sum())} NaN or infinite values.")
    return data


def layer_spacing(layer: Layer) -> tuple[float, ...]:
    """Voxel spacing in numpy axis order (mm), from ``layer.scale``."""
    return tuple(float(abs(s)) for s in layer.scale)


def layer_affine(layer: Layer) -> np.ndarray:
    """The ``(4, 4)`` voxel-to-world affine of a layer's stored (numpy) axes.

    The NIfTI affine the plugin's reader and sample keep in
    ``metadata["affine"]``; otherwise one built from the layer's scale and
    translate (``core.io.default_affine`` plus the translation).
    """
    from napari_boundary_seg.core.io import default_affine

    saved = getattr(layer, "metadata", {}).get("affine")
    if saved is not None and np.shape(saved) == (4, 4):
        return np.asarray(saved, dtype=float)
    k = min(int(layer.ndim), 3)
    affine = default_affine([float(s) for s in layer.scale[-k:]])
    affine[:k, 3] = [float(t) for t in layer.translate[-k:]]
    return affine


def native_slice_axis(layer: Layer, plane: str | int = "auto") -> int:
    """The stored axis of a 3D ``layer`` that 2D slices of ``plane`` are taken
    along (``core.orientation.native_slice_axis`` on :func:`layer_affine`);
    0 for a 2D layer. It does not depend on the viewer."""
    from napari_boundary_seg.core.orientation import native_slice_axis as from_affine

    if layer.ndim != 3:
        return 0
    return from_affine(layer_affine(layer), layer_spacing(layer), plane)


def show_slicing_axis(viewer: Any, layer: Layer, axis: int) -> bool:
    """Make a 2D view slice through data ``axis`` of ``layer`` (the view follows
    the training). Returns True when the view changed."""
    if viewer.dims.ndisplay != 2 or layer.ndim < 3:
        return False
    world = viewer.dims.ndim - layer.ndim + int(axis)
    order = list(viewer.dims.order)
    others = [a for a in order if a != world]
    new = (*others[:-2], world, *others[-2:])
    if tuple(new) == tuple(order):
        return False
    viewer.dims.order = new
    return True


def geometry_kwargs(layer: Layer) -> dict[str, Any]:
    """Keyword arguments that give a new layer the geometry of ``layer``.

    Scale, translate, rotate, shear, napari affine and units, plus the NIfTI
    affine kept in ``metadata["affine"]`` (see ``_reader``), so that the new
    layer overlays ``layer`` exactly and saves with the same affine.
    """
    kwargs: dict[str, Any] = {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
        "units": tuple(layer.units),
    }
    if "affine" in layer.metadata:
        kwargs["metadata"] = {"affine": np.asarray(layer.metadata["affine"])}
    return kwargs


def check_same_shape(a: Layer, b: Layer) -> None:
    """Raise ``ValueError`` naming both shapes when the layers' shapes differ."""
    # shapes only: no conversion of (possibly lazy) data to numpy
    sa, sb = tuple(_full_resolution(a).shape), tuple(_full_resolution(b).shape)
    if sa != sb:
        raise ValueError(f"Shapes do not match: '{a.name}' is {sa}, '{b.name}' is {sb}.")


@dataclass
class ImageStack:
    """Image layers stacked as channels, with the geometry of the first one.

    Attributes
    ----------
    images
        ``(M, *spatial)`` float32, one channel per layer, in layer order.
    spacing
        Voxel size per spatial axis in mm, numpy axis order (``layer.scale``).
    geometry
        Keyword arguments giving a new layer the first layer's geometry
        (scale, translate, affine...; see ``_common.geometry_kwargs``).
    names
        The layer names, in channel order.
    affine
        The first layer's voxel-to-world affine (:func:`layer_affine`): the
        core reorients the volume with it as in training.
    """

    images: np.ndarray
    spacing: tuple[float, ...]
    geometry: dict[str, Any]
    names: list[str] = field(default_factory=list)
    affine: np.ndarray | None = None


def images_from_layers(layers: Sequence[Any]) -> ImageStack:
    """Stack image layers (modalities) as channels and check them.

    Parameters
    ----------
    layers
        napari Image layers, all of the same shape, 2D or 3D.

    Returns
    -------
    ImageStack
        ``images`` is ``(M, *spatial)`` float32.

    Raises
    ------
    ValueError
        No layer, shapes that differ, an RGB layer, a dimension outside 2-3, or
        NaN / inf values (the message names the layer).
    """
    layers = list(layers)
    if not layers:
        raise ValueError("No image layer chosen: select at least one image layer.")
    arrays: list[np.ndarray] = []
    for layer in layers:
        data = image_array(layer)
        if data.ndim not in (2, 3):
            raise ValueError(
                f"Image layer '{layer.name}' has {data.ndim} dimensions "
                f"(shape {data.shape}); a 2D or 3D image is needed."
            )
        if arrays:
            check_same_shape(layers[0], layer)
        arrays.append(data)
    return ImageStack(
        np.stack(arrays, axis=0),
        layer_spacing(layers[0]),
        geometry_kwargs(layers[0]),
        [layer.name for layer in layers],
        layer_affine(layers[0]) if data.ndim == 3 else None,
    )


# ----------------------------------------------------------------- inputs
class PathEdit(_MagicWrapper):
    """A path picker (magicgui ``FileEdit``: a line edit and a browse button) for
    a file (``mode="file"``), a folder (``"folder"``) or a file to write (``"save"``).

    ``text()`` is what the user typed ("" when empty), not magicgui's ``Path(".")``.
    """

    def __init__(self, mode: str = "file", filter: str = "", placeholder: str = ""):
        super().__init__()
        from magicgui.widgets import FileEdit

        modes = {"file": "r", "folder": "d", "save": "w"}
        self.magic = FileEdit(mode=modes.get(mode, "r"), filter=filter or None)
        self.edit = self.magic.line_edit.native
        self.edit.setPlaceholderText(placeholder)
        button = self.magic.choose_btn.native
        button.setToolTip(button.text())  # "Select file", "Choose directory"...
        button.setText("…")
        button.setFixedWidth(28)
        self.edit.setMinimumWidth(80)
        self._embed(self.magic.native)

    def text(self) -> str:
        return self.magic.line_edit.value.strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self.magic.line_edit.value = str(text)


def device_choices() -> list[str]:
    """``"auto"`` then the devices present here (``core.device.available_devices``)."""
    from napari_boundary_seg.core.device import available_devices

    return ["auto", *[d for d in available_devices() if d != "auto"]]


class DeviceCombo(QComboBox):
    """The devices present, ``auto`` first and labelled with what it picks."""

    def __init__(self) -> None:
        super().__init__()
        from napari_boundary_seg.core.device import resolve_device

        for name in device_choices():
            text = f"auto ({resolve_device('auto')})" if name == "auto" else name
            self.addItem(text, name)
        self.setToolTip("Only the devices present on this machine are listed")

    def device(self) -> str:
        """The chosen device name (``"auto"``, ``"cpu"``, ``"cuda:0"``...)."""
        return self.currentData() or self.currentText()

    def set_device(self, name: str) -> None:
        index = self.findData(name)
        if index >= 0:
            self.setCurrentIndex(index)


def check_device(device: str) -> str:
    """Raise ValueError if ``device`` is not present on this machine."""
    choices = device_choices()
    if device not in choices:
        raise ValueError(
            f"Device '{device}' is not available on this machine; choose one of {choices}."
        )
    return device


def double_spin(
    value: float, low: float, high: float, step: float, decimals: int
) -> QDoubleSpinBox:
    """A float field (magicgui ``FloatSpinBox``; its Qt ``QDoubleSpinBox`` is
    returned) with range ``[low, high]``, ``step`` and ``decimals``."""
    from magicgui.widgets import FloatSpinBox

    magic = FloatSpinBox(min=low, max=high, step=step)
    box = magic.native
    box.setDecimals(decimals)
    box.setValue(value)
    box.magic = magic  # keep the magicgui side alive with its Qt widget
    return box


def int_spin(value: int, low: int, high: int, step: int = 1) -> QSpinBox:
    """An integer field (magicgui ``SpinBox``; its Qt ``QSpinBox`` is returned)
    with range ``[low, high]`` and ``step``."""
    from magicgui.widgets import SpinBox

    magic = SpinBox(value=value, min=low, max=high, step=step)
    box = magic.native
    box.magic = magic
    return box


def format_number(value: Any, digits: int = 3, nan: str = "n/a", none: str = "") -> str:
    """A table cell: integers as they are, other numbers with ``digits`` decimals
    (``inf`` for infinity), ``nan`` for NaN and ``none`` for None."""
    if value is None:
        return none
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return nan
    return f"{value:.{digits}f}"


# ----------------------------------------------------------------- slicing
def slicing_axis(viewer: Any, layer: Layer) -> int:
    """The data axis of ``layer`` that the viewer slices through.

    The first world axis not displayed (``viewer.dims.not_displayed[0]``), in
    the layer's data axes (a layer with fewer dimensions than the viewer uses
    the last ones). In a 3D view, or for a 2D layer, axis 0.
    """
    offset = viewer.dims.ndim - layer.ndim
    for world_axis in viewer.dims.not_displayed:
        if world_axis - offset >= 0:
            return int(world_axis - offset)
    return 0


def move_to_slice(viewer: Any, layer: Layer, axis: int, index: int) -> None:
    """Move the viewer to slice ``index`` along data ``axis`` of ``layer``.

    Takes the layer's scale and translate into account
    (``layer.data_to_world``).
    """
    position = np.zeros(layer.ndim)
    position[axis] = index
    world = layer.data_to_world(position)
    world_axis = viewer.dims.ndim - layer.ndim + axis
    viewer.dims.set_point(world_axis, float(world[axis]))


# ------------------------------------------------------------------ layout
def _scroll_area_class() -> type:
    from qtpy.QtCore import QSize
    from qtpy.QtWidgets import QScrollArea

    class FormScrollArea(QScrollArea):
        """Scrolls vertically only; as wide as its form needs (up to
        :data:`MAX_FORM_WIDTH`), a few rows high at least."""

        def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt naming
            body = self.widget()
            width = body.minimumSizeHint().width() if body is not None else 0
            width += self.verticalScrollBar().sizeHint().width() + 2
            return QSize(min(width, MAX_FORM_WIDTH), 120)

        def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
            # napari sizes a dock from its size hint: hold the form's width
            self.setMinimumWidth(self.minimumSizeHint().width())
            super().showEvent(event)

    return FormScrollArea


#: The widest a scrolling form asks to be (px): a third of a 1366 px screen.
MAX_FORM_WIDTH = 440


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Put a scroll area in ``widget`` and return the layout of its content.

    A dock widget built on this layout scrolls vertically instead of being
    cut off (or forcing the window taller than a laptop screen): its minimum
    height is a few rows; its minimum width is its form's (at most
    :data:`MAX_FORM_WIDTH`). The area is ``widget.scroll_area``.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame

    body = QWidget()
    content = QVBoxLayout(body)
    area = _scroll_area_class()()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.scroll_area = area
    return content


def collapsible(title: str, content: QWidget, expanded: bool = False) -> QWidget:
    """``content`` in a superqt ``QCollapsible`` section titled ``title``."""
    from superqt import QCollapsible

    section = QCollapsible(title)
    section.addWidget(content)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    return section


def format_duration(seconds: float | None) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration in seconds; ``"–"`` when unknown
    (None, NaN or infinite)."""
    if seconds is None or not seconds < float("inf") or seconds != seconds:
        return "–"
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressPanel(QWidget):
    """Progress inside a widget: a bar (magicgui ``ProgressBar``) and a line with
    the step, the elapsed and the estimated remaining time.

    ``set`` only stores the latest values (cheap, call it per event); a timer
    shows them every ``interval_ms``. ``start`` / ``finish`` frame one run.
    """

    def __init__(self, parent: QWidget | None = None, interval_ms: int = 250) -> None:
        super().__init__(parent)
        from magicgui.widgets import ProgressBar
        from qtpy.QtWidgets import QLabel

        self.magic = ProgressBar(min=0, max=1, value=0)
        self.bar = self.magic.native
        self.label = QLabel("")
        self.label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(self.bar)
        layout.addWidget(self.label)
        self._t0: float | None = None
        self._pending: tuple[int, int, str] | None = None
        self._last: tuple[int, int, str] = (0, 0, "")
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.flush)
        self.setVisible(False)

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self, message: str = "") -> None:
        """Start timing a run (the bar busy until the first ``set``)."""
        self._t0 = time.monotonic()
        self._last = (0, 0, message)
        self._pending = (0, 0, message)
        self.setVisible(True)
        self.flush()
        self._timer.start()

    def set(self, done: int, total: int, message: str = "") -> None:
        """Store the latest progress (``total`` 0: unknown); shown by the timer."""
        self._pending = (int(done), int(total), message or self._last[2])

    def text(self) -> str:
        return self.label.text()

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self._t0 is None:
            return
        done, total, message = self._last = pending
        try:
            if total > 0:
                self.bar.setRange(0, total)
                self.bar.setValue(min(done, total))
            else:
                self.bar.setRange(0, 0)  # busy
        except RuntimeError:  # the Qt side is gone
            return
        elapsed = time.monotonic() - self._t0
        parts = [message] if message else []
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total > 0 and 0 < done < total:
            parts.append(f"about {format_duration(elapsed * (total - done) / done)} left")
        self.label.setText(", ".join(parts))

    def finish(self, message: str = "done") -> None:
        """End the run: the bar full (or empty if nothing was done) and ``message``."""
        self.flush()
        try:
            self._timer.stop()
        except RuntimeError:
            return
        if self._t0 is None:
            return
        elapsed = time.monotonic() - self._t0
        self._t0 = None
        done, total, _ = self._last
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(max(total, 1) if message == "done" else min(done, max(total, 1)))
        self.label.setText(f"{message} in {format_duration(elapsed)}")


# ---------------------------------------------------------------- delivery
#: Pause between two delivery steps (ms): Qt runs its due timers and draws the
#: window in between (a zero-delay timer would run the next step first).
STEP_PAUSE_MS = 15


_FROZEN = False


def freeze_long_lived_objects() -> None:
    """Once per process: move every object alive now (napari, Qt, torch and
    their modules, hundreds of thousands of them) to Python's permanent GC
    generation (``gc.freeze``), so that a full collection, which the many
    objects of a new napari layer set off, scans only what came after
    (measured on the sample case: a full collection alone froze the window
    ≈ 190 ms under load). Cyclic garbage alive at that moment is never freed:
    a one-time cost, as with objects created at import time.
    """
    global _FROZEN
    if _FROZEN:
        return
    import gc

    gc.freeze()
    _FROZEN = True


class Delivery(QObject):
    """Run a result's GUI steps (add a layer, fill a table) one per event-loop turn.

    Each napari layer added costs the GUI thread its own time (vispy visual,
    layer controls, first draw); one after the other in a single slot they
    freeze the window for their sum. Here the event loop runs (and draws)
    between two steps, :data:`STEP_PAUSE_MS` apart, so the longest freeze is
    the longest step (:func:`layer_steps` splits adding a layer in three).
    ``pending`` is True until the last step has run.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: list[Callable[[], Any]] = []

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def run(self, *steps: Callable[[], Any]) -> None:
        """Queue ``steps``; the first runs now, each next one in a later turn."""
        freeze_long_lived_objects()
        idle = not self._steps
        self._steps.extend(steps)
        if idle:
            self._next()

    def _next(self) -> None:
        if not self._steps:
            return
        step = self._steps[0]
        try:
            step()
        except Exception as error:  # noqa: BLE001 - shown, never raised into Qt
            self._steps.clear()
            notify_error(error, "showing the result")
            return
        if self._steps and self._steps[0] is step:
            self._steps.pop(0)
        if self._steps:
            QTimer.singleShot(STEP_PAUSE_MS, self._next)


def insert_layer_quietly(viewer: Any, layer: Layer) -> Layer:
    """Append ``layer`` to the viewer and keep the active layer and selection as
    they were (napari's layer list activates what it inserts, which would
    switch the layer controls away from what the user works on). Public API
    only: the selection is put back after the insert."""
    layers = viewer.layers
    selection = layers.selection
    active = selection.active
    selected = [item for item in selection if item is not active]
    layers.append(layer)
    if active is not None and active in layers:
        selection.active = active
        selection.update([item for item in selected if item in layers])
    else:
        selection.clear()
    return layer


def layer_steps(
    viewer: Any,
    kind: str,
    data: Any,
    done: Callable[[Layer], Any] | None = None,
    activate: bool = True,
    **kwargs: Any,
) -> list[Callable[[], Any]]:
    """:class:`Delivery` steps that add a new ``kind`` ("image" or "labels")
    layer in three event-loop turns instead of one.

    1. The layer is built hidden and inserted without being activated
       (:func:`insert_layer_quietly`): its vispy visual and layer controls.
    2. It is shown as ``kwargs`` ask (``visible``, default True): napari
       slices it and the next paint draws it.
    3. It becomes the active layer (``activate``), then ``done(layer)`` runs.
    """
    from napari.layers import Image

    visible = bool(kwargs.pop("visible", True))
    made: list[Layer] = []

    def insert() -> None:
        cls = Labels if kind == "labels" else Image
        made.append(insert_layer_quietly(viewer, cls(data, visible=False, **kwargs)))

    def show() -> None:
        made[0].visible = visible

    def finish() -> None:
        layer = made[0]
        if activate and layer in viewer.layers:
            viewer.layers.selection.active = layer
        if done is not None:
            done(layer)

    return [insert, show, finish]


# ------------------------------------------------------------------ errors
def notify_error(error: BaseException | str, context: str = "") -> None:
    """Show ``error`` in a napari error notification; never raises.

    The one way the widgets show an error. Bad input (:data:`USER_ERRORS`)
    shows its message; any other exception shows its type too, prefixed with
    ``"<context> failed: "`` when ``context`` is given, and is logged with its
    traceback. A string is shown as it is.
    """
    if isinstance(error, BaseException):
        text = str(error) or type(error).__name__
        if not isinstance(error, USER_ERRORS):
            text = f"{type(error).__name__}: {text}"
            if context:
                text = f"{context} failed: {text}"
            logger.error("%s", text, exc_info=error)
            show_error(text)
            return
    else:
        text = error
    logger.info("%s", text)
    show_error(text)


def notify_info(text: str) -> None:
    """Show ``text`` in a napari info notification (and log it)."""
    logger.info("%s", text)
    show_info(text)


def notify_errors(
    func: Callable[..., Any], *args: Any, errors: tuple = USER_ERRORS, **kwargs: Any
) -> Any:
    """Call ``func``; show any of ``errors`` with :func:`notify_error`.

    Returns the function's result, or None when it failed. The viewer stays
    usable: nothing is raised.
    """
    try:
        return func(*args, **kwargs)
    except errors as error:
        notify_error(error)
        return None


# ------------------------------------------------------------------ workers
class ProgressRelay(QObject):
    """A napari progress bar fed at most every ``interval_ms``.

    napari's progress widgets call ``QApplication.processEvents()`` when they
    are made and on every update; updating them once per training step would
    re-enter the event loop from inside signal handlers and cost GUI time.
    ``set`` only stores the latest values; a timer applies them. The napari
    bar itself is made by the timer's first tick, not in the Start click
    (making it relays out the window: ≈ 200 ms under load, measured).
    """

    def __init__(self, description: str, interval_ms: int = 200, parent: QObject | None = None):
        super().__init__(parent)
        self.bar: Any = None
        self._closed = False
        self._prefix = description
        self._pending: tuple[int, int, str] | None = (0, 0, "")
        self._message = ""
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.flush)
        self._timer.start()

    def set(self, done: int, total: int, message: str = "") -> None:
        self._pending = (done, total, message)

    def flush(self) -> None:
        pending = self._pending
        if self._closed or pending is None:
            return
        self._pending = None
        if self.bar is None:
            from napari.utils import progress

            self.bar = progress(total=0, desc=self._prefix)
        bar = self.bar
        done, total, message = pending
        if bar.total != total:
            bar.total = total
        bar.n = min(done, total) if total else done
        bar.update(0)
        if message and message != self._message:
            self._message = message
            bar.set_description(f"{self._prefix}: {message}")

    def close(self) -> None:
        self._closed = True
        bar, self.bar = self.bar, None
        try:
            self._timer.stop()
        except RuntimeError:  # the Qt side was deleted with its parent
            pass
        if bar is not None:
            bar.close()


#: A second ``quit()`` of a :func:`controlled_worker_class` worker this long
#: after the first one aborts it instead of waiting for the trainer's next
#: step boundary (s).
FORCE_QUIT_AFTER_S = 30.0


@functools.cache
def controlled_worker_class() -> type:
    """napari's ``GeneratorWorker`` whose ``quit()`` stops a trainer cleanly.

    Set ``worker.control`` to the run's ``core.train.TrainControl`` (pass this
    class as ``create_worker(..., _worker_class=...)``). napari quits every
    registered worker when its window closes (task status ``cancel_all``) and
    when the application quits (``wait_for_workers_to_quit``). A plain
    ``quit()`` drops the generator at its next yield, so the trainer would
    never see the stop request nor write ``last.pt`` for the step it reached.
    Here the first ``quit()`` asks the trainer to stop (it saves and returns
    at its next step boundary); a ``quit()`` more than
    :data:`FORCE_QUIT_AFTER_S` later, or :meth:`force_quit`, aborts. With
    ``control`` None it quits as napari's worker does.
    """
    from napari.qt.threading import GeneratorWorker

    class ControlledWorker(GeneratorWorker):
        control: Any = None
        _quit_at: float | None = None

        def quit(self) -> None:
            control = self.control
            now = time.monotonic()
            if control is not None and (
                self._quit_at is None or now - self._quit_at < FORCE_QUIT_AFTER_S
            ):
                if self._quit_at is None:
                    self._quit_at = now
                control.stop()  # also wakes a paused run
                return
            super().quit()

        def force_quit(self) -> None:
            GeneratorWorker.quit(self)

    return ControlledWorker


def start_progress_worker(
    make_generator: Callable[[], Generator[Any, Any, Any]],
    on_returned: Callable[[Any], None],
    description: str = "",
    on_event: Callable[[Any], None] | None = None,
    start: bool = True,
    button: QWidget | None = None,
) -> Any:
    """Run a ``core`` progress generator in a napari ``thread_worker``.

    A napari progress bar (:class:`ProgressRelay`: throttled updates) follows
    the yielded :class:`~core.progress.Progress` events; other events go to
    ``on_event``. An exception in the generator becomes a napari error
    notification (:func:`notify_error`: its message; the type too when it is
    not bad input) and is not re-raised, so the viewer stays usable. Returns
    the worker (started unless ``start`` is False: connect to ``finished``
    before starting, or a fast worker may finish first), so callers can
    ``quit()`` it. ``button`` (the widget's run button) is disabled while the
    worker runs and enabled again when it has finished.
    """
    from napari.qt.threading import thread_worker

    @thread_worker(start_thread=False, ignore_errors=True)
    def _work() -> Generator[Any, Any, Any]:
        result = yield from make_generator()
        return result

    worker = _work()
    relay = ProgressRelay(description)

    def _yielded(event: Any) -> None:
        if isinstance(event, Progress):
            relay.set(event.done, event.total, event.message)
        elif on_event is not None:
            on_event(event)

    worker.yielded.connect(_yielded)
    worker.errored.connect(lambda error: notify_error(error, description or "worker"))
    worker.returned.connect(on_returned)
    worker.finished.connect(relay.close)
    if button is not None:
        button.setEnabled(False)
        worker.finished.connect(lambda: button.setEnabled(True))
    if start:
        worker.start()
    return worker


# -------------------------------------------------------------------- plots
class PlotCanvas(QWidget):
    """A small matplotlib plot in a Qt widget (dark background like napari).

    ``plot(x, {"label": ys, ...})`` redraws; ``figure`` and ``axes`` are public
    for anything more.
    """

    def __init__(
        self, height: float = 2.2, width: float = 3.5, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # fixed margins, not tight_layout (which lays the text out again at every draw)
        self.figure = Figure(figsize=(width, height))
        self.figure.subplots_adjust(left=0.16, right=0.97, bottom=0.2, top=0.88)
        self.figure.patch.set_facecolor("#262930")
        self.axes = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: a relayout of the window (a progress bar appearing)
        # does not resize the figure, which would draw it again (≈ 90 ms)
        self.canvas.setFixedHeight(int(round(height * self.figure.dpi)))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._style()

    def _style(self) -> None:
        ax = self.axes
        ax.set_facecolor("#262930")
        for spine in ax.spines.values():
            spine.set_color("#aaaaaa")
        ax.tick_params(colors="#dddddd", labelsize=7)
        ax.xaxis.label.set_color("#dddddd")
        ax.yaxis.label.set_color("#dddddd")
        ax.title.set_color("#dddddd")

    def plot(
        self,
        x: Iterable[float],
        series: Mapping[str, Iterable[float]],
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
    ) -> None:
        """Redraw with one line per entry of ``series`` (all against ``x``)."""
        ax = self.axes
        ax.clear()
        self._style()
        x = list(x)
        for label, ys in series.items():
            ax.plot(x, list(ys), label=label, linewidth=1.2)
        if title:
            ax.set_title(title, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        if len(series) > 1:
            ax.legend(fontsize=6, facecolor="#262930", labelcolor="#dddddd")
        self.canvas.draw_idle()
