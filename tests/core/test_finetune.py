"""core.finetune: fine-tuning on corrected slices, lineage, comparison."""

from __future__ import annotations

import json
from collections.abc import Sequence
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


# ---------------------------------------------------------------------------
# a checkpoint trained in 3D is fine-tuned in 3D, without being told

SHAPE3D = (16, 16, 12)  # axis 2 (the default slicing axis) has 12 slices
SPACING3D = (1.0, 1.0, 2.0)
TINY3D = {"dims": 3, "patch_size": (8, 8, 8), "depth": 2, "base_channels": 4, "batch_size": 2,
          "loss": "gdl+bl"}  # fmt: skip


def _volume3d(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE3D, dtype=np.int64)
    labels[4:9, 5:10, 3:9] = 1
    image = (rng.normal(0.3, 0.05, SHAPE3D) + 0.5 * labels).astype(np.float32)
    return image[None], labels


@pytest.fixture(scope="module")
def parent3d(tmp_path_factory) -> Path:
    from napari_boundary_seg.core.train import TrainConfig, train

    images, labels = _volume3d()
    case = case_from_arrays(list(images), labels, SPACING3D, case_id="orig")
    out = tmp_path_factory.mktemp("parent3d")
    config = TrainConfig(
        out_dir=str(out), epochs=1, max_steps_per_epoch=1, val_fraction=0.0, device="cpu", **TINY3D
    )
    return Path(run_to_end(train(config, [case])).last_checkpoint)


def _corrected3d() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _volume3d()
    labels = labels.copy()
    labels[12:14, 12:14, 1] = 1  # a missed lesion painted on slice 1 (near the edge)
    labels[:, :, 10] = 0  # slice 10 (beyond the last patch start) erased
    labels[4:9, 5:10, 10] = 1
    labels[6, 6, 10] = 0
    return images, labels


def _holds(patch: tuple[slice, ...], axis: int, slices: Sequence[int]) -> bool:
    return any(patch[axis].start <= s < patch[axis].stop for s in slices)


def test_corrected_patches_hold_a_corrected_slice_and_mix_exactly(parent3d, tmp_path):
    from napari_boundary_seg.core.finetune import CorrectedPatches
    from napari_boundary_seg.core.patches import iter_cache_cases

    images, labels = _corrected3d()
    corrected = case_from_arrays(list(images), labels, SPACING3D, case_id="corrected")
    original = case_from_arrays(list(_volume3d(3)[0]), _volume3d(3)[1], SPACING3D, case_id="o")
    entry, orig = run_to_end(iter_cache_cases([corrected, original], tmp_path, 2))
    for oversample in (0.0, 1.0):
        ds = CorrectedPatches(
            entry, [10, 1], 2, (8, 8, 8), mix=[orig], mix_ratio=0.5, oversample=oversample, seed=3
        )
        # one in-plane tiling (16*16 / 8*8 = 4 patches) per corrected slice; half as many mixed
        assert (ds.n_corrected, ds.n_mix, len(ds)) == (8, 4, 12)
        assert sum(ds.is_mix(i) for i in range(len(ds))) == 4
        seen = set()
        for epoch in range(3):
            for index in range(len(ds)):
                case, patch = ds.locate(epoch, index)
                assert case == ("o" if ds.is_mix(index) else "corrected")
                assert all(p.stop - p.start == 8 for p in patch)
                if case == "corrected":
                    assert _holds(patch, 2, [1, 10]), patch
                    seen.add(patch[2].start)
                    if oversample == 1.0:  # centred on a foreground voxel of a corrected slice
                        assert labels[patch][
                            ...,
                            [
                                s - patch[2].start
                                for s in (1, 10)
                                if patch[2].start <= s < patch[2].stop
                            ],
                        ].any()
        assert seen <= {0, 1, 3, 4} and len(seen) > 1
        image, lab, dist, mask = ds[(0, 0)]
        assert image.shape == (1, 8, 8, 8) and lab.shape == (8, 8, 8) and dist.shape[0] == 2
        assert mask.shape == (8, 8, 8)
        assert torch.equal(ds[(1, 5)][2], ds[(1, 5)][2])  # a pure function of the key
    with pytest.raises(ValueError, match="out of range"):
        CorrectedPatches(entry, [12], 2, (8, 8, 8))


