"""Reading a bioimage.io model package: checks before any work, then a predictor.

A package (a zip holding ``rdf.yaml``, spec 0.5, as :mod:`~napari_boundary_seg.core.export`
writes it) is read with :func:`read_package`, which refuses, naming the field,
a package whose ``type`` is not ``model``, whose ``format_version`` is not a
0.5 version, whose weights are none of TorchScript, ONNX or an embedded
checkpoint of this package, whose files are missing from the zip, or whose
input and output axes do not fit the network described in
``config.napari_boundary_seg``. Nothing is loaded or run before these checks.

:meth:`ModelPackage.predictor` gives ``(network, settings)`` for
:func:`~napari_boundary_seg.core.predict.predict_volume`: the TorchScript
weights (else the ONNX ones through ONNX Runtime, else the embedded checkpoint)
wrapped so that any slice or window size works, and a checkpoint-shaped dict
without weights that carries the training preprocessing the spec cannot
express (volume-wise intensity normalisation in the head mask, canonical
reorientation, slicing axis and size, 3D patch and overlap).
:meth:`ModelPackage.checkpoint` reads the embedded checkpoint for fine-tuning
with ``torch.load(weights_only=True)``. Nothing in a package is executed
except its weights by their runtimes (TorchScript, ONNX Runtime).

See docs/DESIGN.md, "Model packages".
"""

from __future__ import annotations

import importlib
import io
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_MEMBER",
    "CONFIG_KEY",
    "EXPORT_EXTRA",
    "ModelPackage",
    "PackageError",
    "is_model_package",
    "open_model",
    "read_package",
    "require",
]

CONFIG_KEY = "napari_boundary_seg"
"""Key under the RDF's ``config`` holding this package's settings."""
CHECKPOINT_MEMBER = "checkpoint.pt"
"""Name of the embedded checkpoint (an attachment) inside a package."""
EXPORT_EXTRA = "pip install 'napari-boundary-seg[export]'"
"""How to install what export and the ONNX path need."""
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
WEIGHT_FORMATS = ("torchscript", "onnx")
"""Weight formats read, in order of preference for prediction."""
SPEC_VERSION = re.compile(r"^0\.5\.\d+$")
_MAX_RDF_BYTES = 1 << 20


class PackageError(ValueError):
    """A model package that cannot be used; the message names the file and the field."""


def require(module: str, package: str | None = None, purpose: str = "this") -> ModuleType:
    """Import an optional dependency, or say which package is missing and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module
        raise ImportError(
            f"{purpose} needs the '{name}' package, which is not installed "
            f"({EXPORT_EXTRA}, or pip install {name}): {exc}"
        ) from exc


def _rdf_name(archive: zipfile.ZipFile) -> str | None:
    names = set(archive.namelist())
    for name in RDF_NAMES:
        if name in names:
            return name
    found = [n for n in names if "/" not in n and n.endswith(".bioimageio.yaml")]
    return found[0] if len(found) == 1 else None


def is_model_package(path: str | os.PathLike) -> bool:
    """True for a zip holding a bioimage.io description (``rdf.yaml``); a
    checkpoint (``torch.save`` writes zips too) is not one."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return _rdf_name(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _axis_kind(axis: Any) -> str:
    return str(axis.get("type", "")) if isinstance(axis, Mapping) else ""


def _channel_count(axis: Mapping[str, Any]) -> int:
    names = axis.get("channel_names")
    return len(names) if isinstance(names, list) else -1


def size_multiples(hparams: Mapping[str, Any]) -> tuple[int, ...]:
    """Per spatial axis, the size the network's poolings divide (from its hparams)."""
    dims = int(hparams.get("spatial_dims", 2))
    strides = hparams.get("strides")
    if not strides:
        return (2 ** (int(hparams.get("depth", 4)) - 1),) * dims
    levels = [s if isinstance(s, list | tuple) else [s] * dims for s in strides]
    return tuple(math.prod(int(level[a]) for level in levels) for a in range(dims))


