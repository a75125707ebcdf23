"""Fine-tuning on corrected slices: the core of the predict → correct → fine-tune loop.

A user runs a model on a new scan, corrects some slices of the prediction
(napari's label brush, or any editor), and wants the model to learn from those
corrections at once. :func:`finetune` trains from the current checkpoint on
the corrected slices only (optionally mixed with slices of the original
training set, against forgetting), with the α schedule restarted at a chosen
value. It is :func:`napari_boundary_seg.core.train.train` with a slice data set
restricted to those slices (``dataset=``), so it yields the trainer's events
and writes the trainer's files (``best.pt``, ``last.pt``, ``metrics.csv``,
``config.json``) into its own folder, plus ``lineage.json``:

.. code-block:: json

    {"parent": "/runs/a/best.pt", "parent_sha256": "…", "checkpoint": "/runs/a/finetune-…/last.pt",
     "slices": [12, 17], "axis": 2, "mix_slices": [["case_003", 40]], "settings": {…},
     "stopped": false, "reason": "completed", "history": […], "metrics": {…}, "decision": null}

The parent checkpoint is only read, never written. :func:`evaluate_finetune`
predicts the volume with the parent and the new model and adds the comparison
(DSC and HD95 on the corrected and on the untouched slices, against the
corrected labels) to the lineage as ``metrics``; :func:`record_decision` notes
whether the user kept or discarded the new checkpoint (both stay on disk).

Only verified voxels teach. A slice is verified when it was corrected
(``slices``) or marked checked without painting
(:attr:`FinetuneConfig.verified_slices`); fine-tuning with neither is
refused before any work. φ of a verified slice comes from its own labels: the
2D map of the slice (``distance="2d"``, the default), or the 3D map of the
slab of contiguous verified slices (``distance="3d"``, and always in 3D),
never from an unverified slice
(:func:`~napari_boundary_seg.core.modes.base.slab_distance_maps`).

A checkpoint trained in 3D (``dims=3``, see
:func:`~napari_boundary_seg.core.checkpoint.training_mode`) is fine-tuned in
3D, without being told: patches of its ``patch_size`` (:class:`CorrectedPatches`),
each holding at least one verified slice along ``axis``, cut from the
corrected volume prepared in the volume cache of
:mod:`napari_boundary_seg.core.patches`, mixed with ordinary patches of the
original cases; the model keeps its hyper-parameters (depth, width, pooling
strides). Each corrected patch carries a loss mask, 1 on its verified slices
and 0 on the others, so the unverified slices inside a patch (the prediction
nobody checked) do not teach; the trainer passes it to the loss
(:func:`~napari_boundary_seg.core.train.train_step`). Patches of the original
cases are fully labelled (mask all ones). In 2D every item is a whole
verified slice or an original slice, so no mask is needed.
See docs/DESIGN.md, "Fine-tuning".
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.config import FinetuneConfig
from napari_boundary_seg.core.events import Outcome, end_outcome
from napari_boundary_seg.core.io import atomic_path
from napari_boundary_seg.core.modes import mode_for
from napari_boundary_seg.core.modes.base import FinetuneRequest
from napari_boundary_seg.core.modes.base import check_axis as _check_axis
from napari_boundary_seg.core.modes.base import check_slices as _check_slices
from napari_boundary_seg.core.modes.patches import CorrectedPatches
from napari_boundary_seg.core.modes.slices import SliceSubset
from napari_boundary_seg.core.orientation import canonical_orientation, native_slice_axis
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)

__all__ = [
    "LINEAGE_NAME",
    "CorrectedPatches",
    "FinetuneConfig",
    "FinetuneResult",
    "SliceSubset",
    "compare_models",
    "differing_slices",
    "evaluate_finetune",
    "finetune",
    "finetune_schedule",
    "prediction_changes",
    "worse_on_corrected",
    "read_lineage",
    "record_decision",
    "update_lineage",
]

LINEAGE_NAME = "lineage.json"
"""File name of the lineage written beside a fine-tuned checkpoint."""

CHANGE_NAMES = {1: "gained", 2: "lost", 3: "class changed"}
"""Values of :func:`prediction_changes`."""


# ---------------------------------------------------------------------------
# results and lineage


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    checkpoint
        The new checkpoint (``last.pt``: the weights after the last step), or
        ``None`` when nothing was written (stopped before the first step).
    parent
        The checkpoint it started from (absolute path; never modified).
    out_dir
        The fine-tune's folder.
    lineage_path
        ``out_dir/lineage.json``.
    slices
        The corrected slices trained on (indices along ``axis``).
    axis
        The slicing axis (numpy axis of the spatial axes).
    mix_slices
        ``(case_id, slice)`` of the original-training-set slices mixed in.
    stopped, reason, outcome
        As in the trainer's :class:`~napari_boundary_seg.core.events.DoneEvent`
        (``outcome`` defaults to what ``stopped`` says).
    history
        The trainer's per-epoch rows.
    dims
        2 (slices) or 3 (patches): the parent checkpoint's training mode.
    verified_slices
        The slices marked checked without painting (along ``axis``); with
        ``slices``, the only ones that taught.
    """

    checkpoint: str | None
    parent: str
    out_dir: str
    lineage_path: str
    slices: tuple[int, ...]
    axis: int
    mix_slices: tuple[tuple[str, int], ...] = ()
    stopped: bool = False
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list, compare=False)
    model: Any = field(default=None, repr=False, compare=False)
    dims: int = 2
    outcome: Outcome | None = None
    verified_slices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", end_outcome(self.stopped, self.outcome))


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(_json_safe(data), handle, indent=2)
        handle.write("\n")


