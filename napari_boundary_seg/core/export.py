"""Export a checkpoint as a bioimage.io model package (spec 0.5) with a model card.

:func:`export_package` writes one zip: ``rdf.yaml`` built and saved with
``bioimageio.spec``'s own classes, TorchScript weights (traced from the
checkpoint's UNet) and ONNX weights (their child, opset 17), a test input (one
preprocessed slice, or one patch in 3D, of a real case) and its test output
(the checkpoint's softmax probabilities), a cover image (the slice with the
prediction outlined), the model card ``README.md`` (:func:`model_card`), the
validation curve, and the checkpoint itself without its optimizer state, so
that a package can be fine-tuned.

The spec describes the network's tensors: ``batch, channel, y, x`` (2D, the
slice size fixed when the model was trained on resized slices) or ``batch,
channel, z, y, x`` (3D, the training patch), logits then a ``softmax``
postprocessing. What it cannot express is applied per volume before slicing,
so it is written into ``config.napari_boundary_seg`` (read back by
:mod:`~napari_boundary_seg.core.model_package`) and described in the model
card: intensity normalisation over the whole volume (in the head mask),
canonical reorientation, the slicing axis, resampling and resizing, the crop
to the head, and the 3D window overlap.

Before writing, the TorchScript and ONNX Runtime outputs are compared with the
checkpoint's probabilities on the test tensor (to :data:`TOLERANCE`); a
mismatch writes nothing. The zip is written under a temporary name and
renamed (never half-written); an existing file is replaced only with
``overwrite=True``, the checkpoint never. ``bioimageio.spec``, ``onnx`` and
``onnxruntime`` are imported here only (the ``export`` extra).

See docs/DESIGN.md, "Model packages".
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_boundary_seg import __version__
from napari_boundary_seg.core.checkpoint import (
    load_checkpoint,
    preprocess_from_checkpoint,
    save_checkpoint,
    training_mode,
)
from napari_boundary_seg.core.io import atomic_path, check_not_input
from napari_boundary_seg.core.model_package import (
    CHECKPOINT_MEMBER,
    CONFIG_KEY,
    require,
    size_multiples,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ONNX_OPSET",
    "TOLERANCE",
    "ExportCheck",
    "export_package",
    "model_card",
    "network_input",
]

TOLERANCE = 1e-5
"""Largest difference allowed between the checkpoint's probabilities and those of
the TorchScript and ONNX weights."""
ONNX_OPSET = 17
_DROPPED_KEYS = ("optimizer_state", "lr_state", "scaler_state", "rng_state", "partial")
"""Checkpoint keys left out of the embedded copy: resuming state, not the model."""
_PAPER = (
    "Kervadec H. et al., Boundary loss for highly unbalanced segmentation, MIDL 2019; "
    "Medical Image Analysis 67 (2021) 101851"
)
_PAPER_DOI = "10.1016/j.media.2020.101851"


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """How far each weight format's probabilities are from the checkpoint's."""

    torchscript: float
    onnx: float

    def __str__(self) -> str:
        return f"TorchScript {self.torchscript:.1e}, ONNX Runtime {self.onnx:.1e}"


# --------------------------------------------------------------------------
# the test tensor: a real case, preprocessed as in training


def _find_case(checkpoint: Mapping[str, Any]) -> Any:
    """The first validation case (else training case) of the checkpoint's data folder."""
    from napari_boundary_seg.core.cases import find_cases, load_case

    data = (checkpoint.get("config") or {}).get("data")
    if not data or not Path(data).is_dir():
        raise FileNotFoundError(
            f"the checkpoint's data folder {data!r} is not there: give a case's image "
            "files for the test tensor (--image)"
        )
    found = {c.case_id: c for c in find_cases(data)}
    for case_id in [*(checkpoint.get("val_cases") or []), *(checkpoint.get("train_cases") or [])]:
        if case_id in found:
            return load_case(found[case_id])
    if not found:
        raise FileNotFoundError(f"no case found in {data}")
    return load_case(next(iter(found.values())))


