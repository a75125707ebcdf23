"""Numerical precision of a training run: ``"32"``, ``"bf16"`` or ``"16-mixed"``.

The network runs under :func:`torch.autocast` at the chosen precision; the
losses never do: the trainer casts the logits to float32 and computes softmax,
GDL, the boundary term, CE and Dice with autocast disabled (``φ·s`` summed over
millions of voxels in float16 or bfloat16 would lose the small lesions).

========  ==========================  ============================  ==========================
value     CPU                         CUDA                          MPS
========  ==========================  ============================  ==========================
``32``    float32                     float32 (cuDNN may use TF32   float32
                                      for convolutions, torch's
                                      default)
``bf16``  bfloat16 autocast, no       bfloat16 autocast, no         bfloat16 autocast, no
          gradient scaling            gradient scaling (GPUs with   gradient scaling (torch
                                      bfloat16: Ampere and later)   and macOS must support it)
``16-     not supported: runs in      float16 autocast +            float16 autocast +
mixed``   float32 and says so         ``GradScaler``                ``GradScaler``
========  ==========================  ============================  ==========================
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from napari_boundary_seg.core.config import PRECISIONS, check_precision

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "PrecisionPlan",
    "autocast",
    "check_precision",
    "float32_region",
    "make_scaler",
    "memory_format",
    "plan_precision",
]


class PrecisionPlan(NamedTuple):
    """What a precision does on a device.

    ``dtype``: the autocast dtype of the network (``None``: float32, no
    autocast); ``scaler``: whether float16 gradients are scaled; ``note``: a
    message when the request was changed on this device (else ``""``).
    """

    dtype: torch.dtype | None
    scaler: bool
    note: str = ""


def plan_precision(precision: str, device: torch.device) -> PrecisionPlan:
    """What ``precision`` does on ``device`` (see the module's table).

    Raises
    ------
    ValueError
        For an unknown precision, or ``"bf16"`` on a CUDA device without
        bfloat16 support.
    """
    check_precision(precision)
    if precision == "32":
        return PrecisionPlan(None, False)
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"precision 'bf16' needs a GPU with bfloat16 support; {device} has none "
                "(use '16-mixed')"
            )
        return PrecisionPlan(torch.bfloat16, False)
    if device.type in ("cuda", "mps"):
        return PrecisionPlan(torch.float16, True)
    return PrecisionPlan(
        None,
        False,
        f"precision '16-mixed' is for CUDA and MPS; running in float32 on {device} "
        "(use 'bf16' for reduced precision on the CPU)",
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast at ``dtype`` on ``device``'s kind; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def float32_region(device: torch.device) -> Iterator[None]:
    """A region where autocast is off (the losses run here, in float32)."""
    if not torch.amp.is_autocast_available(device.type):  # pragma: no cover - exotic devices
        yield
        return
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def make_scaler(plan: PrecisionPlan, device: torch.device) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for float16 on ``device`` when the plan needs one."""
    return torch.amp.GradScaler(device.type) if plan.scaler else None


def memory_format(model: nn.Module) -> torch.memory_format:
    """``channels_last`` for a 2D network, ``channels_last_3d`` for a 3D one."""
    is_3d = any(p.ndim == 5 for p in model.parameters())
    return torch.channels_last_3d if is_3d else torch.channels_last
