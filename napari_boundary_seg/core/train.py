"""The trainer: :class:`TrainConfig` and :func:`train`, a generator of events.

``train(config)`` yields, in order:

1. :class:`InfoEvent` messages while it prepares (device chosen, cases loaded,
   distance maps computed, resume or fine-tune source), and :class:`Progress`
   events while it loads data;
2. per training step a :class:`StepEvent`; while paused a :class:`PauseEvent`
   (about every 0.2 s, so that a consumer such as napari's ``thread_worker`` can
   still quit);
3. per epoch an :class:`EpochEvent` with the validation figures;
4. a final :class:`DoneEvent`, which is also the generator's return value.

The defaults are the paper's (Kervadec et al. 2019): Adam, lr 1e-3, batch 8,
the lr halved after 20 epochs without improvement of the validation DSC (never
at epoch 0), no augmentation, GDL + boundary loss with the ``paper`` alpha
schedule, 256×256 slices. ``dims=3`` trains 3D patches instead
(:mod:`napari_boundary_seg.core.patches`), with augmentation that keeps φ exact
(:mod:`napari_boundary_seg.core.augment`; on by default in 3D, off in 2D).

Data: without a prebuilt ``dataset``, the cases are prepared one at a time into
an on-disk cache (2D slices or 3D volumes with their whole-volume φ) that
training reads memory-mapped, so memory does not grow with the number of cases.

Validation (each epoch): in 2D every validation case is predicted slice by slice with
:func:`napari_boundary_seg.core.predict.iter_predict_volume` (the same code
path as inference, at the case's own geometry), and DSC, HD and HD95 (mm) are
computed in 3D with the case's spacing, averaged over the foreground classes and
then over the cases; in 3D by Gaussian-weighted sliding windows of the patch
size (:func:`validate_volumes`). A Hausdorff distance that is infinite (exactly one of the
prediction and the label is empty) is replaced by the image diagonal
(:func:`napari_boundary_seg.core.metrics.replace_inf`) before averaging; the
number of such cases is reported as ``val_hd_inf``. Without validation cases
the best checkpoint and the lr plateau follow the training loss instead.

Reproducibility: the network is initialised from ``seed`` (inside
``torch.random.fork_rng``, the caller's RNG is left alone) and the slice order
of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``; a 3D patch (case, position, augmentation) and an augmented
slice are pure functions of ``(seed, epoch, index)``, whatever the number of
DataLoader workers. Nothing else is random, so a CPU run is repeatable and a resumed
run (from an epoch end or from a step where it was stopped) gives the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from napari_boundary_seg import __version__
from napari_boundary_seg.core import distributed
from napari_boundary_seg.core.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    checkpoint_config,
    read_checkpoint,
    save_checkpoint,
    training_mode,
)
from napari_boundary_seg.core.config import (
    DISTANCE_MODES,
    TrainConfig,
    boundary_only_from_start,
    loss_weights,
    settings,
)
from napari_boundary_seg.core.device import resolve_device
from napari_boundary_seg.core.events import (  # the event protocol, re-exported here
    METRICS_COLUMNS,
    DoneEvent,
    EpochEvent,
    InfoEvent,
    Outcome,
    PauseEvent,
    StepEvent,
    TrainControl,
)
from napari_boundary_seg.core.io import atomic_path, write_text_atomic
from napari_boundary_seg.core.losses import LossKind, LossParts, loss_for_kind, one_hot
from napari_boundary_seg.core.precision import (
    autocast,
    float32_region,
    make_scaler,
    memory_format,
    plan_precision,
)
from napari_boundary_seg.core.schedule import schedule_from_dict
from napari_boundary_seg.core.unet import UNet, pooling_strides
from napari_boundary_seg.core.validate import check_unet_fits

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS_COLUMNS",
    "DISTANCE_MODES",
    "DoneEvent",
    "EpochEvent",
    "InfoEvent",
    "Outcome",
    "PauseEvent",
    "StepEvent",
    "StepResult",
    "TrainConfig",
    "TrainControl",
    "build_model",
    "collate",
    "effective_weights",
    "epoch_order",
    "iter_batches",
    "library_versions",
    "preprocess_config",
    "step_losses",
    "to_device",
    "train",
    "train_step",
    "sliding_window_probs",
    "validate_cases",
    "validate_volumes",
    "read_metrics_csv",
]


_PAUSE_POLL_S = 0.2

_RESUME_FIELDS = tuple(s.name for s in settings(TrainConfig) if s.same_on_resume)
"""Config fields that a resumed run must share with the run it continues."""


# ---------------------------------------------------------------------------
# the training step (shared with the benchmark)


class StepResult(NamedTuple):
    """Python floats of one step's loss and its parts; ``stepped`` is False when
    the loss was not finite and no update was made."""

    loss: float
    region: float
    boundary: float
    stepped: bool


effective_weights = loss_weights
"""The ``(w_region, w_boundary)`` that a loss kind applies (:func:`~napari_boundary_seg.core.config.loss_weights`)."""


def step_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    dist: torch.Tensor,
    loss_kind: LossKind | str,
    weights: tuple[float, float],
    *,
    num_classes: int,
    validate: bool = False,
) -> LossParts:
    """The loss of one step, computed in float32 whatever the network's precision.

    The logits (float32, bfloat16 or float16 under autocast) are cast to
    float32 and softmax, one-hot and the losses run with autocast disabled:
    ``φ·s`` summed over millions of voxels in reduced precision would lose
    the small lesions.

    Parameters
    ----------
    logits
        ``(B, C, *spatial)`` network output, any floating dtype.
    labels
        ``(B, *spatial)`` int64 class indices.
    dist
        ``(B, C, *spatial)`` signed distance maps (mm).
    loss_kind, weights, num_classes, validate
        As in :func:`train_step`.
    """
    with float32_region(logits.device):
        probs = torch.softmax(logits.float(), dim=1)
        target = one_hot(labels, num_classes)
        return loss_for_kind(loss_kind, probs, target, dist.float(), weights, validate=validate)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[torch.Tensor],
    loss_kind: LossKind | str,
    weights: tuple[float, float],
    *,
    num_classes: int,
    scaler: torch.amp.GradScaler | None = None,
    validate: bool = False,
    autocast_dtype: torch.dtype | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepResult:
    """One optimisation step: forward, loss, backward, optimizer step.

    Parameters
    ----------
    model
        Network mapping ``(B, M, H, W)`` images to ``(B, C, H, W)`` logits.
    optimizer
        Its optimizer.
    batch
        ``(images (B, M, H, W) float32, labels (B, H, W) int64, dist (B, C, H, W)
        float32 mm)``, already on the model's device.
    loss_kind
        The objective (:class:`LossKind`).
    weights
        ``(w_region, w_boundary)`` of the schedule at this epoch.
    num_classes
        ``C``.
    scaler
        A ``GradScaler`` for float16 mixed precision (without ``autocast_dtype``
        the forward pass then runs under float16 autocast).
    validate
        Check the loss inputs' values (one host synchronisation).
    autocast_dtype
        Run the network under autocast at this dtype (``torch.bfloat16`` or
        ``torch.float16``); ``None``: float32. The losses are computed in
        float32 either way (:func:`step_losses`).
    reduce
        Applied to the tensor ``[loss, region, boundary]`` before the
        non-finite check (data-parallel runs pass
        :func:`~napari_boundary_seg.core.distributed.mean_across`, so that every
        rank reports the global figures and skips a step together).

    Returns
    -------
    StepResult
        When the loss is NaN or inf, no backward pass or update is made, the
        BatchNorm running statistics are restored, and ``stepped`` is False.
    """
    images, labels, dist = batch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    # BatchNorm running statistics change in the forward pass: keep them to undo a bad step
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    if scaler is not None and autocast_dtype is None:
        autocast_dtype = torch.float16
    with autocast(images.device, autocast_dtype):
        logits = model(images)
    parts = step_losses(
        logits, labels, dist, loss_kind, weights, num_classes=num_classes, validate=validate
    )
    values = torch.stack([parts.total.detach(), parts.region.detach(), parts.boundary.detach()])
    if reduce is not None:
        values = reduce(values)
    loss, region, boundary = (float(v) for v in values.cpu())
    if not math.isfinite(loss):
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)
        return StepResult(loss, region, boundary, False)
    if scaler is not None:
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        parts.total.backward()
        optimizer.step()
    return StepResult(loss, region, boundary, True)


# ---------------------------------------------------------------------------
# lr plateau, batching, checkpoints


@dataclass
class _Plateau:
    """Multiply the lr by ``factor`` after ``patience`` epochs without improvement.

    The first epoch sets the reference; it can never trigger a reduction.
    """

    patience: int
    factor: float
    mode: str  # "max" or "min"
    best: float | None = None
    bad_epochs: int = 0

    def update(self, value: float, optimizer: torch.optim.Optimizer) -> bool:
        """Record an epoch's figure; return True when it is a new best."""
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        else:
            improved = value > self.best if self.mode == "max" else value < self.best
        if improved:
            self.best = value
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            for group in optimizer.param_groups:
                group["lr"] *= self.factor
            logger.info("lr reduced to %g", optimizer.param_groups[0]["lr"])
            self.bad_epochs = 0
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "mode": self.mode}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.bad_epochs = int(state["bad_epochs"])
        self.mode = str(state["mode"])