def _case_from_files(paths: Sequence[str | os.PathLike], labels: Any = None) -> Any:
    from napari_boundary_seg.core.cases import case_from_arrays
    from napari_boundary_seg.core.io import read_nifti

    volumes = [read_nifti(p, as_labels=False) for p in paths]
    ref = volumes[0]
    label_data = None if labels is None else read_nifti(labels, as_labels=True).data
    return case_from_arrays(
        [v.data for v in volumes],
        label_data,
        ref.spacing[: ref.data.ndim],
        ref.affine,
        case_id=Path(paths[0]).name.split(".")[0],
    )


def _window(volume: np.ndarray, labels: np.ndarray | None, size: Sequence[int]) -> np.ndarray:
    """A ``size`` window of ``volume (M, *spatial)`` centred on the labels' foreground
    (else the volume's centre), zero-padded where the volume is smaller."""
    spatial = volume.shape[1:]
    if labels is not None and (labels > 0).any():
        centre = [int(round(c.mean())) for c in np.nonzero(labels > 0)]
    else:
        centre = [s // 2 for s in spatial]
    starts = [
        min(max(c - w // 2, 0), max(s - w, 0))
        for c, w, s in zip(centre, size, spatial, strict=True)
    ]
    crop = volume[(slice(None), *(slice(b, b + w) for b, w in zip(starts, size, strict=True)))]
    pads = [(0, 0), *((0, w - c) for w, c in zip(size, crop.shape[1:], strict=True))]
    return np.pad(crop, pads)


def network_input(checkpoint: Mapping[str, Any], case: Any) -> np.ndarray:
    """One network input ``(1, M, *spatial)`` of ``case`` preprocessed as the
    checkpoint was trained: 2D, the slice with most foreground (zero-padded at the
    end to the network's size multiple when slices keep their native size); 3D, a
    patch of the training size around the foreground."""
    from napari_boundary_seg.core.cases import case_from_arrays
    from napari_boundary_seg.core.orientation import canonical_orientation
    from napari_boundary_seg.core.preprocess import preprocess_case

    prep = preprocess_from_checkpoint(checkpoint)
    mode = training_mode(checkpoint)
    if mode["dims"] == 2:
        prepared = preprocess_case(case, prep)
        labels = prepared.labels
        if labels is not None and (labels > 0).any():
            k = int((labels > 0).reshape(len(labels), -1).sum(axis=1).argmax())
        else:
            k = len(prepared.images) // 2
        x = prepared.images[k : k + 1]
        if prep.slice_size is None:
            multiples = size_multiples(checkpoint["model"])
            x = np.pad(
                x,
                [
                    (0, 0),
                    (0, 0),
                    *((0, -s % m) for s, m in zip(x.shape[2:], multiples, strict=True)),
                ],
            )
        return np.ascontiguousarray(x, dtype=np.float32)
    # 3D: the orientation and scaling of the 3D prediction path, no slicing, no resizing
    orientation = canonical_orientation(case.affine if prep.canonical else None)
    images = np.ascontiguousarray(orientation.to_canonical(case.images, lead=1))
    labels = None if case.labels is None else orientation.to_canonical(case.labels)
    flat = dataclasses.replace(
        prep, slice_size=None, slice_spacing=None, axis=0, canonical=False, crop=False
    )
    scaled_case = case_from_arrays(list(images), None, orientation.spacing(case.spacing))
    scaled = np.swapaxes(preprocess_case(scaled_case, flat).images, 0, 1)
    patch = _window(scaled, labels, mode["patch_size"]).astype(np.float32)
    return np.ascontiguousarray(patch[None])


# --------------------------------------------------------------------------
# weights


def _trace(model: torch.nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent branches
        return torch.jit.trace(model, x, check_trace=False)


def _write_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, fixed: bool) -> None:
    require("onnx", purpose="ONNX export")
    spatial = {} if fixed else {i: f"s{i}" for i in range(2, x.ndim)}
    axes = {0: "batch", **spatial}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,  # the TorchScript-based exporter: no onnxscript needed
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            opset_version=ONNX_OPSET,
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits)).float(), dim=1).numpy()