def test_finetune_of_a_3d_checkpoint_trains_3d_patches_of_its_size(parent3d, tmp_path, monkeypatch):
    from napari_boundary_seg.core import finetune as finetune_mod

    images, labels = _corrected3d()
    parent_bytes = parent3d.read_bytes()
    keys: list = []
    original_getitem = finetune_mod.CorrectedPatches.__getitem__

    def spy(self, key):
        keys.append((self, key))
        return original_getitem(self, key)

    monkeypatch.setattr(finetune_mod.CorrectedPatches, "__getitem__", spy)
    original = case_from_arrays(list(_volume3d(3)[0]), _volume3d(3)[1], SPACING3D, case_id="o")
    events: list = []
    result = run_to_end(
        finetune(
            parent3d,
            images,
            labels,
            SPACING3D,
            [10, 1],
            mix_cases=[original],
            mix_ratio=0.5,
            epochs=2,
            alpha_start=0.5,
            alpha_step=0.2,
            out_dir=tmp_path / "ft",
            device="cpu",
        ),
        events.append,
    )
    assert result.dims == 3 and result.slices == (1, 10) and result.axis == 2
    assert not result.stopped and result.checkpoint == str(tmp_path / "ft" / "last.pt")
    new, old = read_checkpoint(result.checkpoint), read_checkpoint(parent3d)
    assert new["format_version"] == 2 and new["dims"] == 3
    assert tuple(new["patch_size"]) == (8, 8, 8)
    assert new["model"] == old["model"]  # depth, width, pooling strides kept
    assert any(
        not torch.equal(old["model_state"][k], new["model_state"][k]) for k in old["model_state"]
    )
    assert parent3d.read_bytes() == parent_bytes
    info = [e for e in events if isinstance(e, InfoEvent) and e.num_train_slices]
    assert info[-1].num_train_slices == 12  # 8 corrected + 4 mixed patches per epoch
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert sorted({round(e.w_region, 6) for e in steps}) == [0.3, 0.5]
    # every patch trained on holds a corrected slice, or is a mixed patch of the original case
    assert keys and {id(ds) for ds, _ in keys} == {id(keys[0][0])}
    dataset = keys[0][0]
    assert {e for e, _ in (k for _, k in keys)} == {0, 1} and len(keys) == 2 * 12
    for _, (epoch, index) in keys:
        case, patch = dataset.locate(epoch, index)
        assert case == "o" if dataset.is_mix(index) else _holds(patch, 2, [1, 10])
    assert sum(dataset.is_mix(i) for _, (_, i) in keys) == 8
    lineage = read_lineage(result.lineage_path)
    assert lineage["dims"] == 3 and lineage["slices"] == [1, 10] and lineage["axis"] == 2
    assert lineage["settings"]["patch_size"] == [8, 8, 8]
    assert lineage["settings"]["patches"] == {"corrected": 8, "mix": 4}
    assert lineage["settings"]["mix_cases"] == ["o"] and lineage["mix_slices"] == []
    assert (tmp_path / "ft" / "cache").is_dir()  # the corrected volume in the volume cache
    # ... scaled by the parent's intensity rule (robust), as prediction scales it
    from napari_boundary_seg.core.preprocess import scale_images

    assert read_checkpoint(parent3d)["config"]["normalize"] == "robust"
    corrected = case_from_arrays(list(images), labels, SPACING3D, case_id="c")
    expected = np.asarray(scale_images(corrected, True, None, "robust"), np.float32)
    cached = [np.load(p) for p in (tmp_path / "ft" / "cache").glob("vol-*/image.npy")]
    assert any(c.shape == expected.shape and np.allclose(c, expected) for c in cached)
    minmax = np.asarray(scale_images(corrected, True, None, "minmax"), np.float32)
    assert not any(c.shape == minmax.shape and np.allclose(c, minmax) for c in cached)
    # predict follows the checkpoint: the comparison on corrected vs untouched slices
    out = run_to_end(evaluate_finetune(result, images, labels, SPACING3D, device="cpu"))
    assert out["new_pred"].shape == labels.shape
    assert out["comparison"]["corrected"]["n_slices"] == 2
    assert read_lineage(result.lineage_path)["metrics"]["untouched"]["n_slices"] == 10