def epoch_order(
    num_items: int,
    seed: int,
    epoch: int,
    foreground: np.ndarray | None = None,
    share: float = 0.0,
) -> torch.Tensor:
    """The slice order of an epoch: a permutation seeded by ``(seed, epoch)``.

    With ``share > 0`` and the indices of the ``foreground`` items, that share
    of the positions (evenly spread) holds a foreground item drawn at random
    instead (same generator: a pure function of ``(seed, epoch)``).
    """
    from napari_boundary_seg.core.patches import takes_share

    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + int(epoch)) % (2**63))
    order = torch.randperm(num_items, generator=generator)
    if share > 0 and foreground is not None and len(foreground) > 0:
        draws = torch.randint(len(foreground), (num_items,), generator=generator)
        for position in range(num_items):
            if takes_share(position, share):
                order[position] = int(foreground[int(draws[position])])
    return order


def foreground_items(dataset: Any) -> np.ndarray:
    """Indices of a 2D slice data set's items whose labels hold foreground."""
    if hasattr(dataset, "entries") and hasattr(dataset, "_position"):  # DiskSliceDataset
        flags = [
            dataset.entries[int(c)].nonempty[int(k)]
            for c, k in zip(dataset.case_index, dataset._position, strict=True)
        ]
    elif hasattr(dataset, "labels"):  # in-memory SliceDataset
        flags = dataset.labels.reshape(len(dataset.labels), -1).any(dim=1).tolist()
    else:
        flags = [bool(dataset[i][1].any()) for i in range(len(dataset))]
    return np.flatnonzero(np.asarray(flags, dtype=bool))


