"""The rounds of interactive fine-tuning: the point each round adds to the
correction curve, and undoing a round (the active checkpoint goes back, the
lineage notes it, no file is deleted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from napari_boundary_seg.core.rounds import (
    AGREEMENT,
    REFERENCE,
    Rounds,
    round_point,
    untouched_dice,
)


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """old, new predictions and a reference, (8, 8, 5), slices along axis 2."""
    truth = np.zeros((8, 8, 5), np.int32)
    truth[2:6, 2:6, :] = 1
    old = np.zeros_like(truth)
    old[2:6, 2:4, :] = 1  # half of the lesion
    new = truth.copy()
    new[2:6, 2:6, 4] = 0  # all but slice 4
    return old, new, truth


def test_reference_point_is_the_untouched_dsc_of_compare_models():
    from napari_boundary_seg.core.finetune import compare_models

    old, new, truth = _volumes()
    point = round_point(old, new, [0, 1], 2, truth)
    expected = compare_models(old, new, truth, None, [0, 1], 2)["untouched"]
    assert point.measure == REFERENCE and point.verified == 2 and point.untouched == 3
    assert point.value == pytest.approx(expected["dice_new"])
    assert point.before == pytest.approx(expected["dice_old"])
    # by hand: slices 2, 3 perfect (32 voxels), slice 4 empty against 16
    assert point.value == pytest.approx(2 * 32 / (32 + 48))


def test_agreement_point_compares_with_the_previous_prediction():
    old, new, _ = _volumes()
    point = round_point(old, new, [4], 2)
    assert point.measure == AGREEMENT and point.before is None and point.untouched == 4
    # slices 0-3: old 8 voxels, new 16, overlap 8, each
    assert point.value == pytest.approx(2 * 32 / (32 + 64))
    assert round_point(new, new, [0], 2).value == 1.0  # nothing changed: settled


def test_every_slice_verified_or_one_image_gives_nan():
    old, new, truth = _volumes()
    point = round_point(old, new, range(5), 2, truth)
    assert math.isnan(point.value) and point.untouched == 0
    assert math.isnan(untouched_dice(old[..., 0], new[..., 0], [0], None)[0])


def test_bad_input_is_named():
    old, new, truth = _volumes()
    with pytest.raises(ValueError, match="shapes differ"):
        round_point(old, new[..., :4], [0], 2)
    with pytest.raises(ValueError, match="reference"):
        round_point(old, new, [0], 2, truth[..., :4])
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        round_point(old, new, [0], 3)


def _lineage(folder: Path, name: str) -> str:
    out = folder / name
    out.mkdir()
    (out / "last.pt").write_bytes(b"checkpoint")
    path = out / "lineage.json"
    path.write_text(json.dumps({"checkpoint": str(out / "last.pt"), "decision": None}))
    return str(path)


def test_rounds_keep_discard_and_undo(tmp_path):
    start = str(tmp_path / "start.pt")
    rounds = Rounds(start)
    assert not rounds.can_undo() and rounds.active_checkpoint == start
    point = round_point(*_volumes()[:2], [0], 2)
    paths = [_lineage(tmp_path, f"ft{k}") for k in (1, 2, 3)]

    first = rounds.add(str(tmp_path / "ft1/last.pt"), start, paths[0], point)
    assert rounds.pending is first and not rounds.can_undo()  # decide first
    with pytest.raises(ValueError, match="waits for Keep or Discard"):
        rounds.undo()
    rounds.decide(True)
    assert rounds.can_undo() and rounds.active_checkpoint == first.checkpoint
    second = rounds.add(str(tmp_path / "ft2/last.pt"), first.checkpoint, paths[1], point)
    rounds.decide(False)  # discarded: the first stays active
    assert rounds.active is first
    third = rounds.add(str(tmp_path / "ft3/last.pt"), first.checkpoint, paths[2], point)
    rounds.decide(True)
    lineage = json.loads(Path(paths[2]).read_text())
    assert lineage["round"]["index"] == 3 and lineage["round"]["measure"] == AGREEMENT

    undone, restored = rounds.undo()
    assert undone is third and restored is first
    assert rounds.active_checkpoint == first.checkpoint
    assert json.loads(Path(paths[2]).read_text())["undone"]["active"] == first.checkpoint
    undone, restored = rounds.undo()
    assert undone is first and restored is None and rounds.active_checkpoint == start
    assert not rounds.can_undo()
    with pytest.raises(ValueError, match="no round to undo"):
        rounds.undo()
    # every round stays, on disk and in the curve
    assert [r.state for r in rounds.rounds] == ["undone", "discarded", "undone"]
    assert all((Path(p).parent / "last.pt").is_file() for p in paths)
    assert [p[3] for p in rounds.curve()] == ["undone", "discarded", "undone"]
    assert second.point == point


def test_curve_starts_from_the_parent_with_a_reference(tmp_path):
    old, new, truth = _volumes()
    rounds = Rounds("start.pt")
    point = round_point(old, new, [0, 1], 2, truth)
    rounds.add("a.pt", "start.pt", _lineage(tmp_path, "a"), point)
    (start, first) = rounds.curve()
    assert start == (REFERENCE, 0.0, point.before, "start", 0)
    assert first == (REFERENCE, 2.0, point.value, "pending", 1)


def test_a_lineage_that_cannot_be_written_changes_nothing(tmp_path):
    rounds = Rounds("start.pt")
    point = round_point(*_volumes()[:2], [0], 2)
    with pytest.raises(FileNotFoundError):
        rounds.add("a.pt", "start.pt", str(tmp_path / "gone" / "lineage.json"), point)
    assert rounds.rounds == []
    path = _lineage(tmp_path, "a")
    rounds.add("a.pt", "start.pt", path, point)
    rounds.decide(True)
    Path(path).unlink()
    with pytest.raises(FileNotFoundError):
        rounds.undo()
    assert rounds.active_checkpoint == "a.pt"
