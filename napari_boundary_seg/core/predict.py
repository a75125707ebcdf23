"""Inference: apply a checkpoint's model to a volume, as it was trained.

:func:`iter_predict_volume` (and :func:`predict_volume`, the same run to its
end) resolve the model and how it was trained
(:func:`~napari_boundary_seg.core.checkpoint.inference_settings`), then ask the
checkpoint's training mode (:func:`~napari_boundary_seg.core.modes.mode_for`)
for its predictor, so that the CLI, the widgets, fine-tuning and validation
call the same function without being told:

- slices (:class:`~napari_boundary_seg.core.modes.SliceMode`, every 0.1
  checkpoint): the preprocessing the model was trained with (intensity
  scaling, slicing axis, slice size), the slices through the network in
  batches, the softmax probabilities resized back to the native slice size
  (bilinear) and restacked.
- patches (:class:`~napari_boundary_seg.core.modes.PatchMode`): the same
  intensity scaling, no slicing and no resizing (the volume stays at its own
  spacing), then :func:`iter_sliding_window`: windows of the training patch
  size with ``overlap`` (0.5 by default), batched ``sw_batch_size`` at a time
  on the model's device, their softmax probabilities blended with Gaussian
  weights, the volume zero-padded where it is smaller than a window and
  cropped back.

Both give ``(probs (C, *spatial), labels (*spatial))`` at the input's geometry,
labels being the argmax of the probabilities, and yield ``Progress`` after each
batch, where a widget's stop or pause takes effect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_boundary_seg.core.checkpoint import (
    InferenceSettings,
    inference_settings,
    load_checkpoint,
    model_from_checkpoint,
)
from napari_boundary_seg.core.data import PreprocessConfig
from napari_boundary_seg.core.modes import TrainingMode, mode_for
from napari_boundary_seg.core.modes.base import PredictOptions, check_count
from napari_boundary_seg.core.modes.patches import iter_sliding_window
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "select_modalities",
    "iter_predict_ensemble",
    "iter_predict_volume",
    "iter_sliding_window",
    "modality_order",
    "predict_volume",
]


def select_modalities(trained: Sequence[str], given: Sequence[str]) -> list[int] | None:
    """Indices into ``given`` of each ``trained`` modality, matched by name
    (case-insensitive): reorders, and picks a subset when more are given (a
    FLAIR-only model given FLAIR and T1 takes the FLAIR). None when a trained
    name is not among the given ones, or names repeat."""
    trained = [str(n).strip().lower() for n in trained]
    given = [str(n).strip().lower() for n in given]
    if not trained or len(set(trained)) != len(trained) or len(set(given)) != len(given):
        return None
    if any(name not in given for name in trained):
        return None
    return [given.index(name) for name in trained]


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
    model_or_checkpoint: Any,
    preprocess: PreprocessConfig | None,
    patch_size: Sequence[int] | None,
) -> tuple[nn.Module, TrainingMode, InferenceSettings]:
    """The model, its mode and how to apply it: the checkpoint's settings, or a
    bare model's own."""
    checkpoint: Mapping[str, Any] | None = None
    if isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
    elif isinstance(model_or_checkpoint, tuple) and len(model_or_checkpoint) == 2:
        model, checkpoint = model_or_checkpoint
    elif isinstance(model_or_checkpoint, Mapping):
        checkpoint = model_or_checkpoint
        model = model_from_checkpoint(checkpoint)
    elif isinstance(model_or_checkpoint, str | os.PathLike):
        model, checkpoint = load_checkpoint(model_or_checkpoint)
    else:
        raise TypeError(
            "model_or_checkpoint must be a UNet, a checkpoint path, a checkpoint dict or a "
            f"(model, checkpoint) tuple, got {type(model_or_checkpoint).__name__}"
        )
    model_dims = int(getattr(model, "spatial_dims", 2))
    if checkpoint is None:
        settings = InferenceSettings(model_dims, None, PreprocessConfig())
    else:
        settings = inference_settings(checkpoint)
        if settings.dims != model_dims:
            raise ValueError(
                f"the checkpoint says dims={settings.dims} but its model has "
                f"spatial_dims={model_dims}"
            )
    if preprocess is not None:
        settings = settings.replace(preprocess=preprocess)
    mode = mode_for(settings)
    return model, mode, mode.inference_settings(settings, patch_size)


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
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    affine: np.ndarray | None = None,
    flips: bool = False,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Segment a 2D image or 3D volume: slice by slice (2D models) or by sliding window (3D).

    Parameters
    ----------
    model_or_checkpoint
        A UNet, a checkpoint path, a checkpoint dict, or ``(model, checkpoint)``
        as :func:`~napari_boundary_seg.core.checkpoint.load_checkpoint` returns.
        With a checkpoint, the mode (2D/3D), the patch size and the
        preprocessing come from it
        (:func:`~napari_boundary_seg.core.checkpoint.inference_settings`); with a
        bare model, the mode is its ``spatial_dims`` (2 if it has none) and the
        preprocessing ``preprocess`` (default
        :class:`~napari_boundary_seg.core.data.PreprocessConfig`).
    volume
        ``(M, *spatial)`` or ``(*spatial)`` (one modality) float array with 2 or
        3 spatial axes, raw intensities (scaled here as in training). A 3-axis
        array is ``(M, H, W)`` when ``spacing`` has 2 values, a 3D volume when it
        has 3; without ``spacing``, ``(M, H, W)`` if the model takes several
        channels, else a 3D volume.
        A 3D model takes ``(M, D, H, W)`` or ``(D, H, W)``.
    spacing
        Voxel size per spatial axis (mm, numpy axis order).
    axis
        2D: slicing axis; default: the training one. Ignored in 3D.
    slice_size
        2D: network input size; default: the training one. Ignored in 3D.
    batch_size
        2D: slices per forward pass.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` or a torch device; ``None``:
        the model's current device (the CPU for a loaded checkpoint). The model
        is moved back afterwards.
    preprocess
        Preprocessing override (in 3D only its intensity scaling is used).
    patch_size
        3D: window size in voxels per axis; default: the checkpoint's training
        patch size (required for a bare 3D model).
    overlap
        3D: share of a window overlapping its neighbour along each axis.
    sw_batch_size
        3D: windows per forward pass.
    affine
        ``(4, 4)`` voxel-to-world matrix of ``volume``: a model trained in the
        canonical orientation sees the volume reoriented (and its output is
        brought back to the stored order). ``None``: the stored order is taken
        as canonical.
    flips
        Test-time mirroring: the probabilities averaged over the input mirrored
        along every in-plane axis (2D: 4 passes) or every axis (3D: 8 passes),
        each mirrored back. For models trained with flip augmentation; costs
        that many forward passes.

    Yields
    ------
    Progress
        Once before the first batch, then after each batch.

    Returns
    -------
    (probs, labels)
        ``probs (C, *spatial)`` float32 softmax probabilities and ``labels
        (*spatial)`` int64 argmax, at the input's geometry.
    """
    model, mode, settings = _resolve(model_or_checkpoint, preprocess, patch_size)
    check_count("batch_size", batch_size)
    return (
        yield from mode.iter_predict(
            model,
            volume,
            spacing,
            settings,
            PredictOptions(
                axis, slice_size, batch_size, device, overlap, sw_batch_size, affine, flips
            ),
        )
    )


def iter_predict_ensemble(
    models: Sequence[Any], volume: np.ndarray, spacing: Sequence[float] | None = None, **kwargs: Any
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Several models on one volume: the mean of their softmax probabilities
    (nnU-Net's ensemble of the folds' models), labels its argmax.

    Each item of ``models`` is what :func:`iter_predict_volume` takes (a
    checkpoint path, dict, ``(model, checkpoint)`` or a UNet) and predicts with
    its own training settings (plane, spacing, intensities); ``kwargs`` are
    :func:`iter_predict_volume`'s. Progress counts over the models and its
    messages name the model ("model 2/5: ..."). One model gives exactly
    :func:`iter_predict_volume`'s result. Models that disagree on the number
    of classes are a ValueError.
    """
    models = list(models)
    if not models:
        raise ValueError("an ensemble needs at least one model")
    total: np.ndarray | None = None
    for k, item in enumerate(models):
        run = iter_predict_volume(item, volume, spacing, **kwargs)
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                probs, labels = stop.value
                break
            if len(models) > 1 and isinstance(event, Progress):  # one bar over the models
                t = event.total
                event = Progress(
                    k * t + event.done,
                    len(models) * t,
                    f"model {k + 1}/{len(models)}: {event.message}",
                )
            yield event
        if len(models) == 1:
            return probs, labels
        if total is None:
            total = probs.astype(np.float64)
        elif probs.shape != total.shape:
            raise ValueError(
                f"model {k + 1} of the ensemble predicts {probs.shape[0]} classes, "
                f"model 1 {total.shape[0]}: an ensemble needs models of the same classes"
            )
        else:
            total += probs
    probs = (total / len(models)).astype(np.float32)
    return probs, probs.argmax(axis=0).astype(np.int64)


def predict_volume(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`iter_predict_volume` run to its end: ``(probs, labels)`` (same arguments)."""
    return run_to_end(iter_predict_volume(*args, **kwargs))
