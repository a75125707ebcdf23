"""Checkpoints and predictions for the widgets, with no Qt import: a checkpoint
checked against the chosen images (:func:`check_checkpoint_path`,
:func:`load_checked_checkpoint`, :func:`check_checkpoint_channels`,
:func:`modalities_of`, :func:`stack_for_checkpoint`, :func:`checkpoint_axis`),
and the layers of a prediction (:func:`prediction_outputs`,
:func:`prediction_layer_kwargs`, :func:`probability_layer_kwargs`,
:func:`prediction_status`). Shared by the Predict, Train and Finetune widgets.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg._widgets._layers import (
    ImageStack,
    compact_labels,
    mark_output,
    notify_info,
    output_label_colormap,
    unique_layer_name,
)

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
    """``(foreground probability (*spatial) float32, labels (*spatial) uint8 or int32)``:
    the layers' data, built in the worker so the GUI thread only adds layers."""
    foreground = probs if probs.ndim == np.ndim(labels) else 1.0 - probs[0]
    return (
        np.ascontiguousarray(foreground, dtype=np.float32),
        compact_labels(labels),
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
        raise ValueError(
            "No checkpoint chosen: pick a best.pt or last.pt file, or a model package (.zip)."
        )
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
    from napari_boundary_seg.core.model_package import is_model_package, read_package

    if is_model_package(path):
        try:
            return tuple(read_package(path).modalities)
        except (OSError, ValueError):  # reported when the package is used
            return ()
    return tuple(checkpoint_modalities(path))


def layer_model(layers: Sequence[Any]) -> str:
    """The model named in the first of ``layers``' metadata (the sample case names
    the starter model there), or ""."""
    from napari_boundary_seg._sample_data import MODEL_METADATA_KEY

    for layer in layers:
        model = (getattr(layer, "metadata", None) or {}).get(MODEL_METADATA_KEY)
        if model:
            return str(model)
    return ""


def finetune_checkpoint_path(path: str | Path) -> str:
    """:func:`check_checkpoint_path`, a model package giving its embedded checkpoint
    (written once into the plugin's cache folder): fine-tuning trains a checkpoint."""
    from napari_boundary_seg._sample_data import cache_dir
    from napari_boundary_seg.core.model_package import is_model_package, read_package

    checked = check_checkpoint_path(path)
    if not is_model_package(checked):
        return checked
    try:
        return str(read_package(checked).checkpoint_file(cache_dir() / "packages"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"Cannot fine-tune '{Path(checked).name}': {exc}") from exc


def load_checked_checkpoint(
    path: str | Path, n_channels: int | None, spatial_ndim: int | None = None
) -> Any:
    """Load a checkpoint (or a model package: its TorchScript network and settings,
    :func:`core.model_package.open_model`) and check it fits ``n_channels`` input
    modalities; a package is checked against ``n_channels`` and ``spatial_ndim``
    (its input axes) before its weights are loaded.

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
    from napari_boundary_seg.core.model_package import is_model_package, open_model, read_package

    path = Path(check_checkpoint_path(path))
    try:
        if spatial_ndim is not None and is_model_package(path):
            read_package(path).check_fits(spatial_ndim, n_channels)
        loaded = open_model(path)
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


def prediction_status(labels: np.ndarray, name: str = "") -> str:
    """``"Done: N foreground voxels predicted in 'name'."`` or, when there is
    none, the words of :data:`NO_FOREGROUND`."""
    n_fg = int(np.count_nonzero(labels))
    where = f" in '{name}'" if name else ""
    if n_fg == 0:
        return f"Done: {NO_FOREGROUND}{where} (the model found no lesion)."
    return f"Done: {n_fg} foreground voxels predicted{where}."


def checkpoint_axis(
    checkpoint: dict[str, Any],
    ndim: int,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> int:
    """The stored axis of an ``ndim``-D volume that the checkpoint slices along
    (its plane found through the volume's ``affine``)."""
    from napari_boundary_seg.core.checkpoint import checkpoint_native_axis

    return checkpoint_native_axis(checkpoint, ndim, affine, spacing)