def _check_weights(
    scripted: torch.jit.ScriptModule, onnx_path: Path, x: np.ndarray, expected: np.ndarray
) -> ExportCheck:
    ort = require("onnxruntime", purpose="checking the ONNX weights")
    with torch.inference_mode():
        ts = _softmax(scripted(torch.from_numpy(x)).numpy())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ox = _softmax(session.run(None, {"input": x})[0])
    check = ExportCheck(float(np.abs(ts - expected).max()), float(np.abs(ox - expected).max()))
    if max(check.torchscript, check.onnx) > TOLERANCE:
        raise RuntimeError(
            f"the exported weights do not reproduce the checkpoint's probabilities to "
            f"{TOLERANCE:g} ({check}); nothing was written"
        )
    return check


# --------------------------------------------------------------------------
# figures and the model card


def _read_metrics(checkpoint: Mapping[str, Any], run_dir: Path | None) -> list[dict[str, float]]:
    """Rows of the run's ``metrics.csv`` (epoch from 1), else the checkpoint's history."""
    path = None if run_dir is None else run_dir / "metrics.csv"
    rows: list[dict[str, float]] = []
    if path is not None and path.is_file():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append({k: _number(v) for k, v in row.items() if k})
        return rows
    for entry in checkpoint.get("history") or []:
        row = {k: _number(v) for k, v in entry.items()}
        row["epoch"] = row.get("epoch", 0) + 1
        rows.append(row)
    return rows


