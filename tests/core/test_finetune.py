"""core.finetune: fine-tuning on corrected slices, lineage, comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.checkpoint import read_checkpoint
from napari_boundary_seg.core.data import case_from_arrays
from napari_boundary_seg.core.finetune import (
    compare_models,
    differing_slices,
    evaluate_finetune,
    finetune,
    prediction_changes,
    read_lineage,
    record_decision,
)
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import InfoEvent, StepEvent, TrainControl

SHAPE = (6, 32, 32)


def _volume(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[1:5, 8:16, 10:20] = 1
    image = (rng.normal(0.3, 0.05, SHAPE) + 0.5 * labels).astype(np.float32)
    return image[None], labels


@pytest.fixture(scope="module")
def parent(tmp_path_factory, train_tiny) -> Path:
    images, labels = _volume()
    done = train_tiny(tmp_path_factory.mktemp("parent"), images, labels, (2.0, 1.0, 1.0), 0)
    return Path(done.last_checkpoint)


def _corrected() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _volume()
    labels = labels.copy()
    labels[2, 20:24, 20:24] = 1  # a "missed lesion" painted on slice 2
    labels[4] = 0  # a false positive erased on slice 4
    return images, labels


def test_finetune_trains_on_the_slices_and_writes_lineage(parent, tmp_path):
    images, labels = _corrected()
    images_before, labels_before = images.copy(), labels.copy()
    parent_bytes = parent.read_bytes()
    events = []
    result = run_to_end(
        finetune(
            parent,
            images,
            labels,
            (2.0, 1.0, 1.0),
            [4, 2],
            epochs=2,
            alpha_start=0.5,
            alpha_step=0.2,
            out_dir=tmp_path / "ft",
            device="cpu",
        ),
        events.append,
    )
    # the edited slices, and only them, were the training set
    info = [e for e in events if isinstance(e, InfoEvent) and e.num_train_slices]
    assert info[-1].num_train_slices == 2
    assert result.slices == (2, 4) and result.axis == 0
    steps = [e for e in events if isinstance(e, StepEvent)]
    # restarted schedule: alpha 0.5 then 0.3
    assert sorted({round(e.w_region, 6) for e in steps}) == [0.3, 0.5]
    assert not result.stopped and result.checkpoint == str(tmp_path / "ft" / "last.pt")
    # lineage beside the new checkpoint
    lineage = json.loads((tmp_path / "ft" / "lineage.json").read_text())
    assert lineage["parent"] == str(parent.resolve())
    assert lineage["slices"] == [2, 4] and lineage["axis"] == 0
    assert lineage["settings"]["alpha_start"] == 0.5 and lineage["settings"]["epochs"] == 2
    assert len(lineage["history"]) == 2 and lineage["decision"] is None
    new = read_checkpoint(result.checkpoint)
    assert new["parent"] == str(parent.resolve())
    # the parent is untouched, the inputs are not mutated, the weights moved
    assert parent.read_bytes() == parent_bytes
    np.testing.assert_array_equal(images, images_before)
    np.testing.assert_array_equal(labels, labels_before)
    old = read_checkpoint(parent)["model_state"]
    assert any(not torch.equal(old[k], new["model_state"][k]) for k in old)
    # the gain: metrics written into the lineage; the decision too
    out = run_to_end(evaluate_finetune(result, images, labels, (2.0, 1.0, 1.0), device="cpu"))
    assert set(out["comparison"]) == {"corrected", "untouched"}
    assert out["comparison"]["corrected"]["n_slices"] == 2
    assert out["new_pred"].shape == labels.shape and out["changes"].dtype == np.uint8
    assert read_lineage(result.lineage_path)["metrics"]["untouched"]["n_slices"] == 4
    assert record_decision(result.lineage_path, kept=False)["decision"] == "discarded"


def test_stop_keeps_parent_and_inputs(parent, tmp_path):
    images, labels = _corrected()
    labels_before = labels.copy()
    parent_bytes = parent.read_bytes()
    control = TrainControl()
    control.stop()
    result = run_to_end(
        finetune(
            parent,
            images,
            labels,
            (2.0, 1.0, 1.0),
            [2],
            epochs=3,
            out_dir=tmp_path / "ft",
            device="cpu",
            control=control,
        )
    )
    assert result.stopped and "stopped" in result.reason
    assert parent.read_bytes() == parent_bytes
    np.testing.assert_array_equal(labels, labels_before)
    lineage = read_lineage(tmp_path / "ft" / "lineage.json")
    assert lineage["stopped"] is True and lineage["slices"] == [2]


def test_mix_adds_original_slices(parent, tmp_path):
    images, labels = _corrected()
    original = case_from_arrays(list(_volume(5)[0]), _volume(5)[1], (2.0, 1.0, 1.0), case_id="c")
    events: list = []
    result = run_to_end(
        finetune(
            parent,
            images,
            labels,
            (2.0, 1.0, 1.0),
            [2, 4],
            mix_cases=[original],
            mix_ratio=1.5,
            epochs=1,
            out_dir=tmp_path / "ft",
            device="cpu",
        ),
        events.append,
    )
    assert len(result.mix_slices) == 3  # round(1.5 * 2)
    # foreground slices of the original case (1..4) are preferred
    assert all(case == "c" and 1 <= s <= 4 for case, s in result.mix_slices)
    info = [e for e in events if isinstance(e, InfoEvent) and e.num_train_slices]
    assert info[-1].num_train_slices == 5


def test_bad_inputs(parent, tmp_path):
    images, labels = _corrected()
    with pytest.raises(ValueError, match="out of range"):
        run_to_end(finetune(parent, images, labels, None, [6], out_dir=tmp_path / "a"))
    with pytest.raises(ValueError, match="no corrected slices"):
        run_to_end(finetune(parent, images, labels, None, [], out_dir=tmp_path / "b"))
    bad = labels.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="2 classes"):
        run_to_end(finetune(parent, images, bad, None, [0], out_dir=tmp_path / "c"))
    with pytest.raises(ValueError, match="do not match"):
        run_to_end(finetune(parent, images, labels[:3], None, [0], out_dir=tmp_path / "d"))
    with pytest.raises(ValueError, match="takes 1"):
        run_to_end(
            finetune(parent, np.concatenate([images, images]), labels, None, [0], out_dir="x")
        )


@pytest.mark.parametrize("axis", [0, 2])
def test_differing_slices(axis):
    a = np.zeros((4, 5, 6), np.int64)
    b = a.copy()
    index = [slice(None)] * 3
    index[axis] = 3
    b[tuple(index)] = 1
    index[axis] = 1
    b[tuple(index)] = 2
    assert differing_slices(b, a, axis) == [1, 3]
    assert differing_slices(b, a, axis, candidates=[0, 3, 9]) == [3]


def test_prediction_changes_by_hand():
    old = np.array([[0, 1, 2], [0, 1, 0]])
    new = np.array([[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(prediction_changes(old, new), [[1, 2, 3], [0, 0, 0]])


@pytest.mark.parametrize("ndim", [2, 3])
def test_compare_models_by_hand(ndim):
    target = np.zeros((2, 4, 4), np.int64)
    target[0, 1:3, 1:3] = 1  # 4 voxels on slice 0
    old = np.zeros_like(target)  # misses it
    new = target.copy()
    new[0, 1, 1] = 0  # 3 of the 4 voxels
    if ndim == 2:
        target, old, new = target[0], old[0], new[0]
        table = compare_models(old, new, target, (1.0, 1.0), [0], axis=0)
        assert table["untouched"]["n_slices"] == 0
    else:
        table = compare_models(old, new, target, (1.0, 1.0, 1.0), [0], axis=0)
        assert table["untouched"] == {
            "n_slices": 1,
            "dice_old": 1.0,
            "dice_new": 1.0,
            "hd95_old": 0.0,
            "hd95_new": 0.0,
        }
    row = table["corrected"]
    assert row["n_slices"] == 1
    assert row["dice_old"] == 0.0
    assert row["dice_new"] == pytest.approx(2 * 3 / 7)
    # old: empty vs non-empty -> the 4x4 slice diagonal; new: target surface -> prediction
    # distances [0, 0, 0, 1] mm, 95th percentile (linear) = 0.85; the other way all 0
    assert row["hd95_old"] == pytest.approx(np.hypot(4, 4))
    assert row["hd95_new"] == pytest.approx(0.85)


def test_cli_finetune_auto_detects_slices(parent, tmp_path, capsys):
    from napari_boundary_seg.cli import main
    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.predict import predict_volume

    images, _ = _volume()
    _, pred = predict_volume(str(parent), images, (2.0, 1.0, 1.0))
    corrected = pred.copy()
    corrected[3, 0:4, 0:4] = 1 - corrected[3, 0:4, 0:4]  # a correction on slice 3 (axis 0)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    write_nifti(tmp_path / "img_0000.nii.gz", images[0], affine=affine)
    write_nifti(tmp_path / "seg.nii.gz", corrected.astype(np.uint8), affine=affine)
    argv = ["finetune", "--checkpoint", str(parent), "--image", str(tmp_path / "img_0000.nii.gz")]
    argv += ["--labels", str(tmp_path / "seg.nii.gz"), "--epochs", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert "corrected slices (differ from the prediction, axis 0): [3]" in out
    assert "corrected" in out and "untouched" in out
    lineage = read_lineage(tmp_path / "ft" / "lineage.json")
    assert lineage["slices"] == [3] and lineage["metrics"]["corrected"]["n_slices"] == 1
    # explicit slices; an existing run is refused without --overwrite
    assert main([*argv, "--slices", "1", "5", "--out", str(tmp_path / "ft")]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--slices", "1", "5", "--out", str(tmp_path / "ft2")]) == 0
    assert read_lineage(tmp_path / "ft2" / "lineage.json")["slices"] == [1, 5]


def test_finetune_2d_image(parent, tmp_path):
    images, labels = _corrected()
    image2d, labels2d = images[:, 2], labels[2]  # one (M, H, W) slice: the single slice 0
    result = run_to_end(
        finetune(parent, image2d, labels2d, (1.0, 1.0), [0], epochs=1, out_dir=tmp_path / "ft")
    )
    assert result.slices == (0,) and not result.stopped
    with pytest.raises(ValueError, match="out of range"):
        run_to_end(finetune(parent, image2d, labels2d, None, [1], out_dir=tmp_path / "x"))
    out = run_to_end(evaluate_finetune(result, image2d, labels2d, (1.0, 1.0), device="cpu"))
    assert out["new_pred"].shape == labels2d.shape
    assert out["comparison"]["corrected"]["n_slices"] == 1
    assert out["comparison"]["untouched"]["n_slices"] == 0
