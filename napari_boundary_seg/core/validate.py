"""Checks of arguments and sizes, shared by the command line and the library.

Each check raises ``ValueError`` (``TypeError`` for a wrong type) with one line
naming the argument as the caller knows it (``--epochs`` on the command line,
``epochs`` in the library) and the offending value, before any work is done.
Size checks estimate what a request would allocate and refuse what cannot fit,
instead of letting the allocator fail half-way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_boundary_seg.core.io import available_memory

__all__ = [
    "MAX_UNET_DEPTH",
    "MAX_UNET_PARAMETERS",
    "SYNTH_BYTES_PER_VOXEL",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_slice_spacing",
    "check_synth_size",
    "check_unet_fits",
    "check_unet_size",
    "unet_parameter_count",
]

MAX_UNET_DEPTH = 12
"""Deepest UNet accepted: 11 poolings already need slices of 2048 pixels."""

MAX_UNET_PARAMETERS = 2**30
"""Largest UNet accepted (4 GiB of float32 weights; the paper's UNet has about 3e7)."""

SYNTH_BYTES_PER_VOXEL = 200
"""Peak memory of ``synth`` per voxel of the requested shape, rounded up from the
maximum resident size measured on 48³ and 96³ phantom cases (about 170 bytes)."""


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int; TypeError if it is not an integer (a bool or a string is
    not), ValueError if it is outside ``[low, high]``; ``name`` as the user typed it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            bound = f">= {low}"
        elif low is None:
            bound = f"<= {high}"
        else:
            bound = f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {bound}, got {value}")
    return value


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``low`` excluded with
    ``low_open``, ``high`` with ``high_open``); TypeError / ValueError naming
    ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        bound = " and ".join(parts) if parts else "finite"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def check_bool(value: Any, name: str, optional: bool = False) -> bool | None:
    """``value`` if it is True or False (or None with ``optional``), else ValueError."""
    if value is None and optional:
        return None
    if not isinstance(value, bool | np.bool_):
        allowed = "True, False or None" if optional else "True or False"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return bool(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices`` (a bool is not an int), else ValueError."""
    if isinstance(value, bool) != any(isinstance(c, bool) for c in choices) or value not in choices:
        words = [str(c) for c in choices]
        shown = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
        raise ValueError(f"{name} must be {shown}, got {value!r}")
    return value


def check_slice_spacing(value: Any, what: str = "slice_spacing") -> tuple[float, float]:
    """``value`` as a ``(row, column)`` spacing in mm (one number: both), else ValueError."""
    try:
        values = [float(value)] * 2 if np.isscalar(value) else [float(v) for v in value]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{what} must be one or two positive numbers (mm), got {value!r}")
    return values[0], values[1]


def unet_parameter_count(
    in_channels: int, num_classes: int, depth: int, base_channels: int, spatial_dims: int = 2
) -> int:
    """Number of parameters of :class:`~napari_boundary_seg.core.unet.UNet` (transposed
    upsampling with isotropic strides, the largest case), computed without building it."""
    widths = [base_channels * 2**level for level in range(depth)]
    k = 3**spatial_dims  # a 3x3 (3x3x3) convolution
    up = 2**spatial_dims  # a 2x2 (2x2x2) transposed convolution
    total, previous = 0, in_channels
    for width in widths:  # encoder blocks: two convs without bias, two batch norms
        total += k * previous * width + k * width * width + 4 * width
        previous = width
    for level in range(depth - 1):  # decoder: transposed conv, block on the concatenation
        w, below = widths[level], widths[level + 1]
        total += up * below * w + w
        total += k * 2 * w * w + k * w * w + 4 * w
    total += widths[0] * num_classes + num_classes
    return total


def check_unet_size(
    depth: Any,
    base_channels: Any,
    in_channels: int = 1,
    num_classes: int = 2,
    names: tuple[str, str] = ("depth", "base_channels"),
    source: str = "",
    spatial_dims: int = 2,
) -> int:
    """Refuse a UNet that cannot be built: deeper than :data:`MAX_UNET_DEPTH` or
    with more than :data:`MAX_UNET_PARAMETERS` parameters (checked before any
    allocation). Returns the parameter count. ``names`` are the two arguments as
    the caller knows them; ``source`` (a checkpoint) starts the message."""
    where = f"{source}: " if source else ""
    depth = check_int(depth, f"{where}{names[0]}", 1, MAX_UNET_DEPTH)
    base_channels = check_int(base_channels, f"{where}{names[1]}", 1)
    count = unet_parameter_count(in_channels, num_classes, depth, base_channels, spatial_dims)
    if count > MAX_UNET_PARAMETERS:
        raise ValueError(
            f"{where}a UNet of {names[0]} {depth} and {names[1]} {base_channels} would have "
            f"{count:.3g} parameters, more than the {MAX_UNET_PARAMETERS:.3g} allowed"
        )
    return count


def check_unet_fits(depth: int, size: Sequence[int] | int, name: str = "depth") -> None:
    """Refuse a UNet whose ``depth - 1`` poolings do not fit the input: its slices of
    ``size`` pixels must be at least ``2 ** (depth - 1)`` wide."""
    sizes = [int(size)] if isinstance(size, int | np.integer) else [int(s) for s in size]
    need = 2 ** (int(depth) - 1)
    if sizes and max(sizes) < need:
        shape = "x".join(str(s) for s in sizes)
        raise ValueError(
            f"{name} {depth} needs slices of at least {need} pixels ({depth - 1} poolings) "
            f"but the slices are {shape}: use a smaller {name}"
        )


def check_synth_size(shape: Sequence[int], name: str = "shape") -> None:
    """Refuse a synthetic volume whose estimated peak memory
    (:data:`SYNTH_BYTES_PER_VOXEL` per voxel) exceeds the memory available."""
    voxels = math.prod(int(s) for s in shape)
    need = voxels * SYNTH_BYTES_PER_VOXEL
    free = available_memory()
    if free is not None and need > free:
        shown = " ".join(str(int(s)) for s in shape)
        raise ValueError(
            f"{name} {shown}: {voxels:.3g} voxels need about {need / 2**30:.3g} GiB of memory, "
            f"more than the {free / 2**30:.3g} GiB available"
        )