def test_3d_checkpoint_needs_a_3d_volume(parent3d, tmp_path):
    images, labels = _corrected3d()
    with pytest.raises(ValueError, match="trained in 3D"):
        run_to_end(finetune(parent3d, images[:, :, :, 1], labels[:, :, 1], None, [0], out_dir="x"))
    with pytest.raises(ValueError, match=r"smaller than the checkpoint's patch \(8, 8, 8\)"):
        run_to_end(
            finetune(parent3d, images[..., :6], labels[..., :6], None, [1], out_dir=tmp_path / "s")
        )


def test_cli_finetune_of_a_3d_checkpoint(parent3d, tmp_path, capsys):
    from napari_boundary_seg.cli import main
    from napari_boundary_seg.core.io import write_nifti

    images, labels = _corrected3d()
    affine = np.diag([*SPACING3D, 1.0])
    write_nifti(tmp_path / "img_0000.nii.gz", images[0], affine=affine)
    write_nifti(tmp_path / "seg.nii.gz", labels.astype(np.uint8), affine=affine)
    argv = ["finetune", "--checkpoint", str(parent3d), "--image", str(tmp_path / "img_0000.nii.gz")]
    argv += ["--labels", str(tmp_path / "seg.nii.gz"), "--epochs", "1", "--device", "cpu"]
    # the original training data as a folder: its cases go to the volume cache as files
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for name, seed in (("orig", 0), ("other", 4)):
        image, label = _volume3d(seed)
        write_nifti(data / "imagesTr" / f"{name}_0000.nii.gz", image[0], affine=affine)
        write_nifti(data / "labelsTr" / f"{name}.nii.gz", label.astype(np.uint8), affine=affine)
    argv += ["--mix-data", str(data), "--mix-ratio", "0.5"]
    assert main([*argv, "--slices", "1", "10", "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert "3D patches" in out and "corrected" in out and "untouched" in out
    lineage = read_lineage(tmp_path / "ft" / "lineage.json")
    assert lineage["dims"] == 3 and lineage["slices"] == [1, 10]
    # only the parent's training case ("orig") is mixed in
    assert lineage["settings"]["mix_cases"] == ["orig"]
    assert lineage["settings"]["patches"] == {"corrected": 8, "mix": 4}
    assert lineage["metrics"]["corrected"]["n_slices"] == 2
    new = read_checkpoint(tmp_path / "ft" / "last.pt")
    assert new["dims"] == 3 and new["train_cases"] == ["corrected", "orig"]


def test_finetune_keeps_the_parents_modality_names(tmp_path, train_tiny):
    images, labels = _volume()
    done = train_tiny(tmp_path / "named", images, labels, (2.0, 1.0, 1.0), 0, modalities=["FLAIR"])
    named = Path(done.last_checkpoint)
    assert read_checkpoint(named)["modalities"] == ["FLAIR"]
    kwargs = {"epochs": 1, "device": "cpu"}
    result = run_to_end(
        finetune(named, images, labels, (2.0, 1.0, 1.0), [2], out_dir=tmp_path / "a", **kwargs)
    )
    assert read_checkpoint(result.checkpoint)["modalities"] == ["FLAIR"]  # not ["0"]
    result = run_to_end(
        finetune(
            named, images, labels, (2.0, 1.0, 1.0), [2], out_dir=tmp_path / "b",
            modalities=["T2"], **kwargs,
        )
    )  # fmt: skip
    assert read_checkpoint(result.checkpoint)["modalities"] == ["T2"]
    with pytest.raises(ValueError, match="modality name"):
        run_to_end(finetune(named, images, labels, None, [2], modalities=["a", "b"], **kwargs))


# ---------------------------------------------------------------------------
# only verified voxels teach


def test_slab_distance_maps_come_from_the_verified_labels_alone():
    from napari_boundary_seg.core.distance import class_distance_maps
    from napari_boundary_seg.core.modes.base import slab_distance_maps, slabs

    assert slabs([7, 3, 4, 9, 8]) == [[3, 4], [7, 8, 9]]
    _, labels = _corrected3d()
    phi = slab_distance_maps(labels, 2, SPACING3D, 2, [1, 5, 6])
    assert sorted(phi) == [1, 5, 6] and phi[1].shape == (2, 16, 16)
    # a lone slice: the 2D map of that slice
    per_slice = class_distance_maps(labels, 2, spacing=SPACING3D, axis=2)
    np.testing.assert_allclose(phi[1], per_slice[:, :, :, 1], atol=1e-5)
    # contiguous slices: the 3D map of the slab, with the spacing
    slab = class_distance_maps(labels[:, :, 5:7], 2, spacing=SPACING3D)
    np.testing.assert_allclose(phi[5], slab[:, :, :, 0], atol=1e-5)
    np.testing.assert_allclose(phi[6], slab[:, :, :, 1], atol=1e-5)
    # an unverified slice next to the slab does not shape it
    other = labels.copy()
    other[:, :, 4] = 1 - other[:, :, 4]
    again = slab_distance_maps(other, 2, SPACING3D, 2, [5, 6])
    np.testing.assert_array_equal(again[5], phi[5])


def test_corrected_patches_mask_the_unverified_slices(tmp_path):
    from napari_boundary_seg.core.finetune import CorrectedPatches
    from napari_boundary_seg.core.modes.base import slab_distance_maps
    from napari_boundary_seg.core.patches import iter_cache_cases

    images, labels = _corrected3d()
    corrected = case_from_arrays(list(images), labels, SPACING3D, case_id="corrected")
    original = case_from_arrays(list(_volume3d(3)[0]), _volume3d(3)[1], SPACING3D, case_id="o")
    entry, orig = run_to_end(iter_cache_cases([corrected, original], tmp_path, 2))
    verified = [1, 5, 6]
    phi = slab_distance_maps(labels, 2, SPACING3D, 2, verified)
    ds = CorrectedPatches(entry, verified, 2, (8, 8, 8), mix=[orig], mix_ratio=0.5, seed=1)
    n_mix = 0
    for index in range(len(ds)):
        case, patch = ds.locate(0, index)
        image, lab, dist, mask = ds[(0, index)]
        assert mask.dtype == torch.float32 and mask.shape == (8, 8, 8)
        if ds.is_mix(index):
            n_mix += 1
            assert torch.all(mask == 1)  # an original case stays fully labelled
            continue
        inside = [s for s in range(patch[2].start, patch[2].stop)]
        for k, s in enumerate(inside):
            if s in verified:
                assert torch.all(mask[:, :, k] == 1)
                np.testing.assert_array_equal(
                    dist[:, :, :, k].numpy(), phi[s][:, patch[0], patch[1]]
                )
            else:
                assert torch.all(mask[:, :, k] == 0) and torch.all(dist[:, :, :, k] == 0)
        assert mask.sum() > 0
    assert n_mix == ds.n_mix > 0


def test_finetune_refuses_nothing_verified_and_takes_verified_slices(parent, tmp_path):
    from napari_boundary_seg.core.config import FinetuneConfig

    images, labels = _corrected()
    with pytest.raises(ValueError, match=r"no corrected slices.*mark a slice checked") as err:
        run_to_end(finetune(parent, images, labels, None, [], out_dir=tmp_path / "none"))
    assert "--verified-slices" in str(err.value)
    assert not (tmp_path / "none").exists()  # refused before any work
    with pytest.raises(ValueError, match="out of range"):
        run_to_end(
            finetune(parent, images, labels, None, [], verified_slices=(9,), out_dir=tmp_path / "o")
        )
    with pytest.raises(
        ValueError, match=r"FinetuneConfig\.verified_slices must be an integer >= 0"
    ):
        FinetuneConfig(verified_slices=(-1,))
    assert FinetuneConfig(verified_slices=[3, 1, 3]).verified_slices == (1, 3)
    events: list = []
    result = run_to_end(
        finetune(
            parent, images, labels, (2.0, 1.0, 1.0), [2], verified_slices=(0, 2, 3),
            epochs=1, distance="3d", out_dir=tmp_path / "ft", device="cpu",
        ),
        events.append,
    )  # fmt: skip
    info = [e for e in events if isinstance(e, InfoEvent) and e.num_train_slices]
    assert info[-1].num_train_slices == 3  # slices 0, 2, 3: corrected or checked
    assert result.slices == (2,) and result.verified_slices == (0, 2, 3)
    lineage = read_lineage(result.lineage_path)
    assert lineage["slices"] == [2] and lineage["verified_slices"] == [0, 2, 3]
    out = run_to_end(evaluate_finetune(result, images, labels, (2.0, 1.0, 1.0), device="cpu"))
    assert out["comparison"]["corrected"]["n_slices"] == 3  # the slices that taught


def _weights_after(checkpoint, images, labels, spacing, slices, out, **kw):
    result = run_to_end(
        finetune(checkpoint, images, labels, spacing, slices, epochs=1, out_dir=out, device="cpu",
                 **kw)
    )  # fmt: skip
    return read_checkpoint(result.checkpoint)["model_state"]


def _flipped(labels: np.ndarray, axis: int, slices: Sequence[int]) -> np.ndarray:
    out = labels.copy()
    for s in slices:
        index = [slice(None)] * labels.ndim
        index[axis] = s
        out[tuple(index)] = 1 - out[tuple(index)]
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_unverified_slices_do_not_change_the_fine_tuned_weights(dims, parent, parent3d, tmp_path):
    """Labels on slices nobody verified (inside the 3D patches; next to a verified slab
    with distance="3d" in 2D) leave the fine-tuned weights bit for bit the same; labels
    on a verified slice change them."""
    if dims == 3:
        images, labels = _corrected3d()
        checkpoint, spacing, axis, unverified = parent3d, SPACING3D, 2, [3, 4, 7, 8]
        slices, kw = [5], {"verified_slices": (6,)}
    else:
        images, labels = _corrected()
        checkpoint, spacing, axis, unverified = parent, (2.0, 1.0, 1.0), 0, [1, 4]
        slices, kw = [2], {"verified_slices": (3,), "distance": "3d"}
    a = _weights_after(checkpoint, images, labels, spacing, slices, tmp_path / "a", **kw)
    b = _weights_after(
        checkpoint, images, _flipped(labels, axis, unverified), spacing,
        slices, tmp_path / "b", **kw,
    )  # fmt: skip
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _weights_after(
        checkpoint, images, _flipped(labels, axis, kw["verified_slices"]), spacing,
        slices, tmp_path / "c", **kw,
    )  # fmt: skip
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_cli_finetune_verified_slices(parent, tmp_path, capsys):
    from napari_boundary_seg.cli import main
    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.predict import predict_volume

    images, _ = _volume()
    _, pred = predict_volume(str(parent), images, (2.0, 1.0, 1.0))
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    write_nifti(tmp_path / "img_0000.nii.gz", images[0], affine=affine)
    write_nifti(tmp_path / "seg.nii.gz", pred.astype(np.uint8), affine=affine)  # nothing painted
    argv = ["finetune", "--checkpoint", str(parent), "--image", str(tmp_path / "img_0000.nii.gz")]
    argv += ["--labels", str(tmp_path / "seg.nii.gz"), "--epochs", "1", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "none")]) == 2
    assert "--verified-slices" in capsys.readouterr().err
    assert main([*argv, "--verified-slices", "-1", "--out", str(tmp_path / "neg")]) == 2
    err = capsys.readouterr().err
    assert "--verified-slices must be an integer >= 0" in err and "FinetuneConfig" not in err
    assert main([*argv, "--verified-slices", "4", "1", "--out", str(tmp_path / "ft")]) == 0
    lineage = read_lineage(tmp_path / "ft" / "lineage.json")
    assert lineage["slices"] == [] and lineage["verified_slices"] == [1, 4]
    assert lineage["metrics"]["corrected"]["n_slices"] == 2
