"""Layouts, case loading, preprocessing, the slice data set, its cache and the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_boundary_seg.core import distance
from napari_boundary_seg.core.data import (
    Case,
    CaseFiles,
    DistanceCache,
    PreprocessConfig,
    SliceDataset,
    case_from_arrays,
    find_cases,
    iter_build_dataset,
    load_case,
    load_cases,
    preprocess_case,
    split_cases,
)
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.core.progress import Progress
from napari_boundary_seg.core.train import collate

SHAPE = (6, 7, 5)
SPACING = (0.9, 1.1, 3.0)


def _affine(spacing=SPACING):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [5.0, -3.0, 1.0]
    return a


def _image(seed, shape=SHAPE):
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def _labels(seed, values=(0, 1), shape=SHAPE):
    lab = np.zeros(shape, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for v in values[1:]:
        lab.ravel()[rng.choice(lab.size, 6, replace=False)] = v
    return lab


def _write_generic(root, n=3, n_mod=2, dataset_json=True):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        for m in range(n_mod):
            write_nifti(root / "imagesTr" / f"pat{i}_{m:04d}.nii.gz", _image(10 * i + m), _affine())
        write_nifti(root / "labelsTr" / f"pat{i}.nii.gz", _labels(i), _affine())
    if dataset_json:
        (root / "dataset.json").write_text(
            json.dumps({"channel_names": {"0": "FLAIR", "1": "T1"}, "labels": {"background": 0}})
        )


# ----------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------


def test_generic_layout_found_and_loaded(tmp_path):
    _write_generic(tmp_path)
    files = find_cases(tmp_path)
    assert [f.case_id for f in files] == ["pat0", "pat1", "pat2"]
    assert files[0].layout == "generic"
    assert files[0].modalities == ("FLAIR", "T1")
    assert [p.name for p in files[1].image_paths] == ["pat1_0000.nii.gz", "pat1_0001.nii.gz"]
    assert files[1].label_path.name == "pat1.nii.gz"
    case = load_case(files[1])
    assert case.images.shape == (2, *SHAPE) and case.images.dtype == np.float32
    np.testing.assert_allclose(case.images[0], _image(10), rtol=1e-6)
    np.testing.assert_allclose(case.images[1], _image(11), rtol=1e-6)
    assert case.labels.dtype == np.int64
    np.testing.assert_array_equal(case.labels, _labels(1))
    assert case.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(case.affine, _affine(), atol=1e-6)
    assert case.modalities == ("FLAIR", "T1")


def test_generic_without_dataset_json_names_modalities_by_index(tmp_path):
    _write_generic(tmp_path, n=2, n_mod=1, dataset_json=False)
    files = find_cases(tmp_path, layout="generic")
    assert files[0].modalities == ("0000",)


def test_generic_natural_order_and_test_subset(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTs").mkdir()
    for name in ["c10", "c2", "c1"]:
        write_nifti(tmp_path / "imagesTr" / f"{name}_0000.nii", _image(0))
        write_nifti(tmp_path / "labelsTr" / f"{name}.nii", _labels(0))
    write_nifti(tmp_path / "imagesTs" / "t7_0000.nii.gz", _image(0))
    assert [f.case_id for f in find_cases(tmp_path)] == ["c1", "c2", "c10"]
    test = find_cases(tmp_path, subset="test")
    assert [f.case_id for f in test] == ["t7"] and test[0].label_path is None
    case = load_case(test[0])
    assert case.labels is None and case.images.shape == (1, *SHAPE)


def test_generic_missing_label_and_modality_are_named(tmp_path):
    _write_generic(tmp_path, n=2)
    (tmp_path / "labelsTr" / "pat1.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no label file for case\(s\) \['pat1'\]"):
        find_cases(tmp_path)
    write_nifti(tmp_path / "labelsTr" / "pat1.nii.gz", _labels(1))
    (tmp_path / "imagesTr" / "pat0_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case pat0 .* modalities \[0\], expected \[0, 1\]"):
        find_cases(tmp_path)


def _write_wmh(root):
    for site, ids in {"Utrecht": [0, 2], "Singapore": [50]}.items():
        for i in ids:
            case = root / site / str(i)
            (case / "pre").mkdir(parents=True)
            write_nifti(case / "pre" / "FLAIR.nii.gz", _image(i), _affine())
            write_nifti(case / "pre" / "T1.nii.gz", _image(i + 1), _affine())
            write_nifti(case / "wmh.nii.gz", _labels(i, values=(0, 1, 2)), _affine())


def test_wmh_layout_maps_other_pathology_to_background(tmp_path):
    _write_wmh(tmp_path)
    files = find_cases(tmp_path)
    assert [f.case_id for f in files] == ["Singapore_50", "Utrecht_0", "Utrecht_2"]
    assert files[0].layout == "wmh" and files[0].modalities == ("FLAIR", "T1")
    assert files[1].image_paths[0].name == "FLAIR.nii.gz"
    assert files[1].label_path.name == "wmh.nii.gz"
    raw = _labels(0, values=(0, 1, 2))
    assert (raw == 2).any() and (raw == 1).any()
    case = load_case(files[1])
    expected = np.where(raw == 2, 0, raw)
    np.testing.assert_array_equal(case.labels, expected)
    assert set(np.unique(case.labels)) == {0, 1}
    # one modality only
    flair_only = find_cases(tmp_path, layout="wmh", modalities=["FLAIR"])
    assert flair_only[0].modalities == ("FLAIR",) and len(flair_only[0].image_paths) == 1


def test_wmh_missing_t1_is_named(tmp_path):
    _write_wmh(tmp_path)
    (tmp_path / "Utrecht" / "2" / "pre" / "T1.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case Utrecht_2: no T1\.nii\.gz"):
        find_cases(tmp_path)


ISLES_TOKENS = ["CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax", "OT", "CT_4DPWI"]


def _write_isles(root, cases=(1, 2, 10)):
    for n in cases:
        for k, token in enumerate(ISLES_TOKENS):
            name = f"SMIR.Brain.XX.O.{token}.{345560 + 10 * n + k}"
            folder = root / f"case_{n}" / name
            folder.mkdir(parents=True)
            if token == "OT":
                data = _labels(n)
            elif token == "CT_4DPWI":
                data = np.zeros((*SHAPE, 2), dtype=np.float32)
            else:
                data = _image(n + k)
            write_nifti(folder / f"{name}.nii", data)


def test_isles_layout_by_modality_token(tmp_path):
    _write_isles(tmp_path / "TRAINING")
    files = find_cases(tmp_path)  # the parent folder works too
    assert [f.case_id for f in files] == ["case_1", "case_2", "case_10"]
    first = files[0]
    assert first.layout == "isles"
    assert first.modalities == ("CT", "CT_CBF", "CT_CBV", "CT_MTT", "CT_Tmax")
    assert ".CT_CBF." in first.image_paths[1].name and ".CT." in first.image_paths[0].name
    assert ".OT." in first.label_path.name
    case = load_case(first)
    assert case.images.shape == (5, *SHAPE)
    np.testing.assert_allclose(case.images[2], _image(1 + 2), rtol=1e-6)
    np.testing.assert_array_equal(case.labels, _labels(1))


def test_isles_flat_names_and_missing_modality(tmp_path):
    case = tmp_path / "case_3"
    case.mkdir()
    for k, token in enumerate(ISLES_TOKENS[:6]):
        write_nifti(case / f"case_3_{token}.nii.gz", _labels(3) if token == "OT" else _image(k))
    files = find_cases(tmp_path, layout="isles")
    assert files[0].case_id == "case_3" and files[0].image_paths[4].name == "case_3_CT_Tmax.nii.gz"
    (case / "case_3_CT_MTT.nii.gz").unlink()
    with pytest.raises(ValueError, match="no CT_MTT file"):
        find_cases(tmp_path, layout="isles")


def test_no_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "random.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"imagesTr/.*FLAIR.*CT_CBF"):
        find_cases(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_cases(tmp_path / "nope")
    with pytest.raises(ValueError, match="layout must be one of"):
        find_cases(tmp_path, layout="brats")


# ----------------------------------------------------------------------------
# loading checks
# ----------------------------------------------------------------------------


def test_shape_mismatch_names_both_files(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", _image(0), _affine())
    write_nifti(tmp_path / "b.nii.gz", _image(1, shape=(6, 7, 4)), _affine())
    files = CaseFiles("x", (tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"), None, ("A", "B"))
    with pytest.raises(
        ValueError, match=r"b\.nii\.gz has shape \(6, 7, 4\) but .*a\.nii\.gz has shape \(6, 7, 5\)"
    ):
        load_case(files)


def test_label_shape_mismatch_names_label_file(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", _image(0), _affine())
    write_nifti(tmp_path / "lab.nii.gz", _labels(0, shape=(5, 7, 5)), _affine())
    files = CaseFiles("x", (tmp_path / "a.nii.gz",), tmp_path / "lab.nii.gz", ("A",))
    with pytest.raises(ValueError, match=r"lab\.nii\.gz has shape \(5, 7, 5\)"):
        load_case(files)


def test_affine_mismatch_beyond_tolerance_names_files(tmp_path):
    shifted = _affine()
    shifted[0, 3] += 0.5
    write_nifti(tmp_path / "a.nii.gz", _image(0), _affine())
    write_nifti(tmp_path / "b.nii.gz", _image(1), shifted)
    files = CaseFiles("x", (tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"), None, ("A", "B"))
    with pytest.raises(
        ValueError, match=r"affine of .*b\.nii\.gz differs from that of .*a\.nii\.gz by up to 0\.5"
    ):
        load_case(files)
    assert load_case(files, affine_atol=0.6).images.shape == (2, *SHAPE)


def test_load_cases_yields_all(tmp_path):
    _write_generic(tmp_path, n=2)
    cases = load_cases(find_cases(tmp_path))
    assert [c.case_id for c in cases] == ["pat0", "pat1"]


def test_case_from_arrays_single_and_multi_modality():
    img = _image(0)
    case = case_from_arrays(img, _labels(0), spacing=SPACING)
    assert case.images.shape == (1, *SHAPE) and case.labels.dtype == np.int64
    np.testing.assert_allclose(np.diag(case.affine), [*SPACING, 1.0])
    case = case_from_arrays([img, img * 2], None, modalities=("a", "b"), case_id="z")
    assert case.images.shape == (2, *SHAPE) and case.modalities == ("a", "b")
    assert case.spacing == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"different shapes"):
        case_from_arrays([img, img[:, :, :4]])
    with pytest.raises(ValueError, match=r"labels of shape \(2, 2\)"):
        case_from_arrays(img, np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="spacing"):
        case_from_arrays(img, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="not integer-valued"):
        case_from_arrays(img, np.full(SHAPE, 0.5))


# ----------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------


def test_scaling_min_max_and_percentiles():
    vol = np.arange(6 * 7 * 5, dtype=np.float32).reshape(SHAPE) * 2.0 + 10.0
    case = case_from_arrays(vol, _labels(0))
    prep = preprocess_case(case, PreprocessConfig(slice_size=None))
    assert prep.images.shape == (5, 1, 6, 7)  # axis 2 -> 5 slices of 6 x 7
    assert prep.images.min() == 0.0 and prep.images.max() == 1.0
    # hand check: voxel value v maps to (v - 10) / (2 * 209)
    np.testing.assert_allclose(prep.images[3, 0, 2, 4], (vol[2, 4, 3] - 10.0) / 418.0, rtol=1e-6)
    robust = preprocess_case(case, PreprocessConfig(slice_size=None, percentiles=(10.0, 90.0)))
    lo, hi = np.percentile(vol, (10.0, 90.0))
    np.testing.assert_allclose(
        robust.images[3, 0, 2, 4], np.clip((vol[2, 4, 3] - lo) / (hi - lo), 0, 1), rtol=1e-6
    )
    assert robust.images.min() == 0.0 and robust.images.max() == 1.0
    assert (robust.images == 0.0).sum() > 1 and (robust.images == 1.0).sum() > 1  # clipped tails
    unscaled = preprocess_case(case, PreprocessConfig(scale=False, slice_size=None))
    assert unscaled.images.max() == vol.max()


def test_scaling_is_per_modality_and_constant_volume_gives_zeros():
    a = _image(0)
    case = case_from_arrays([a, a * 1000.0 + 5.0, np.full(SHAPE, 7.0)], _labels(0))
    prep = preprocess_case(case, PreprocessConfig(slice_size=None))
    np.testing.assert_allclose(prep.images[:, 0], prep.images[:, 1], atol=1e-5)
    assert np.all(prep.images[:, 2] == 0.0)


def test_nan_names_case_and_modality():
    img = _image(0)
    img[1, 2, 3] = np.nan
    case = case_from_arrays([_image(1), img], _labels(0), case_id="p7", modalities=("FLAIR", "T1"))
    with pytest.raises(ValueError, match="case p7: modality T1 contains NaN"):
        preprocess_case(case)


@pytest.mark.parametrize(
    ("axis", "n_slices", "plane"), [(0, 6, (7, 5)), (1, 7, (6, 5)), (2, 5, (6, 7)), (-1, 5, (6, 7))]
)
def test_slicing_axis_without_resize(axis, n_slices, plane):
    img = _image(0)
    lab = _labels(0)
    case = case_from_arrays(img, lab, spacing=SPACING)
    prep = preprocess_case(case, PreprocessConfig(scale=False, slice_size=None, axis=axis))
    assert prep.images.shape == (n_slices, 1, *plane)
    ax = axis % 3
    np.testing.assert_array_equal(prep.images[2, 0], np.take(img, 2, axis=ax))
    np.testing.assert_array_equal(prep.labels[2], np.take(lab, 2, axis=ax))
    assert prep.spacing == (SPACING[ax], *(s for k, s in enumerate(SPACING) if k != ax))


def test_resize_sizes_and_spacing():
    lab = np.zeros(SHAPE, dtype=np.int64)
    lab[2:4, 3:5, :] = 1
    case = case_from_arrays(_image(0), lab, spacing=SPACING)
    prep = preprocess_case(case, PreprocessConfig(slice_size=12))
    assert prep.images.shape == (5, 1, 12, 12) and prep.labels.shape == (5, 12, 12)
    assert prep.images.dtype == np.float32 and prep.labels.dtype == np.int64
    assert 0.0 <= prep.images.min() and prep.images.max() <= 1.0
    assert set(np.unique(prep.labels)) == {0, 1}  # nearest: no new values
    # rows 2..3 of 6 -> rows 4..7 of 12 ; columns 3..4 of 7 -> ~ 5..9 of 12
    assert (
        prep.labels[0, 4:8, :].any()
        and not prep.labels[0, :4].any()
        and not prep.labels[0, 8:].any()
    )
    assert prep.spacing == pytest.approx((3.0, 0.9 * 6 / 12, 1.1 * 7 / 12))


def test_2d_case_is_one_slice():
    img = np.random.default_rng(0).random((9, 8)).astype(np.float32)
    case = case_from_arrays(img, (img > 0.5).astype(int), spacing=(0.5, 2.0))
    prep = preprocess_case(case, PreprocessConfig(slice_size=16))
    assert prep.images.shape == (1, 1, 16, 16)
    assert prep.spacing == pytest.approx((1.0, 0.5 * 9 / 16, 2.0 * 8 / 16))


def test_preprocess_config_validation():
    with pytest.raises(ValueError, match="percentiles"):
        PreprocessConfig(percentiles=(99.0, 1.0))
    with pytest.raises(ValueError, match="slice_size"):
        PreprocessConfig(slice_size=0)
    with pytest.raises(ValueError, match="axis"):
        PreprocessConfig(axis=3)


# ----------------------------------------------------------------------------
# slice data set and distance cache
# ----------------------------------------------------------------------------


def _cases(n=3, shape=SHAPE):
    out = []
    for i in range(n):
        lab = np.zeros(shape, dtype=np.int64)
        lab[1 + i % 2 : 4, 2:5, 1:3] = 1
        out.append(
            case_from_arrays(
                [_image(i, shape), _image(i + 7, shape)], lab, SPACING, case_id=f"c{i}"
            )
        )
    return out


def test_slice_dataset_shapes_dtypes_and_indices():
    cases = _cases(2)
    ds = SliceDataset(cases, num_classes=2, preprocess=PreprocessConfig(slice_size=8))
    assert len(ds) == 10 and ds.num_modalities == 2 and ds.slice_shape == (8, 8)
    image, labels, dist = ds[3]
    assert image.shape == (2, 8, 8) and image.dtype == torch.float32
    assert labels.shape == (8, 8) and labels.dtype == torch.int64
    assert dist.shape == (2, 8, 8) and dist.dtype == torch.float32
    np.testing.assert_array_equal(ds.case_index, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(ds.slice_index, list(range(5)) * 2)
    assert ds.case_ids == ("c0", "c1")
    np.testing.assert_array_equal(ds.case_slices("c1"), np.arange(5, 10))
    # the stored maps are the 3D maps of the resized label volume, with its spacing
    prep = preprocess_case(cases[1], PreprocessConfig(slice_size=8))
    expected = distance.class_distance_maps(prep.labels, 2, spacing=prep.spacing)
    torch.testing.assert_close(
        ds.dist[5:10], torch.from_numpy(expected).transpose(0, 1).contiguous()
    )
    torch.testing.assert_close(ds.labels[5:10].long(), torch.from_numpy(prep.labels))
    # stored as uint8 (an eighth of int64's memory), handed out as int64
    assert ds.labels.dtype == torch.uint8
    _, batch_labels, _ = collate(ds, [0, 7])
    assert batch_labels.dtype == torch.int64
    torch.testing.assert_close(batch_labels, torch.stack([ds[0][1], ds[7][1]]))
    many = SliceDataset(cases[:1], num_classes=300, preprocess=PreprocessConfig(slice_size=8))
    assert many.labels.dtype == torch.int64  # uint8 cannot hold class 256 and above
    # sign agrees with the labels: foreground class negative inside, positive outside
    fg = ds.labels == 1
    assert (ds.dist[:, 1][fg] <= 0).all() and (ds.dist[:, 1][~fg] > 0).all()
    assert ds.case_spacing[0] == pytest.approx((3.0, 0.9 * 6 / 8, 1.1 * 7 / 8))


def test_distance_2d_mode_is_per_slice():
    cases = _cases(1)
    ds = SliceDataset(cases, 2, PreprocessConfig(slice_size=None), distance="2d")
    lab = cases[0].labels
    expected = distance.class_distance_maps(
        np.moveaxis(lab, 2, 0), 2, spacing=(3.0, 0.9, 1.1), axis=0
    )
    torch.testing.assert_close(ds.dist, torch.from_numpy(expected).transpose(0, 1).contiguous())
    # a slice without foreground has an all-zero foreground map in 2D mode
    empty = [i for i in range(len(ds)) if not ds.labels[i].any()]
    assert empty and all(not ds.dist[i, 1].any() for i in empty)


def test_skip_empty_slices():
    ds = SliceDataset(_cases(2), 2, PreprocessConfig(slice_size=None, skip_empty_slices=True))
    assert len(ds) == 4  # slices 1 and 2 of each case hold foreground
    np.testing.assert_array_equal(ds.slice_index, [1, 2, 1, 2])
    assert all(ds.labels[i].any() for i in range(len(ds)))


def test_iter_build_dataset_yields_progress_and_returns_dataset():
    gen = iter_build_dataset(_cases(3), 2, PreprocessConfig(slice_size=8))
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            ds = stop.value
            break
    assert all(isinstance(e, Progress) for e in events)
    assert [e.done for e in events] == [0, 1, 2, 3] and events[-1].total == 3
    assert isinstance(ds, SliceDataset) and len(ds) == 15
    seen = []
    built = SliceDataset.build(_cases(1), 2, PreprocessConfig(slice_size=8), callback=seen.append)
    assert len(built) == 5 and seen[-1].done == 1


def _count_calls(monkeypatch):
    calls = []
    real = distance.class_distance_maps

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(distance, "class_distance_maps", counting)
    return calls


def test_disk_cache_hit_skips_the_distance_function(tmp_path, monkeypatch):
    calls = _count_calls(monkeypatch)
    cases = _cases(2)
    prep = PreprocessConfig(slice_size=8)
    first = SliceDataset(cases, 2, prep, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and first.cache_misses == 2
    assert len(list((tmp_path / "cache").glob("dist-*.npy"))) == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".npy")]
    second = SliceDataset(cases, 2, prep, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and second.cache_hits == 2
    torch.testing.assert_close(first.dist, second.dist)
    # another mode or another spacing is another key
    SliceDataset(cases[:1], 2, prep, distance="2d", cache_dir=tmp_path / "cache")
    assert len(calls) == 3


def test_memory_cache_shared_between_builds(monkeypatch):
    calls = _count_calls(monkeypatch)
    cache = DistanceCache()
    cases = _cases(2)
    SliceDataset(cases, 2, PreprocessConfig(slice_size=8), cache=cache)
    SliceDataset(cases, 2, PreprocessConfig(slice_size=8), cache=cache)
    assert len(calls) == 2 and cache.hits == 2 and cache.misses == 2


def test_corrupt_cache_file_is_recomputed(tmp_path, monkeypatch):
    cases = _cases(1)
    SliceDataset(cases, 2, PreprocessConfig(slice_size=8), cache_dir=tmp_path)
    (path,) = tmp_path.glob("dist-*.npy")
    path.write_bytes(b"garbage")
    calls = _count_calls(monkeypatch)
    ds = SliceDataset(cases, 2, PreprocessConfig(slice_size=8), cache_dir=tmp_path)
    assert len(calls) == 1 and ds.dist.shape == (5, 2, 8, 8)


def test_cache_key_depends_on_labels_spacing_and_mode():
    lab = np.zeros((2, 3, 3), dtype=np.int64)
    key = DistanceCache.key(lab, 2, (1.0, 1.0, 1.0), "3d")
    assert key == DistanceCache.key(lab.astype(np.uint8), 2, (1.0, 1.0, 1.0), "3d")
    lab2 = lab.copy()
    lab2[0, 1, 1] = 1
    assert key != DistanceCache.key(lab2, 2, (1.0, 1.0, 1.0), "3d")
    assert key != DistanceCache.key(lab, 2, (1.0, 1.0, 2.0), "3d")
    assert key != DistanceCache.key(lab, 2, (1.0, 1.0, 1.0), "2d")
    assert key != DistanceCache.key(lab, 3, (1.0, 1.0, 1.0), "3d")


def test_dataset_errors_name_the_case():
    cases = _cases(2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        SliceDataset(cases, 1)
    bad = case_from_arrays(_image(0), np.full(SHAPE, 3), case_id="bad")
    with pytest.raises(ValueError, match=r"case bad: label values in \[3, 3\]"):
        SliceDataset([bad], 2)
    with pytest.raises(ValueError, match="case nolab has no labels"):
        SliceDataset([case_from_arrays(_image(0), None, case_id="nolab")], 2)
    wide = _image(0, shape=(6, 9, 5))
    other = case_from_arrays([wide, wide], np.zeros((6, 9, 5), int), case_id="wide")
    with pytest.raises(ValueError, match=r"slices differ in size.*wide"):
        SliceDataset([cases[0], other], 2, PreprocessConfig(slice_size=None))
    with pytest.raises(ValueError, match="case wide has 1 modalities, case c0 has 2"):
        SliceDataset(
            [cases[0], case_from_arrays(wide, np.zeros((6, 9, 5), int), case_id="wide")], 2
        )
    with pytest.raises(ValueError, match="distance must be one of"):
        SliceDataset(cases, 2, distance="4d")
    with pytest.raises(ValueError, match="duplicate case ids"):
        SliceDataset([cases[0], cases[0]], 2)


def test_case_validation():
    with pytest.raises(TypeError, match="float32"):
        Case("x", np.zeros((1, 2, 2, 2)), None, (1.0, 1.0, 1.0), np.eye(4), ("a",))
    with pytest.raises(ValueError, match="modality names"):
        Case("x", np.zeros((2, 2, 2, 2), np.float32), None, (1.0, 1.0, 1.0), np.eye(4), ("a",))


# ----------------------------------------------------------------------------
# split
# ----------------------------------------------------------------------------


def test_split_is_deterministic_patientwise_and_order_free():
    cases = [case_from_arrays(_image(0), None, case_id=f"p{i}") for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {c.case_id for c in train}.isdisjoint(c.case_id for c in val)
    again = split_cases(list(reversed(cases)), 0.2, seed=3)
    assert {c.case_id for c in again[1]} == {c.case_id for c in val}
    others = {frozenset(c.case_id for c in split_cases(cases, 0.2, seed=s)[1]) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_split_keeps_groups_together_and_has_a_val_case():
    files = [CaseFiles(f"case_{i}", (), None, ()) for i in range(6)]
    patient = {f"case_{i}": f"pat{i // 2}" for i in range(6)}
    train, val = split_cases(files, 0.2, seed=0, group=lambda c: patient[c.case_id])
    assert len(val) == 2  # one patient, both of its cases
    assert len({patient[c.case_id] for c in val}) == 1
    assert {patient[c.case_id] for c in train}.isdisjoint(patient[c.case_id] for c in val)
    two = split_cases(files[:2], 0.1)
    assert len(two[0]) == 1 and len(two[1]) == 1
    assert split_cases(files[:1], 0.5) == (files[:1], [])
    assert split_cases(files, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(files, 1.0)
