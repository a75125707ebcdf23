"""Loss-weight schedules: pure functions of the epoch.

A schedule maps an epoch (0-based) to ``(w_region, w_boundary)``, the weights of
the regional loss (generalized Dice) and of the boundary loss. For the alpha
kinds it is ``(alpha, 1 - alpha)``, the paper's Eq. 6.

Kinds (:class:`ScheduleKind`):

- ``"paper"`` (the default): ``alpha(e) = max(floor, start - step * e)`` with
  ``start = 1.0``, ``step = 0.01``, ``floor = 0.01`` (Kervadec et al. 2019).
- ``"constant"``: ``alpha(e) = alpha``.
- ``"reference-code"``: the released code's weight shifting, two independent
  weights: ``w_region(e) = max(region_floor, 1 - step * e)`` and
  ``w_boundary(e) = boundary_start + step * e`` (no cap), defaults ``step = 0.01``,
  ``region_floor = 0.1``, ``boundary_start = 0.01``.
- ``"list"``: ``alphas[e]``, a user-given alpha per epoch; the last value is held
  after the end of the list.
- ``"warm-start"`` (adaptive): ``alpha = 1`` (the regional loss alone) until the
  validation DSC has not improved for ``patience`` epochs, then the trainer
  goes on from the best checkpoint so far with the paper's decay
  ``alpha = max(floor, 1 - step * (e - switch + 1))`` (train Dice, then fine-tune
  with the boundary loss).
- ``"basin-hold"`` (adaptive): ``alpha = 1`` until the validation DSC first
  reaches ``threshold`` (the run has left the empty-prediction basin), then the
  paper's decay from that epoch.

The adaptive kinds (:class:`AdaptiveSchedule`) read the validation DSC of the
epochs done: the trainer calls :meth:`Schedule.at` with that history (the other
kinds ignore it), and :meth:`AdaptiveSchedule.switch_epoch` names the epoch the
boundary term starts; it depends on the history alone, so a resumed run
switches where the uninterrupted one would. Without the history
(:meth:`Schedule.weights`, the planned curve of a form's plot) they assume the
earliest switch their rule allows.

Values are rounded to 12 decimals so that ``1 - 0.01 * 3`` reads ``0.97`` in logs
and plots (a change below 1e-12).

Build schedules with :func:`make_schedule` and serialise them with
:meth:`Schedule.to_dict` / :func:`schedule_from_dict` (JSON-compatible dicts).
Each parameter is a declared setting (help, bounds, step):
``settings(PaperSchedule)`` (:func:`~napari_boundary_seg.core.settings.settings`)
gives what a form of the kind needs; :data:`SCHEDULE_CLASSES` maps a kind to its class.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

from napari_boundary_seg.core.settings import setting
from napari_boundary_seg.core.validate import check_int

__all__ = [
    "ScheduleKind",
    "Schedule",
    "PaperSchedule",
    "ConstantSchedule",
    "ReferenceCodeSchedule",
    "ListSchedule",
    "AdaptiveSchedule",
    "WarmStartSchedule",
    "BasinHoldSchedule",
    "SCHEDULE_CLASSES",
    "make_schedule",
    "schedule_from_dict",
]

_DECIMALS = 12


class ScheduleKind(StrEnum):
    """The available schedule kinds."""

    PAPER = "paper"
    CONSTANT = "constant"
    REFERENCE_CODE = "reference-code"
    LIST = "list"
    WARM_START = "warm-start"
    BASIN_HOLD = "basin-hold"


def _clean(value: float) -> float:
    return round(value, _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _unit_interval(value: Any, name: str) -> float:
    number = _number(value, name)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


def _non_negative(value: Any, name: str) -> float:
    number = _number(value, name)
    if number < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def _epoch(epoch: Any) -> int:
    return check_int(epoch, "epoch", 0)


@dataclass(frozen=True)
class Schedule:
    """Base of all schedules: ``schedule(epoch) -> (w_region, w_boundary)``.

    Subclasses are frozen dataclasses whose fields are the kind's parameters.
    """

    kind: ClassVar[ScheduleKind]

    def weights(self, epoch: int) -> tuple[float, float]:
        """``(w_region, w_boundary)`` at ``epoch`` (0-based, >= 0)."""
        raise NotImplementedError

    def __call__(self, epoch: int) -> tuple[float, float]:
        return self.weights(epoch)

    #: True for the kinds that read the validation DSC (:class:`AdaptiveSchedule`).
    uses_validation: ClassVar[bool] = False

    def at(self, epoch: int, val_dice: Sequence[float] = ()) -> tuple[float, float]:
        """``(w_region, w_boundary)`` at ``epoch`` given the validation DSC of the
        epochs before it (``val_dice[i]``: epoch ``i``); the trainer's call. Only
        the adaptive kinds read ``val_dice``."""
        return self.weights(epoch)

    def curve(self, n_epochs: int) -> list[tuple[float, float]]:
        """The planned weights of epochs ``0 .. n_epochs - 1``, for plotting."""
        n = _epoch(n_epochs)
        return [self.weights(e) for e in range(n)]

    @property
    def starts_boundary_only(self) -> bool:
        """True when the regional weight is 0 at epoch 0: boundary loss alone from
        the start, which collapses to an empty foreground in binary problems."""
        return self.weights(0)[0] == 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict: ``{"kind": ..., <parameters>}``."""
        out: dict[str, Any] = {"kind": self.kind.value}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class PaperSchedule(Schedule):
    """``alpha(e) = max(floor, start - step * e)``; weights ``(alpha, 1 - alpha)``."""

    kind: ClassVar[ScheduleKind] = ScheduleKind.PAPER
    start: float = setting(
        1.0, help="α at the first epoch", bounds=(0, 1), step=0.05, section="schedule"
    )
    step: float = setting(
        0.01, help="α drop per epoch", bounds=(0, None), step=0.01, section="schedule"
    )
    floor: float = setting(
        0.01, help="lowest α (at most start)", bounds=(0, 1), step=0.01, section="schedule"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _unit_interval(self.start, "start"))
        object.__setattr__(self, "step", _non_negative(self.step, "step"))
        object.__setattr__(self, "floor", _unit_interval(self.floor, "floor"))
        if self.floor > self.start:
            raise ValueError(
                f"floor ({self.floor}) must not exceed start ({self.start}) in a paper schedule"
            )

    def weights(self, epoch: int) -> tuple[float, float]:
        alpha = _clean(max(self.floor, self.start - self.step * _epoch(epoch)))
        return alpha, _clean(1.0 - alpha)


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """``alpha(e) = alpha``; weights ``(alpha, 1 - alpha)``."""

    kind: ClassVar[ScheduleKind] = ScheduleKind.CONSTANT
    alpha: float = setting(
        0.5, help="α at every epoch", bounds=(0, 1), step=0.05, section="schedule"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _unit_interval(self.alpha, "alpha"))

    def weights(self, epoch: int) -> tuple[float, float]:
        _epoch(epoch)
        return _clean(self.alpha), _clean(1.0 - self.alpha)