def collate(dataset: Any, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Stack the items ``indices`` of a slice dataset into a batch.

    Returns
    -------
    tuple
        ``(images (B, M, H, W) float32, labels (B, H, W) int64, dist (B, C, H, W)
        float32)``.
    """
    tensors = [getattr(dataset, name, None) for name in ("images", "labels", "dist")]
    if all(isinstance(t, torch.Tensor) for t in tensors):  # SliceDataset: one gather each
        index = torch.as_tensor(indices, dtype=torch.long)
        images, labels, dist = (t.index_select(0, index) for t in tensors)
        return images, labels.long(), dist  # labels are stored as uint8
    items = [dataset[int(i)] for i in indices]
    return tuple(torch.stack([torch.as_tensor(item[k]) for item in items]) for k in range(3))


def to_device(batch: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Move a batch's tensors to ``device`` (non-blocking on CUDA)."""
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) for t in batch)


def iter_batches(
    dataset: Any,
    order: torch.Tensor,
    batch_size: int,
    start_step: int,
    stop_step: int,
    num_workers: int = 0,
) -> Generator[tuple[torch.Tensor, ...], None, None]:
    """The CPU batches of steps ``start_step .. stop_step - 1`` of an epoch.

    Step ``k`` holds the items ``order[k * batch_size : (k + 1) * batch_size]``.
    With ``num_workers == 0`` they are gathered in this process by
    :func:`collate` (the fastest for an in-memory data set); otherwise a
    :class:`torch.utils.data.DataLoader` with that many workers loads them.
    """
    steps = [
        order[k * batch_size : (k + 1) * batch_size].tolist() for k in range(start_step, stop_step)
    ]
    if num_workers == 0:
        for indices in steps:
            yield collate(dataset, indices)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_sampler=steps, num_workers=num_workers)
    for batch in loader:
        yield tuple(batch)


