"""The checkpoint format: what a checkpoint holds, how it is written and read.

A checkpoint is a ``torch.save`` of plain data (dicts, lists, numbers, strings,
tensors), never of modules; it is read back with ``torch.load(weights_only=True)``
so that no code is unpickled, and written atomically (temporary file in the
folder, then rename). Its keys (version 2):

``format`` (:data:`CHECKPOINT_FORMAT`), ``format_version``, ``model`` (the
UNet's ``hparams``), ``model_state``, ``optimizer_state``, ``lr_state``,
``scaler_state``, ``config`` (``TrainConfig.to_dict()``), ``dims`` (2: slices,
3: patches), ``patch_size`` (tuple of voxels per axis in 3D, None in 2D),
``schedule``, ``position {epoch, step}``, ``partial``, ``history``, ``seed``,
``rng_state``, ``versions``, ``modalities``, ``train_cases``, ``val_cases``,
``parent``, ``created``.

Version 1 (before 3D training) has no ``dims`` and ``patch_size`` and its
``model`` no ``spatial_dims`` and ``strides``: it reads as a 2D model
(``dims=2``, ``patch_size=None``), and its UNet rebuilds with the same weights.

Trainer, inference, fine-tuning, the CLI and the widgets all read checkpoints
through this module; it imports neither :mod:`~napari_boundary_seg.core.train`
nor :mod:`~napari_boundary_seg.core.predict`, so that those two do not import
each other.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_boundary_seg import __version__
from napari_boundary_seg.core.data import PreprocessConfig
from napari_boundary_seg.core.io import atomic_path
from napari_boundary_seg.core.unet import UNet

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "InferenceSettings",
    "checkpoint_modalities",
    "inference_settings",
    "library_versions",
    "load_checkpoint",
    "model_from_checkpoint",
    "preprocess_from_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "training_mode",
]

CHECKPOINT_FORMAT = "napari-boundary-seg.checkpoint"
"""Value of the ``"format"`` key of every checkpoint this package writes."""
CHECKPOINT_VERSION = 2
"""Version of the checkpoint layout; 2 adds ``dims`` and ``patch_size``."""

_REQUIRED_KEYS = ("model", "model_state", "config")


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # torch's weights-only refusal buries the cause in its text
        if "Unpickler error" in line:
            return line
    return lines[0] if lines else type(exc).__name__


def library_versions() -> dict[str, str]:
    """Versions recorded in checkpoints (``versions``)."""
    return {
        "napari_boundary_seg": __version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> Path:
    """Write a checkpoint dict atomically (temporary file in the folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint file written by the trainer, as a plain dict.

    Loaded with ``torch.load(weights_only=True)``: no code is unpickled.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not readable by torch (corrupt, truncated, not a checkpoint)
        or is not a napari-boundary-seg checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file (e.g. best.pt)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for broken files
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupt or foreign file): {_reason(exc)}"
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a napari-boundary-seg checkpoint (no '{CHECKPOINT_FORMAT}' format key)"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    return checkpoint


def checkpoint_modalities(path: str | os.PathLike) -> list[str]:
    """The modality names a checkpoint was trained on, in channel order; cheap.

    The file is memory-mapped, so its weights are not read. An unreadable file,
    or one without names, gives ``[]``: :func:`read_checkpoint` is what reports
    broken files.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # reported by read_checkpoint when the file is used
        return []
    names = checkpoint.get("modalities") if isinstance(checkpoint, dict) else None
    return [str(n) for n in names] if isinstance(names, list | tuple) else []


def model_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> UNet:
    """Rebuild the UNet of a checkpoint dict and load its weights (on the CPU).

    A version-1 checkpoint (no ``spatial_dims``/``strides`` in ``model``)
    rebuilds the 2D UNet it was trained as.
    """
    hparams = dict(checkpoint["model"])
    try:
        model = UNet(**hparams)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: cannot rebuild the UNet from {hparams}: {exc}") from exc
    try:
        model.load_state_dict(checkpoint["model_state"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{source}: weights do not match the UNet {hparams}: {first}") from exc
    model.eval()
    return model


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[UNet, dict[str, Any]]:
    """Load a trained model and its checkpoint dict.

    Parameters
    ----------
    path
        ``best.pt`` or ``last.pt`` written by :func:`napari_boundary_seg.core.train.train`.
    map_location
        Where to load the tensors (``"cpu"`` by default).

    Returns
    -------
    (model, checkpoint)
        The UNet in eval mode with the saved weights, and the checkpoint dict
        (``config``, ``history``, ``position``, ``versions``, ...).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; unreadable, foreign or mismatching checkpoint (the message
        names the file).
    """
    checkpoint = read_checkpoint(path, map_location)
    model = model_from_checkpoint(checkpoint, str(path))
    return model.to(map_location) if map_location is not None else model, checkpoint


def _check_mode(dims: Any, patch_size: Any, source: str) -> dict[str, Any]:
    if isinstance(dims, bool) or dims not in (2, 3):
        raise ValueError(f"{source}: dims must be 2 or 3, got {dims!r}")
    if patch_size is not None:
        if not isinstance(patch_size, list | tuple) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in patch_size
        ):
            raise ValueError(
                f"{source}: patch_size must be positive integers or None, got {patch_size!r}"
            )
        patch_size = tuple(int(p) for p in patch_size)
        if dims == 3 and len(patch_size) != 3:
            raise ValueError(f"{source}: a 3D patch_size needs 3 values, got {patch_size}")
    if dims == 3 and patch_size is None:
        raise ValueError(f"{source}: dims=3 needs a patch_size")
    return {"dims": int(dims), "patch_size": patch_size}


def training_mode(source: Mapping[str, Any]) -> dict[str, Any]:
    """``{"dims": 2 | 3, "patch_size": tuple | None}`` of a checkpoint or a config dict.

    Read from the checkpoint's own ``dims``/``patch_size`` keys, else from its
    ``config`` (or from ``source`` itself when it is a ``TrainConfig.to_dict()``);
    absent everywhere (a version-1 checkpoint, a 2D config): ``dims=2``,
    ``patch_size=None``. The trainer writes ``**training_mode(config.to_dict())``
    into each checkpoint.

    Raises
    ------
    ValueError
        ``dims`` other than 2 or 3, a bad ``patch_size``, or ``dims=3`` without one.
    """
    config = source.get("config")
    config = config if isinstance(config, Mapping) else source
    dims = source.get("dims", config.get("dims", 2))
    if "dims" in source:
        patch_size = source.get("patch_size")
    else:
        patch_size = config.get("patch_size")
    return _check_mode(dims, patch_size, "checkpoint" if "config" in source else "config")


LEGACY_CONFIG = {
    "normalize": "minmax",
    "canonical": False,
    "slice_spacing": None,
    "crop_to_head": False,
    "steps_per_epoch": None,
    "phi_units": "mm",
    "empty_slice_phi": "distance",
    "lr_decay": "plateau",
    "ema": 0.0,
}
"""What a checkpoint written before these settings existed was trained with: min–max
scaling, slices in stored voxel order, no resampling, 3D epochs of one tiling of
the training volumes (so it also resumes as it trained), φ in mm with its values
on slices without foreground, the last step's weights (no weight average)."""