class _PaddedNetwork(nn.Module):
    """A packaged network taking any spatial size: zero-pads each axis to the
    multiple the network needs and crops its logits back, like the UNet itself."""

    def __init__(self, net: nn.Module, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.in_channels = int(hparams["in_channels"])
        self.num_classes = int(hparams["num_classes"])
        self.spatial_dims = int(hparams.get("spatial_dims", 2))
        self.multiples = size_multiples(hparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        pads = [-s % m for s, m in zip(spatial, self.multiples, strict=True)]
        if any(pads):
            x = F.pad(x, [v for p in reversed(pads) for v in (0, p)])
        logits = self.net(x)
        if any(pads):
            logits = logits[(..., *(slice(0, s) for s in spatial))]
        return logits


class _OnnxNetwork(nn.Module):
    """ONNX weights run by ONNX Runtime on the CPU, as a module returning logits."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        ort = require("onnxruntime", purpose="ONNX weights")
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)


@dataclass(frozen=True)
class ModelPackage:
    """A checked model package; see :func:`read_package`."""

    path: Path
    rdf: dict[str, Any]
    settings: dict[str, Any]
    weights: dict[str, str]  # format -> member of the zip, in WEIGHT_FORMATS order
    checkpoint_member: str | None

    @property
    def name(self) -> str:
        return str(self.rdf.get("name", self.path.name))

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.settings["model"])

    @property
    def dims(self) -> int:
        return int(self.settings["dims"])

    @property
    def in_channels(self) -> int:
        return int(self.settings["model"]["in_channels"])

    @property
    def modalities(self) -> list[str]:
        return [str(m) for m in self.settings.get("modalities") or []]

    @cached_property
    def inference_checkpoint(self) -> dict[str, Any]:
        """A checkpoint-shaped dict without weights: what
        :func:`~napari_boundary_seg.core.checkpoint.inference_settings` and the
        modality matching read."""
        keys = ("config", "dims", "patch_size", "model", "modalities", "versions")
        return {k: self.settings.get(k) for k in keys}

    def _read(self, member: str) -> bytes:
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(member)

    def check_fits(self, spatial_ndim: int, channels: int | None = None, what: str = "") -> None:
        """Refuse a scan the package's input axes do not fit (before any work)."""
        where = f"{what}: " if what else ""
        if self.dims == 3 and spatial_ndim != 3:
            raise PackageError(
                f"{where}{self.path}: inputs[0].axes are 3D (z, y, x) but the scan has "
                f"{spatial_ndim} spatial axes"
            )
        if spatial_ndim not in (2, 3):
            raise PackageError(f"{where}expected a 2D or 3D scan, got {spatial_ndim} axes")
        if channels is not None and channels != self.in_channels:
            raise PackageError(
                f"{where}{self.path}: inputs[0].axes channel takes {self.in_channels} "
                f"modalities ({', '.join(self.modalities)}), the scan has {channels}"
            )

    def predictor(self, weights: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """``(network, checkpoint-shaped settings)`` for ``predict_volume``.

        ``weights``: ``"torchscript"``, ``"onnx"`` or ``"checkpoint"``; default:
        the first of those the package has.
        """
        order = [*self.weights, *(["checkpoint"] if self.checkpoint_member else [])]
        if weights is None:
            weights = order[0]
        if weights not in order:
            raise PackageError(f"{self.path}: weights.{weights} is not in the package ({order})")
        if weights == "checkpoint":
            from napari_boundary_seg.core.checkpoint import model_from_checkpoint

            return model_from_checkpoint(self.checkpoint(), str(self.path)), dict(
                self.inference_checkpoint
            )
        data = self._read(self.weights[weights])
        if weights == "torchscript":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # the spec's format
                    net = torch.jit.load(io.BytesIO(data), map_location="cpu")
            except Exception as exc:  # torch raises several types for broken archives
                raise PackageError(
                    f"{self.path}: weights.torchscript is not loadable TorchScript: {exc}"
                ) from exc
        else:
            net = _OnnxNetwork(data)
        model = _PaddedNetwork(net, self.hparams).eval()
        return model, dict(self.inference_checkpoint)

    def checkpoint_file(self, folder: str | os.PathLike) -> Path:
        """The embedded checkpoint as a file in ``folder`` (fine-tuning takes a
        path): checked with ``weights_only=True`` first, written atomically once
        per package content (its name carries the content's hash)."""
        import hashlib

        from napari_boundary_seg.core.checkpoint import save_checkpoint

        checkpoint = self.checkpoint()
        data = self._read(str(self.checkpoint_member))
        digest = hashlib.sha256(data).hexdigest()[:12]
        path = Path(folder) / f"{self.path.stem}-{digest}.pt"
        if not path.is_file():
            Path(folder).mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, checkpoint)
        return path

    def checkpoint(self) -> dict[str, Any]:
        """The embedded checkpoint (fine-tuning), read with ``weights_only=True``."""
        from napari_boundary_seg.core.checkpoint import read_checkpoint

        if self.checkpoint_member is None:
            raise PackageError(
                f"{self.path} has no embedded checkpoint ({CHECKPOINT_MEMBER}): it can predict "
                "but not be fine-tuned"
            )
        with tempfile.TemporaryDirectory(prefix="nbs-package-") as tmp:
            path = Path(tmp) / CHECKPOINT_MEMBER
            path.write_bytes(self._read(self.checkpoint_member))
            try:
                return read_checkpoint(path)
            except ValueError as exc:
                raise PackageError(f"{self.path}: embedded {CHECKPOINT_MEMBER}: {exc}") from exc


def _source_member(entry: Any, field: str, names: set[str], path: Path) -> str:
    source = entry.get("source") if isinstance(entry, Mapping) else None
    if not isinstance(source, str) or not source:
        raise PackageError(f"{path}: {field}.source is missing")
    member = source.removeprefix("./")
    if member not in names:
        raise PackageError(
            f"{path}: {field}.source {source!r} is not a file of the package "
            "(only files inside the zip are read)"
        )
    return member


def _check_axes(rdf: Mapping[str, Any], settings: Mapping[str, Any], path: Path) -> None:
    dims = settings["dims"]
    hparams = settings["model"]
    for kind, count_key in (("inputs", "in_channels"), ("outputs", "num_classes")):
        tensors = rdf.get(kind)
        if not isinstance(tensors, list) or len(tensors) != 1:
            raise PackageError(f"{path}: {kind} must describe exactly one tensor")
        axes = tensors[0].get("axes") if isinstance(tensors[0], Mapping) else None
        kinds = [_axis_kind(a) for a in axes] if isinstance(axes, list) else []
        if kinds != ["batch", "channel", *(["space"] * int(dims))]:
            raise PackageError(
                f"{path}: {kind}[0].axes are {kinds or axes!r}; a {dims}D model of this "
                f"package takes batch, channel and {dims} space axes"
            )
        if _channel_count(axes[1]) != int(hparams[count_key]):
            raise PackageError(
                f"{path}: {kind}[0].axes channel has {_channel_count(axes[1])} channels, "
                f"the network {hparams[count_key]} ({count_key})"
            )


def _check_settings(rdf: Mapping[str, Any], path: Path) -> dict[str, Any]:
    config = rdf.get("config")
    settings = config.get(CONFIG_KEY) if isinstance(config, Mapping) else None
    field = f"config.{CONFIG_KEY}"
    if not isinstance(settings, Mapping):
        raise PackageError(
            f"{path}: {field} is missing: the package does not say how its scans were "
            "preprocessed (only packages exported by napari-boundary-seg are read)"
        )
    for key, kind in (("model", Mapping), ("config", Mapping), ("dims", int)):
        if not isinstance(settings.get(key), kind):
            raise PackageError(f"{path}: {field}.{key} is missing or malformed")
    from napari_boundary_seg.core.checkpoint import training_mode

    try:
        training_mode(settings)
    except ValueError as exc:
        raise PackageError(f"{path}: {field}: {exc}") from exc
    hparams = settings["model"]
    for key in ("in_channels", "num_classes"):
        value = hparams.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PackageError(f"{path}: {field}.model.{key} must be a positive integer")
    return dict(settings)


def read_package(path: str | os.PathLike) -> ModelPackage:
    """Open and check a model package (nothing is loaded or run).

    Raises
    ------
    FileNotFoundError
        No such file.
    PackageError
        Not a zip, no ``rdf.yaml``, ``type`` not ``model``, an unknown
        ``format_version``, no TorchScript/ONNX/checkpoint weights, a file named
        by the description missing from the zip, no
        ``config.napari_boundary_seg``, or input/output axes that do not fit its
        network; the message names the field.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model package: {path}")
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise PackageError(f"{path} is not a model package (not a zip file)")
    try:
        with zipfile.ZipFile(path) as archive:
            rdf_name = _rdf_name(archive)
            if rdf_name is None:
                raise PackageError(f"{path} is not a model package (no rdf.yaml in the zip)")
            if archive.getinfo(rdf_name).file_size > _MAX_RDF_BYTES:
                raise PackageError(f"{path}: {rdf_name} is larger than 1 MiB")
            text = archive.read(rdf_name).decode("utf-8")
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise PackageError(f"{path} is not a readable model package: {exc}") from exc
    try:
        rdf = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PackageError(f"{path}: {rdf_name} is not valid YAML: {exc}") from exc
    if not isinstance(rdf, dict):
        raise PackageError(f"{path}: {rdf_name} is not a mapping")
    if rdf.get("type") != "model":
        raise PackageError(f"{path}: type is {rdf.get('type')!r}, not 'model'")
    version = str(rdf.get("format_version", ""))
    if not SPEC_VERSION.match(version):
        raise PackageError(
            f"{path}: format_version {version!r} is not supported (bioimage.io model spec 0.5.x)"
        )
    entries = rdf.get("weights")
    if not isinstance(entries, Mapping):
        raise PackageError(f"{path}: weights is missing")
    weights = {
        fmt: _source_member(entries[fmt], f"weights.{fmt}", names, path)
        for fmt in WEIGHT_FORMATS
        if entries.get(fmt) is not None
    }
    settings = _check_settings(rdf, path)
    member = settings.get("checkpoint")
    checkpoint = None
    if member is not None:
        checkpoint = _source_member(
            {"source": member}, f"config.{CONFIG_KEY}.checkpoint", names, path
        )
    if not weights and checkpoint is None:
        found = sorted(k for k, v in entries.items() if v is not None)
        raise PackageError(
            f"{path}: weights are {found}; readable are TorchScript, ONNX or an embedded "
            "napari-boundary-seg checkpoint"
        )
    _check_axes(rdf, settings, path)
    return ModelPackage(path, rdf, settings, weights, checkpoint)


def open_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(network, checkpoint)`` of a checkpoint file or a model package, for
    :func:`~napari_boundary_seg.core.predict.predict_volume`: a package gives its
    TorchScript network and a checkpoint-shaped dict of its settings."""
    if is_model_package(path):
        return read_package(path).predictor()
    from napari_boundary_seg.core.checkpoint import load_checkpoint

    return load_checkpoint(path)