def library_versions() -> dict[str, str]:
    """Versions recorded in checkpoints."""
    return {
        "napari_boundary_seg": __version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history entry as a ``metrics.csv`` row: ``epoch`` counted from 1, as every
    message counts (history entries and events count from 0)."""
    out = {k: row.get(k, "") for k in METRICS_COLUMNS}
    if out["epoch"] != "":
        out["epoch"] = int(out["epoch"]) + 1
    return out


def _write_metrics_csv(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow(_csv_row(row))


def _append_metrics_csv(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(_csv_row(row))


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as numbers (``is_best`` as 0/1), with
    ``epoch`` counted from 1. Files of earlier versions, whose ``epoch`` column
    counted from 0 (their first row says 0), are read the same way."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, float] = {}
            for key, value in row.items():
                if value in ("True", "False"):
                    parsed[key] = float(value == "True")
                elif value:
                    parsed[key] = float(value)
            rows.append(parsed)
    if rows and rows[0].get("epoch") == 0:  # an earlier version's file: counted from 0
        for row in rows:
            if "epoch" in row:
                row["epoch"] += 1
    return rows


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


# ---------------------------------------------------------------------------
# data


@dataclass
class _Data:
    train_cases: list[Any]
    val_cases: list[Any]
    dataset: Any
    in_channels: int
    modalities: list[str]
    keep_alive: Any = None  # a temporary cache folder, removed with this object
    slice_spacing: tuple[float, float] | None = None  # "auto" resolved on the training cases


def _split_train_val(
    config: TrainConfig, cases: list[Any], val_cases: Sequence[Any] | None
) -> tuple[list[Any], list[Any]]:
    """The training and validation cases: ``cases`` and ``val_cases`` when those are
    given, else ``config.val_fraction`` of ``cases`` split off with the run's split
    seed (no validation cases when the fraction is 0 or there is a single case)."""
    from napari_boundary_seg.core.data import split_cases

    if val_cases is not None:
        return cases, list(val_cases)
    if config.val_fraction > 0 and len(cases) > 1:
        train_cases, val_list = split_cases(cases, config.val_fraction, config.effective_split_seed)
        return list(train_cases), list(val_list)
    return cases, []


def _iter_prepare_volumes(
    config: TrainConfig,
    cases: Sequence[Any] | None,
    val_cases: Sequence[Any] | None,
    out_dir: Path | None,
    writer: bool = True,
    source: Mapping[str, Any] | None = None,
) -> Generator[Any, None, _Data]:
    """Every case (training and validation) prepared in the cache, one at a time.

    ``source``: the checkpoint the run starts from (resume or fine-tune), whose
    input channels every case must fit.

    Cases are read from ``config.data`` one by one (never all held), or taken
    from ``cases``. 3D: the training data set reads patches of the cached
    volumes memory-mapped. 2D: the training cases are cached as the paper's
    slices (:class:`~napari_boundary_seg.core.patches.DiskSliceDataset`, the
    same slices and φ as the in-memory ``SliceDataset``). Validation cases are
    cached volumes, read one at a time. The cache is ``config.cache_dir``, else
    ``<out_dir>/cache`` (ranks > 0 of a distributed run read it once rank 0 has
    prepared it, and use a temporary folder of their own when it is not
    there), else a temporary folder removed with the returned object.
    """
    import tempfile

    from napari_boundary_seg.core.augment import AugmentConfig
    from napari_boundary_seg.core.patches import (
        DiskSliceDataset,
        PatchDataset,
        iter_cache_cases,
        iter_cache_slices,
    )

    if cases is None:
        cases = _config_case_files(config)
    cases = list(cases)
    if not cases:
        raise ValueError("no training cases given")
    unlabelled = [c.case_id for c in cases if getattr(c, "label_path", True) is None]
    unlabelled += [c.case_id for c in cases if getattr(c, "labels", 0) is None]
    if unlabelled:
        raise ValueError(f"cases without labels cannot be used for training: {unlabelled}")
    train_src, val_src = _split_train_val(config, cases, val_cases)
    from napari_boundary_seg.core.data import iter_check_cases

    # every case is read and checked before the first cache entry is written
    expected = None
    saved = (source or {}).get("model") or {}
    if "in_channels" in saved:
        expected = (int(saved["in_channels"]), str(config.resume_from or config.init_checkpoint))
    shapes = yield from iter_check_cases(
        [*train_src, *val_src], config.num_classes, config.canonical, expected
    )
    if config.dims == 3:
        for source, shape in zip([*train_src, *val_src], shapes, strict=True):
            if len(shape) == 3 and any(
                s < p for s, p in zip(shape, config.patch_size, strict=True)
            ):
                raise ValueError(
                    f"case {source.case_id} of shape {shape} is smaller than the patch "
                    f"{tuple(config.patch_size)}; choose a patch_size no larger than every volume"
                )
    resolved_spacing = None
    if config.dims == 2 and config.slice_size is None and config.slice_spacing == "auto":
        from napari_boundary_seg.core.data import median_slice_spacing

        resolved_spacing = median_slice_spacing(train_src, preprocess_config(config))
        if resolved_spacing is not None:
            config = dataclasses.replace(config, slice_spacing=resolved_spacing)
            yield InfoEvent(
                "slices resampled to {:.3g} x {:.3g} mm (the training cases' median)".format(
                    *resolved_spacing
                )
            )
    keep_alive = None
    if config.cache_dir is not None:
        cache_dir = Path(config.cache_dir)
    elif out_dir is not None and (writer or (out_dir / "cache").is_dir()):
        cache_dir = out_dir / "cache"  # ranks > 0 read the one rank 0 prepared
    else:
        keep_alive = tempfile.TemporaryDirectory(prefix="nbs-cache-")
        cache_dir = Path(keep_alive.name)
    yield InfoEvent(f"preparing {len(train_src) + len(val_src)} cases in the cache {cache_dir}")
    args = (
        cache_dir,
        config.num_classes,
        config.scale,
        config.percentiles,
        config.normalize,
        config.canonical,
    )
    if config.dims == 3:
        train_entries = yield from iter_cache_cases(list(train_src), *args)
    else:
        train_entries = yield from iter_cache_slices(
            list(train_src),
            cache_dir,
            config.num_classes,
            preprocess_config(config),
            config.distance,
        )
    val_entries = yield from iter_cache_cases(list(val_src), *args)
    channels = {len(e.modalities) for e in [*train_entries, *val_entries]}
    if len(channels) != 1:
        raise ValueError(f"cases have different numbers of modalities: {sorted(channels)}")
    if config.dims == 3:
        dims = {len(e.shape) for e in [*train_entries, *val_entries]}
        if dims != {3}:
            raise ValueError(f"dims=3 needs 3D volumes, got cases with {sorted(dims)} spatial axes")
        dataset = PatchDataset(
            train_entries,
            config.patch_size,
            oversample=config.oversample,
            seed=config.seed,
            augment=AugmentConfig() if config.augment_enabled else None,
        )
    else:
        dataset = DiskSliceDataset(train_entries, config.skip_empty_slices, config.distance)
    return _Data(
        train_entries,
        val_entries,
        dataset,
        channels.pop(),
        list(train_entries[0].modalities),
        keep_alive,
        resolved_spacing,
    )


def _iter_prepare_data(
    config: TrainConfig,
    cases: Sequence[Any] | None,
    val_cases: Sequence[Any] | None,
    dataset: Any,
) -> Generator[Any, None, _Data]:
    from napari_boundary_seg.core import data as data_mod

    if cases is None:
        cases = yield from data_mod.iter_load_cases(_config_case_files(config))
    cases = list(cases)
    if not cases:
        raise ValueError("no training cases given")
    unlabelled = [c.case_id for c in cases if c.labels is None]
    if unlabelled:
        raise ValueError(f"cases without labels cannot be used for training: {unlabelled}")
    train_cases, val_list = _split_train_val(config, cases, val_cases)
    channels = {c.images.shape[0] for c in [*train_cases, *val_list]}
    if len(channels) != 1:
        raise ValueError(f"cases have different numbers of modalities: {sorted(channels)}")
    if dataset is None:
        yield InfoEvent(f"computing {config.distance} distance maps of {len(train_cases)} cases")
        dataset = yield from _iter_build_dataset(config, train_cases)
    modalities = list(getattr(train_cases[0], "modalities", None) or [])
    return _Data(train_cases, val_list, dataset, channels.pop(), modalities)


def epoch_steps(num_slices: int, batch_size: int, cap: int | None) -> int:
    """Optimizer steps in one epoch: every slice once, at most ``cap`` steps."""
    steps = math.ceil(num_slices / batch_size)
    return steps if cap is None else min(steps, cap)


def preprocess_config(config: TrainConfig) -> Any:
    """The :class:`~napari_boundary_seg.core.data.PreprocessConfig` of a training config."""
    from napari_boundary_seg.core.data import PreprocessConfig

    spacing = config.slice_spacing
    return PreprocessConfig(
        scale=config.scale,
        percentiles=config.percentiles,
        slice_size=config.slice_size,
        axis=config.axis,
        skip_empty_slices=config.skip_empty_slices,
        normalize=config.normalize,
        canonical=config.canonical,
        slice_spacing=None if spacing in (None, "auto") else spacing,
        crop=config.crop_to_head,
    )


def _iter_build_dataset(config: TrainConfig, cases: Sequence[Any]) -> Generator[Any, None, Any]:
    from napari_boundary_seg.core.data import iter_build_dataset

    return (
        yield from iter_build_dataset(
            list(cases),
            config.num_classes,
            preprocess_config(config),
            distance=config.distance,
            cache_dir=config.cache_dir,
        )
    )


# ---------------------------------------------------------------------------
# validation


def _case_scores(
    pred: np.ndarray, labels: np.ndarray, spacing: Sequence[float], num_classes: int
) -> tuple[float, float, float, bool]:
    """One case's DSC, HD and HD95 (mm), each the mean over the foreground classes
    (an infinite distance replaced by the image diagonal), and whether an HD was
    infinite."""
    from napari_boundary_seg.core.metrics import replace_inf, surface_metrics

    per_class = [surface_metrics(pred == c, labels == c, spacing) for c in range(1, num_classes)]
    case_hd = [m["hd"] for m in per_class]
    shape = labels.shape
    return (
        _nanmean([m["dice"] for m in per_class]),
        _nanmean([replace_inf(v, shape, spacing) for v in case_hd]),
        _nanmean([replace_inf(m["hd95"], shape, spacing) for m in per_class]),
        any(math.isinf(v) for v in case_hd),
    )


def _val_summary(scores: Sequence[tuple[float, float, float, bool]]) -> dict[str, float]:
    """The validation figures: means of :func:`_case_scores` over the cases (NaN
    without cases) and the number of cases whose HD was infinite."""
    return {
        "val_dice": _nanmean([s[0] for s in scores]),
        "val_hd": _nanmean([s[1] for s in scores]),
        "val_hd95": _nanmean([s[2] for s in scores]),
        "val_hd_inf": sum(1 for s in scores if s[3]),
    }


def validate_cases(
    model: nn.Module,
    cases: Sequence[Any],
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Mean DSC, HD and HD95 (mm) of ``model`` over ``cases``, in 3D with spacing.

    Returns
    -------
    dict
        ``val_dice``, ``val_hd``, ``val_hd95`` (NaN without cases) and
        ``val_hd_inf`` (cases whose HD was infinite and replaced by the diagonal).
    """
    from napari_boundary_seg.core.predict import predict_volume

    scores = []
    preprocess = preprocess_config(config)
    for case in cases:
        if hasattr(case, "open"):  # a cached case: images already scaled, read one at a time
            images = np.asarray(case.open("image"))
            labels = np.asarray(case.open("labels"))
            case_preprocess = dataclasses.replace(preprocess, scale=False)
        else:
            images, labels, case_preprocess = case.images, case.labels, preprocess
            if getattr(case, "normalized", False):  # a part of a volume normalised as a whole
                case_preprocess = dataclasses.replace(preprocess, scale=False)
        _, pred = predict_volume(
            model,
            images,
            case.spacing,
            preprocess=case_preprocess,
            batch_size=config.batch_size,
            device=device,
            affine=np.asarray(case.affine, dtype=float),
        )
        scores.append(_case_scores(pred, labels, case.spacing, config.num_classes))
        del images, labels, pred
    return _val_summary(scores)


def _config_case_files(config: TrainConfig) -> list[Any]:
    """The cases of ``config.data`` (files, not loaded); an error naming the
    folder when it is unset or holds none."""
    from napari_boundary_seg.core import data as data_mod

    if config.data is None:
        raise ValueError("TrainConfig.data is not set and no cases were given to train()")
    files = data_mod.find_cases(config.data)
    if not files:
        raise ValueError(f"no cases found in {config.data}")
    return files


def build_model(hparams: Mapping[str, Any]) -> nn.Module:
    """The :class:`~napari_boundary_seg.core.unet.UNet` of ``hparams`` (2D or 3D)."""
    return UNet(**dict(hparams))


def sliding_window_probs(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    batch_size: int = 2,
    overlap: float = 0.5,
) -> torch.Tensor:
    """Probabilities ``(C, *V)`` of ``image (M, *V)`` by Gaussian-weighted sliding windows.

    :func:`napari_boundary_seg.core.predict.iter_sliding_window` (the inference of
    ``predict``) run to its end; the model is used as it is (``eval()`` first).
    """
    from napari_boundary_seg.core.predict import iter_sliding_window
    from napari_boundary_seg.core.progress import run_to_end

    return run_to_end(
        iter_sliding_window(model, image, patch_size, overlap=overlap, sw_batch_size=batch_size)
    )


def validate_volumes(
    model: nn.Module,
    entries: Sequence[Any],
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """3D validation: :func:`validate_cases`'s figures from cached volumes.

    Each validation case is read from the volume cache (memory-mapped, one at
    a time) and predicted by sliding windows of ``config.patch_size``.
    """
    scores = []
    was_training = model.training
    model.eval()
    try:
        for entry in entries:
            image = np.array(entry.open("image"), dtype=np.float32)
            probs = sliding_window_probs(model, image, config.patch_size, config.batch_size)
            pred = probs.argmax(0).cpu().numpy()
            del image, probs
            labels = np.asarray(entry.open("labels"))
            scores.append(_case_scores(pred, labels, entry.spacing, config.num_classes))
    finally:
        model.train(was_training)
    return _val_summary(scores)


# ---------------------------------------------------------------------------
# the trainer


def _check_out_dir(config: TrainConfig) -> Path | None:
    if config.out_dir is None:
        return None
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    # a run killed before its first checkpoint left only config.json and metrics.csv:
    # nothing to lose, so the folder does not block a new run
    existing = [n for n in ("last.pt", "best.pt") if (out / n).exists()]
    resuming_here = config.resume_from is not None and (
        Path(config.resume_from).resolve().parent == out.resolve()
    )
    if existing and not config.overwrite and not resuming_here:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); resume from its last.pt, "
            "choose another out_dir, or allow overwrite"
        )
    return out


