"""Data-parallel training on PyTorch's own engine (``torch.distributed``).

A run started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``) is one process per device: :func:`init_from_env` joins the
process group (NCCL on CUDA, gloo on the CPU), and
:func:`napari_boundary_seg.core.train.train` then trains a
:class:`~torch.nn.parallel.DistributedDataParallel` copy of the network in each
process. What that means:

- **Batch**: ``TrainConfig.batch_size`` is the batch of *one process*; the
  global batch of a step is ``world_size × batch_size``.
- **Samples**: the epoch's permutation (the same on every rank) is padded by
  wrapping to a multiple of ``world_size`` and rank ``r`` takes the items
  ``r, r + world, r + 2·world, ...`` (:func:`shard_indices`), so each sample
  of an epoch is seen once across the processes (a few wrap-around samples
  twice when the count is not a multiple). Global step ``k`` covers the
  positions ``[k·world·batch, (k+1)·world·batch)`` of that padded permutation
  whatever the number of processes.
- **Gradients** are averaged across processes by DDP: with the same samples, a
  step of ``N`` processes with batch ``b`` equals a step of one process with
  batch ``N·b`` (the losses are means over the batch).
- **BatchNorm**: on CUDA the network's BatchNorm layers become
  :class:`~torch.nn.SyncBatchNorm` (statistics over the global batch, as one
  process with the global batch would compute them). torch has no
  SyncBatchNorm on the CPU: a gloo run on the CPU normalises with each
  process's own batch (plain DDP) and says so.
- **Decisions** are agreed by all ranks: the step losses are averaged across
  processes before the non-finite check (a NaN on one rank stops every rank),
  a stop request on any rank stops all of them at the same step
  (:func:`any_rank`), and validation is split case-wise across the ranks and
  all-reduced (:func:`reduce_case_figures`).
- **Files**: rank 0 alone writes ``best.pt``, ``last.pt``, ``metrics.csv`` and
  ``config.json``; with an on-disk cache rank 0 prepares the data first
  (:func:`main_process_first`) and the other ranks read what it wrote.

Without a process group (the widget, a plain ``napari-boundary-seg train``)
every helper here is the identity and the trainer runs as one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DistContext",
    "any_rank",
    "barrier",
    "choose_backend",
    "current",
    "device_for",
    "env_ranks",
    "init_from_env",
    "init_process",
    "launched_by_torchrun",
    "main_process_first",
    "mean_across",
    "reduce_case_figures",
    "resume_step",
    "shard_indices",
    "shard_length",
    "wrap_model",
]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=60)
"""How long a rank waits for the others at a collective (data preparation by
rank 0 and validation can take minutes; NCCL's own default is 10 minutes)."""

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """This process writes the run's files (rank 0)."""
        return self.rank == 0


# ---------------------------------------------------------------------------
# process group


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are all set (torchrun sets them)."""
    env = os.environ if env is None else env
    return all(key in env for key in _ENV_KEYS)


def env_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables.

    Raises
    ------
    ValueError
        When one is missing or not a valid integer (naming it and its value).
    """
    env = os.environ if env is None else env
    values = []
    for key in _ENV_KEYS:
        text = env.get(key)
        try:
            values.append(int(text))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"environment variable {key}={text!r} is not an integer") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def choose_backend(device: str, env: Mapping[str, str] | None = None) -> str:
    """``"nccl"`` for a CUDA run with at most one process per GPU, else ``"gloo"``.

    ``device`` is a :class:`~napari_boundary_seg.core.train.TrainConfig` device
    name; ``"auto"`` means CUDA when it is available. NCCL cannot put two
    processes on one GPU: when ``LOCAL_WORLD_SIZE`` exceeds the GPUs of the
    node, gloo (which also reduces CUDA tensors) is used.
    """
    env = os.environ if env is None else env
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda or not torch.cuda.is_available():
        return "gloo"
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > torch.cuda.device_count():
        logger.warning(
            "%d processes on %d GPU(s): NCCL needs one GPU per process, using gloo",
            local_world,
            torch.cuda.device_count(),
        )
        return "gloo"
    return "nccl"


def init_process(
    rank: int,
    world_size: int,
    init_method: str = "env://",
    backend: str = "gloo",
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> DistContext:
    """Join a process group (used by :func:`init_from_env`, tests and benchmarks)."""
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
    )
    return current()


