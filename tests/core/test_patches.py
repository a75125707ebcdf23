"""The volume cache (memory-mapped, content-hashed), 3D patches, sampling, 3D training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_boundary_seg.core.augment import AugmentConfig
from napari_boundary_seg.core.data import case_from_arrays, find_cases
from napari_boundary_seg.core.distance import class_distance_maps
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.core.patches import (
    AugmentedSlices,
    PatchBatchSampler,
    PatchDataset,
    epoch_batches,
    iter_cache_cases,
    iter_keyed_batches,
)
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import StepEvent, TrainConfig, TrainControl, train

SPACING = (1.0, 1.2, 2.0)


def make_cases(n=3, shape=(20, 24, 12), seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        labels = np.zeros(shape, np.int64)
        labels[2 + i : 6 + i, 3:8, 2:5] = 1  # a lesion in a corner: most patches miss it
        image = (rng.normal(0, 0.2, shape) + labels).astype(np.float32)
        cases.append(case_from_arrays([image, image * 2], labels, SPACING, case_id=f"case{i}"))
    return cases


@pytest.fixture(scope="module")
def cases():
    return make_cases()


@pytest.fixture
def entries(cases, tmp_path):
    return run_to_end(iter_cache_cases(cases, tmp_path / "cache", num_classes=2))


def test_cache_holds_scaled_images_labels_and_whole_volume_phi(cases, entries):
    case, entry = cases[0], entries[0]
    assert entry.case_id == "case0" and entry.shape == (20, 24, 12) and entry.spacing == SPACING
    image, labels, dist = entry.open("image"), entry.open("labels"), entry.open("dist")
    assert isinstance(image, np.memmap) and isinstance(dist, np.memmap)  # read, not loaded
    assert image.shape == (2, 20, 24, 12) and float(image.min()) == 0 and float(image.max()) == 1
    assert np.array_equal(labels, case.labels)
    assert np.array_equal(dist, class_distance_maps(case.labels, 2, spacing=SPACING))
    assert entry.num_foreground == int(case.labels.sum())


def test_cache_is_reused_and_a_changed_case_or_setting_invalidates_only_its_entry(cases, tmp_path):
    folder = tmp_path / "cache"
    first = run_to_end(iter_cache_cases(cases, folder, 2))
    stamps = {e.path: (e.path / "dist.npy").stat().st_mtime_ns for e in first}
    again = run_to_end(iter_cache_cases(cases, folder, 2))
    assert [e.path for e in again] == [e.path for e in first]
    assert all((e.path / "dist.npy").stat().st_mtime_ns == stamps[e.path] for e in again)
    changed = list(cases)
    labels = cases[1].labels.copy()
    labels[15, 15, 6] = 1
    changed[1] = case_from_arrays(list(cases[1].images), labels, SPACING, case_id="case1")
    third = run_to_end(iter_cache_cases(changed, folder, 2))
    assert third[0].path == first[0].path and third[2].path == first[2].path
    assert third[1].path != first[1].path
    other = run_to_end(iter_cache_cases(cases, folder, 2, percentiles=(1.0, 99.0)))
    assert not {e.path for e in other} & set(stamps)


def test_cache_from_files_hashes_their_contents(cases, tmp_path):
    root = tmp_path / "data"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case in cases[:2]:
        for m in range(2):
            write_nifti(
                root / "imagesTr" / f"{case.case_id}_{m:04d}.nii.gz", case.images[m], case.affine
            )
        write_nifti(root / "labelsTr" / f"{case.case_id}.nii.gz", case.labels, case.affine)
    files = find_cases(root)
    a = run_to_end(iter_cache_cases(files, tmp_path / "c", 2))
    assert np.array_equal(a[0].open("labels"), cases[0].labels)
    write_nifti(
        root / "labelsTr" / "case1.nii.gz",
        np.zeros_like(cases[1].labels),
        cases[1].affine,
        overwrite=True,
    )
    b = run_to_end(iter_cache_cases(find_cases(root), tmp_path / "c", 2))
    assert b[0].path == a[0].path and b[1].path != a[1].path


def test_patch_from_an_empty_region_carries_the_whole_volume_phi(entries):
    data = PatchDataset(entries, (8, 8, 4), oversample=0.0, seed=1)
    whole = [class_distance_maps(np.asarray(e.open("labels")), 2, spacing=SPACING) for e in entries]
    empty = 0
    for index in range(40):
        case, patch, fg = data.locate(0, index)
        image, labels, dist = data[(0, index)]
        assert not fg and image.shape == (2, 8, 8, 4) and labels.dtype == torch.int64
        assert np.array_equal(dist.numpy(), whole[case][(slice(None), *patch)])
        if not labels.any():
            empty += 1
            assert float(dist[1].min()) > 0  # it still knows how far the lesion is
    assert empty > 5


def test_oversampling_share_and_foreground_centres(entries):
    for share in (0.0, 1 / 3, 0.5, 1.0):
        data = PatchDataset(entries, (8, 8, 4), oversample=share, seed=0)
        flags = [data.locate(0, i)[2] for i in range(300)]
        assert abs(np.mean(flags) - share) <= 1 / 300
    data = PatchDataset(entries, (8, 8, 4), oversample=1.0, seed=0)
    assert all(data[(0, i)][1].any() for i in range(30))


def test_items_are_pure_functions_of_seed_epoch_index_and_workers_repeat(entries):
    data = PatchDataset(entries, (8, 8, 4), seed=3, augment=AugmentConfig(warp=0.5))
    a, b = data[(2, 7)], data[(2, 7)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(data[(3, 7)][0], a[0])
    plan = epoch_batches(1, 2, 0, 3, None)
    serial = list(iter_keyed_batches(data, plan, num_workers=0, seed=3))
    workers = list(iter_keyed_batches(data, plan, num_workers=2, seed=3))
    for x, y in zip(serial, workers, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(x, y, strict=True))


def test_batch_sampler_shards_an_epoch_over_ranks():
    one = [k for batch in PatchBatchSampler(0, 2, 0, 4) for k in batch]
    r0 = [k for batch in PatchBatchSampler(0, 2, 0, 2, rank=0, world_size=2) for k in batch]
    r1 = [k for batch in PatchBatchSampler(0, 2, 0, 2, rank=1, world_size=2) for k in batch]
    assert sorted(r0 + r1) == sorted(one) and not set(r0) & set(r1)


def test_patch_larger_than_a_volume_is_refused(entries):
    with pytest.raises(ValueError, match="case0 of shape"):
        PatchDataset(entries, (32, 8, 4))


def test_augmented_slices_are_keyed_and_repeat(cases):
    from napari_boundary_seg.core.data import PreprocessConfig, SliceDataset

    slices = SliceDataset(cases, 2, PreprocessConfig(slice_size=16), distance="2d")
    data = AugmentedSlices(slices, AugmentConfig(warp=1.0), seed=0)
    image, labels, dist = data[(0, 5)]
    assert image.shape == (2, 16, 16) and dist.shape == (2, 16, 16)
    spacing = slices.case_spacing[int(slices.case_index[5])][1:]
    ref = class_distance_maps(labels.numpy(), 2, spacing=spacing)
    np.testing.assert_allclose(dist.numpy(), ref, rtol=1e-6, atol=1e-5)
    assert torch.equal(data[(0, 5)][2], dist)


TINY3D = {
    "dims": 3,
    "patch_size": (16, 16, 8),
    "depth": 2,
    "base_channels": 4,
    "batch_size": 2,
    "val_fraction": 0.34,
    "device": "cpu",
    "max_steps_per_epoch": 3,
}


def test_3d_training_stopped_and_resumed_equals_the_uninterrupted_run(cases, tmp_path):
    reference = run_to_end(
        train(TrainConfig(out_dir=str(tmp_path / "a"), epochs=2, **TINY3D), cases)
    )
    assert (tmp_path / "a" / "cache").is_dir()  # the default cache folder
    control = TrainControl()

    def stop(event):
        if isinstance(event, StepEvent) and (event.epoch, event.step) == (1, 0):
            control.stop()

    config = TrainConfig(out_dir=str(tmp_path / "b"), epochs=2, **TINY3D)
    first = run_to_end(train(config, cases, control), stop)
    assert first.stopped
    resumed = run_to_end(train(config.replace(resume_from=str(tmp_path / "b" / "last.pt")), cases))
    assert not resumed.stopped
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for a, b in zip(reference.history, resumed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_dice"] == b["val_dice"]
    assert np.isfinite(reference.history[-1]["val_dice"])


STEPS3D = {**TINY3D, "batch_size": 4, "max_steps_per_epoch": None, "steps_per_epoch": 3,
           "loss": "gdl+bl"}  # fmt: skip
"""3 steps an epoch where one tiling of the 2 training volumes takes 2 (6 patches of 16×16×8)."""


def _steps(events):
    steps = {}
    for e in events:
        if isinstance(e, StepEvent):
            steps.setdefault(e.epoch, []).append(e)
    return steps


def test_a_3d_epoch_has_steps_per_epoch_steps_and_alpha_and_lr_follow_epochs(
    cases, tmp_path, monkeypatch
):
    from napari_boundary_seg.core import train as train_mod
    from napari_boundary_seg.core.events import EpochEvent, InfoEvent
    from napari_boundary_seg.core.schedule import schedule_from_dict

    updates = []
    update = train_mod._Plateau.update
    monkeypatch.setattr(
        train_mod._Plateau, "update", lambda p, *a: updates.append(a[0]) or update(p, *a)
    )
    schedule = {"kind": "paper", "start": 1.0, "step": 0.25, "floor": 0.01}
    config = TrainConfig(epochs=3, schedule=schedule, **STEPS3D)
    events = list(train(config, cases))
    info = next(e for e in events if isinstance(e, InfoEvent) and e.steps_per_epoch)
    assert (info.steps_per_epoch, info.num_train_slices) == (3, 12)
    steps = _steps(events)
    assert {e: [s.step for s in v] for e, v in steps.items()} == {e: [0, 1, 2] for e in range(3)}
    alphas = schedule_from_dict(schedule)
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    for epoch, row in enumerate(epochs):
        assert {s.w_region for s in steps[epoch]} == {row.w_region} == {alphas(epoch)[0]}
        assert len({s.lr for s in steps[epoch]}) == 1  # the lr moves between epochs only
    assert len(updates) == 3  # the plateau sees each epoch once, not each step
    capped = list(train(config.replace(epochs=1, max_steps_per_epoch=2), cases))
    assert [s.step for s in _steps(capped)[0]] == [0, 1]
    tiling = list(train(config.replace(epochs=1, steps_per_epoch=None), cases))
    assert [s.step for s in _steps(tiling)[0]] == [0, 1]


def _stop_at(control, epoch, step):
    def stop(event):
        if isinstance(event, StepEvent) and (event.epoch, event.step) == (epoch, step):
            control.stop()  # honoured before the next step

    return stop


def _same_weights(a, b):
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_3d_epochs_of_fixed_steps_repeat_and_resume_mid_epoch(cases, tmp_path):
    from napari_boundary_seg.core.checkpoint import read_checkpoint

    config = TrainConfig(epochs=2, **STEPS3D)
    reference = run_to_end(train(config.replace(out_dir=str(tmp_path / "a")), cases))
    _same_weights(reference, run_to_end(train(config, cases)))
    control = TrainControl()
    stopped = config.replace(out_dir=str(tmp_path / "b"))
    assert run_to_end(train(stopped, cases, control), _stop_at(control, 0, 1)).stopped
    last = tmp_path / "b" / "last.pt"
    assert read_checkpoint(last)["position"] == {"epoch": 0, "step": 2}  # inside epoch 1
    resumed = run_to_end(train(stopped.replace(resume_from=str(last)), cases))
    _same_weights(reference, resumed)
    assert [h["train_loss"] for h in reference.history] == [
        h["train_loss"] for h in resumed.history
    ]


def test_a_3d_checkpoint_of_an_earlier_version_resumes_as_one_tiling(cases, tmp_path):
    from napari_boundary_seg.core.checkpoint import (
        checkpoint_config,
        read_checkpoint,
        save_checkpoint,
    )

    tiling = TrainConfig(epochs=2, **{**STEPS3D, "steps_per_epoch": None})  # 2 steps an epoch
    reference = run_to_end(train(tiling, cases))
    control = TrainControl()
    stopped = tiling.replace(out_dir=str(tmp_path / "b"))
    assert run_to_end(train(stopped, cases, control), _stop_at(control, 0, 0)).stopped
    old = read_checkpoint(tmp_path / "b" / "last.pt")
    del old["config"]["steps_per_epoch"]  # as written before the setting existed
    save_checkpoint(tmp_path / "b" / "last.pt", old)
    saved = TrainConfig.from_dict(checkpoint_config(old))
    assert saved == stopped  # a missing key reads as one tiling
    resumed = run_to_end(train(saved.replace(resume_from=str(tmp_path / "b" / "last.pt")), cases))
    _same_weights(reference, resumed)
    with pytest.raises(ValueError, match="steps_per_epoch: None in the checkpoint, 250 now"):
        run_to_end(
            train(
                tiling.replace(steps_per_epoch=250, resume_from=str(tmp_path / "b" / "last.pt")),
                cases,
            )
        )


def test_2d_resume_ignores_steps_per_epoch():
    from napari_boundary_seg.core.train import _check_resume_config

    config = TrainConfig(epochs=2)
    old = config.to_dict()
    del old["steps_per_epoch"]  # a 2D checkpoint of an earlier version
    _check_resume_config(config, {"config": old, "position": {"epoch": 1}}, "old.pt")
    old3d = TrainConfig(dims=3, epochs=2).to_dict()
    del old3d["steps_per_epoch"]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _check_resume_config(
            TrainConfig(dims=3, epochs=2), {"config": old3d, "position": {"epoch": 1}}, "old.pt"
        )


def test_config_defaults_for_3d_and_round_trip():
    config = TrainConfig(dims=3)
    assert config.patch_size == (96, 96, 32) and config.augment_enabled
    assert not TrainConfig().augment_enabled and TrainConfig().patch_size is None
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="dims"):
        TrainConfig(dims=4)
    with pytest.raises(ValueError, match="patch_size"):
        TrainConfig(dims=3, patch_size=(8, 8))
    with pytest.raises(ValueError, match="oversample"):
        TrainConfig(oversample=1.5)


def test_3d_checkpoint_holds_its_mode_and_predict_follows_it(cases, tmp_path):
    from napari_boundary_seg.core.checkpoint import read_checkpoint
    from napari_boundary_seg.core.predict import predict_volume

    config = TrainConfig(out_dir=str(tmp_path), epochs=1, **{**TINY3D, "max_steps_per_epoch": 1})
    done = run_to_end(train(config, cases))
    saved = read_checkpoint(done.last_checkpoint)
    assert saved["dims"] == 3 and tuple(saved["patch_size"]) == (16, 16, 8)
    assert saved["model"]["spatial_dims"] == 3
    _, labels = predict_volume(done.last_checkpoint, cases[0].images, SPACING)
    assert labels.shape == cases[0].labels.shape
    tuned = run_to_end(
        train(config.replace(out_dir=None, init_checkpoint=done.last_checkpoint), cases)
    )
    assert not tuned.stopped and tuned.model.spatial_dims == 3
    with pytest.raises(ValueError, match="3D model"):
        run_to_end(
            train(
                TrainConfig(epochs=1, init_checkpoint=done.last_checkpoint, device="cpu"),
                cases,
            )
        )


def test_2d_training_from_the_disk_cache_equals_the_in_memory_slice_data_set(cases, tmp_path):
    from napari_boundary_seg.core.data import SliceDataset, split_cases
    from napari_boundary_seg.core.train import preprocess_config

    config = TrainConfig(
        epochs=2, slice_size=16, depth=2, base_channels=4, batch_size=4, device="cpu",
        val_fraction=0.34, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    disk = run_to_end(train(config, cases))
    tr, va = split_cases(cases, 0.34, 0)
    memory_set = SliceDataset(tr, 2, preprocess_config(config))
    memory = run_to_end(train(config, tr, val_cases=va, dataset=memory_set))
    for key, value in memory.model.state_dict().items():
        assert torch.equal(value, disk.model.state_dict()[key]), key
    assert [h["val_dice"] for h in memory.history] == [h["val_dice"] for h in disk.history]
    files = {p.name for p in (tmp_path / "cache").iterdir()}
    assert (
        sum(n.startswith("sl-") for n in files) == 2
        and sum(n.startswith("vol-") for n in files) == 1
    )


def test_disk_slices_are_read_memory_mapped(cases, tmp_path):
    from napari_boundary_seg.core.data import PreprocessConfig, SliceDataset
    from napari_boundary_seg.core.patches import DiskSliceDataset, iter_cache_slices

    pre = PreprocessConfig(slice_size=16, skip_empty_slices=True)
    entries = run_to_end(iter_cache_slices(cases, tmp_path, 2, pre, "3d"))
    disk = DiskSliceDataset(entries, skip_empty_slices=True)
    memory = SliceDataset(cases, 2, pre)
    assert len(disk) == len(memory) and np.array_equal(disk.slice_index, memory.slice_index)
    assert all(isinstance(a, np.memmap) for a in disk.arrays(0).values())
    for i in (0, len(disk) - 1):
        assert all(torch.equal(a, b) for a, b in zip(disk[i], memory[i], strict=True))


def test_only_the_last_few_cases_stay_memory_mapped(entries):
    data = PatchDataset(entries, (8, 8, 4), seed=0)
    data._open.size = 2
    seen = {data.locate(0, i)[0] for i in range(30)}
    for i in range(30):
        data[(0, i)]
    assert len(seen) == 3 and len(data._open._maps) == 2
    assert all(isinstance(a, np.memmap) for m in data._open._maps.values() for a in m.values())


def test_2d_augmented_training_gives_the_same_weights_with_a_worker(cases):
    config = TrainConfig(
        epochs=1, slice_size=16, depth=2, base_channels=4, batch_size=4, device="cpu",
        val_fraction=0.0, augment=True, distance="2d", max_steps_per_epoch=3,
    )  # fmt: skip
    serial = run_to_end(train(config, cases))
    worker = run_to_end(train(config.replace(num_workers=1), cases))
    plain = run_to_end(train(config.replace(augment=False), cases))
    key = next(iter(serial.model.state_dict()))
    assert torch.equal(serial.model.state_dict()[key], worker.model.state_dict()[key])
    assert not torch.equal(serial.model.state_dict()[key], plain.model.state_dict()[key])