def _load_source(path: str) -> dict[str, Any]:
    return read_checkpoint(path)


def _check_resume_config(config: TrainConfig, saved: Mapping[str, Any], path: str) -> None:
    saved_config = TrainConfig.from_dict(checkpoint_config(saved)).to_dict()
    ours = config.to_dict()
    diffs = [
        f"{k}: {saved_config[k]!r} in the checkpoint, {ours[k]!r} now"
        for k in _RESUME_FIELDS
        if saved_config.get(k) != ours.get(k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the config differs ({'; '.join(diffs)}); "
            "use TrainConfig.from_dict(checkpoint['config']) or fine-tune instead"
        )
    if config.epochs < int(saved["position"]["epoch"]):
        raise ValueError(
            f"cannot resume from {path}: it has done {saved['position']['epoch']} epochs, "
            f"more than epochs={config.epochs}"
        )


def _prepare_network(
    model: nn.Module, config: TrainConfig, device: torch.device, ctx: distributed.DistContext
) -> tuple[nn.Module, list[str]]:
    """The network the steps run (channels-last, DDP, compiled as configured) and notes.

    ``model`` stays the bare network: checkpoints and validation use it.
    """
    notes = []
    fixed_shapes = config.slice_size is not None or getattr(config, "patch_size", None)
    if device.type == "cuda" and fixed_shapes:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
    if config.channels_last:
        model.to(memory_format=memory_format(model))
        notes.append("channels-last memory format")
    net, note = distributed.wrap_model(model, device, ctx)
    if ctx.is_distributed:
        notes.append(
            f"DistributedDataParallel: {ctx.world_size} processes ({ctx.backend}), this is "
            f"rank {ctx.rank}; batch {config.batch_size} per process, global batch "
            f"{ctx.world_size * config.batch_size}; rank 0 writes the files"
        )
    if note:
        notes.append(note)
    if config.compile:
        net = torch.compile(net)
        notes.append("torch.compile: the first steps compile the network")
    return net, notes


def _precision_notes(config: TrainConfig, plan: Any) -> list[str]:
    notes = []
    if config.amp:
        notes.append(
            "warning: TrainConfig.amp (--amp) is deprecated; it maps onto precision='16-mixed'"
        )
    if plan.note:
        notes.append(plan.note)
    if config.precision != "32" and not plan.note:
        notes.append(f"precision {config.precision}; losses computed in float32")
    return notes


def _resume_world(source: Mapping[str, Any], world: int, batch_size: int) -> tuple[int, str]:
    """The resumed step when the number of processes changed, and a note saying so."""
    step = int(source["position"]["step"])
    saved = int(source.get("world_size") or 1)
    if saved == world:
        return step, ""
    new_step = distributed.resume_step(step, saved, world)
    return new_step, (
        f"; the checkpoint was written by {saved} process(es), this run has {world}: the "
        f"global batch is now {world * batch_size} (was {saved * batch_size})"
        + (
            f", the {step} step(s) done in the epoch count as {new_step}"
            if new_step != step
            else ""
        )
    )


def _validate(
    model: nn.Module,
    cases: Sequence[Any],
    config: TrainConfig,
    device: torch.device,
    ctx: distributed.DistContext,
) -> dict[str, float]:
    """:func:`validate_cases`; with several processes each rank takes a share of
    the cases and the figures are all-reduced (every rank gets the same)."""
    validate = validate_volumes if config.dims == 3 else validate_cases
    if not ctx.is_distributed:
        return validate(model, cases, config, device)
    rows = [validate(model, [case], config, device) for case in cases[ctx.rank :: ctx.world_size]]
    return distributed.reduce_case_figures(
        rows, ctx, device, ("val_dice", "val_hd", "val_hd95"), ("val_hd_inf",)
    )


def train(
    config: TrainConfig,
    cases: Sequence[Any] | None = None,
    control: TrainControl | None = None,
    *,
    val_cases: Sequence[Any] | None = None,
    dataset: Any = None,
) -> Generator[Any, None, DoneEvent]:
    """Train a UNet; a generator of events that returns the :class:`DoneEvent`.

    Parameters
    ----------
    config
        The run's settings.
    cases
        In-memory :class:`~napari_boundary_seg.core.data.Case` objects (with
        labels); ``None`` loads ``config.data``. They are split patient-wise
        into training and validation with ``config.val_fraction``.
    control
        Stop / pause requests, honoured before each step.
    val_cases
        Validation cases given explicitly; ``cases`` are then all for training.
    dataset
        A prebuilt slice dataset of the training cases (items ``(image (M, H, W),
        labels (H, W), dist (C, H, W))``), to share distance maps between runs;
        with ``dims=3``, a patch data set keyed by ``(epoch, index)`` with a
        ``patch_size`` (the fine-tune of a 3D checkpoint restricts its patches).

    Yields
    ------
    InfoEvent, Progress, StepEvent, PauseEvent, EpochEvent, DoneEvent

    Returns
    -------
    DoneEvent
    """
    control = control or TrainControl()
    ctx = distributed.current()
    out_dir = _check_out_dir(config) if ctx.is_writer else None  # rank 0 alone writes
    device = distributed.device_for(resolve_device(config.device), ctx)
    yield InfoEvent(f"training on {device}", device=str(device))

    source: dict[str, Any] | None = None
    if config.resume_from is not None:
        source = _load_source(config.resume_from)
        _check_resume_config(config, source, config.resume_from)
    elif config.init_checkpoint is not None:
        source = _load_source(config.init_checkpoint)

    if config.dims == 3 and dataset is not None and not hasattr(dataset, "patch_size"):
        raise ValueError(
            "train(dataset=...) with dims=3 needs a patch data set keyed by (epoch, index) "
            "(with a patch_size, as core.patches.PatchDataset), not a 2D slice data set"
        )
    # rank 0 prepares the cache first, the other ranks then read what it wrote
    with distributed.main_process_first(ctx, device):
        if dataset is None:  # cases prepared one at a time into the cache, read memory-mapped
            run_dir = None if config.out_dir is None else Path(config.out_dir)
            data = yield from _iter_prepare_volumes(
                config, cases, val_cases, run_dir, ctx.is_writer, source
            )
        else:  # a prebuilt in-memory slice data set (the study shares one between runs)
            data = yield from _iter_prepare_data(config, cases, val_cases, dataset)
    if data.slice_spacing is not None:  # "auto" resolved: the checkpoint keeps the value
        config = dataclasses.replace(config, slice_spacing=data.slice_spacing)
    num_slices = len(data.dataset)
    fg_items = None
    if config.dims == 2 and config.slice_oversample > 0:
        fg_items = foreground_items(data.dataset)
    if num_slices == 0:
        raise ValueError("the training cases hold no slices")
    train_set = data.dataset
    if config.dims == 2 and config.augment_enabled:
        from napari_boundary_seg.core.augment import AugmentConfig
        from napari_boundary_seg.core.patches import AugmentedSlices

        train_set = AugmentedSlices(data.dataset, AugmentConfig(), seed=config.seed)

    hparams = {
        "in_channels": data.in_channels,
        "num_classes": config.num_classes,
        "depth": config.depth,
        "base_channels": config.base_channels,
    }
    if config.dims == 3:  # nnU-Net's anisotropic pooling for the first training case's spacing
        hparams["spatial_dims"] = 3
        hparams["strides"] = [
            list(s)
            for s in pooling_strides(data.train_cases[0].spacing, config.patch_size, config.depth)
        ]
    if source is not None:
        saved = dict(source["model"])
        source_path = config.resume_from or config.init_checkpoint
        if int(saved.get("spatial_dims", 2)) != config.dims:
            raise ValueError(
                f"checkpoint {source_path} holds a {saved.get('spatial_dims', 2)}D model but "
                f"the config asks for dims={config.dims}"
            )
        for key in ("in_channels", "num_classes"):
            if saved[key] != hparams[key]:
                raise ValueError(
                    f"checkpoint {source_path} has {key}={saved[key]} but the data/config "
                    f"need {key}={hparams[key]}"
                )
        hparams = saved
    # the network must fit the slices (and be buildable) before anything is allocated;
    # 3D pooling strides are chosen to fit the patch (pooling_strides)
    if config.dims == 2:
        check_unet_fits(int(hparams["depth"]), tuple(data.dataset[0][0].shape[-2:]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(hparams)
    if source is not None:
        model.load_state_dict(source["model_state"])
    model.to(device)
    net, setup_notes = _prepare_network(model, config, device, ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    has_val = bool(data.val_cases)
    plateau = _Plateau(config.lr_patience, config.lr_factor, "max" if has_val else "min")
    plan = plan_precision(config.precision, device)
    scaler = make_scaler(plan, device)
    for note in _precision_notes(config, plan) + setup_notes:
        logger.info(note)
        yield InfoEvent(note, device=str(device))
    schedule = schedule_from_dict(config.schedule)
    if boundary_only_from_start(config.loss, schedule):
        warning = (
            "warning: the boundary loss alone from the first epoch collapses to an empty "
            "foreground in binary problems (Kervadec et al. 2019); start with a regional loss"
        )
        logger.warning(warning)
        yield InfoEvent(warning, device=str(device))

    history: list[dict[str, Any]] = []
    start_epoch, start_step = 0, 0
    partial = {"loss": 0.0, "region": 0.0, "boundary": 0.0, "steps": 0, "seconds": 0.0}
    parent = None
    if config.resume_from is not None and source is not None:
        optimizer.load_state_dict(source["optimizer_state"])
        plateau.load_state_dict(source["lr_state"])
        if scaler is not None and source.get("scaler_state"):
            scaler.load_state_dict(source["scaler_state"])
        history = [dict(row) for row in source["history"]]
        start_epoch = int(source["position"]["epoch"])
        start_step, world_note = _resume_world(source, ctx.world_size, config.batch_size)
        partial.update(source.get("partial") or {})
        parent = source.get("parent")
        message = (
            # counted from 1, for people: the epoch and the step it goes on with
            f"resuming from {config.resume_from} at epoch {start_epoch + 1}, "
            f"step {start_step + 1}"
            f"{world_note}"
        )
    elif config.init_checkpoint is not None:
        parent = os.path.abspath(config.init_checkpoint)
        message = f"fine-tuning from {config.init_checkpoint}"
    else:
        message = "training from scratch"

    shard = distributed.shard_length(num_slices, ctx.world_size)  # slices per process
    steps_per_epoch = epoch_steps(shard, config.batch_size, config.max_steps_per_epoch)
    yield InfoEvent(
        message,
        device=str(device),
        num_train_cases=len(data.train_cases),
        num_val_cases=len(data.val_cases),
        num_train_slices=num_slices,
        steps_per_epoch=steps_per_epoch,
        start_epoch=start_epoch,
        num_parameters=sum(p.numel() for p in model.parameters()),
    )

    best_path = out_dir / "best.pt" if out_dir else None
    last_path = out_dir / "last.pt" if out_dir else None
    csv_path = out_dir / "metrics.csv" if out_dir else None
    if out_dir is not None:
        write_text_atomic(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        _write_metrics_csv(csv_path, history)
    wrote_best = best_path is not None and best_path.exists() and config.resume_from is not None
    wrote_last = last_path is not None and last_path.exists() and config.resume_from is not None

    def checkpoint(epoch: int, step: int, part: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": dict(model.hparams),
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": optimizer.state_dict(),
            "lr_state": plateau.state_dict(),
            "scaler_state": scaler.state_dict() if scaler is not None else None,
            "config": config.to_dict(),
            **training_mode(config.to_dict()),
            "schedule": schedule.to_dict(),
            "position": {"epoch": epoch, "step": step},
            "partial": dict(part),
            "history": [dict(row) for row in history],
            "seed": config.seed,
            "world_size": ctx.world_size,  # processes of the run (steps count global batches)
            "rng_state": torch.get_rng_state(),
            "versions": library_versions(),
            "modalities": list(data.modalities),
            "train_cases": [str(c.case_id) for c in data.train_cases],
            "val_cases": [str(c.case_id) for c in data.val_cases],
            "parent": parent,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def done(outcome: Outcome, reason: str) -> DoneEvent:
        model.cpu()
        return DoneEvent(
            str(best_path) if wrote_best else None,
            str(last_path) if wrote_last else None,
            [dict(row) for row in history],
            outcome is not Outcome.COMPLETED,
            reason,
            model,
            outcome,
        )

    first_step = True
    for epoch in range(start_epoch, config.epochs):
        w_region, w_boundary = effective_weights(config.loss, schedule(epoch))
        order = distributed.shard_indices(
            epoch_order(num_slices, config.seed, epoch, fg_items, config.slice_oversample),
            ctx.rank,
            ctx.world_size,
        )
        if epoch != start_epoch:
            start_step = 0
            partial = {"loss": 0.0, "region": 0.0, "boundary": 0.0, "steps": 0, "seconds": 0.0}
        if train_set is data.dataset and config.dims == 2:  # as before: in-memory slices
            batches = iter_batches(
                data.dataset,
                order,
                config.batch_size,
                start_step,
                steps_per_epoch,
                config.num_workers,
            )
        else:  # keyed items (epoch, index): 3D patches, augmented slices
            from napari_boundary_seg.core.patches import epoch_batches, iter_keyed_batches

            if config.dims == 2:  # the rank's shard of the slice order
                keys = epoch_batches(
                    epoch, config.batch_size, start_step, steps_per_epoch, order.tolist()
                )
            else:  # 3D: indices of the epoch interleaved over the ranks
                keys = epoch_batches(
                    epoch,
                    config.batch_size,
                    start_step,
                    steps_per_epoch,
                    None,
                    rank=ctx.rank,
                    world_size=ctx.world_size,
                )
            batches = iter_keyed_batches(train_set, keys, config.num_workers, config.seed)
        for step in range(start_step, steps_per_epoch):
            while control.paused:
                yield PauseEvent(epoch, step)
                control.wait(_PAUSE_POLL_S)
            if distributed.any_rank(control.stop_requested, ctx, device):  # agreed by all ranks
                if last_path is not None:
                    save_checkpoint(last_path, checkpoint(epoch, step, partial))
                    wrote_last = True
                # counted from 1, for people (as the widgets and the CLI's log)
                reason = f"stopped by request in epoch {epoch + 1} after {step} step(s)"
                logger.info(reason)
                event = done(Outcome.STOPPED, reason)
                yield event
                return event
            tic = time.perf_counter()
            batch = to_device(next(batches), device)
            if config.channels_last:
                batch = (batch[0].contiguous(memory_format=memory_format(model)), *batch[1:])
            result = train_step(
                net,
                optimizer,
                batch,
                config.loss,
                (w_region, w_boundary),
                num_classes=config.num_classes,
                scaler=scaler,
                validate=first_step,
                autocast_dtype=plan.dtype,
                reduce=distributed.mean_across if ctx.is_distributed else None,
            )
            first_step = False
            seconds = time.perf_counter() - tic
            if not result.stepped:
                kept = f"; {last_path} keeps the last good weights" if wrote_last else ""
                reason = (
                    f"non-finite loss ({result.loss}) at epoch {epoch + 1}, step {step + 1} "
                    f"(region {result.region}, boundary {result.boundary}); "
                    f"stopped{kept}. Try a lower lr or check the data."
                )
                logger.error(reason)
                event = done(Outcome.NON_FINITE, reason)
                yield event
                return event
            partial["loss"] += result.loss
            partial["region"] += result.region
            partial["boundary"] += result.boundary
            partial["steps"] += 1
            partial["seconds"] += seconds
            yield StepEvent(
                epoch,
                step,
                steps_per_epoch,
                result.loss,
                result.region,
                result.boundary,
                w_region,
                w_boundary,
                optimizer.param_groups[0]["lr"],
                seconds,
            )

        tic = time.perf_counter()
        figures = _validate(model, data.val_cases, config, device, ctx)
        n_steps = max(int(partial["steps"]), 1)
        train_loss = partial["loss"] / n_steps
        lr_used = optimizer.param_groups[0]["lr"]
        monitored = figures["val_dice"] if has_val else train_loss
        is_best = plateau.update(monitored, optimizer)
        event = EpochEvent(
            epoch=epoch,
            train_loss=train_loss,
            region=partial["region"] / n_steps,
            boundary=partial["boundary"] / n_steps,
            w_region=w_region,
            w_boundary=w_boundary,
            lr=lr_used,
            val_dice=figures["val_dice"],
            val_hd=figures["val_hd"],
            val_hd95=figures["val_hd95"],
            seconds=partial["seconds"] + time.perf_counter() - tic,
            is_best=is_best,
            val_hd_inf=figures["val_hd_inf"],
        )
        history.append(event.as_row())
        if out_dir is not None:
            state = checkpoint(epoch + 1, 0, {})
            save_checkpoint(last_path, state)
            wrote_last = True
            if is_best:
                save_checkpoint(best_path, state)
                wrote_best = True
            _append_metrics_csv(csv_path, event.as_row())
        yield event

    event = done(Outcome.COMPLETED, "completed")
    yield event
    return event