@contextlib.contextmanager
def init_from_env(
    device: str = "auto", timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> Iterator[DistContext]:
    """Join torchrun's process group for the ``with`` block, then leave it.

    Without torchrun's variables, or with ``WORLD_SIZE=1``, nothing is
    initialised and the context is rank 0 of 1. A process group that already
    exists is used as it is (and left alone at the end).
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    if not launched_by_torchrun():
        yield DistContext()
        return
    rank, world, _ = env_ranks()
    if world == 1:
        yield DistContext()
        return
    if not dist.is_available():  # pragma: no cover - torch builds without distributed
        raise ValueError("this torch build has no torch.distributed; run a single process")
    context = init_process(rank, world, "env://", choose_backend(device), timeout)
    try:
        yield context
    finally:
        dist.destroy_process_group()


def current() -> DistContext:
    """The context of the process group in use (rank 0 of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    rank = dist.get_rank()
    return DistContext(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        backend=str(dist.get_backend()),
    )


def device_for(device: torch.device, context: DistContext) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a CUDA run of several
    processes (modulo the GPUs present, so that two processes can share one GPU
    over gloo), else ``device``."""
    if not context.is_distributed or device.type != "cuda":
        return device
    return torch.device("cuda", context.local_rank % max(torch.cuda.device_count(), 1))


def barrier(context: DistContext, device: torch.device | None = None) -> None:
    """Wait for every rank (no-op for one process)."""
    if not context.is_distributed:
        return
    if context.backend == "nccl" and device is not None and device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(
    context: DistContext, device: torch.device | None = None, enabled: bool = True
) -> Iterator[None]:
    """Rank 0 runs the block first (writing caches), then the other ranks (reading them).

    A no-op for one process or when not ``enabled``.
    """
    enabled = enabled and context.is_distributed
    if enabled and not context.is_writer:
        barrier(context, device)
    try:
        yield
    finally:
        if enabled and context.is_writer:
            barrier(context, device)


# ---------------------------------------------------------------------------
# the epoch's samples


def shard_length(num_items: int, world_size: int) -> int:
    """Items per rank: ``ceil(num_items / world_size)`` (the padded shard)."""
    return math.ceil(num_items / world_size)


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's permutation ``order``.

    ``order`` is padded by wrapping around to a multiple of ``world_size``
    (every rank gets :func:`shard_length` items, so every rank runs the same
    number of steps) and the rank takes ``padded[rank::world_size]``. With one
    process this is ``order`` itself.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if world_size == 1:
        return order
    n = len(order)
    if n == 0:
        raise ValueError("cannot shard an empty epoch")
    padded_len = shard_length(n, world_size) * world_size
    padded = order[torch.arange(padded_len) % n]
    return padded[rank::world_size]


def resume_step(step: int, saved_world: int, world: int) -> int:
    """The step of a resumed epoch when the number of processes changed.

    Global step ``k`` of ``saved_world`` processes ends at position
    ``(k + 1) · saved_world · batch`` of the epoch's permutation; the resumed run
    continues at the first step of ``world`` processes that starts at or after
    the position reached (a few samples of the epoch may be skipped, none seen
    twice).
    """
    if saved_world == world or step == 0:
        return step
    return math.ceil(step * saved_world / world)


# ---------------------------------------------------------------------------
# agreement and reductions


def mean_across(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``values`` (a NaN or inf on any rank propagates)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    out = values.detach().clone()
    if dist.get_backend() == "gloo":  # gloo reduces CPU tensors (CUDA ones only in some builds)
        out = out.cpu()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_rank(flag: bool, context: DistContext, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (one all-reduce; ``flag`` itself for one process)."""
    if not context.is_distributed:
        return bool(flag)
    where = device if context.backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([1.0 if flag else 0.0], device=where)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def reduce_case_figures(
    rows: Sequence[Mapping[str, float]],
    context: DistContext,
    device: torch.device,
    mean_keys: Sequence[str],
    sum_keys: Sequence[str] = (),
) -> dict[str, float]:
    """Combine per-case figures computed by each rank on its share of the cases.

    ``mean_keys`` are averaged over all cases of all ranks ignoring NaN (as a
    NaN-mean over the whole list would); ``sum_keys`` are summed.
    """
    sums = torch.zeros(2 * len(mean_keys) + len(sum_keys), dtype=torch.float64)
    for row in rows:
        for i, key in enumerate(mean_keys):
            value = float(row[key])
            if not math.isnan(value):
                sums[2 * i] += value
                sums[2 * i + 1] += 1
        for j, key in enumerate(sum_keys):
            sums[2 * len(mean_keys) + j] += float(row[key])
    if context.is_distributed:
        where = device if context.backend == "nccl" else torch.device("cpu")
        moved = sums.to(where)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        sums = moved.cpu()
    out: dict[str, float] = {}
    for i, key in enumerate(mean_keys):
        count = float(sums[2 * i + 1])
        out[key] = float(sums[2 * i]) / count if count else math.nan
    for j, key in enumerate(sum_keys):
        out[key] = float(sums[2 * len(mean_keys) + j])
    return out


# ---------------------------------------------------------------------------
# the network


def wrap_model(
    model: nn.Module, device: torch.device, context: DistContext
) -> tuple[nn.Module, str]:
    """The network to train in this process, and a note of what was done.

    One process: ``model`` itself. Several: BatchNorm becomes SyncBatchNorm on
    CUDA (in place: ``model`` then holds SyncBatchNorm layers, whose state_dict
    keys are those of BatchNorm), and the network is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` (which averages the
    gradients and starts every rank from rank 0's weights). ``model`` stays the
    bare network (for checkpoints and validation).
    """
    if not context.is_distributed:
        return model, ""
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if device.type == "cuda" and has_bn:
        _to_sync_batchnorm(model)
        note = "BatchNorm synchronised across processes (SyncBatchNorm)"
    elif has_bn:
        note = (
            f"BatchNorm statistics are per process on {device.type} (torch has no "
            "SyncBatchNorm there)"
        )
    else:
        note = ""
    device_ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids), note


def _to_sync_batchnorm(model: nn.Module) -> None:
    """Replace every BatchNorm child of ``model`` by SyncBatchNorm, in place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _to_sync_batchnorm(child)
