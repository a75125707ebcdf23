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
schedule. What differs between 2D slices (``dims=2``, the paper's) and 3D
patches (``dims=3``) is the run's training mode
(:mod:`napari_boundary_seg.core.modes`), chosen once from the config: how
the cases are cached and sampled, the network's pooling, an epoch's length
and batches, and validation (slice by slice, or Gaussian sliding windows). Data:
without a prebuilt ``dataset``, the cases are prepared one at a time into an
on-disk cache that training reads memory-mapped, so memory does not grow with
the number of cases.

:func:`train` is a short loop of named steps (see ``docs/DESIGN.md``, "The
training loop"): the data (:func:`_iter_prepare`), the network, the position
(resume), then per epoch the training steps, validation with the lr plateau,
and the files (``last.pt``, ``best.pt``, ``metrics.csv``).

Validation (each epoch): DSC, HD and HD95 (mm) computed in 3D with each
case's spacing, averaged over the foreground classes and then over the cases.
A Hausdorff distance that is infinite (exactly one of the prediction and the
label is empty) is replaced by the image diagonal
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

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from napari_boundary_seg.core import distributed
from napari_boundary_seg.core.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    checkpoint_config,
    library_versions,
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
    uses_schedule,
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
from napari_boundary_seg.core.losses import LossKind, LossParts, loss_for_kind, one_hot
from napari_boundary_seg.core.modes import (
    PatchMode,
    SliceMode,
    TrainingData,
    TrainingMode,
    mode_for,
)
from napari_boundary_seg.core.modes.base import epoch_steps, preprocess_config
from napari_boundary_seg.core.modes.patches import sliding_window_probs
from napari_boundary_seg.core.modes.slices import (
    collate,
    epoch_order,
    iter_batches,
)
from napari_boundary_seg.core.precision import (
    autocast,
    float32_region,
    make_scaler,
    memory_format,
    plan_precision,
)
from napari_boundary_seg.core.run_files import (
    append_metrics_row,
    check_out_dir,
    read_metrics_csv,
    write_run_start,
)
from napari_boundary_seg.core.schedule import schedule_from_dict
from napari_boundary_seg.core.unet import UNet

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
    "epoch_steps",
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
    mask: torch.Tensor | None = None,
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
    mask
        ``(B, *spatial)`` 0/1 verified voxels (a fine-tune's batches), or
        ``None``: every voxel (:func:`~napari_boundary_seg.core.losses.loss_for_kind`).
    """
    with float32_region(logits.device):
        probs = torch.softmax(logits.float(), dim=1)
        target = one_hot(labels, num_classes)
        return loss_for_kind(
            loss_kind, probs, target, dist.float(), weights, validate=validate, mask=mask
        )


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
        float32 mm)``, already on the model's device; a fine-tune's batches add
        ``mask (B, H, W)``, the verified voxels, the only ones the loss sees.
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
    images, labels, dist, *rest = batch
    mask = rest[0] if rest else None
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
        logits,
        labels,
        dist,
        loss_kind,
        weights,
        num_classes=num_classes,
        validate=validate,
        mask=mask,
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
    reduce: bool = True  # False: only the best is tracked (the lr follows a poly decay)

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
        if self.reduce and self.bad_epochs >= self.patience:
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


def ema_average_fn(decay: float) -> Callable[..., None]:
    """The ``multi_avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel` for an
    exponential moving average of the weights (and of BatchNorm's running
    statistics), with the usual warm-up: after ``n`` updates the decay is
    ``min(decay, (1 + n) / (10 + n))``, so a short run's average is not
    dominated by the initial weights. Integer buffers (BatchNorm's batch count)
    are copied."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        steps = int(n)
        weight = 1.0 - min(decay, (1.0 + steps) / (10.0 + steps))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur.to(avg.dtype), weight)
            else:
                avg.copy_(cur)

    return update


def averaged_model(model: nn.Module, decay: float) -> nn.Module | None:
    """The weight average of ``TrainConfig.ema`` (torch's ``AveragedModel``,
    buffers included), or None when ``decay`` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=ema_average_fn(decay), use_buffers=True)


def poly_lr(lr: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's polynomial decay: the lr of epoch ``epoch`` (from 0) of ``epochs``."""
    return float(lr) * (1.0 - epoch / max(int(epochs), 1)) ** exponent


def to_device(batch: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Move a batch's tensors to ``device`` (non-blocking on CUDA)."""
    non_blocking = device.type == "cuda"
    return tuple(t.to(device, non_blocking=non_blocking) for t in batch)


def build_model(hparams: Mapping[str, Any]) -> nn.Module:
    """The :class:`~napari_boundary_seg.core.unet.UNet` of ``hparams`` (2D or 3D)."""
    return UNet(**dict(hparams))


def validate_cases(
    model: nn.Module, cases: Sequence[Any], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Mean DSC, HD and HD95 (mm) over ``cases``, each predicted slice by slice
    (:meth:`SliceMode.validate <napari_boundary_seg.core.modes.SliceMode.validate>`)."""
    return SliceMode().validate(model, cases, config, device)


def validate_volumes(
    model: nn.Module, entries: Sequence[Any], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """:func:`validate_cases`' figures from cached volumes, by sliding windows of
    ``config.patch_size`` (:meth:`PatchMode.validate <napari_boundary_seg.core.modes.PatchMode.validate>`)."""
    return PatchMode(config.patch_size).validate(model, entries, config, device)


# ---------------------------------------------------------------------------
# the trainer


def _check_resume_config(config: TrainConfig, saved: Mapping[str, Any], path: str) -> None:
    saved_config = TrainConfig.from_dict(checkpoint_config(saved)).to_dict()
    ours = config.to_dict()
    unread = mode_for(config).ignores  # settings the run's mode does not read
    diffs = [
        f"{k}: {saved_config[k]!r} in the checkpoint, {ours[k]!r} now"
        for k in _RESUME_FIELDS
        if saved_config.get(k) != ours.get(k) and k not in unread
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
    mode: TrainingMode,
    model: nn.Module,
    cases: Sequence[Any],
    config: TrainConfig,
    device: torch.device,
    ctx: distributed.DistContext,
) -> dict[str, float]:
    """The mode's validation; with several processes each rank takes a share of
    the cases and the figures are all-reduced (every rank gets the same)."""
    if not ctx.is_distributed:
        return mode.validate(model, cases, config, device)
    rows = [
        mode.validate(model, [case], config, device) for case in cases[ctx.rank :: ctx.world_size]
    ]
    return distributed.reduce_case_figures(
        rows, ctx, device, ("val_dice", "val_hd", "val_hd95"), ("val_hd_inf",)
    )


def _read_source(config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint a run continues (checked against the config) or fine-tunes."""
    if config.resume_from is not None:
        source = read_checkpoint(config.resume_from)
        _check_resume_config(config, source, config.resume_from)
        return source
    if config.init_checkpoint is not None:
        return read_checkpoint(config.init_checkpoint)
    return None


def _iter_prepare(
    mode: TrainingMode,
    config: TrainConfig,
    cases: Sequence[Any] | None,
    val_cases: Sequence[Any] | None,
    dataset: Any,
    source: Mapping[str, Any] | None,
    ctx: distributed.DistContext,
    device: torch.device,
) -> Generator[Any, None, tuple[TrainConfig, TrainingData]]:
    """Step 1, the data: the cases prepared in the cache (or a prebuilt data set)
    and the items the steps read; the config with ``"auto"`` settings resolved."""
    if dataset is not None:
        mode.check_prebuilt(dataset)
    # rank 0 prepares the cache first, the other ranks then read what it wrote
    with distributed.main_process_first(ctx, device):
        if dataset is None:  # cases prepared one at a time into the cache, read memory-mapped
            run_dir = None if config.out_dir is None else Path(config.out_dir)
            data = yield from mode.iter_prepare(
                config, cases, val_cases, run_dir, ctx.is_writer, source
            )
        else:  # a prebuilt in-memory data set (the study shares one between runs)
            data = yield from mode.iter_prepare_prebuilt(config, cases, val_cases, dataset)
    if data.slice_spacing is not None:  # "auto" resolved: the checkpoint keeps the value
        config = dataclasses.replace(config, slice_spacing=data.slice_spacing)
    if len(data.dataset) == 0:
        raise ValueError("the training cases hold no slices")
    return config, mode.training_items(config, data)


def _new_partial() -> dict[str, float]:
    return {"loss": 0.0, "region": 0.0, "boundary": 0.0, "steps": 0, "seconds": 0.0}


class _Run:
    """One run's state between the named steps of :func:`train`: the network and
    its optimizer, lr plateau, scaler and schedule, the history, the position
    and the files. Each step is a method; those that report are generators."""

    def __init__(
        self,
        config: TrainConfig,
        mode: TrainingMode,
        data: TrainingData,
        ctx: distributed.DistContext,
        device: torch.device,
        out_dir: Path | None,
    ) -> None:
        self.config, self.mode, self.data = config, mode, data
        self.ctx, self.device, self.out_dir = ctx, device, out_dir
        self.best_path = out_dir / "best.pt" if out_dir else None
        self.last_path = out_dir / "last.pt" if out_dir else None
        self.csv_path = out_dir / "metrics.csv" if out_dir else None
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.start_step = 0, 0
        self.partial = _new_partial()
        self.parent: str | None = None
        self.wrote_best = self.wrote_last = False
        self.first_step = True
        self.weights = (1.0, 0.0)

    def iter_network(self, source: Mapping[str, Any] | None) -> Generator[Any, None, None]:
        """Step 2, the network: built from the seed (or the source checkpoint's
        weights), placed, wrapped; its optimizer, lr plateau, scaler, schedule."""
        config, data, device = self.config, self.data, self.device
        hparams = self.mode.network(config, data)
        if source is not None:
            saved = dict(source["model"])
            source_path = config.resume_from or config.init_checkpoint
            if int(saved.get("spatial_dims", 2)) != self.mode.dims:
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
        # the network must fit the items (and be buildable) before anything is allocated
        self.mode.check_network(hparams, data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(hparams)
        resuming = source is not None and config.resume_from is not None
        if source is not None:
            # a resumed run goes on from the trained weights; the saved model is their average
            trained = source.get("trained_model_state") if resuming else None
            model.load_state_dict(trained if trained is not None else source["model_state"])
        model.to(device)
        self.model = model
        self.ema = averaged_model(model, config.ema)
        if self.ema is not None and resuming and source.get("trained_model_state") is not None:
            self.ema.module.load_state_dict(source["model_state"])
            self.ema.n_averaged.fill_(int(source.get("ema_updates", 1)))
        self.net, setup_notes = _prepare_network(model, config, device, self.ctx)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.has_val = bool(data.val_cases)
        self.plateau = _Plateau(
            config.lr_patience,
            config.lr_factor,
            "max" if self.has_val else "min",
            reduce=config.lr_decay == "plateau",
        )
        self.plan = plan_precision(config.precision, device)
        self.scaler = make_scaler(self.plan, device)
        for note in _precision_notes(config, self.plan) + setup_notes:
            logger.info(note)
            yield InfoEvent(note, device=str(device))
        self.schedule = schedule_from_dict(config.schedule)
        if self.schedule.uses_validation and uses_schedule(config.loss) and not self.has_val:
            raise ValueError(
                f"the {self.schedule.kind.value} schedule follows the validation DSC, and this "
                "run has no validation cases: give some (val_fraction > 0) or another schedule"
            )
        self.best_state: dict[str, torch.Tensor] | None = None
        if boundary_only_from_start(config.loss, self.schedule):
            warning = (
                "warning: the boundary loss alone from the first epoch collapses to an empty "
                "foreground in binary problems (Kervadec et al. 2019); start with a regional loss"
            )
            logger.warning(warning)
            yield InfoEvent(warning, device=str(device))

    def iter_resume(self, source: Mapping[str, Any] | None) -> Generator[Any, None, None]:
        """Step 3, the position: a resumed run's optimizer, plateau, scaler, history
        and position restored; the run's start reported."""
        config, ctx = self.config, self.ctx
        if config.resume_from is not None and source is not None:
            self.optimizer.load_state_dict(source["optimizer_state"])
            self.plateau.load_state_dict(source["lr_state"])
            if self.scaler is not None and source.get("scaler_state"):
                self.scaler.load_state_dict(source["scaler_state"])
            self.history = [dict(row) for row in source["history"]]
            self.start_epoch = int(source["position"]["epoch"])
            self.start_step, world_note = _resume_world(source, ctx.world_size, config.batch_size)
            self.partial.update(source.get("partial") or {})
            self.parent = source.get("parent")
            message = (
                # counted from 1, for people: the epoch and the step it goes on with
                f"resuming from {config.resume_from} at epoch {self.start_epoch + 1}, "
                f"step {self.start_step + 1}"
                f"{world_note}"
            )
        elif config.init_checkpoint is not None:
            self.parent = os.path.abspath(config.init_checkpoint)
            message = f"fine-tuning from {config.init_checkpoint}"
        else:
            message = "training from scratch"
        self.steps_per_epoch, num_items = self.mode.epoch_size(
            config, len(self.data.dataset), ctx.world_size
        )
        yield InfoEvent(
            message,
            device=str(self.device),
            num_train_cases=len(self.data.train_cases),
            num_val_cases=len(self.data.val_cases),
            num_train_slices=num_items,
            steps_per_epoch=self.steps_per_epoch,
            start_epoch=self.start_epoch,
            num_parameters=sum(p.numel() for p in self.model.parameters()),
        )

    def start_files(self) -> None:
        """``config.json`` and ``metrics.csv`` (the history so far) in ``out_dir``."""
        config, out_dir = self.config, self.out_dir
        if out_dir is not None:
            write_run_start(out_dir, config.to_dict(), self.history)
        resumed = config.resume_from is not None
        self.wrote_best = self.best_path is not None and self.best_path.exists() and resumed
        self.wrote_last = self.last_path is not None and self.last_path.exists() and resumed

    @property
    def inference_model(self) -> nn.Module:
        """The model validated, saved and returned: the weight average when
        ``TrainConfig.ema`` is set, else the trained model."""
        return self.model if self.ema is None else self.ema.module

    def checkpoint(self, epoch: int, step: int, part: Mapping[str, Any]) -> dict[str, Any]:
        """The checkpoint dict at ``(epoch, step)`` with the epoch's partial sums.
        ``model_state`` is the inference model's; with weight averaging the
        trained weights (``trained_model_state``) and the number of updates
        (``ema_updates``) are kept for a resume."""
        config, model, data = self.config, self.inference_model, self.data
        averaging = {}
        if self.ema is not None:
            averaging = {
                "trained_model_state": {
                    k: v.detach().cpu() for k, v in self.model.state_dict().items()
                },
                "ema_updates": int(self.ema.n_averaged),
            }
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": dict(model.hparams),
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": self.optimizer.state_dict(),
            "lr_state": self.plateau.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
            "config": config.to_dict(),
            **training_mode(config.to_dict()),
            "schedule": self.schedule.to_dict(),
            "position": {"epoch": epoch, "step": step},
            "partial": dict(part),
            "history": [dict(row) for row in self.history],
            "seed": config.seed,
            "world_size": self.ctx.world_size,  # processes of the run (steps count global batches)
            "rng_state": torch.get_rng_state(),
            "versions": library_versions(),
            "modalities": list(data.modalities),
            "train_cases": [str(c.case_id) for c in data.train_cases],
            "val_cases": [str(c.case_id) for c in data.val_cases],
            "parent": self.parent,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **averaging,
        }

    def done(self, outcome: Outcome, reason: str) -> DoneEvent:
        """The run's end: the model on the CPU, the history, the files written."""
        self.model.cpu()
        if self.ema is not None:
            self.ema.cpu()
        return DoneEvent(
            str(self.best_path) if self.wrote_best else None,
            str(self.last_path) if self.wrote_last else None,
            [dict(row) for row in self.history],
            outcome is not Outcome.COMPLETED,
            reason,
            self.inference_model,
            outcome,
        )

    def iter_steps(
        self, epoch: int, control: TrainControl
    ) -> Generator[Any, None, DoneEvent | None]:
        """Step 4, an epoch's training steps (pause and stop honoured before each);
        returns the :class:`DoneEvent` of a run that ends here (stop, non-finite loss)."""
        config, ctx, device = self.config, self.ctx, self.device
        val_dice = [float(row.get("val_dice", math.nan)) for row in self.history]
        w_region, w_boundary = effective_weights(config.loss, self.schedule.at(epoch, val_dice))
        start_step = self.start_step if epoch == self.start_epoch else 0
        if start_step == 0 and self._switches_to_best(epoch, val_dice):
            yield InfoEvent(
                f"epoch {epoch + 1}: the boundary term starts from the best weights so far",
                device=str(device),
            )
        self.weights = (w_region, w_boundary)
        if config.lr_decay == "poly":
            for group in self.optimizer.param_groups:
                group["lr"] = poly_lr(config.lr, epoch, config.epochs)
        if epoch != self.start_epoch:
            self.partial = _new_partial()
        partial, spe = self.partial, self.steps_per_epoch
        batches = self.mode.batches(
            self.data, config, epoch, start_step, spe, ctx.rank, ctx.world_size
        )
        for step in range(start_step, spe):
            while control.paused:
                yield PauseEvent(epoch, step)
                control.wait(_PAUSE_POLL_S)
            if distributed.any_rank(control.stop_requested, ctx, device):  # agreed by all ranks
                if self.last_path is not None:
                    save_checkpoint(self.last_path, self.checkpoint(epoch, step, partial))
                    self.wrote_last = True
                # counted from 1, for people (as the widgets and the CLI's log)
                reason = f"stopped by request in epoch {epoch + 1} after {step} step(s)"
                logger.info(reason)
                event = self.done(Outcome.STOPPED, reason)
                yield event
                return event
            tic = time.perf_counter()
            batch = to_device(next(batches), device)
            if config.channels_last:
                batch = (batch[0].contiguous(memory_format=memory_format(self.model)), *batch[1:])
            result = train_step(
                self.net,
                self.optimizer,
                batch,
                config.loss,
                (w_region, w_boundary),
                num_classes=config.num_classes,
                scaler=self.scaler,
                validate=self.first_step,
                autocast_dtype=self.plan.dtype,
                reduce=distributed.mean_across if ctx.is_distributed else None,
            )
            self.first_step = False
            if result.stepped and self.ema is not None:
                self.ema.update_parameters(self.model)
            seconds = time.perf_counter() - tic
            if not result.stepped:
                kept = f"; {self.last_path} keeps the last good weights" if self.wrote_last else ""
                reason = (
                    f"non-finite loss ({result.loss}) at epoch {epoch + 1}, step {step + 1} "
                    f"(region {result.region}, boundary {result.boundary}); "
                    f"stopped{kept}. Try a lower lr or check the data."
                )
                logger.error(reason)
                event = self.done(Outcome.NON_FINITE, reason)
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
                spe,
                result.loss,
                result.region,
                result.boundary,
                w_region,
                w_boundary,
                self.optimizer.param_groups[0]["lr"],
                seconds,
            )
        return None

    def _switches_to_best(self, epoch: int, val_dice: Sequence[float]) -> bool:
        """At the switch epoch of a schedule that restarts from the best checkpoint
        (the warm start): load the best weights so far (kept in memory, or
        ``best.pt`` after a resume) and clear the optimizer's moments; True when done."""
        schedule = self.schedule
        if not getattr(schedule, "restarts_from_best", False) or not uses_schedule(
            self.config.loss
        ):
            return False
        if schedule.switch_epoch(val_dice[:epoch]) != epoch:
            return False
        state = self.best_state
        if state is None and self.best_path is not None and self.best_path.exists():
            state = read_checkpoint(self.best_path)["model_state"]
        if state is None:
            return False
        self.model.load_state_dict(state)
        if self.ema is not None:  # the average starts again from the best weights
            self.ema.module.load_state_dict(state)
        self.optimizer.state.clear()
        return True

    def validate(self, epoch: int) -> EpochEvent:
        """Step 5, the epoch's end: validation, the lr plateau (which also names the
        best epoch) and the epoch's event."""
        tic = time.perf_counter()
        figures = _validate(
            self.mode, self.inference_model, self.data.val_cases, self.config, self.device, self.ctx
        )
        partial = self.partial
        n_steps = max(int(partial["steps"]), 1)
        train_loss = partial["loss"] / n_steps
        lr_used = self.optimizer.param_groups[0]["lr"]
        monitored = figures["val_dice"] if self.has_val else train_loss
        is_best = self.plateau.update(monitored, self.optimizer)
        return EpochEvent(
            epoch=epoch,
            train_loss=train_loss,
            region=partial["region"] / n_steps,
            boundary=partial["boundary"] / n_steps,
            w_region=self.weights[0],
            w_boundary=self.weights[1],
            lr=lr_used,
            val_dice=figures["val_dice"],
            val_hd=figures["val_hd"],
            val_hd95=figures["val_hd95"],
            seconds=partial["seconds"] + time.perf_counter() - tic,
            is_best=is_best,
            val_hd_inf=figures["val_hd_inf"],
        )

    def save_epoch(self, event: EpochEvent) -> None:
        """Step 6, the epoch's files: the history row, ``last.pt`` (and ``best.pt``
        on a new best), the ``metrics.csv`` row."""
        self.history.append(event.as_row())
        if event.is_best and getattr(self.schedule, "restarts_from_best", False):
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self.inference_model.state_dict().items()
            }
        if self.out_dir is None:
            return
        state = self.checkpoint(event.epoch + 1, 0, {})
        save_checkpoint(self.last_path, state)
        self.wrote_last = True
        if event.is_best:
            save_checkpoint(self.best_path, state)
            self.wrote_best = True
        append_metrics_row(self.csv_path, event.as_row())


def train(
    config: TrainConfig,
    cases: Sequence[Any] | None = None,
    control: TrainControl | None = None,
    *,
    val_cases: Sequence[Any] | None = None,
    dataset: Any = None,
) -> Generator[Any, None, DoneEvent]:
    """Train a UNet; a generator of events that returns the :class:`DoneEvent`.

    The mode (2D slices or 3D patches, :func:`~napari_boundary_seg.core.modes.mode_for`)
    is chosen once from ``config.dims``; the run is a short loop of named steps
    (data, network, position, then per epoch the steps, validation and files).

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
    mode = mode_for(config)
    ctx = distributed.current()
    out_dir = check_out_dir(config) if ctx.is_writer else None  # rank 0 alone writes
    device = distributed.device_for(resolve_device(config.device), ctx)
    yield InfoEvent(f"training on {device}", device=str(device))
    source = _read_source(config)
    config, data = yield from _iter_prepare(
        mode, config, cases, val_cases, dataset, source, ctx, device
    )
    run = _Run(config, mode, data, ctx, device, out_dir)
    yield from run.iter_network(source)
    yield from run.iter_resume(source)
    run.start_files()
    for epoch in range(run.start_epoch, config.epochs):
        ended = yield from run.iter_steps(epoch, control)
        if ended is not None:
            return ended
        event = run.validate(epoch)
        run.save_epoch(event)
        yield event
    event = run.done(Outcome.COMPLETED, "completed")
    yield event
    return event
