"""Tests of core.schedule: values per kind, round trip, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_boundary_seg.core.schedule import (
    ConstantSchedule,
    ListSchedule,
    PaperSchedule,
    ReferenceCodeSchedule,
    Schedule,
    ScheduleKind,
    make_schedule,
    schedule_from_dict,
)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, (1.0, 0.0)), (1, (0.99, 0.01)), (50, (0.5, 0.5)), (99, (0.01, 0.99)), (150, (0.01, 0.99))],
)
def test_paper_defaults(epoch, expected):
    schedule = make_schedule("paper")
    assert isinstance(schedule, PaperSchedule)
    assert schedule(epoch) == pytest.approx(expected, abs=1e-12)
    assert schedule.weights(epoch) == schedule(epoch)


def test_paper_values_are_clean_and_sum_to_one():
    schedule = make_schedule("paper")
    assert schedule(3) == (0.97, 0.03)  # not 0.97 + float noise
    for e in range(0, 120, 7):
        w_region, w_boundary = schedule(e)
        assert w_region + w_boundary == pytest.approx(1.0, abs=1e-12)


def test_paper_custom_params():
    schedule = make_schedule("paper", start=0.8, step=0.1, floor=0.25)
    assert schedule(0) == pytest.approx((0.8, 0.2))
    assert schedule(2) == pytest.approx((0.6, 0.4))
    assert schedule(5) == pytest.approx((0.3, 0.7))  # 0.8 - 0.5 = 0.3 > floor
    assert schedule(6) == pytest.approx((0.25, 0.75))  # 0.2 < floor: floor holds
    assert schedule(1000) == pytest.approx((0.25, 0.75))


def test_constant():
    schedule = make_schedule("constant", alpha=0.3)
    assert isinstance(schedule, ConstantSchedule)
    assert schedule(0) == pytest.approx((0.3, 0.7))
    assert schedule(500) == pytest.approx((0.3, 0.7))


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, (1.0, 0.01)), (1, (0.99, 0.02)), (10, (0.9, 0.11)), (90, (0.1, 0.91)), (150, (0.1, 1.51))],
)
def test_reference_code(epoch, expected):
    schedule = make_schedule("reference-code")
    assert isinstance(schedule, ReferenceCodeSchedule)
    assert schedule(epoch) == pytest.approx(expected, abs=1e-12)


def test_reference_code_matches_released_code_iteration():
    # the released code starts at (1, 0.01) and after each epoch does
    # (a, b) <- (max(0.1, a - step), b + step)
    schedule = make_schedule("reference-code", step=0.03)
    a, b = 1.0, 0.01
    for e in range(60):
        assert schedule(e) == pytest.approx((a, b), abs=1e-9)
        a, b = max(0.1, a - 0.03), b + 0.03


def test_list_holds_last_value():
    schedule = make_schedule("list", alphas=[1.0, 0.5, 0.25])
    assert isinstance(schedule, ListSchedule)
    assert [schedule(e) for e in range(5)] == [
        (1.0, 0.0),
        (0.5, 0.5),
        (0.25, 0.75),
        (0.25, 0.75),
        (0.25, 0.75),
    ]


def test_list_accepts_numpy_and_stores_floats():
    schedule = make_schedule("list", alphas=np.array([0.5, 0.2]))
    assert schedule.alphas == (0.5, 0.2)
    assert all(type(a) is float for a in schedule.alphas)


def test_curve():
    assert make_schedule("paper", step=0.25).curve(3) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5)]
    assert make_schedule("reference-code").curve(2) == [(1.0, 0.01), (0.99, 0.02)]
    assert make_schedule("constant", alpha=0.5).curve(0) == []


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        ("paper", {}, False),
        ("paper", {"start": 0.0, "floor": 0.0}, True),
        ("paper", {"start": 0.0, "floor": 0.0, "step": 0.0}, True),
        ("constant", {"alpha": 0.0}, True),
        ("constant", {"alpha": 0.01}, False),
        ("list", {"alphas": [0.0, 1.0]}, True),
        ("list", {"alphas": [1.0, 0.0]}, False),
        ("reference-code", {}, False),
    ],
)
def test_starts_boundary_only(kind, params, expected):
    assert make_schedule(kind, **params).starts_boundary_only is expected


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("paper", {}),
        ("paper", {"start": 0.9, "step": 0.05, "floor": 0.2}),
        ("constant", {"alpha": 0.4}),
        ("reference-code", {"step": 0.02, "region_floor": 0.3, "boundary_start": 0.0}),
        ("list", {"alphas": [1.0, 0.6, 0.1]}),
    ],
)
def test_dict_round_trip_through_json(kind, params):
    schedule = make_schedule(kind, **params)
    d = json.loads(json.dumps(schedule.to_dict()))
    assert d["kind"] == kind
    again = schedule_from_dict(d)
    assert again == schedule
    assert type(again) is type(schedule)
    assert again.curve(40) == schedule.curve(40)


def test_to_dict_content():
    assert make_schedule("paper").to_dict() == {
        "kind": "paper",
        "start": 1.0,
        "step": 0.01,
        "floor": 0.01,
    }


def test_kind_enum_accepted_and_frozen():
    schedule = make_schedule(ScheduleKind.CONSTANT, alpha=1.0)
    assert schedule.kind is ScheduleKind.CONSTANT
    assert isinstance(schedule, Schedule)
    with pytest.raises(AttributeError):
        schedule.alpha = 0.5  # type: ignore[misc]
    assert make_schedule() == PaperSchedule()


# ---------------------------------------------------------------------------
# validation


def test_unknown_kind_lists_kinds():
    with pytest.raises(
        ValueError, match=r"'linear'.*'paper', 'constant', 'reference-code', 'list'"
    ):
        make_schedule("linear")


@pytest.mark.parametrize(
    ("kind", "params", "names"),
    [
        ("paper", {"alpha": 0.5}, r"\['alpha'\]"),
        ("constant", {"alpha": 0.5, "stepp": 1, "floor": 0}, r"\['floor', 'stepp'\]"),
        ("reference-code", {"floor": 0.1}, r"\['floor'\]"),
    ],
)
def test_unknown_params_named(kind, params, names):
    with pytest.raises(TypeError, match=names):
        make_schedule(kind, **params)


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        ("paper", {"start": 1.5}, "start must be in"),
        ("paper", {"step": -0.01}, "step must be >= 0"),
        ("paper", {"floor": -0.1}, "floor must be in"),
        ("paper", {"start": 0.2, "floor": 0.5}, "must not exceed start"),
        ("paper", {"step": float("nan")}, "step must be finite"),
        ("constant", {"alpha": 1.01}, "alpha must be in"),
        ("constant", {"alpha": -0.5}, "alpha must be in"),
        ("reference-code", {"step": -1.0}, "step must be >= 0"),
        ("reference-code", {"region_floor": 2.0}, "region_floor must be in"),
        ("reference-code", {"boundary_start": -0.01}, "boundary_start must be >= 0"),
        ("list", {"alphas": []}, "alphas is empty"),
        ("list", {"alphas": [0.5, 1.2]}, r"alphas\[1\] must be in"),
    ],
)
def test_out_of_range_params_raise(kind, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(kind, **params)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("constant", {"alpha": "0.5"}),
        ("constant", {"alpha": True}),
        ("list", {"alphas": "0.5"}),
        ("list", {"alphas": 0.5}),
        ("list", {}),
    ],
)
def test_wrong_types_raise(kind, params):
    with pytest.raises(TypeError):
        make_schedule(kind, **params)


@pytest.mark.parametrize(
    ("epoch", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_epoch_raises(epoch, error):
    with pytest.raises(error):
        make_schedule("paper")(epoch)


def test_numpy_epoch_accepted():
    assert make_schedule("paper")(np.int64(1)) == pytest.approx((0.99, 0.01))


def test_schedule_from_dict_errors():
    with pytest.raises(ValueError, match="no 'kind'"):
        schedule_from_dict({"alpha": 0.5})
    with pytest.raises(TypeError, match="mapping"):
        schedule_from_dict([("kind", "paper")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\['bogus'\]"):
        schedule_from_dict({"kind": "paper", "bogus": 1})
