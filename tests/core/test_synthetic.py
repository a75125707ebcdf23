"""The built-in lesion benchmark: imbalance, determinism, anatomy fallback, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_boundary_seg.core import synthetic
from napari_boundary_seg.core.data import find_cases, load_case
from napari_boundary_seg.core.progress import Progress
from napari_boundary_seg.core.synthetic import (
    DEFAULT_SHAPE,
    LesionConfig,
    iter_write_benchmark,
    load_anatomy,
    make_case,
    write_benchmark,
)

SMALL = (32, 40, 32)
SMALL_SPACING = (6.0, 6.0, 6.0)
HAS_MNI = synthetic.mni_template_paths() is not None


@pytest.fixture(scope="module")
def phantom_default():
    return load_anatomy(DEFAULT_SHAPE, anatomy="phantom")


@pytest.fixture(scope="module")
def small_anatomy():
    return load_anatomy(SMALL, SMALL_SPACING, anatomy="auto")


def _components(labels):
    lab, n = ndimage.label(labels > 0)
    return np.bincount(lab.ravel())[1:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_foreground_fraction_and_lesions_at_default_shape(phantom_default, seed):
    case = make_case(seed, anatomy=phantom_default)
    assert case.images.shape == (2, *DEFAULT_SHAPE) and case.images.dtype == np.float32
    assert case.labels.shape == DEFAULT_SHAPE and case.labels.dtype == np.int64
    assert set(np.unique(case.labels)) == {0, 1}
    fraction = case.labels.mean()
    assert 0.001 <= fraction <= 0.01
    sizes = _components(case.labels)
    assert len(sizes) >= 3  # several lesions
    assert sizes.min() <= 8  # some of only a few voxels


@pytest.mark.skipif(not HAS_MNI, reason="nilearn's MNI templates are not installed")
def test_mni_anatomy_default_shape_fraction():
    anatomy = load_anatomy(anatomy="mni")
    assert anatomy.kind == "mni" and anatomy.shape == DEFAULT_SHAPE
    case = make_case(5, anatomy=anatomy)
    assert 0.001 <= case.labels.mean() <= 0.01
    # lesions lie in white matter of the (deformed) template: mostly where wm is high
    assert anatomy.wm[case.labels > 0].mean() > 0.4
    # the affine is MNI world mm: the grid centre lies near the head's centre
    centre = anatomy.affine @ np.append((np.asarray(DEFAULT_SHAPE) - 1) / 2, 1.0)
    assert np.all(np.abs(centre[:3]) < 40)


def test_same_seed_same_arrays_other_seed_other_arrays(small_anatomy):
    a = make_case(7, anatomy=small_anatomy)
    b = make_case(7, anatomy=small_anatomy)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = make_case(8, anatomy=small_anatomy)
    assert not np.array_equal(a.labels, c.labels)
    assert a.case_id == "synth_7"
    # building the anatomy again changes nothing
    d = make_case(7, SMALL, SMALL_SPACING, anatomy=small_anatomy.kind)
    np.testing.assert_array_equal(a.images, d.images)


def test_contrasts_lesions_bright_in_flair_dark_in_t1(phantom_default):
    case = make_case(3, anatomy=phantom_default)
    lesion = case.labels > 0
    shell = ndimage.binary_dilation(lesion, iterations=2) & ~ndimage.binary_dilation(lesion)
    shell &= phantom_default.wm > 0.5  # surrounding white matter
    flair, t1 = case.images
    assert np.median(flair[lesion]) > 1.3 * np.median(flair[shell])
    assert np.median(t1[lesion]) < 0.95 * np.median(t1[shell])
    # Rician noise: non-negative everywhere, and not zero in the air around the head
    assert case.images.min() >= 0
    air = phantom_default.t1 + phantom_default.other < 1e-3
    assert air.any() and np.mean(flair[air] > 0) > 0.99


def test_phantom_fallback_without_nilearn(monkeypatch):
    monkeypatch.setattr(synthetic, "mni_template_paths", lambda: None)
    anatomy = load_anatomy(SMALL, SMALL_SPACING, anatomy="auto")
    assert anatomy.kind == "phantom"
    with pytest.raises(ValueError, match="nilearn"):
        load_anatomy(SMALL, SMALL_SPACING, anatomy="mni")
    case = make_case(0, SMALL, SMALL_SPACING, anatomy="phantom")
    assert case.labels.any() and case.modalities == ("FLAIR", "T1")
    assert case.spacing == SMALL_SPACING


def test_argument_validation():
    with pytest.raises(ValueError, match="anatomy must be one of"):
        load_anatomy(SMALL, SMALL_SPACING, anatomy="atlas")
    with pytest.raises(ValueError, match="shape"):
        load_anatomy((4, 40, 32), anatomy="phantom")
    with pytest.raises(ValueError, match="fraction"):
        LesionConfig(fraction=(0.01, 0.001))
    with pytest.raises(ValueError, match="n_cases"):
        write_benchmark("unused", n_cases=0)


def test_lesion_config_controls_the_fraction(small_anatomy):
    config = LesionConfig(fraction=(0.004, 0.004), count=(3, 3), tiny=(0, 0), min_fraction=0.001)
    case = make_case(1, anatomy=small_anatomy, lesions=config)
    # overlaps can only lower the fraction; the top-up keeps it above min_fraction
    assert 0.001 <= case.labels.mean() <= 0.0041


def test_write_benchmark_generic_layout_round_trip(tmp_path, small_anatomy):
    out = tmp_path / "bench"
    paths = write_benchmark(out, n_cases=2, seed=4, shape=SMALL, spacing=SMALL_SPACING)
    names = sorted(p.relative_to(out).as_posix() for p in paths)
    assert names == [
        "dataset.json",
        "imagesTr/case_000_0000.nii.gz",
        "imagesTr/case_000_0001.nii.gz",
        "imagesTr/case_001_0000.nii.gz",
        "imagesTr/case_001_0001.nii.gz",
        "labelsTr/case_000.nii.gz",
        "labelsTr/case_001.nii.gz",
    ]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1"}
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["generator"]["case_seeds"] == [[4, 0], [4, 1]]
    files = find_cases(out)
    assert [f.case_id for f in files] == ["case_000", "case_001"]
    assert files[0].modalities == ("FLAIR", "T1")
    case = load_case(files[1])
    expected = make_case((4, 1), anatomy=small_anatomy)
    np.testing.assert_allclose(case.images, expected.images, rtol=1e-6)
    np.testing.assert_array_equal(case.labels, expected.labels)
    assert case.spacing == pytest.approx(SMALL_SPACING)
    np.testing.assert_allclose(case.affine, small_anatomy.affine, atol=1e-5)


def test_write_benchmark_refuses_to_overwrite(tmp_path):
    out = tmp_path / "bench"
    write_benchmark(out, n_cases=1, shape=SMALL, spacing=SMALL_SPACING, anatomy="phantom")
    label = out / "labelsTr" / "case_000.nii.gz"
    before = label.read_bytes()
    with pytest.raises(FileExistsError, match=r"case_000_0000\.nii\.gz exists"):
        write_benchmark(
            out, n_cases=1, seed=9, shape=SMALL, spacing=SMALL_SPACING, anatomy="phantom"
        )
    assert label.read_bytes() == before
    write_benchmark(
        out,
        n_cases=1,
        seed=9,
        shape=SMALL,
        spacing=SMALL_SPACING,
        anatomy="phantom",
        overwrite=True,
    )
    assert label.read_bytes() != before


def test_iter_write_benchmark_progress(tmp_path):
    gen = iter_write_benchmark(
        tmp_path, n_cases=2, shape=SMALL, spacing=SMALL_SPACING, anatomy="phantom"
    )
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            paths = stop.value
            break
    assert all(isinstance(e, Progress) for e in events)
    assert [e.done for e in events] == [0, 1, 2, 3] and {e.total for e in events} == {3}
    assert len(paths) == 7 and all(p.exists() for p in paths)
