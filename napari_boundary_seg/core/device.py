"""Torch devices by name: what is available here and which one a name means.

Shared by training, inference and the widgets' device choice, so that
:mod:`napari_boundary_seg.core.train` and :mod:`napari_boundary_seg.core.predict`
need not import each other for it.
"""

from __future__ import annotations

import torch

from napari_boundary_seg.core.config import DEVICE_KINDS, check_device_name

__all__ = ["DEVICE_KINDS", "available_devices", "check_device_name", "resolve_device"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Devices usable here, best first among accelerators, ``"cpu"`` last.

    Returns
    -------
    list of str
        e.g. ``["cuda", "cuda:0", "cpu"]``, ``["mps", "cpu"]`` or ``["cpu"]``.
    """
    out: list[str] = []
    if torch.cuda.is_available():
        out.append("cuda")
        out.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    if _mps_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a device name.

    ``"auto"`` picks CUDA, then MPS, then CPU. A requested device that is not
    available raises ValueError naming it and what is available.
    """
    check_device_name(name)
    available = available_devices()
    if name == "auto":
        return torch.device(available[0])
    if name not in available:
        raise ValueError(f"device {name!r} is not available here; available: {available}")
    return torch.device(name)