@dataclass(frozen=True)
class ReferenceCodeSchedule(Schedule):
    """The released code's weight shifting (two independent weights, not alpha/1-alpha).

    ``w_region(e) = max(region_floor, 1 - step * e)``,
    ``w_boundary(e) = boundary_start + step * e`` (no cap: it exceeds 1 after
    about ``(1 - boundary_start) / step`` epochs).
    """

    kind: ClassVar[ScheduleKind] = ScheduleKind.REFERENCE_CODE
    step: float = setting(
        0.01,
        help="weight moved per epoch (regional down, boundary up)",
        bounds=(0, None),
        step=0.01,
        section="schedule",
    )
    region_floor: float = setting(
        0.1, help="lowest regional weight", bounds=(0, 1), step=0.01, section="schedule"
    )
    boundary_start: float = setting(
        0.01,
        help="boundary weight at the first epoch",
        bounds=(0, None),
        step=0.01,
        section="schedule",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", _non_negative(self.step, "step"))
        object.__setattr__(self, "region_floor", _unit_interval(self.region_floor, "region_floor"))
        object.__setattr__(
            self, "boundary_start", _non_negative(self.boundary_start, "boundary_start")
        )

    def weights(self, epoch: int) -> tuple[float, float]:
        e = _epoch(epoch)
        region = max(self.region_floor, 1.0 - self.step * e)
        return _clean(region), _clean(self.boundary_start + self.step * e)


@dataclass(frozen=True)
class ListSchedule(Schedule):
    """``alpha(e) = alphas[min(e, len(alphas) - 1)]``; weights ``(alpha, 1 - alpha)``."""

    kind: ClassVar[ScheduleKind] = ScheduleKind.LIST
    alphas: tuple[float, ...] = setting(
        (), help="α per epoch; the last is held after the list", bounds=(0, 1), section="schedule"
    )

    def __post_init__(self) -> None:
        message = f"alphas must be a sequence of numbers, got {self.alphas!r}"
        if isinstance(self.alphas, str | bytes | Mapping):
            raise TypeError(message)
        try:
            values = list(self.alphas)  # a list, a tuple or a 1D numpy array
        except TypeError:
            raise TypeError(message) from None
        if not values:
            raise ValueError("alphas is empty: give at least one alpha")
        checked = tuple(_unit_interval(a, f"alphas[{i}]") for i, a in enumerate(values))
        object.__setattr__(self, "alphas", checked)

    def weights(self, epoch: int) -> tuple[float, float]:
        alpha = self.alphas[min(_epoch(epoch), len(self.alphas) - 1)]
        return _clean(alpha), _clean(1.0 - alpha)


def _decay_after(epoch: int, switch: int | None, step: float, floor: float) -> tuple[float, float]:
    """``(alpha, 1 - alpha)``: 1 before ``switch`` (or without one), then
    ``max(floor, 1 - step * (epoch - switch + 1))`` (the boundary term is on
    from the switch epoch)."""
    if switch is None or epoch < switch:
        return 1.0, 0.0
    alpha = _clean(max(floor, 1.0 - step * (epoch - switch + 1)))
    return alpha, _clean(1.0 - alpha)


@dataclass(frozen=True)
class AdaptiveSchedule(Schedule):
    """A schedule whose boundary term starts at an epoch the validation DSC decides.

    Before :meth:`switch_epoch` the weights are ``(1, 0)`` (the regional loss
    alone), from it the paper's decay ``alpha = max(floor, 1 - step * (e - switch + 1))``.
    Subclasses define :meth:`switch_epoch` and :meth:`earliest_switch`.
    """

    uses_validation: ClassVar[bool] = True
    #: True when the run goes on from its best checkpoint at the switch.
    restarts_from_best: ClassVar[bool] = False
    step: float = setting(
        0.01,
        help="α drop per epoch after the switch",
        bounds=(0, None),
        step=0.01,
        section="schedule",
    )
    floor: float = setting(
        0.01, help="lowest α after the switch", bounds=(0, 1), step=0.01, section="schedule"
    )

    def _check_decay(self) -> None:
        object.__setattr__(self, "step", _non_negative(self.step, "step"))
        object.__setattr__(self, "floor", _unit_interval(self.floor, "floor"))

    def switch_epoch(self, val_dice: Sequence[float]) -> int | None:
        """The first epoch with the boundary term, from the validation DSC of the
        epochs done (``None``: not yet)."""
        raise NotImplementedError

    def earliest_switch(self) -> int:
        """The earliest epoch the rule can switch at (the planned curve's)."""
        raise NotImplementedError

    def weights(self, epoch: int) -> tuple[float, float]:
        """The planned weights: the switch at :meth:`earliest_switch`."""
        return _decay_after(_epoch(epoch), self.earliest_switch(), self.step, self.floor)

    def at(self, epoch: int, val_dice: Sequence[float] = ()) -> tuple[float, float]:
        e = _epoch(epoch)
        return _decay_after(e, self.switch_epoch(list(val_dice)[:e]), self.step, self.floor)


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) if math.isfinite(float(v)) else -math.inf for v in values]


