"""Inference: load a checkpoint, predict a volume slice by slice.

:func:`predict_volume` applies the preprocessing the model was trained with
(read from the checkpoint's config: intensity scaling, slicing axis, slice
size), runs the 2D slices through the network in batches, resizes the softmax
probabilities back to the native slice size (bilinear) and restacks them, so
that the result has the input's geometry. Labels are the argmax of the
probabilities.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_boundary_seg.core.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    preprocess_from_checkpoint,
)
from napari_boundary_seg.core.data import PreprocessConfig, case_from_arrays, preprocess_case
from napari_boundary_seg.core.device import resolve_device
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "iter_predict_volume",
    "modality_order",
    "predict_volume",
]


def modality_order(trained: Sequence[str], given: Sequence[str]) -> list[int] | None:
    """The channel permutation that puts ``given`` modalities in the ``trained`` order.

    Only when both name the same distinct modalities in a different order:
    ``given[order[i]] == trained[i]``. None when the order already matches or
    cannot be told from the names (different names, duplicates, none known).
    """
    trained, given = [str(n) for n in trained], [str(n) for n in given]
    if (
        not trained
        or list(trained) == list(given)
        or len(set(trained)) != len(trained)
        or sorted(trained) != sorted(given)
    ):
        return None
    return [given.index(name) for name in trained]


def _resolve(
    model_or_checkpoint: Any, preprocess: PreprocessConfig | None
) -> tuple[nn.Module, PreprocessConfig]:
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint, preprocess or PreprocessConfig()
    if isinstance(model_or_checkpoint, tuple) and len(model_or_checkpoint) == 2:
        model, checkpoint = model_or_checkpoint
        return model, preprocess or preprocess_from_checkpoint(checkpoint)
    if isinstance(model_or_checkpoint, Mapping):
        model = model_from_checkpoint(model_or_checkpoint)
        return model, preprocess or preprocess_from_checkpoint(model_or_checkpoint)
    if isinstance(model_or_checkpoint, str | os.PathLike):
        model, checkpoint = load_checkpoint(model_or_checkpoint)
        return model, preprocess or preprocess_from_checkpoint(checkpoint)
    raise TypeError(
        "model_or_checkpoint must be a UNet, a checkpoint path, a checkpoint dict or a "
        f"(model, checkpoint) tuple, got {type(model_or_checkpoint).__name__}"
    )


def _as_channels(
    volume: np.ndarray, in_channels: int, spacing: Sequence[float] | None
) -> np.ndarray:
    """``volume`` as ``(M, *spatial)``: add the channel axis when it is missing."""
    volume = np.asarray(volume)
    if volume.ndim == 4:
        has_channels = True
    elif volume.ndim == 2:
        has_channels = False
    elif volume.ndim == 3:
        if spacing is not None:
            has_channels = len(spacing) == 2
        else:
            has_channels = in_channels > 1
    else:
        raise ValueError(
            f"volume must be (*spatial) or (M, *spatial) with 2 or 3 spatial axes, "
            f"got shape {volume.shape}"
        )
    if not has_channels:
        volume = volume[None]
    if volume.shape[0] != in_channels:
        raise ValueError(
            f"volume of shape {volume.shape} has {volume.shape[0]} channel(s) but the model "
            f"takes {in_channels} (modalities stacked on axis 0)"
        )
    if spacing is not None and len(spacing) != volume.ndim - 1:
        raise ValueError(
            f"spacing {tuple(spacing)} does not have one value per spatial axis of "
            f"{volume.shape[1:]}"
        )
    return volume.astype(np.float32, copy=False)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def iter_predict_volume(
    model_or_checkpoint: Any,
    volume: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    axis: int | None = None,
    slice_size: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    preprocess: PreprocessConfig | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """:func:`predict_volume` as a generator yielding ``Progress`` per batch.

    Returns ``(probs, labels)``; arguments as :func:`predict_volume`.
    """
    model, prep = _resolve(model_or_checkpoint, preprocess)
    if axis is not None:
        prep = dataclasses.replace(prep, axis=axis)
    if slice_size is not None:
        prep = dataclasses.replace(prep, slice_size=slice_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    in_channels = int(getattr(model, "in_channels", 1))
    images = _as_channels(volume, in_channels, spacing)
    spatial = images.shape[1:]
    if spacing is None:
        spacing = (1.0,) * len(spatial)
    if device is None:
        target = _model_device(model)
    else:
        target = device if isinstance(device, torch.device) else resolve_device(device)
    original_device = _model_device(model)
    was_training = model.training
    model.to(target).eval()

    case = case_from_arrays(list(images), None, spacing, case_id="predict")
    prepared = preprocess_case(case, prep)
    slices = prepared.images  # (D, M, S, S)
    if len(spatial) == 3:
        ax = prep.axis % 3
        native = tuple(s for k, s in enumerate(spatial) if k != ax)
    else:
        ax = None
        native = tuple(spatial)
    n = slices.shape[0]
    total = -(-n // batch_size)
    out = np.empty((0,), dtype=np.float32)
    yield Progress(0, total, "predicting slices")
    try:
        with torch.inference_mode():
            for b, start in enumerate(range(0, n, batch_size)):
                chunk = torch.from_numpy(slices[start : start + batch_size]).to(target)
                probs = torch.softmax(model(chunk).float(), dim=1)
                if tuple(probs.shape[-2:]) != native:
                    # bilinear weights are convex: the channels still sum to 1
                    probs = F.interpolate(probs, size=native, mode="bilinear", align_corners=False)
                probs_np = probs.cpu().numpy()
                if b == 0:
                    out = np.empty((n, probs_np.shape[1], *native), dtype=np.float32)
                out[start : start + len(probs_np)] = probs_np
                yield Progress(b + 1, total, f"slices {start + len(probs_np)}/{n}")
    finally:
        model.to(original_device)
        model.train(was_training)
    # (D, C, H, W) -> (C, *spatial)
    probs_vol = np.moveaxis(out, 0, 1)  # (C, D, H, W)
    if ax is None:
        probs_vol = probs_vol[:, 0]
    else:
        probs_vol = np.moveaxis(probs_vol, 1, 1 + ax)
    probs_vol = np.ascontiguousarray(probs_vol, dtype=np.float32)
    labels = probs_vol.argmax(axis=0).astype(np.int64)
    return probs_vol, labels


def predict_volume(
    model_or_checkpoint: Any,
    volume: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    axis: int | None = None,
    slice_size: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    preprocess: PreprocessConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a 2D image or 3D volume slice by slice.

    Parameters
    ----------
    model_or_checkpoint
        A UNet, a checkpoint path, a checkpoint dict, or ``(model, checkpoint)``
        as :func:`load_checkpoint` returns. With a checkpoint, the preprocessing
        comes from its config; with a bare model, from ``preprocess`` (default
        :class:`~napari_boundary_seg.core.data.PreprocessConfig`).
    volume
        ``(M, *spatial)`` or ``(*spatial)`` (one modality) float array with 2 or
        3 spatial axes, raw intensities (scaled here as in training). A 3-axis
        array is ``(M, H, W)`` when ``spacing`` has 2 values, a 3D volume when it
        has 3; without ``spacing``, ``(M, H, W)`` if the model takes several
        channels, else a 3D volume.
    spacing
        Voxel size per spatial axis (mm, numpy axis order).
    axis
        Slicing axis; default: the training one.
    slice_size
        Network input size; default: the training one.
    batch_size
        Slices per forward pass.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch device; ``None``:
        the model's current device (the CPU for a loaded checkpoint). The model
        is moved back afterwards.
    preprocess
        Preprocessing override.

    Returns
    -------
    (probs, labels)
        ``probs (C, *spatial)`` float32 softmax probabilities and ``labels
        (*spatial)`` int64 argmax, at the input's geometry.
    """
    return run_to_end(
        iter_predict_volume(
            model_or_checkpoint,
            volume,
            spacing,
            axis=axis,
            slice_size=slice_size,
            batch_size=batch_size,
            device=device,
            preprocess=preprocess,
        )
    )