def checkpoint_config(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's training config as a dict, with :data:`LEGACY_CONFIG` for
    the settings its version did not record (so it predicts as it was trained)."""
    config = dict(checkpoint.get("config") or {})
    for key, value in LEGACY_CONFIG.items():
        config.setdefault(key, value)
    return config


def preprocess_from_checkpoint(checkpoint: Mapping[str, Any]) -> PreprocessConfig:
    """The preprocessing a checkpoint's model was trained with."""
    config = checkpoint_config(checkpoint)
    percentiles = config.get("percentiles")
    spacing = config.get("slice_spacing")
    axis = config.get("axis", 2)
    return PreprocessConfig(
        scale=bool(config.get("scale", True)),
        percentiles=None if percentiles is None else tuple(percentiles),
        slice_size=config.get("slice_size", 256),
        axis=axis if isinstance(axis, str) else int(axis),
        normalize=str(config["normalize"]),
        canonical=bool(config["canonical"]),
        slice_spacing=None if spacing in (None, "auto") else tuple(spacing),
        crop=bool(config["crop_to_head"]),
    )


def checkpoint_native_axis(
    checkpoint: Mapping[str, Any],
    spatial_ndim: int,
    affine: Any = None,
    spacing: Sequence[float] | None = None,
) -> int:
    """The stored axis of a volume (``affine``, ``spacing``) that the checkpoint's
    2D slices are taken along: its plane found through the affine (0 for a 2D image)."""
    from napari_boundary_seg.core.orientation import native_slice_axis

    if spatial_ndim != 3:
        return 0
    prep = preprocess_from_checkpoint(checkpoint)
    if isinstance(prep.axis, int) and not prep.canonical:
        return prep.axis % 3  # a stored axis (checkpoints of earlier versions)
    spacing = tuple(spacing) if spacing is not None else (1.0, 1.0, 1.0)
    return native_slice_axis(affine, spacing, prep.axis)


@dataclass(frozen=True)
class InferenceSettings:
    """How a checkpoint's model is applied to a volume, read from the checkpoint.

    Attributes
    ----------
    dims
        2: slice by slice along ``preprocess.axis``, each slice resized to
        ``preprocess.slice_size``; 3: sliding windows of ``patch_size`` over
        the volume at its own spacing.
    patch_size
        Window size in voxels per spatial axis (numpy order) in 3D; None in 2D.
    preprocess
        Intensity scaling (and, in 2D, slicing axis and slice size) as in training.
    """

    dims: int
    patch_size: tuple[int, ...] | None
    preprocess: PreprocessConfig

    @property
    def axis(self) -> int:
        """The slicing axis (2D)."""
        return self.preprocess.axis

    @property
    def slice_size(self) -> int | None:
        """The network's slice size (2D); None keeps the native size."""
        return self.preprocess.slice_size

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def inference_settings(checkpoint: Mapping[str, Any]) -> InferenceSettings:
    """The :class:`InferenceSettings` a checkpoint's model was trained with.

    Prediction (:func:`napari_boundary_seg.core.predict.iter_predict_volume`),
    the widgets and fine-tuning follow them without being told.
    """
    mode = training_mode(checkpoint)
    patch_size = mode["patch_size"] if mode["dims"] == 3 else None  # 2D: whole slices
    return InferenceSettings(mode["dims"], patch_size, preprocess_from_checkpoint(checkpoint))