def read_lineage(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``lineage.json`` (or the one beside a checkpoint path)."""
    path = Path(path)
    if path.suffix != ".json":
        path = path.parent / LINEAGE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no lineage file {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def update_lineage(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into a lineage file (atomic rewrite); returns the new content."""
    path = Path(path)
    data = read_lineage(path)
    data.update(fields)
    _write_json_atomic(path, data)
    return data


def record_decision(path: str | os.PathLike, kept: bool) -> dict[str, Any]:
    """Note in the lineage whether the user kept or discarded the new checkpoint.

    Nothing is deleted: a discarded checkpoint stays on disk with its lineage.
    """
    return update_lineage(
        path,
        decision="kept" if kept else "discarded",
        decided=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# slices


def differing_slices(
    labels: np.ndarray,
    reference: np.ndarray,
    axis: int,
    candidates: Sequence[int] | None = None,
) -> list[int]:
    """Slices along ``axis`` where ``labels`` and ``reference`` differ.

    Parameters
    ----------
    labels, reference
        ``(*spatial)`` integer arrays of the same shape (corrected labels and
        the model's prediction).
    axis
        Slicing axis.
    candidates
        Only look at these slices (e.g. the ones a label editor reported as
        painted); ``None``: all.

    Returns
    -------
    list of int
        Sorted slice indices.
    """
    labels, reference = np.asarray(labels), np.asarray(reference)
    if labels.shape != reference.shape:
        raise ValueError(f"labels {labels.shape} and reference {reference.shape} differ in shape")
    axis = _check_axis(axis, labels.ndim)
    depth = labels.shape[axis]
    if candidates is None:
        other = tuple(k for k in range(labels.ndim) if k != axis)
        return [int(i) for i in np.flatnonzero((labels != reference).any(axis=other))]
    out = []
    for s in sorted({int(c) for c in candidates}):
        if 0 <= s < depth and np.any(
            np.take(labels, s, axis=axis) != np.take(reference, s, axis=axis)
        ):
            out.append(s)
    return out


def finetune_schedule(
    alpha_start: float = 0.8, alpha_step: float = 0.1, alpha_floor: float = 0.01
) -> dict[str, Any]:
    """The short α schedule of a fine-tune (:attr:`FinetuneConfig.schedule
    <napari_boundary_seg.core.config.FinetuneConfig.schedule>`)."""
    return FinetuneConfig(
        alpha_start=alpha_start, alpha_step=alpha_step, alpha_floor=alpha_floor
    ).schedule


def _default_out_dir(parent: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = parent.parent / f"finetune-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = parent.parent / f"finetune-{stamp}-{n}"
    return out


# ---------------------------------------------------------------------------
# fine-tuning


def finetune(
    checkpoint: str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float] | None,
    slices: Sequence[int],
    config: FinetuneConfig | None = None,
    *,
    axis: int | None = None,
    mix_cases: Sequence[Any] | str | os.PathLike | None = None,
    control: Any = None,
    affine: np.ndarray | None = None,
    modalities: Sequence[str] | None = None,
    **changes: Any,
) -> Generator[Any, None, FinetuneResult]:
    """Fine-tune a checkpoint on corrected slices; a generator of the trainer's events.

    The checkpoint's training mode is followed: a 2D checkpoint trains on the
    corrected slices; a 3D one (``dims=3``) on :class:`CorrectedPatches` of its
    ``patch_size`` (each holding a corrected slice along ``axis``) of the
    corrected volume, prepared in the volume cache (``<out_dir>/cache``).

    Parameters
    ----------
    checkpoint
        The current model (``best.pt`` / ``last.pt``); only read.
    images
        ``(M, *spatial)`` float raw intensities (M modalities, 2 or 3 spatial
        axes), as the checkpoint's model takes them.
    labels
        ``(*spatial)`` integer corrected labels (values in ``[0, num_classes)``).
    spacing
        Voxel size per spatial axis in mm, numpy axis order (``None``: 1 mm).
    slices
        The corrected slices (indices along ``axis``); a 2D image has the one
        slice ``0``. May be empty when ``verified_slices`` (in ``config``) names
        slices checked without painting; with neither, a ValueError says what to do.
    axis
        Slicing axis (of the stored arrays); ``None``: the plane the checkpoint
        was trained on.
    affine
        ``(4, 4)`` voxel-to-world matrix of the arrays: a checkpoint trained in
        the canonical orientation fine-tunes on the slices reoriented the same
        way (``None``: the stored order is taken as canonical).
    mix_cases
        Cases of the original training set (a list of
        :class:`~napari_boundary_seg.core.data.Case`, or a data set folder), to
        mix in against forgetting; when the folder holds the parent's training
        cases (``train_cases`` in the checkpoint), only those are used.
    config, **changes
        The settings (:class:`~napari_boundary_seg.core.config.FinetuneConfig`:
        epochs, the restarted α schedule, lr, batch size, ``mix_ratio`` original
        slices per corrected slice, distance, device, seed, ``out_dir``,
        overwrite); ``changes`` replace some of them (``epochs=3``), so the
        fields can also be given as keywords alone.
    control
        A :class:`~napari_boundary_seg.core.train.TrainControl` (stop / pause).
    modalities
        Names of the image channels, kept in the new checkpoint; ``None``: the
        parent checkpoint's names (a fine-tuned model takes the same inputs).

    Yields
    ------
    Progress, InfoEvent, StepEvent, PauseEvent, EpochEvent, DoneEvent
        As :func:`napari_boundary_seg.core.train.train`.

    Returns
    -------
    FinetuneResult
        With the new checkpoint (``last.pt``) and the lineage file. A stop keeps
        ``last.pt`` of the interrupted run (``stopped=True``) and the parent untouched.

    Raises
    ------
    ValueError, TypeError
        Shapes that do not match, slices out of range, labels beyond the
        checkpoint's classes, bad settings; a 3D checkpoint with a 2D image, a
        volume smaller than its patch.
    """
    from napari_boundary_seg.core.checkpoint import checkpoint_config, read_checkpoint
    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.train import TrainConfig, train

    settings = (config or FinetuneConfig()).replace(**changes)
    mix_ratio, epochs, lr, batch_size = (
        settings.mix_ratio,
        settings.epochs,
        settings.lr,
        settings.batch_size,
    )
    distance, out_dir, device, seed = (
        settings.distance,
        settings.out_dir,
        settings.device,
        settings.seed,
    )
    overwrite = settings.overwrite
    parent = Path(checkpoint).expanduser().resolve()
    source = read_checkpoint(parent)
    base = TrainConfig.from_dict(checkpoint_config(source))
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise ValueError(
            f"images must be (M, *spatial) with 2 or 3 spatial axes, got {images.shape}"
        )
    if labels.shape != images.shape[1:]:
        raise ValueError(f"labels {labels.shape} do not match the images {images.shape[1:]}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(f"labels must be integer, got dtype {labels.dtype}")
    num_classes = int(source["model"].get("num_classes", base.num_classes))
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels hold values {int(labels.min())}..{int(labels.max())} but the checkpoint "
            f"has {num_classes} classes"
        )
    in_channels = int(source["model"].get("in_channels", images.shape[0]))
    if images.shape[0] != in_channels:
        raise ValueError(
            f"{images.shape[0]} modality image(s) given but {parent.name} takes {in_channels}"
        )
    spatial = images.shape[1:]
    mode = mode_for(source)  # the checkpoint's: slices, or patches holding the slices
    mode.check_finetune_images(images.shape, parent.name)
    if len(spatial) == 3:
        if axis is None:
            axis = native_slice_axis(
                affine if base.canonical else None, spacing or (1.0,) * 3, base.axis
            )
        axis = _check_axis(axis, 3)
        depth = spatial[axis]
    else:
        axis = 0 if axis is None else _check_axis(axis, 2)
        depth = 1
    slices = _check_slices(slices, depth, axis, allow_empty=True)
    verified = _check_slices(settings.verified_slices, depth, axis, allow_empty=True)
    if not slices and not verified:
        raise ValueError(
            "no corrected slices and no verified slices given: nothing to learn from. Paint "
            "a correction on a slice, or mark a slice checked (verified_slices, "
            "--verified-slices) when the prediction there is right"
        )
    # the work runs in the order the checkpoint was trained in; the lineage keeps
    # the axis and slices as given. Only the verified slices (corrected or checked) teach.
    native_axis, native_slices = axis, slices
    slices = tuple(sorted(set(slices) | set(verified)))
    orientation = canonical_orientation(affine if base.canonical else None, len(spatial))
    if not orientation.is_identity:
        axis = orientation.perm.index(native_axis)
        slices = tuple(sorted(depth - 1 - s if orientation.flip[axis] else s for s in slices))
        images = np.ascontiguousarray(orientation.to_canonical(images, lead=1))
        labels = np.ascontiguousarray(orientation.to_canonical(labels))
        spacing = None if spacing is None else orientation.spacing(spacing)
        spatial = images.shape[1:]
    schedule = settings.schedule
    out = Path(out_dir) if out_dir is not None else _default_out_dir(parent)
    if out.resolve() == parent.parent and not overwrite:
        raise ValueError(
            f"out_dir {out} is the parent checkpoint's folder; choose another one so that "
            "the parent run stays as it is"
        )

    names = _channel_names(modalities, source.get("modalities"), images.shape[0])
    case = case_from_arrays(
        list(images), labels.astype(np.int64), spacing, case_id="corrected", modalities=names
    )
    request = FinetuneRequest(
        base, source, case, slices, axis, mix_cases, mix_ratio, distance, out, seed
    )
    samples = yield from mode.iter_finetune_samples(request)
    dataset = samples.dataset

    batch = base.batch_size if batch_size is None else batch_size
    config = base.replace(
        data=None,
        out_dir=str(out),
        epochs=epochs,
        lr=base.lr if lr is None else lr,
        batch_size=max(1, min(int(batch), len(dataset))),
        schedule=schedule,
        axis=axis if len(spatial) == 3 else base.axis,
        val_fraction=0.0,
        device=device,
        seed=seed,
        max_steps_per_epoch=None,
        steps_per_epoch=None,  # an epoch: the fine-tuning items once
        init_checkpoint=str(parent),
        resume_from=None,
        overwrite=overwrite,
    )
    parent_hash = _sha256(parent)
    done = yield from train(config, samples.train_cases, control, val_cases=[], dataset=dataset)

    settings = {
        "alpha_start": settings.alpha_start,
        "alpha_step": settings.alpha_step,
        "alpha_floor": settings.alpha_floor,
        "schedule": schedule,
        "epochs": epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "loss": config.loss.value,
        "mix_ratio": mix_ratio,
        "mix_cases": samples.mix_ids,
        "distance": samples.distance,
        "device": device,
        "seed": seed,
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "shape": list(spatial),
        "dims": mode.dims,
        **samples.settings,
    }
    lineage_path = out / LINEAGE_NAME
    new_checkpoint = done.last_checkpoint
    lineage = {
        "parent": str(parent),
        "parent_sha256": parent_hash,
        "checkpoint": new_checkpoint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dims": mode.dims,
        "slices": list(native_slices),
        "verified_slices": list(verified),
        "axis": native_axis,
        "mix_slices": [list(s) for s in samples.mix_sources],
        "settings": settings,
        "stopped": done.stopped,
        "reason": done.reason,
        "history": done.history,
        "metrics": None,
        "decision": None,
    }
    _write_json_atomic(lineage_path, lineage)
    logger.info("fine-tune %s: %s (lineage %s)", out, done.reason, lineage_path)
    return FinetuneResult(
        checkpoint=new_checkpoint,
        parent=str(parent),
        out_dir=str(out),
        lineage_path=str(lineage_path),
        slices=native_slices,
        verified_slices=verified,
        axis=native_axis,
        mix_slices=samples.mix_sources,
        stopped=done.stopped,
        reason=done.reason,
        outcome=done.outcome,
        history=list(done.history),
        model=done.model,
        dims=mode.dims,
    )


def _channel_names(
    given: Sequence[str] | None, parent: Any, channels: int
) -> tuple[str, ...] | None:
    """The modality names of a fine-tuning case: ``given``, else the parent
    checkpoint's when it names ``channels`` of them, else None (numbered)."""
    if given is not None:
        names = tuple(str(n) for n in given)
        if len(names) != channels:
            raise ValueError(f"{len(names)} modality name(s) {list(names)} for {channels} image(s)")
        return names
    if isinstance(parent, list | tuple) and len(parent) == channels:
        return tuple(str(n) for n in parent)
    return None


# ---------------------------------------------------------------------------
# seeing the gain


def prediction_changes(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Voxels whose predicted label changed, coded by how (see :data:`CHANGE_NAMES`).

    Returns
    -------
    np.ndarray
        ``(*spatial)`` uint8: 0 unchanged, 1 foreground gained (old 0, new > 0),
        2 foreground lost (old > 0, new 0), 3 another foreground class.
    """
    old, new = np.asarray(old), np.asarray(new)
    if old.shape != new.shape:
        raise ValueError(f"old prediction {old.shape} and new {new.shape} differ in shape")
    out = np.zeros(old.shape, dtype=np.uint8)
    changed = old != new
    out[changed & (old == 0)] = 1
    out[changed & (new == 0)] = 2
    out[changed & (old != 0) & (new != 0)] = 3
    return out


def _group_metrics(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float], axis: int | None
) -> dict[str, float]:
    """Pooled DSC and mean per-slice HD95 of a stack of slices (foreground = nonzero)."""
    from napari_boundary_seg.core.metrics import dice_score, per_slice_metrics, replace_inf

    p, t = pred > 0, target > 0
    dice = dice_score(p, t)
    if axis is None:  # one 2D image
        rows = per_slice_metrics(p[None], t[None], (1.0, *spacing), axis=0)
        plane = tuple(spacing)
        shape2d = p.shape
    else:
        rows = per_slice_metrics(p, t, spacing, axis=axis)
        plane = tuple(s for k, s in enumerate(spacing) if k != axis)
        shape2d = tuple(n for k, n in enumerate(p.shape) if k != axis)
    hd95 = [replace_inf(r["hd95"], shape2d, plane) for r in rows]
    return {
        "dice": float(dice),
        "hd95": float(np.mean(hd95)) if hd95 else 0.0,
    }


def compare_models(
    old_pred: np.ndarray,
    new_pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None,
    slices: Sequence[int],
    axis: int,
) -> dict[str, dict[str, float]]:
    """DSC and HD95 of two predictions on the corrected and on the untouched slices.

    Parameters
    ----------
    old_pred, new_pred
        ``(*spatial)`` labels of the parent and of the fine-tuned model.
    target
        ``(*spatial)`` reference labels (the corrected labels).
    spacing
        Voxel size in mm, numpy axis order (``None``: 1 mm).
    slices
        The corrected slices along ``axis``; the others are "untouched".
    axis
        Slicing axis (ignored for a 2D image, whose one slice is 0).

    Returns
    -------
    dict
        ``{"corrected": row, "untouched": row}``, each row ``n_slices``,
        ``dice_old``, ``dice_new``, ``hd95_old``, ``hd95_new`` (mm). DSC is pooled
        over the group's voxels (1 when both are empty); HD95 is the mean over
        the group's slices with foreground in either mask of the 2D per-slice
        HD95 (an empty-vs-non-empty slice counts as its diagonal; 0 when no slice
        has foreground). Foreground = any nonzero label. On untouched slices the
        corrected labels are the old prediction, so the old model scores 1 / 0 mm
        there by construction and the new model's figures measure its drift.
    """
    old_pred, new_pred, target = (np.asarray(a) for a in (old_pred, new_pred, target))
    if not old_pred.shape == new_pred.shape == target.shape:
        raise ValueError(
            f"shapes differ: old {old_pred.shape}, new {new_pred.shape}, target {target.shape}"
        )
    ndim = target.ndim
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * ndim
    if ndim == 2:
        ax, depth = None, 1
    else:
        ax = _check_axis(axis, ndim)
        depth = target.shape[ax]
    chosen = set(_check_slices(slices, depth, ax or 0))
    groups = {
        "corrected": sorted(chosen),
        "untouched": [s for s in range(depth) if s not in chosen],
    }
    out: dict[str, dict[str, float]] = {}
    for name, idx in groups.items():
        row: dict[str, float] = {"n_slices": len(idx)}
        for tag, pred in (("old", old_pred), ("new", new_pred)):
            if not idx:
                figures = {"dice": math.nan, "hd95": math.nan}
            elif ax is None:
                figures = _group_metrics(pred, target, spacing, None)
            else:
                figures = _group_metrics(
                    np.take(pred, idx, axis=ax), np.take(target, idx, axis=ax), spacing, ax
                )
            row[f"dice_{tag}"] = figures["dice"]
            row[f"hd95_{tag}"] = figures["hd95"]
        out[name] = row
    return out


def worse_on_corrected(comparison: Mapping[str, Mapping[str, float]]) -> str | None:
    """A warning when the new model scores worse than its parent on the corrected
    slices (lower DSC against the corrections), else None.

    The corrected slices are the reason for a fine-tune; a model that fits them
    worse is rarely worth keeping (fewer epochs, a lower lr or mixing in the
    original data usually help).
    """
    row = comparison.get("corrected") or {}
    old, new = row.get("dice_old"), row.get("dice_new")
    if old is None or new is None or not (new < old):  # NaN compares False
        return None
    return (
        f"the fine-tuned model is worse than its parent on the corrected slices "
        f"(DSC {old:.3f} -> {new:.3f}); keep the parent, or try fewer epochs, a lower "
        "lr or mixing in the original data"
    )


def evaluate_finetune(
    result: FinetuneResult | str | os.PathLike,
    images: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float] | None,
    *,
    old_pred: np.ndarray | None = None,
    device: str | None = None,
    batch_size: int = 8,
    affine: np.ndarray | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Predict with the parent and the fine-tuned model and compare them
    (``affine``: the arrays' voxel-to-world matrix, as given to :func:`finetune`).

    Writes the comparison into the lineage as ``metrics``.

    Parameters
    ----------
    result
        A :class:`FinetuneResult` or the path of its ``lineage.json``.
    images, labels, spacing
        As given to :func:`finetune` (``labels``: the corrected labels).
    old_pred
        The parent's prediction if already known (saves one inference).
    device, batch_size
        Inference settings.

    Returns
    -------
    dict
        ``comparison`` (:func:`compare_models`), ``old_pred``, ``new_pred``
        ``(*spatial)`` int64, ``new_probs (C, *spatial)`` float32, ``changes``
        (:func:`prediction_changes`).
    """
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.predict import iter_predict_volume

    lineage_path = Path(result.lineage_path if isinstance(result, FinetuneResult) else result)
    lineage = read_lineage(lineage_path)
    if not lineage.get("checkpoint"):
        raise ValueError(f"{lineage_path}: the fine-tune wrote no checkpoint ({lineage['reason']})")
    images = np.asarray(images, dtype=np.float32)
    axis = int(lineage["axis"])

    def predict(checkpoint: str) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
        return iter_predict_volume(
            load_checkpoint(checkpoint),
            images,
            spacing,
            axis=axis if images.ndim == 4 else None,
            batch_size=batch_size,
            device=device,
            affine=affine,
        )

    if old_pred is None:
        yield Progress(0, 0, "predicting with the parent model")
        _, old_pred = yield from predict(lineage["parent"])
    yield Progress(0, 0, "predicting with the fine-tuned model")
    new_probs, new_pred = yield from predict(lineage["checkpoint"])
    taught = sorted({*lineage["slices"], *(lineage.get("verified_slices") or [])})
    comparison = compare_models(old_pred, new_pred, labels, spacing, taught, axis)
    update_lineage(lineage_path, metrics=comparison)
    return {
        "comparison": comparison,
        "old_pred": np.asarray(old_pred),
        "new_pred": new_pred,
        "new_probs": new_probs,
        "changes": prediction_changes(old_pred, new_pred),
    }
