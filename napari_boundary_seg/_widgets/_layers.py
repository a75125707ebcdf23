"""Layers in, arrays out, errors as notifications: the widgets' glue to napari
layers, with no Qt import (tests import it without a display).

- What a picker offers: :func:`is_integer_labels`, :func:`is_segmentation_labels`,
  :func:`is_scan_image`, :func:`offered_image`; this plugin's outputs are marked
  by :func:`mark_output` (:func:`output_kind`) and coloured by
  :func:`output_label_colormap`; :func:`unique_layer_name`: a name no layer has.
- A layer's data checked: :func:`labels_array`, :func:`image_array`,
  :func:`images_from_layers` (:class:`ImageStack`), :func:`check_same_shape`,
  :func:`require_layer`.
- Geometry: :func:`layer_spacing`, :func:`layer_affine`,
  :func:`geometry_kwargs`, :func:`native_slice_axis` (from the data, never the
  view), :func:`slicing_axis`, :func:`move_to_slice`, :func:`show_slicing_axis`.
- :func:`insert_layer_quietly`: a layer appended without activating it;
  :func:`follow_layer_list`: a callback on every change of the layer list.
- :func:`notify_error`, :func:`notify_info`, :func:`notify_errors`: the one way
  the widgets show errors; :func:`format_number`, :func:`format_duration`.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Labels, Layer
from napari.utils.notifications import show_error, show_info

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


def fixed_label_colormap(colors: Mapping[int, Any], default: Any = "transparent") -> Any:
    """A Labels colormap that draws value ``k`` in ``colors[k]`` (0 transparent,
    values without a colour in ``default``, uint8 values exactly).

    It is napari's ``CyclicLabelColormap`` with the colours in value order (256 of
    them when ``default`` is not transparent), not a ``DirectLabelColormap``:
    where numba is installed, napari maps a direct colormap through a numba typed
    dict that compiles in every new process, and the first such layer froze the
    viewer for 2.5-3 s (a cyclic one maps with a modulo that numba caches on disk).
    """
    from napari.utils.colormaps import CyclicLabelColormap

    size = max(colors) + 1
    if default != "transparent":
        size = max(size, 256)
    table = [default] * size
    table[0] = "transparent"
    for value, color in colors.items():
        table[int(value)] = color
    return CyclicLabelColormap(colors=table, background_value=0)


def compact_labels(labels: Any) -> np.ndarray:
    """``labels`` as a Labels layer's data: uint8 when every value fits (0-255),
    else int32; contiguous. napari draws uint8/uint16 labels as they are, while
    wider integers are hashed per slice on the CPU (with numba, where installed,
    whose first call in a process loads its compiled code: a few hundred ms)."""
    labels = np.asarray(labels)
    small = labels.size == 0 or (labels.min() >= 0 and labels.max() < 256)
    return np.ascontiguousarray(labels, dtype=np.uint8 if small else np.int32)


def output_label_colormap(kind: str = "prediction") -> Any:
    """The label colours of a ``"prediction"`` or ``"preview"`` Labels layer
    (:data:`PREDICTION_COLORS`, :data:`PREVIEW_COLORS`; grey beyond them)."""
    colors = PREVIEW_COLORS if kind == "preview" else PREDICTION_COLORS
    return fixed_label_colormap(colors, default="#bdbdbd")


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


def check_same_geometry(a: Layer, b: Layer) -> None:
    """Raise ``ValueError`` naming both layers when they are placed differently in
    the world (scale, translate, rotate, shear, napari affine): a voxel painted on
    one would not be the voxel of the other that the viewer showed under it."""

    def placement(layer: Layer) -> dict[str, np.ndarray]:
        return {
            "scale": np.asarray(layer.scale, dtype=float),
            "translate": np.asarray(layer.translate, dtype=float),
            "rotate": np.asarray(layer.rotate, dtype=float),
            "shear": np.asarray(layer.shear, dtype=float),
            "affine": np.asarray(layer.affine.affine_matrix, dtype=float),
        }

    pa, pb = placement(a), placement(b)
    differ = [
        k for k in pa if pa[k].shape != pb[k].shape or not np.allclose(pa[k], pb[k], atol=1e-6)
    ]
    if differ:
        shown = "; ".join(
            f"{k} {pa[k].round(4).tolist()} vs {pb[k].round(4).tolist()}" for k in differ[:2]
        )
        raise ValueError(
            f"Geometry does not match: '{a.name}' and '{b.name}' are placed differently "
            f"({shown}). Correct a layer with the image's geometry (Predict makes one)."
        )


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
        (scale, translate, affine...; see :func:`geometry_kwargs`).
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


def format_duration(seconds: float | None) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration in seconds; ``"–"`` when unknown
    (None, NaN or infinite)."""
    if seconds is None or not seconds < float("inf") or seconds != seconds:
        return "–"
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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