@dataclass(frozen=True)
class WarmStartSchedule(AdaptiveSchedule):
    """The regional loss alone until the validation DSC stops improving, then GDL + BL
    from the best checkpoint so far.

    The switch is the first epoch ``e`` at which the best validation DSC of
    epochs ``0 .. e-1`` is ``patience`` or more epochs old; the trainer then
    loads the best weights (:attr:`restarts_from_best`) and ``alpha`` decays as
    the paper's, by ``step`` per epoch from the switch epoch on.
    """

    kind: ClassVar[ScheduleKind] = ScheduleKind.WARM_START
    restarts_from_best: ClassVar[bool] = True
    patience: int = setting(
        5,
        help="epochs without a better validation DSC before the boundary term starts",
        bounds=(1, None),
        step=1,
        section="schedule",
    )

    def __post_init__(self) -> None:
        value = self.patience
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a form's number box gives floats
        object.__setattr__(self, "patience", check_int(value, "patience", 1))
        self._check_decay()

    def switch_epoch(self, val_dice: Sequence[float]) -> int | None:
        values = _finite(val_dice)
        best_at, best = None, -math.inf
        for e, value in enumerate(values):
            if best_at is None or value > best:
                best_at, best = e, value
            if best_at is not None and e - best_at >= self.patience:
                return e + 1
        return None

    def earliest_switch(self) -> int:
        return self.patience + 1


