"""Rounds of interactive fine-tuning: what each round is worth, and undoing one.

A *round* is one fine-tune of the predict → correct → fine-tune loop that ran
to its end (a stopped fine-tune writes a lineage but makes no round). Each
round gives one point of the correction curve (:func:`round_point`):

- x: the verified slices the round learnt from (corrected or marked checked).
  A person goes on painting the same layer, so the count grows round by round.
- y, with a reference (ground-truth labels): the DSC of the round's model on
  the untouched slices (those not verified) against the reference; the
  parent's DSC on the same slices is kept as ``before``.
- y, without one: the agreement of the round's prediction with the previous
  round's (the DSC between the new and the parent's prediction) on the
  untouched slices. 1 means the round changed nothing there: the model has
  settled.

:class:`Rounds` keeps every round of a session in order, with its decision
(kept, discarded, undone). The *active* model is the checkpoint of the last
kept round not undone, or the starting checkpoint. :meth:`Rounds.undo` makes
the checkpoint active before the last kept round active again and notes the
undo in that round's ``lineage.json``; no file is deleted, so each round's
checkpoint and lineage stay on disk.

Qt-free and torch-free (the lineage functions of ``core/finetune.py`` are
imported when a lineage is written). See docs/DESIGN.md, "The widgets"
(fine-tune rounds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_boundary_seg.core.metrics import dice_score
from napari_boundary_seg.core.validate import check_int

__all__ = [
    "AGREEMENT",
    "REFERENCE",
    "Round",
    "RoundPoint",
    "Rounds",
    "round_point",
    "untouched_dice",
]

REFERENCE = "reference"
"""Measure of a round with a reference: DSC on the untouched slices against it."""
AGREEMENT = "agreement"
"""Measure of a round without one: DSC of the new prediction against the previous round's."""

#: What each measure means, for axis labels, legends and tooltips.
MEASURE_TEXT = {
    REFERENCE: "DSC vs reference (untouched slices)",
    AGREEMENT: "agreement with previous round (untouched slices)",
}

#: The states of a round: waiting for Keep / Discard, kept, discarded, undone.
STATES = ("pending", "kept", "discarded", "undone")


@dataclass(frozen=True)
class RoundPoint:
    """One point of the correction curve.

    Attributes
    ----------
    verified
        Slices the round learnt from (corrected or checked): the x value.
    untouched
        Slices measured (every other slice along the slicing axis).
    measure
        :data:`REFERENCE` or :data:`AGREEMENT`.
    value
        DSC (0-1) of the round's model by ``measure``; NaN with no untouched slice.
    before
        With a reference: the parent model's DSC on the same slices; else None.
    """

    verified: int
    untouched: int
    measure: str
    value: float
    before: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _untouched_axis(shape: Sequence[int], axis: int | None) -> int | None:
    """The slicing axis of a volume of ``shape`` (None for one 2D image)."""
    if len(shape) == 2:
        return None
    axis = check_int(axis, "axis")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for {len(shape)} spatial axes")
    return axis % len(shape)


