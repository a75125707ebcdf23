"""Whether a training run ended badly, and what to change: one rule for the
widgets and the command line.

A run *ended badly* when any of these holds:

* its best validation DSC is below :data:`USEFUL_DSC` (0.3): the model found
  almost none of the held-out lesions;
* its final prediction is empty: the model predicts nothing;
* its final prediction holds more than :data:`OVER_FACTOR` (5) times the
  reference's foreground voxels, or more than :data:`MAX_FOREGROUND_SHARE`
  (10 %) of the volume when there is no reference: it predicts nearly
  everything (lesions fill 0.1-1 % of a scan).

Pure functions of numbers; no torch, no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from napari_boundary_seg.core.config import LossKind, uses_schedule

__all__ = [
    "MAX_FOREGROUND_SHARE",
    "OVER_FACTOR",
    "USEFUL_DSC",
    "RunVerdict",
    "best_val_dice",
    "judge_run",
]

USEFUL_DSC = 0.3
"""A best validation DSC below this is not a useful model."""

OVER_FACTOR = 5.0
"""A prediction with more than this many times the reference's foreground voxels
predicts nearly everything."""

MAX_FOREGROUND_SHARE = 0.10
"""Without a reference: a prediction covering more than this share of the volume."""

_MORE_EPOCHS = "train for more epochs"
_LOWER_LR = "lower the learning rate"
_CHECK_LABELS = "check that the labels match the images"
_CHECK_PLANE = "check the slice plane"
_FOREGROUND_SLICES = "train on slices with foreground only"
_ALPHA = "keep α at 1 longer (a smaller α step, a higher α floor)"
_NOT_BL_ALONE = (
    "train with GDL or GDL + BL (the boundary term alone collapses to an empty prediction)"
)


def _advice(problem: str, loss: str | None) -> tuple[str, ...]:
    """What to change for ``problem`` ("low", "empty" or "full"), for the run's
    loss kind (None: not known, the α schedule's advice included)."""
    kind = None if loss is None else LossKind(loss)
    alpha = kind is None or uses_schedule(kind)
    if problem == "low":
        return (_MORE_EPOCHS, *((_ALPHA,) if alpha else ()), _LOWER_LR, _CHECK_LABELS)
    if problem == "empty":
        first = _NOT_BL_ALONE if kind is LossKind.BL else _ALPHA if alpha else None
        return (*((first,) if first else ()), _MORE_EPOCHS, _FOREGROUND_SLICES)
    return (_LOWER_LR, _MORE_EPOCHS, _CHECK_PLANE, _CHECK_LABELS)


@dataclass(frozen=True)
class RunVerdict:
    """The judgement of one run: ``problems`` (empty: it did not end badly)
    and one ``advice`` per problem, in the same order."""

    problems: tuple[str, ...] = ()
    #: per problem, the changes to try (phrases)
    advice: tuple[tuple[str, ...], ...] = ()
    #: a few words per problem, for a chart's note
    tags: tuple[str, ...] = ()

    @property
    def bad(self) -> bool:
        """True when the run ended badly."""
        return bool(self.problems)

    def text(self) -> str:
        """One plain sentence or two: what went wrong and what to change."""
        if not self.problems:
            return ""
        seen: list[str] = []  # each change once, in the order the problems ask for it
        for actions in self.advice:
            seen += [a for a in actions if a not in seen]
        return f"This run ended badly: {'; '.join(self.problems)}. Try: {'; '.join(seen)}."

    def short(self) -> str:
        """The problems in a few words, for a chart's note."""
        return ", ".join(self.tags)


def best_val_dice(history: Sequence[Mapping[str, Any]]) -> float | None:
    """The best finite ``val_dice`` of a run's history rows (``DoneEvent.history``);
    None when no epoch was validated."""
    scores = [float(row.get("val_dice", math.nan)) for row in history]
    scores = [d for d in scores if math.isfinite(d)]
    return max(scores) if scores else None


def judge_run(
    best_val_dice: float | None = None,
    predicted_voxels: int | None = None,
    reference_voxels: int | None = None,
    total_voxels: int | None = None,
    loss: str | None = None,
) -> RunVerdict:
    """Judge a run by the module's rule.

    Parameters
    ----------
    best_val_dice
        The best validation DSC of the run (None or NaN: no validation, not judged).
    predicted_voxels
        Foreground voxels of the final prediction (None: no prediction, not judged).
    reference_voxels
        Foreground voxels of the ground truth of the predicted volume, if known.
    total_voxels
        Voxels of the predicted volume, if known.
    loss
        The run's loss kind (``TrainConfig.loss``): the advice speaks of the α
        schedule only for a loss that has one (None: not known, it does).
    """
    problems: list[str] = []
    advice: list[tuple[str, ...]] = []
    tags: list[str] = []
    if best_val_dice is not None and math.isfinite(best_val_dice):
        if best_val_dice < USEFUL_DSC:
            problems.append(f"the best validation DSC is {best_val_dice:.3f}, below {USEFUL_DSC:g}")
            advice.append(_advice("low", loss))
            tags.append(f"best DSC {best_val_dice:.2f} < {USEFUL_DSC:g}")
    if predicted_voxels is not None:
        predicted = int(predicted_voxels)
        if predicted == 0:
            why = (
                ""
                if loss is not None and not uses_schedule(loss)
                else (
                    ": the boundary term, weighted more as α falls, pulls towards an empty prediction"
                )
            )
            problems.append(f"the final prediction is empty (nothing predicted{why})")
            advice.append(_advice("empty", loss))
            tags.append("empty prediction")
        elif reference_voxels and predicted > OVER_FACTOR * int(reference_voxels):
            ratio = predicted / int(reference_voxels)
            problems.append(
                f"the final prediction has {predicted:,} foreground voxels, "
                f"{ratio:.0f}× the {int(reference_voxels):,} labelled ones"
            )
            advice.append(_advice("full", loss))
            tags.append(f"prediction {ratio:.0f}× the labels")
        elif (
            not reference_voxels
            and total_voxels
            and (predicted > MAX_FOREGROUND_SHARE * int(total_voxels))
        ):
            share = 100.0 * predicted / int(total_voxels)
            problems.append(
                f"the final prediction covers {share:.0f} % of the volume ({predicted:,} voxels)"
            )
            advice.append(_advice("full", loss))
            tags.append(f"prediction {share:.0f} % of the volume")
    return RunVerdict(tuple(problems), tuple(advice), tuple(tags))
