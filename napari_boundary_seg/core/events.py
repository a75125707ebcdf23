"""The event protocol of training: what :func:`~napari_boundary_seg.core.train.train`
and :func:`~napari_boundary_seg.core.finetune.finetune` yield, and how a consumer
steers them.

A run is a generator. It yields, in order: :class:`InfoEvent` messages (and
:class:`~napari_boundary_seg.core.progress.Progress` while data is prepared),
one :class:`StepEvent` per optimisation step (:class:`PauseEvent` while held),
one :class:`EpochEvent` per epoch, and a final :class:`DoneEvent`, which is
also the generator's return value. Its :attr:`DoneEvent.outcome` says how the
run ended (:class:`Outcome`); consumers (the command line, the widgets, the
study) branch on it, never on the wording of ``reason``. A consumer steers the
run through a :class:`TrainControl` (stop, pause, resume between steps).

Nothing here needs torch: the widgets and the command line import this module
to tell events apart without loading the trainer. See docs/DESIGN.md, "The
event protocol".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "METRICS_COLUMNS",
    "DoneEvent",
    "EpochEvent",
    "InfoEvent",
    "Outcome",
    "PauseEvent",
    "StepEvent",
    "TrainControl",
    "end_outcome",
]

METRICS_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "region",
    "boundary",
    "w_region",
    "w_boundary",
    "lr",
    "val_dice",
    "val_hd",
    "val_hd95",
    "val_hd_inf",
    "seconds",
    "is_best",
)
"""Columns of ``metrics.csv`` (one :class:`EpochEvent` per row) and keys of each history
entry."""


class Outcome(StrEnum):
    """How a run ended; its value is the word logs and JSON files show."""

    COMPLETED = "completed"
    """Every epoch ran."""
    STOPPED = "stopped"
    """A stop request (:meth:`TrainControl.stop`, Ctrl-C) ended it between steps."""
    NON_FINITE = "non-finite"
    """A loss that was not finite ended it; the last good weights are kept."""


@dataclass(frozen=True)
class InfoEvent:
    """A message about the run's set-up (device, data, resume or fine-tune)."""

    message: str
    device: str = ""
    num_train_cases: int = 0
    num_val_cases: int = 0
    num_train_slices: int = 0
    steps_per_epoch: int = 0
    start_epoch: int = 0
    num_parameters: int = 0


@dataclass(frozen=True)
class StepEvent:
    """One optimisation step done. ``loss`` is the total, ``region`` and ``boundary``
    its terms (the boundary term is reported even when it is not optimised),
    ``w_*`` their weights, ``seconds`` the step's wall time."""

    epoch: int
    step: int
    steps_per_epoch: int
    loss: float
    region: float
    boundary: float
    w_region: float
    w_boundary: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class PauseEvent:
    """Yielded while the run is paused (before step ``step`` of ``epoch``)."""

    epoch: int
    step: int


@dataclass(frozen=True)
class EpochEvent:
    """One epoch done: mean training loss parts, validation figures (mm), timing.

    ``val_*`` are NaN without validation cases; ``val_hd``/``val_hd95`` are means
    with infinite distances replaced by the image diagonal, ``val_hd_inf`` counts
    those cases. ``is_best``: this epoch's checkpoint became ``best.pt``.
    """

    epoch: int
    train_loss: float
    region: float
    boundary: float
    w_region: float
    w_boundary: float
    lr: float
    val_dice: float
    val_hd: float
    val_hd95: float
    seconds: float
    is_best: bool
    val_hd_inf: int = 0

    def as_row(self) -> dict[str, Any]:
        """The ``metrics.csv`` row / history entry."""
        return {name: getattr(self, name) for name in METRICS_COLUMNS}


@dataclass(frozen=True)
class DoneEvent:
    """The end of a run (also the return value of
    :func:`~napari_boundary_seg.core.train.train`).

    ``outcome`` says how it ended (:class:`Outcome`); ``stopped`` is True when
    the run ended before ``epochs`` (any outcome but ``COMPLETED``); ``reason``
    says why in words, or ``"completed"``. Checkpoint paths are ``None`` when
    nothing was written. ``model`` is the network in its final state (the last
    good weights), on the CPU. Without ``outcome``, it is ``STOPPED`` when
    ``stopped`` and ``COMPLETED`` otherwise.
    """

    best_checkpoint: str | None
    last_checkpoint: str | None
    history: list[dict[str, Any]]
    stopped: bool
    reason: str
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    outcome: Outcome | None = None

    def __post_init__(self) -> None:
        outcome = end_outcome(self.stopped, self.outcome)
        object.__setattr__(self, "outcome", outcome)


def end_outcome(stopped: bool, outcome: Outcome | str | None) -> Outcome:
    """``outcome`` as an :class:`Outcome` (``STOPPED`` or ``COMPLETED`` from
    ``stopped`` when None); ValueError when the two disagree."""
    if outcome is None:
        return Outcome.STOPPED if stopped else Outcome.COMPLETED
    outcome = Outcome(outcome)
    if stopped != (outcome is not Outcome.COMPLETED):
        raise ValueError(f"a run with outcome {outcome.value} cannot have stopped={stopped}")
    return outcome


class TrainControl:
    """Thread-safe stop / pause / resume requests, honoured between steps.

    ``stop()`` ends the run before its next step (saving ``last.pt`` so that it
    can be resumed); ``pause()`` holds it before the next step until
    ``resume()`` or ``stop()``; while paused the trainer yields
    :class:`PauseEvent` every 0.2 s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Event()

    def stop(self) -> None:
        """Request the run to end at the next step boundary."""
        with self._lock:
            self._stop.set()
            self._wake.set()

    def pause(self) -> None:
        """Hold the run at the next step boundary."""
        with self._lock:
            self._wake.clear()
            self._paused.set()

    def resume(self) -> None:
        """Let a paused run continue."""
        with self._lock:
            self._paused.clear()
            self._wake.set()

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        """Whether the run is (to be) held."""
        return self._paused.is_set() and not self._stop.is_set()

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds or until resumed or stopped."""
        self._wake.wait(timeout)