def _number(value: Any) -> float:
    if isinstance(value, str) and value in ("True", "False"):
        return float(value == "True")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _save_curve(rows: Sequence[Mapping[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    ax.plot(epochs, [r.get("val_dice", np.nan) for r in rows], "o-", label="validation Dice")
    ax.plot(epochs, [r.get("w_region", np.nan) for r in rows], "--", label="α (region weight)")
    ax.set_xlabel("epoch")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("validation per epoch")
    fig.tight_layout()
    fig.savefig(path)


def _save_cover(image: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the image (first modality), and the same with the prediction outlined."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3), dpi=100)
    picture = image[0]
    labels = probs.argmax(axis=0)
    for i, outline in enumerate((False, True)):
        ax = fig.add_axes((i / 2, 0, 0.5, 1))
        ax.imshow(picture, cmap="gray")
        if outline and (labels > 0).any():
            ax.contour(labels > 0, levels=[0.5], colors="red", linewidths=1)
        ax.set_axis_off()
    fig.savefig(path)


def _data_summary(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Case counts, sites and the spacing range of the training data (headers only)."""
    config = checkpoint.get("config") or {}
    train_ids = list(checkpoint.get("train_cases") or [])
    val_ids = list(checkpoint.get("val_cases") or [])
    summary: dict[str, Any] = {
        "data": config.get("data"),
        "train_cases": len(train_ids),
        "val_cases": len(val_ids),
        "sites": [],
        "spacing": None,
        "synthetic": False,
        "description": None,
    }
    data = config.get("data")
    if not data or not Path(data).is_dir():
        return summary
    meta_path = Path(data) / "dataset.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        summary["description"] = meta.get("description") or meta.get("name")
        text = f"{meta.get('name', '')} {meta.get('description', '')}".lower()
        summary["synthetic"] = "synthetic" in text or "generator" in meta
    from napari_boundary_seg.core.cases import find_cases
    from napari_boundary_seg.core.synthetic import read_sites

    sites = read_sites(data)
    summary["sites"] = sorted({sites[c] for c in train_ids + val_ids if c in sites})
    try:
        import nibabel as nib

        zooms = [
            nib.load(str(c.image_paths[0])).header.get_zooms()[:3]
            for c in find_cases(data)
            if c.case_id in set(train_ids + val_ids)
        ]
    except Exception as exc:  # a layout this summary cannot read: leave the range out
        logger.info("no spacing range for the model card: %s", exc)
        zooms = []
    if zooms:
        arr = np.array(zooms, dtype=float)
        summary["spacing"] = (arr.min(axis=0).round(3).tolist(), arr.max(axis=0).round(3).tolist())
    return summary


def _schedule_text(schedule: Any) -> str:
    if not isinstance(schedule, Mapping):
        return str(schedule)
    kind = schedule.get("kind")
    if kind == "paper":
        return (
            f"α (the region loss's weight) starts at {schedule.get('start')} and falls by "
            f"{schedule.get('step')} per epoch to {schedule.get('floor')}; the boundary loss "
            "weighs 1 − α (Kervadec et al.'s rebalancing)"
        )
    return ", ".join(f"{k}={v}" for k, v in schedule.items())


def _preprocess_text(checkpoint: Mapping[str, Any]) -> list[str]:
    prep = preprocess_from_checkpoint(checkpoint)
    mode = training_mode(checkpoint)
    lines = [
        f"- intensities: `{prep.normalize}` normalisation of each modality over the whole "
        f"volume{' inside the head mask' if prep.normalize != 'minmax' else ''}"
        f"{f', percentiles {prep.percentiles}' if prep.percentiles else ''} "
        f"(scaling {'on' if prep.scale else 'off'})",
        f"- orientation: {'canonical (RAS) reorientation from the affine' if prep.canonical else 'stored voxel order'}",
    ]
    if mode["dims"] == 2:
        if prep.slice_size:
            size = f"resized to {prep.slice_size}x{prep.slice_size} pixels (aspect ratio not kept)"
        elif prep.slice_spacing:
            size = f"resampled in plane to {prep.slice_spacing} mm"
        else:
            size = "at their native size"
        lines += [
            f"- 2D: slices along axis `{prep.axis}` of that order, {size}; the "
            "probabilities resized back to each slice's size (bilinear) and restacked",
            f"- crop to the head before slicing: {'yes' if prep.crop else 'no'}",
        ]
    else:
        lines.append(
            f"- 3D: the volume at its own spacing, sliding windows of {mode['patch_size']} "
            "voxels, overlap 0.5, Gaussian-weighted blending of the probabilities"
        )
    return lines


def model_card(
    checkpoint: Mapping[str, Any],
    *,
    name: str,
    rows: Sequence[Mapping[str, float]],
    data: Mapping[str, Any],
    check: ExportCheck | None = None,
    source: str = "",
) -> str:
    """The package's ``README.md``: data, loss and α schedule, training length,
    validation per epoch, lineage, versions, intended use and limits."""
    config = checkpoint.get("config") or {}
    hp = dict(checkpoint.get("model") or {})
    mode = training_mode(checkpoint)
    position = checkpoint.get("position") or {}
    versions = checkpoint.get("versions") or {}
    modalities = ", ".join(str(m) for m in checkpoint.get("modalities") or []) or "unnamed"
    best = max(rows, key=lambda r: r.get("val_dice", -1.0)) if rows else None
    steps = config.get("max_steps_per_epoch")
    out = [
        f"# {name}",
        "",
        f"A {mode['dims']}D UNet segmenting {modalities} scans into {hp.get('num_classes')} "
        f"classes, trained with napari-boundary-seg {versions.get('napari_boundary_seg', '?')} "
        f"and the boundary loss ({_PAPER}). Exported from `{source}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        "## Training data",
        "",
        f"- folder: `{data.get('data')}`"
        + (f" ({data['description']})" if data.get("description") else ""),
        f"- cases: {data.get('train_cases')} for training, {data.get('val_cases')} for validation",
        f"- sites: {', '.join(data['sites']) if data.get('sites') else 'not recorded'}",
        "- voxel spacing (mm, per stored axis): "
        + (
            f"{data['spacing'][0]} to {data['spacing'][1]}"
            if data.get("spacing")
            else "not readable at export"
        ),
        f"- modalities (channel order): {modalities}",
        "",
        "## Training",
        "",
        f"- loss: `{config.get('loss')}`; α schedule as trained: {_schedule_text(checkpoint.get('schedule', config.get('schedule')))}",
        f"- epochs: {config.get('epochs')} planned; this checkpoint after epoch "
        f"{int(position.get('epoch', 0))}"
        + (f", at most {steps} steps per epoch" if steps else ""),
        f"- optimiser learning rate {config.get('lr')}, batch size {config.get('batch_size')}, "
        f"seed {checkpoint.get('seed', config.get('seed'))}",
        f"- network: UNet depth {hp.get('depth')}, width {hp.get('base_channels')}, "
        f"upsampling {hp.get('upsample')}, strides {hp.get('strides')}",
        "",
        "## Preprocessing (applied by napari-boundary-seg; in `config.napari_boundary_seg`)",
        "",
        "The bioimage.io description covers the network's own tensors (one preprocessed slice "
        "or patch in, logits then softmax out). The steps below are applied to the whole "
        "volume before slicing and cannot be written as spec preprocessing; another tool "
        "must apply them itself:",
        "",
        *_preprocess_text(checkpoint),
        "",
        "## Validation",
        "",
    ]
    if rows:
        out += [
            "Validation per epoch (from the run's `metrics.csv`; curve in `validation_curve.png`):",
            "",
            "| epoch | train loss | α (region weight) | val Dice | val HD95 (mm) |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            out.append(
                f"| {int(r.get('epoch', 0))} | {r.get('train_loss', float('nan')):.4f} | "
                f"{r.get('w_region', float('nan')):.2f} | {r.get('val_dice', float('nan')):.4f} | "
                f"{r.get('val_hd95', float('nan')):.2f} |"
            )
        if best is not None:
            out += [
                "",
                f"Best validation Dice {best.get('val_dice', float('nan')):.4f} at epoch {int(best.get('epoch', 0))}.",
            ]
    else:
        out.append("No validation metrics were recorded for this run.")
    if check is not None:
        out += [
            "",
            f"Exported weights checked against the checkpoint on the test tensor (largest "
            f"difference of probabilities): {check}.",
        ]
    lineage = [f"- checkpoint: `{source}` (created {checkpoint.get('created', '?')})"]
    if checkpoint.get("parent"):
        lineage.append(f"- fine-tuned from: `{checkpoint['parent']}`")
    if config.get("init_checkpoint"):
        lineage.append(f"- initialised from: `{config['init_checkpoint']}`")
    if config.get("resume_from"):
        lineage.append(f"- resumed from: `{config['resume_from']}`")
    out += [
        "",
        "## Lineage",
        "",
        *lineage,
        "",
        "## Versions",
        "",
        *(f"- {k}: {v}" for k, v in sorted(versions.items())),
        f"- exported by napari-boundary-seg {__version__}, torch {torch.__version__}",
        "",
        "## Intended use and limits",
        "",
    ]
    if data.get("synthetic"):
        out += [
            "**Trained on synthetic data** (napari-boundary-seg's generated benchmark): a "
            "demonstration and starting point for fine-tuning, not a model for real scans. "
            "Its outputs on patient data mean nothing clinically.",
            "",
        ]
    out += [
        "Research use only; not a medical device. Expect it to work on scans like its "
        "training data (same modalities in the same order, similar spacing and contrast, "
        "same preprocessing); check its output on new sites before relying on it, and "
        "fine-tune it on a few corrected scans where it fails (napari-boundary-seg "
        "`finetune`, which reads the embedded `checkpoint.pt`).",
        "",
        "## Files",
        "",
        "- `weights_torchscript.pt`: TorchScript (traced); `weights.onnx`: ONNX, opset "
        f"{ONNX_OPSET}; both give logits, the softmax is the declared postprocessing",
        f"- `{CHECKPOINT_MEMBER}`: the napari-boundary-seg checkpoint without optimizer state "
        "(read with `torch.load(weights_only=True)`)",
        "- `test_input.npy` / `test_output.npy`: a preprocessed input and its probabilities",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------
# the package


def _identifier(text: str, fallback: str) -> str:
    clean = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in str(text))
    return clean if clean[:1].isalpha() else fallback


def _axes(spec: Any, mode: Mapping[str, Any], x_shape: Sequence[int], fixed: bool) -> Any:
    names = ["z", "y", "x"][-(len(x_shape) - 2) :]
    axes = []
    for name, size, multiple in zip(names, x_shape[2:], mode["multiples"], strict=True):
        extent = int(size) if fixed else spec.ParameterizedSize(min=multiple, step=multiple)
        axes.append(spec.SpaceInputAxis(id=spec.AxisId(name), size=extent))
    return names, axes


def _settings(checkpoint: Mapping[str, Any], multiples: Sequence[int]) -> dict[str, Any]:
    mode = training_mode(checkpoint)
    return json.loads(
        json.dumps(
            {
                "format": "napari-boundary-seg.package",
                "model": dict(checkpoint["model"]),
                "config": dict(checkpoint.get("config") or {}),
                "dims": mode["dims"],
                "patch_size": list(mode["patch_size"]) if mode["patch_size"] else None,
                "overlap": 0.5,
                "size_multiples": list(multiples),
                "modalities": [str(m) for m in checkpoint.get("modalities") or []],
                "versions": dict(checkpoint.get("versions") or {}),
                "checkpoint": CHECKPOINT_MEMBER,
            },
            default=str,
        )
    )


def export_package(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    images: Sequence[str | os.PathLike] | None = None,
    labels: str | os.PathLike | None = None,
    name: str | None = None,
    authors: Sequence[str] = ("napari-boundary-seg user",),
) -> tuple[Path, ExportCheck]:
    """Write ``out`` (a ``.zip``): the checkpoint as a bioimage.io model package.

    Parameters
    ----------
    checkpoint_path
        ``best.pt`` or ``last.pt`` of a run; its folder's ``metrics.csv`` feeds the card.
    out
        The package to write (atomically).
    overwrite
        Replace an existing ``out``; never the checkpoint itself.
    images, labels
        The case of the test tensor and cover (modality files in the model's order,
        optional labels); default: a validation case of the checkpoint's data folder.
    name, authors
        The package's name (default from the run folder) and authors.

    Returns
    -------
    (path, check)
        The package and how far its weights are from the checkpoint.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    ImportError
        ``bioimageio.spec``, ``onnx`` or ``onnxruntime`` is missing (the message names it).
    RuntimeError
        The exported weights do not reproduce the checkpoint (nothing written).
    """
    checkpoint_path, out = Path(checkpoint_path), Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"the package name must end in .zip, got {out}")
    check_not_input([out], [checkpoint_path, *(images or [])], "--out")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a folder")
    spec = require("bioimageio.spec.model.v0_5", "bioimageio.spec", "exporting a model package")
    bioimageio_spec = require("bioimageio.spec", purpose="exporting a model package")
    require("onnx", purpose="exporting a model package")
    model, checkpoint = load_checkpoint(checkpoint_path)
    case = _find_case(checkpoint) if not images else _case_from_files(images, labels)
    x = network_input(checkpoint, case)
    mode = dict(training_mode(checkpoint))
    mode["multiples"] = size_multiples(checkpoint["model"])
    prep = preprocess_from_checkpoint(checkpoint)
    fixed = mode["dims"] == 3 or prep.slice_size is not None
    x_t = torch.from_numpy(x)
    with torch.inference_mode():
        logits = model(x_t).numpy()
    expected = _softmax(logits)
    run_dir = checkpoint_path.parent
    name = name or f"boundary-loss UNet {run_dir.name}"
    with tempfile.TemporaryDirectory(prefix="nbs-export-") as tmp:
        folder = Path(tmp)
        scripted = _trace(model, x_t)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript, still the spec's
            torch.jit.save(scripted, str(folder / "weights_torchscript.pt"))
        _write_onnx(model, x_t, folder / "weights.onnx", fixed)
        check = _check_weights(scripted, folder / "weights.onnx", x, expected)
        np.save(folder / "test_input.npy", x)
        np.save(folder / "test_output.npy", expected)
        tifffile = require("tifffile", purpose="exporting a model package")
        tifffile.imwrite(folder / "sample_input.tif", x[0])  # for people: one image per tensor
        tifffile.imwrite(folder / "sample_output.tif", expected[0])
        rows = _read_metrics(checkpoint, run_dir)
        _save_curve(rows, folder / "validation_curve.png")
        middle = (slice(None),) * 2 if mode["dims"] == 2 else (slice(None), x.shape[2] // 2)
        _save_cover(x[0][middle], expected[0][middle], folder / "cover.png")
        slim = {k: v for k, v in checkpoint.items() if k not in _DROPPED_KEYS}
        save_checkpoint(folder / CHECKPOINT_MEMBER, slim)
        data = _data_summary(checkpoint)
        card = model_card(
            checkpoint, name=name, rows=rows, data=data, check=check, source=str(checkpoint_path)
        )
        (folder / "README.md").write_text(card)
        descr = _description(spec, checkpoint, folder, x, mode, fixed, name, authors, data)
        with atomic_path(out, suffix=".zip") as tmp_zip:
            Path(tmp_zip).unlink()  # the writer creates it
            bioimageio_spec.save_bioimageio_package(descr, output_path=Path(tmp_zip))
    return out, check


def _description(
    spec: Any,
    checkpoint: Mapping[str, Any],
    folder: Path,
    x: np.ndarray,
    mode: Mapping[str, Any],
    fixed: bool,
    name: str,
    authors: Sequence[str],
    data: Mapping[str, Any],
) -> Any:
    hp = checkpoint["model"]
    modalities = [str(m) for m in checkpoint.get("modalities") or []]
    if len(modalities) != hp["in_channels"]:
        modalities = [f"channel{i}" for i in range(hp["in_channels"])]
    channel_names = [
        spec.Identifier(_identifier(m, f"channel{i}")) for i, m in enumerate(modalities)
    ]
    classes = ["background"] + (
        ["lesion"] if hp["num_classes"] == 2 else [f"class{c}" for c in range(1, hp["num_classes"])]
    )
    names, space = _axes(spec, mode, x.shape, fixed)
    input_id = spec.TensorId("raw")
    inputs = [
        spec.InputTensorDescr(
            id=input_id,
            description="one slice (2D) or patch (3D), already normalised, reoriented and "
            "resized as config.napari_boundary_seg says (see README.md)",
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=channel_names), *space],
            test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))],
        )
    ]
    out_axes = [
        spec.SpaceOutputAxis(
            id=spec.AxisId(n), size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId(n))
        )
        for n in names
    ]
    outputs = [
        spec.OutputTensorDescr(
            id=spec.TensorId("probabilities"),
            description="softmax class probabilities (background first)",
            axes=[
                spec.BatchAxis(),
                spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in classes]),
                *out_axes,
            ],
            test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
            sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
            data=spec.IntervalOrRatioDataDescr(type="float32"),
            postprocessing=[
                spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))
            ],
        )
    ]
    torch_version = spec.Version(torch.__version__.split("+")[0])
    weights = spec.WeightsDescr(
        torchscript=spec.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt", pytorch_version=torch_version
        ),
        onnx=spec.OnnxWeightsDescr(
            source=folder / "weights.onnx", opset_version=ONNX_OPSET, parent="torchscript"
        ),
    )
    tags = ["segmentation", "unet", "boundary-loss", f"{mode['dims']}d", "pytorch", "onnx"]
    if data.get("synthetic"):
        tags.append("synthetic-data")
    return spec.ModelDescr(
        name=name,
        description=(
            f"{mode['dims']}D UNet for small-lesion segmentation ({', '.join(modalities)}) "
            "trained with the boundary loss by napari-boundary-seg"
            + (" on synthetic data (demonstration only)" if data.get("synthetic") else "")
        ),
        authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text=_PAPER, doi=spec.Doi(_PAPER_DOI))],
        license=spec.LicenseId("BSD-3-Clause"),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=tags,
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        attachments=[
            spec.FileDescr(source=folder / CHECKPOINT_MEMBER),
            spec.FileDescr(source=folder / "validation_curve.png"),
        ],
        config={CONFIG_KEY: _settings(checkpoint, mode["multiples"])},
        version="0.1.0",
    )
