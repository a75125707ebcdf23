"""The simulated person of benchmarks/finetune_curve.py: which slices it corrects, how
the verified set grows, and that only the uncorrected slices are scored."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_curve.py"


@pytest.fixture(scope="module")
def curve():
    spec = importlib.util.spec_from_file_location("finetune_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def volumes():
    ref = np.zeros((6, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 2:6, 2:6] = 1  # slice 1: 16 missed voxels
    ref[3, 2:4, 2:4] = 1  # slice 3: 4 missed
    pred[4, 0:3, 0:3] = 1  # slice 4: 9 false positives
    ref[5, 1:5, 1:5] = 1
    pred[5, 1:5, 1:5] = 1  # slice 5: right
    return pred, ref


def test_worst_slices_most_wrong_voxels_first(curve):
    pred, ref = volumes()
    assert list(curve.slice_errors(pred, ref, 0)) == [0, 16, 0, 4, 9, 0]
    assert curve.worst_slices(pred, ref, 0, 1) == (1,)
    assert curve.worst_slices(pred, ref, 0, 3) == (1, 3, 4)
    # ties (no error) go by index; along another axis the counts are per slice of that axis
    assert curve.worst_slices(pred, ref, 0, 5) == (0, 1, 2, 3, 4)
    assert curve.slice_errors(pred, ref, 2).sum() == 29


def test_verified_set_is_cumulative(curve):
    pred, ref = volumes()
    first = curve.worst_slices(pred, ref, 0, 1)
    fixed = curve.corrected_volume(pred, ref, 0, first)
    assert np.array_equal(fixed[1], ref[1]) and np.array_equal(fixed[4], pred[4])
    # the next round's prediction is right on slice 4 now: slice 3 is the worst left,
    # and the slices verified before stay verified
    better = pred.copy()
    better[4] = 0
    second = curve.worst_slices(better, ref, 0, 2, verified=first)
    assert second == (1, 3)
    assert set(first) <= set(second)
    with pytest.raises(ValueError, match="already verified"):
        curve.worst_slices(pred, ref, 0, 1, verified=(1, 3))
    with pytest.raises(ValueError, match="6 slices"):
        curve.worst_slices(pred, ref, 0, 7)


def test_only_uncorrected_slices_are_scored(curve):
    pred, ref = volumes()
    spacing = (1.0, 1.0, 1.0)
    whole = curve.uncorrected_metrics(pred, ref, 0, (), spacing)
    # correcting slices 1 and 4 (the prediction replaced by the reference there) does
    # not change the score of the others: it is measured without them
    fixed = curve.corrected_volume(pred, ref, 0, (1, 4))
    rest = curve.uncorrected_metrics(fixed, ref, 0, (1, 4), spacing)
    same = curve.uncorrected_metrics(pred, ref, 0, (1, 4), spacing)
    assert rest == same
    assert rest["dice"] == pytest.approx(2 * 16 / (16 + 20))  # slices 3 and 5 only
    assert rest["ref_ml"] == pytest.approx(20 / 1000)
    assert whole["dice"] < rest["dice"]


def test_round_budget_and_summary(curve):
    assert curve.round_epochs(1, 4, 30) == 30  # one slice: one step per epoch
    assert curve.round_epochs(8, 4, 30) == 15  # two steps per epoch
    assert curve.round_epochs(16, 4, 30) == 8
    rows = [
        {"target": "t", "arm": "a", "k": 8, "dice": 0.5},
        {"target": "t", "arm": "a", "k": 8, "dice": 0.7},
        {"target": "t", "arm": "a", "k": 8, "dice": float("nan")},
    ]
    mean, sd, n = curve.summarise(rows, "dice")[("t", "a", 8)]
    assert (mean, n) == (pytest.approx(0.6), 2) and sd == pytest.approx(0.1414, abs=1e-3)