def untouched_dice(
    pred: np.ndarray, target: np.ndarray, verified: Sequence[int], axis: int | None
) -> tuple[float, int]:
    """DSC of ``pred`` against ``target`` pooled over the slices along ``axis``
    that are not in ``verified`` (foreground: any nonzero label), and their
    number. NaN when every slice is verified (and for one 2D image, whose only
    slice is the verified one). The same figure as the "untouched" row of
    :func:`napari_boundary_seg.core.finetune.compare_models`.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, reference {target.shape}")
    ax = _untouched_axis(pred.shape, axis)
    if ax is None:
        return math.nan, 0
    taught = {int(s) for s in verified}
    idx = [s for s in range(pred.shape[ax]) if s not in taught]
    if not idx:
        return math.nan, 0
    return dice_score(np.take(pred, idx, axis=ax), np.take(target, idx, axis=ax)), len(idx)


def round_point(
    old_pred: np.ndarray,
    new_pred: np.ndarray,
    verified: Sequence[int],
    axis: int | None,
    reference: np.ndarray | None = None,
) -> RoundPoint:
    """The point of one round on the correction curve.

    Parameters
    ----------
    old_pred, new_pred
        ``(*spatial)`` labels of the parent (the previous round's model) and of
        the round's model on the whole volume.
    verified
        The slices the round learnt from (corrected or checked), along ``axis``.
    axis
        Slicing axis (ignored for one 2D image).
    reference
        ``(*spatial)`` ground-truth labels, or None: the point is then the
        agreement of ``new_pred`` with ``old_pred``.
    """
    old_pred, new_pred = np.asarray(old_pred), np.asarray(new_pred)
    if old_pred.shape != new_pred.shape:
        raise ValueError(f"shapes differ: old prediction {old_pred.shape}, new {new_pred.shape}")
    n_verified = len({int(s) for s in verified})
    if reference is None:
        value, n = untouched_dice(new_pred, old_pred, verified, axis)
        return RoundPoint(n_verified, n, AGREEMENT, value)
    value, n = untouched_dice(new_pred, reference, verified, axis)
    before, _ = untouched_dice(old_pred, reference, verified, axis)
    return RoundPoint(n_verified, n, REFERENCE, value, before)


@dataclass
class Round:
    """One round of a session: its checkpoint, lineage, point and state.

    ``prediction`` names the layer (or file) holding the round's prediction,
    for whoever shows it; the core does not read it.
    """

    index: int
    checkpoint: str
    parent: str
    lineage: str
    point: RoundPoint
    state: str = "pending"
    prediction: str | None = None


class Rounds:
    """The rounds of one session, from a starting checkpoint (round 0).

    Parameters
    ----------
    start
        The checkpoint the session started from: the active model until a
        round is kept, and again when every kept round is undone.
    """

    def __init__(self, start: str) -> None:
        self.start = str(start)
        self.rounds: list[Round] = []

    def add(
        self,
        checkpoint: str,
        parent: str,
        lineage: str,
        point: RoundPoint,
        prediction: str | None = None,
    ) -> Round:
        """A finished round (pending until :meth:`decide`); its point goes into
        its lineage as ``round``."""
        done = Round(len(self.rounds) + 1, str(checkpoint), str(parent), str(lineage), point)
        done.prediction = prediction
        _update_lineage(done.lineage, round={"index": done.index, **point.as_dict()})
        self.rounds.append(done)
        return done

    @property
    def pending(self) -> Round | None:
        """The last round when it waits for Keep / Discard, else None."""
        last = self.rounds[-1] if self.rounds else None
        return last if last is not None and last.state == "pending" else None

    def decide(self, keep: bool) -> Round | None:
        """Keep or discard the pending round (its lineage's decision is
        written by ``core.finetune.record_decision``); None when none waits."""
        waiting = self.pending
        if waiting is not None:
            waiting.state = "kept" if keep else "discarded"
        return waiting

    @property
    def active(self) -> Round | None:
        """The round whose checkpoint is the active model (None: the start)."""
        kept = [r for r in self.rounds if r.state == "kept"]
        return kept[-1] if kept else None

    @property
    def active_checkpoint(self) -> str:
        active = self.active
        return self.start if active is None else active.checkpoint

    def can_undo(self) -> bool:
        """A kept round can be undone, and no round waits for a decision."""
        return self.active is not None and self.pending is None

    def undo(self) -> tuple[Round, Round | None]:
        """Undo the active round: the checkpoint active before it is active
        again. Returns ``(the undone round, the round now active or None for
        the start)``. The undo is noted in the undone round's lineage
        (``undone``: when, and the checkpoint made active); nothing is deleted.
        """
        if self.pending is not None:
            raise ValueError(
                f"round {self.pending.index} waits for Keep or Discard: decide it first"
            )
        undone = self.active
        if undone is None:
            raise ValueError(f"no round to undo: the active model is the start ({self.start})")
        kept = [r for r in self.rounds if r.state == "kept"]
        restored = kept[-2] if len(kept) > 1 else None
        active = self.start if restored is None else restored.checkpoint
        # the lineage first: when it cannot be written, nothing changes
        _update_lineage(
            undone.lineage, undone={"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "active": active}
        )
        undone.state = "undone"
        return undone, restored

    def curve(self) -> list[tuple[str, float, float, str, int]]:
        """The points to draw: ``(measure, x, y, state, round index)`` per round,
        preceded by the start (``x`` 0, the parent's DSC, state ``"start"``,
        index 0) when the first round was measured against a reference."""
        points: list[tuple[str, float, float, str, int]] = []
        first = self.rounds[0].point if self.rounds else None
        if first is not None and first.measure == REFERENCE and first.before is not None:
            points.append((REFERENCE, 0.0, float(first.before), "start", 0))
        for r in self.rounds:
            p = r.point
            points.append((p.measure, float(p.verified), float(p.value), r.state, r.index))
        return points


def _update_lineage(path: str, **fields: Any) -> None:
    from napari_boundary_seg.core.finetune import update_lineage

    update_lineage(path, **fields)
