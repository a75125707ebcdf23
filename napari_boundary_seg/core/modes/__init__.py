"""Training modes: the paper's 2D slices (:class:`SliceMode`) and 3D patches (:class:`PatchMode`).

:func:`mode_for` chooses the mode once, from a config, a checkpoint or a
model; the trainer, prediction, the live preview, fine-tuning and the study
then ask it (:class:`~napari_boundary_seg.core.modes.base.TrainingMode`)
instead of testing the number of dimensions. See ``docs/DESIGN.md``, "The modes".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from napari_boundary_seg.core.modes.base import FinetuneSamples, TrainingData, TrainingMode
from napari_boundary_seg.core.modes.patches import PatchMode
from napari_boundary_seg.core.modes.slices import SliceMode

__all__ = [
    "FinetuneSamples",
    "PatchMode",
    "SliceMode",
    "TrainingData",
    "TrainingMode",
    "mode_for",
]

_MODES: dict[int, type[TrainingMode]] = {SliceMode.dims: SliceMode, PatchMode.dims: PatchMode}


def mode_for(source: Any, patch_size: Sequence[int] | None = None) -> TrainingMode:
    """The training mode of ``source``.

    Parameters
    ----------
    source
        A :class:`~napari_boundary_seg.core.train.TrainConfig` or
        :class:`~napari_boundary_seg.core.checkpoint.InferenceSettings` (its
        ``dims`` and ``patch_size``), a checkpoint or config dict
        (:func:`~napari_boundary_seg.core.checkpoint.training_mode`; a
        version-1 checkpoint is 2D), a network (its ``spatial_dims``, 2 when it
        has none), the number of spatial dimensions, or a mode (returned as it is).
    patch_size
        The patch of a 3D mode when ``source`` does not name one (a network, a
        number), or an override.

    Raises
    ------
    ValueError
        Dimensions other than 2 or 3.
    """
    if isinstance(source, TrainingMode):
        return source
    if isinstance(source, nn.Module):
        dims, patch = int(getattr(source, "spatial_dims", 2)), None
    elif isinstance(source, int):
        dims, patch = source, None
    elif isinstance(source, Mapping):
        from napari_boundary_seg.core.checkpoint import training_mode

        mode = training_mode(source)
        dims, patch = mode["dims"], mode["patch_size"]
    else:
        dims, patch = source.dims, getattr(source, "patch_size", None)
    if isinstance(dims, bool) or dims not in _MODES:
        raise ValueError(f"dims must be one of {sorted(_MODES)}, got {dims!r}")
    return _MODES[dims].of(patch_size if patch_size is not None else patch)
