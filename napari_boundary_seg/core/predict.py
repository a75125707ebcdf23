"""Inference: apply a checkpoint's model to a volume, as it was trained (2D or 3D).

:func:`iter_predict_volume` / :func:`predict_volume` follow the checkpoint's
mode (:func:`~napari_boundary_seg.core.checkpoint.inference_settings`), so the
CLI, the widgets, fine-tuning and validation call the same function without
being told:

- 2D (``dims=2``, every 0.1 checkpoint): the preprocessing the model was
  trained with (intensity scaling, slicing axis, slice size), the slices
  through the network in batches, the softmax probabilities resized back to
  the native slice size (bilinear) and restacked.
- 3D (``dims=3``): the same intensity scaling, no slicing and no resizing (the
  volume stays at its own spacing), then :func:`iter_sliding_window`: windows
  of the training patch size with ``overlap`` (0.5 by default), batched
  ``sw_batch_size`` at a time on the model's device, their softmax
  probabilities blended with Gaussian weights, the volume zero-padded where it
  is smaller than a window and cropped back.

Both give ``(probs (C, *spatial), labels (*spatial))`` at the input's geometry,
labels being the argmax of the probabilities, and yield ``Progress`` after each
batch, where a widget's stop or pause takes effect.

MONAI pieces used (imported only by the 3D path): ``monai.data.utils.
dense_patch_slices`` (the window grid, the last window flush with the far edge)
and ``compute_importance_map(mode="gaussian")`` (the nnU-Net-style Gaussian
weight map). Not ``monai.inferers.sliding_window_inference`` itself: it runs
every window in one call, so it could neither report progress per batch nor
stop or pause between batches, which the widgets need; the loop around the two
pieces is a dozen lines. Probabilities, not logits, are blended, so the
channels of the result sum to 1 like those of the 2D path.
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
    InferenceSettings,
    inference_settings,
    load_checkpoint,
    model_from_checkpoint,
)
from napari_boundary_seg.core.data import PreprocessConfig, case_from_arrays, preprocess_case
from napari_boundary_seg.core.device import resolve_device
from napari_boundary_seg.core.orientation import canonical_orientation
from napari_boundary_seg.core.progress import Progress, run_to_end

logger = logging.getLogger(__name__)

__all__ = [
    "select_modalities",
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
) -> tuple[nn.Module, InferenceSettings]:
    """The model and how to apply it: the checkpoint's settings, or a bare model's own."""
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
    if settings.dims == 3:
        if patch_size is not None:
            settings = settings.replace(patch_size=tuple(patch_size))
        if settings.patch_size is None:
            raise ValueError("a 3D model needs a patch_size (the sliding window's size)")
        settings = settings.replace(patch_size=_check_patch(settings.patch_size, 3))
    return model, settings


def _check_patch(patch_size: Sequence[int], ndim: int) -> tuple[int, ...]:
    patch = tuple(patch_size)
    if len(patch) != ndim or not all(
        isinstance(p, int | np.integer) and not isinstance(p, bool) and p >= 1 for p in patch
    ):
        raise ValueError(
            f"patch_size must be {ndim} positive integers (voxels per axis), got {patch_size!r}"
        )
    return tuple(int(p) for p in patch)


def _as_channels(
    volume: np.ndarray, in_channels: int, spacing: Sequence[float] | None, dims: int = 2
) -> np.ndarray:
    """``volume`` as ``(M, *spatial)``: add the channel axis when it is missing."""
    volume = np.asarray(volume)
    if volume.ndim == 4:
        has_channels = True
    elif volume.ndim == 2:
        has_channels = False
    elif volume.ndim == 3:
        if dims == 3:
            has_channels = False  # a 3D model takes 3 spatial axes
        elif spacing is not None:
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


def _target_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        return _model_device(model)
    return device if isinstance(device, torch.device) else resolve_device(device)


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def iter_sliding_window(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    sigma_scale: float = 0.125,
) -> Generator[Progress, None, torch.Tensor]:
    """Softmax probabilities of a whole image from overlapping windows, Gaussian-weighted.

    The windows (``patch_size``, stepping ``int(patch * (1 - overlap))`` voxels,
    the last one flush with the far edge: MONAI's ``dense_patch_slices``) run
    through ``model`` ``sw_batch_size`` at a time on the model's device; each
    window's softmax probabilities are weighted by a Gaussian centred on the
    window (sigma ``sigma_scale * patch`` per axis, floored at 1e-3 of its peak:
    MONAI's ``compute_importance_map(mode="gaussian")``) and the weighted sums
    are divided by the summed weights, so the channels still sum to 1. An axis
    shorter than the window is zero-padded on both sides (half each) and the
    result cropped back. The model is used as it is (call ``.eval()`` first).

    Parameters
    ----------
    model
        Takes ``(B, M, *patch_size)`` and returns ``(B, C, *patch_size)`` logits.
    image
        ``(M, *spatial)`` preprocessed input, any number of spatial axes.
    patch_size
        Window size per spatial axis (voxels).
    overlap
        Share of a window that overlaps the next one along each axis, in [0, 1).
    sw_batch_size
        Windows per forward pass.
    sigma_scale
        Gaussian sigma as a share of the window size.

    Yields
    ------
    Progress
        Once before the first batch, then after each batch of windows.

    Returns
    -------
    torch.Tensor
        ``(C, *spatial)`` float32 probabilities on the model's device.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices

    if not isinstance(overlap, int | float) or not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")
    _check_count("sw_batch_size", sw_batch_size)
    spatial = tuple(image.shape[1:])
    patch = _check_patch(patch_size, len(spatial))
    target = _model_device(model)
    with torch.inference_mode():
        x = torch.as_tensor(image, dtype=torch.float32).to(target)[None]  # (1, M, *spatial)
        pads = [
            (max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2)
            for s, p in zip(spatial, patch, strict=True)
        ]
        if any(b or a for b, a in pads):
            x = F.pad(x, [v for pair in reversed(pads) for v in pair])
        padded = tuple(x.shape[2:])
        interval = [
            p if p == s else max(int(p * (1 - overlap)), 1)
            for s, p in zip(padded, patch, strict=True)
        ]
        windows = dense_patch_slices(padded, patch, interval)
        weight = compute_importance_map(
            patch, mode="gaussian", sigma_scale=sigma_scale, device=target
        )
    total = -(-len(windows) // sw_batch_size)
    yield Progress(0, total, f"predicting {len(windows)} windows")
    out: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    for b, start in enumerate(range(0, len(windows), sw_batch_size)):
        chunk = windows[start : start + sw_batch_size]
        with torch.inference_mode():
            batch = torch.cat([x[(slice(None), slice(None), *w)] for w in chunk])
            probs = torch.softmax(model(batch).float(), dim=1) * weight
            if out is None:
                out = torch.zeros((probs.shape[1], *padded), device=target)
                norm = torch.zeros(padded, device=target)
            for k, w in enumerate(chunk):
                out[(slice(None), *w)] += probs[k]
                norm[w] += weight
        yield Progress(b + 1, total, f"windows {start + len(chunk)}/{len(windows)}")
    with torch.inference_mode():
        result = out / norm
        crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial, strict=True))
        return result[(slice(None), *crop)].contiguous()


def _iter_predict_3d(
    model: nn.Module,
    volume: np.ndarray,
    spacing: Sequence[float] | None,
    settings: InferenceSettings,
    device: str | torch.device | None,
    overlap: float,
    sw_batch_size: int,
    affine: np.ndarray | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The 3D path: orientation and intensity preprocessing as in training, then
    :func:`iter_sliding_window`, then back to the stored order."""
    in_channels = int(getattr(model, "in_channels", 1))
    images = _as_channels(volume, in_channels, spacing, dims=3)
    if images.ndim != 4:
        raise ValueError(
            f"a 3D model needs a volume with 3 spatial axes, got shape {np.shape(volume)}"
        )
    if spacing is None:
        spacing = (1.0,) * 3
    # the training code's orientation and scaling; no slicing, no resizing
    orientation = canonical_orientation(affine if settings.preprocess.canonical else None)
    images = np.ascontiguousarray(orientation.to_canonical(images, lead=1))
    prep = dataclasses.replace(
        settings.preprocess,
        slice_size=None,
        slice_spacing=None,
        axis=0,
        canonical=False,
        crop=False,
    )
    case = case_from_arrays(list(images), None, orientation.spacing(spacing), case_id="predict")
    scaled = np.swapaxes(preprocess_case(case, prep).images, 0, 1)  # (M, *spatial)
    target = _target_device(model, device)
    original_device = _model_device(model)
    was_training = model.training
    model.to(target).eval()
    try:
        probs = yield from iter_sliding_window(
            model, scaled, settings.patch_size, overlap=overlap, sw_batch_size=sw_batch_size
        )
    finally:
        model.to(original_device)
        model.train(was_training)
    probs_vol = orientation.from_canonical(probs.cpu().numpy(), lead=1)
    probs_vol = np.ascontiguousarray(probs_vol, dtype=np.float32)
    labels = probs_vol.argmax(axis=0).astype(np.int64)
    return probs_vol, labels


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
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """:func:`predict_volume` as a generator yielding ``Progress`` per batch.

    Returns ``(probs, labels)``; arguments as :func:`predict_volume`.
    """
    model, settings = _resolve(model_or_checkpoint, preprocess, patch_size)
    _check_count("batch_size", batch_size)
    if settings.dims == 3:
        return (
            yield from _iter_predict_3d(
                model, volume, spacing, settings, device, overlap, sw_batch_size, affine
            )
        )
    prep = settings.preprocess
    if slice_size is not None:
        prep = dataclasses.replace(prep, slice_size=slice_size)
    in_channels = int(getattr(model, "in_channels", 1))
    images = _as_channels(volume, in_channels, spacing)
    spatial = images.shape[1:]
    if spacing is None:
        spacing = (1.0,) * len(spatial)
    orientation = canonical_orientation(affine if prep.canonical else None, len(spatial))
    if axis is not None:  # a stored axis of ``volume``: the same axis in the working order
        axis = int(axis) % len(spatial)
        prep = dataclasses.replace(prep, axis=orientation.perm.index(axis))
    target = _target_device(model, device)
    original_device = _model_device(model)
    was_training = model.training
    case = case_from_arrays(list(images), None, spacing, affine, case_id="predict")
    prepared = preprocess_case(case, prep)
    slices = prepared.images  # (D, M, h, w)
    native = tuple(prepared.native_hw)  # (H, W) of the slices before resizing
    n = slices.shape[0]
    total = -(-n // batch_size)
    out = np.empty((0,), dtype=np.float32)
    yield Progress(0, total, "predicting slices")
    try:
        model.to(target).eval()
        for b, start in enumerate(range(0, n, batch_size)):
            # inference mode only around the forward pass: never across a yield, where
            # the caller's thread would otherwise run in inference mode too
            with torch.inference_mode():
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
    # (D, C, H, W) -> (C, *spatial) in the working order -> the stored order
    probs_vol = np.moveaxis(out, 0, 1)  # (C, D, H, W)
    if prepared.axis is None:
        probs_vol = probs_vol[:, 0]
    else:
        probs_vol = np.moveaxis(prepared.paste(probs_vol), 1, 1 + prepared.axis)
        if prepared.orientation is not None:
            probs_vol = prepared.orientation.from_canonical(probs_vol, lead=1)
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
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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
    affine
        ``(4, 4)`` voxel-to-world matrix of ``volume``: a model trained in the
        canonical orientation sees the volume reoriented (and its output is
        brought back to the stored order). ``None``: the stored order is taken
        as canonical.
    sw_batch_size
        3D: windows per forward pass.

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
            patch_size=patch_size,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            affine=affine,
        )
    )