@dataclass(frozen=True)
class BasinHoldSchedule(AdaptiveSchedule):
    """``alpha = 1`` until the validation DSC reaches ``threshold`` (the run has left
    the empty-prediction basin), then the paper's decay from the next epoch."""

    kind: ClassVar[ScheduleKind] = ScheduleKind.BASIN_HOLD
    threshold: float = setting(
        0.1,
        help="validation DSC that ends the hold (out of the empty basin)",
        bounds=(0, 1),
        open=(True, False),
        step=0.05,
        section="schedule",
    )

    def __post_init__(self) -> None:
        threshold = _unit_interval(self.threshold, "threshold")
        if threshold == 0:
            raise ValueError("threshold must be above 0 (0 would not hold at all)")
        object.__setattr__(self, "threshold", threshold)
        self._check_decay()

    def switch_epoch(self, val_dice: Sequence[float]) -> int | None:
        for e, value in enumerate(_finite(val_dice)):
            if value >= self.threshold:
                return e + 1
        return None

    def earliest_switch(self) -> int:
        return 1


SCHEDULE_CLASSES: dict[ScheduleKind, type[Schedule]] = {
    ScheduleKind.PAPER: PaperSchedule,
    ScheduleKind.CONSTANT: ConstantSchedule,
    ScheduleKind.REFERENCE_CODE: ReferenceCodeSchedule,
    ScheduleKind.LIST: ListSchedule,
    ScheduleKind.WARM_START: WarmStartSchedule,
    ScheduleKind.BASIN_HOLD: BasinHoldSchedule,
}
"""The class of each kind; its fields are the kind's parameters."""
_KINDS = SCHEDULE_CLASSES


def make_schedule(kind: ScheduleKind | str = ScheduleKind.PAPER, **params: Any) -> Schedule:
    """Build a schedule.

    Parameters
    ----------
    kind
        ``"paper"`` (params ``start``, ``step``, ``floor``), ``"constant"``
        (``alpha``), ``"reference-code"`` (``step``, ``region_floor``,
        ``boundary_start``), ``"list"`` (``alphas``), ``"warm-start"``
        (``step``, ``floor``, ``patience``) or ``"basin-hold"`` (``step``,
        ``floor``, ``threshold``).
    **params
        The kind's parameters; omitted ones take their defaults.

    Returns
    -------
    Schedule
        Callable ``schedule(epoch) -> (w_region, w_boundary)``.

    Raises
    ------
    ValueError
        Unknown kind (the message lists the kinds) or a parameter out of range.
    TypeError
        Unknown parameter names (named in the message) or non-numeric values.
    """
    try:
        kind = ScheduleKind(kind)
    except ValueError:
        raise ValueError(
            f"unknown schedule kind {kind!r}; choose one of {[k.value for k in ScheduleKind]}"
        ) from None
    cls = _KINDS[kind]
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {unknown} for schedule kind {kind.value!r}; accepted: {accepted}"
        )
    if kind is ScheduleKind.LIST and "alphas" not in params:
        raise TypeError("schedule kind 'list' needs the parameter 'alphas'")
    return cls(**params)


def schedule_from_dict(d: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` output.

    Parameters
    ----------
    d
        ``{"kind": ..., <parameters>}``.
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"schedule dict must be a mapping, got {type(d).__name__}")
    if "kind" not in d:
        raise ValueError(f"schedule dict has no 'kind' key: {dict(d)!r}")
    params = {k: v for k, v in d.items() if k != "kind"}
    return make_schedule(d["kind"], **params)
