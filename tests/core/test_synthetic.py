"""The built-in lesion benchmark: imbalance, determinism, anatomy fallback, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_boundary_seg.core import synthetic, synthetic_anatomy
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
# sha256 of two easy-preset cases on a tiny phantom grid, from the generator before
# issue 13 (the sample data and the committed easy study depend on it)
EASY_FINGERPRINT = "2f134880aed19991ac985e9db9902d48d10b2b818b9a6caf8fe7bd1b60e1e824"


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
    monkeypatch.setattr(synthetic_anatomy, "mni_template_paths", lambda: None)
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


# ---------------------------------------------------------------------------
# the wmh preset (issue 13), on small grids with the phantom (seconds)

WMH_SMALL = synthetic.WMHConfig(
    sites=(
        synthetic.SiteConfig("quiet", (6.0, 6.0, 8.0), noise=0.02, bias=0.05),
        synthetic.SiteConfig("noisy", (6.0, 6.0, 6.0), noise=0.09, bias=0.2),
    ),
    load_ml=(10.0, 90.0),
)


@pytest.fixture(scope="module")
def wmh_anatomies():
    return {s.name: synthetic.load_wmh_anatomy(s, WMH_SMALL, "phantom") for s in WMH_SMALL.sites}


@pytest.fixture(scope="module")
def wmh_cases(wmh_anatomies):
    site = WMH_SMALL.sites[0]
    return [
        synthetic.make_wmh_case(seed, site, WMH_SMALL, wmh_anatomies[site.name])
        for seed in range(3)
    ]


def test_easy_preset_is_bit_identical():
    """The easy preset (sample data, committed study) must not change: a fingerprint."""
    import hashlib

    anatomy = load_anatomy((24, 28, 24), (8.0, 8.0, 8.0), anatomy="phantom")
    digest = hashlib.sha256()
    for seed in (0, (3, 2)):
        case = make_case(seed, anatomy=anatomy)
        digest.update(case.images.tobytes())
        digest.update(case.labels.tobytes())
    assert digest.hexdigest() == EASY_FINGERPRINT
    assert synthetic.GENERATOR_VERSION == 2


def test_wmh_foreground_lesion_counts_and_punctate_share(wmh_cases):
    shares, small, counts = [], [], []
    for case in wmh_cases:
        assert case.images.shape == (2, 32, 37, 24) and case.labels.dtype == np.int64
        assert case.spacing == (6.0, 6.0, 8.0)
        fraction = case.labels.mean()
        load_ml = case.labels.sum() * np.prod(case.spacing) / 1000.0
        # the load is drawn in [10, 90] ml; partial volume trims the labelled part
        assert 0.0005 < fraction < 0.03 and 2.0 < load_ml < 95.0
        sizes = _components(case.labels)
        counts.append(len(sizes))
        small.append(np.mean(sizes <= 10))
        shares.append(fraction)
    assert min(counts) >= 5  # several lesions per case
    assert np.mean(small) >= 0.5  # most lesions are punctate (<= 10 voxels)
    assert max(shares) > 1.5 * min(shares)  # the load varies between cases


def test_wmh_contrast_varies_and_rims_overlap_white_matter(wmh_cases, wmh_anatomies):
    ratios, rims = [], []
    for case in wmh_cases:
        flair = case.images[0]
        lesion = case.labels > 0
        wm = synthetic._block_mean(wmh_anatomies["quiet"].wm, WMH_SMALL.supersample) > 0.9
        wm &= ~ndimage.binary_dilation(lesion, iterations=2)
        wm_level = np.median(flair[wm])
        lab, n = ndimage.label(lesion)
        per_lesion = ndimage.median(flair, lab, index=np.arange(1, n + 1)) / wm_level
        ratios.extend(per_lesion)
        ring = ndimage.binary_dilation(lesion) & ~lesion
        rims.append(np.median(flair[ring]) / wm_level)
    ratios = np.asarray(ratios)
    # brighter than white matter on average, but some lesions only faintly
    assert 1.1 < np.median(ratios) < 2.2
    assert ratios.min() < 1.2 and ratios.max() > 1.3
    # partial volume: the voxels just outside a lesion sit between WM and lesion
    assert all(0.9 < r < np.median(ratios) for r in rims)


def test_wmh_sites_differ_in_grid_and_noise(wmh_anatomies):
    quiet, noisy = WMH_SMALL.sites
    a = synthetic.make_wmh_case(5, quiet, WMH_SMALL, wmh_anatomies["quiet"])
    b = synthetic.make_wmh_case(5, noisy, WMH_SMALL, wmh_anatomies["noisy"])
    assert a.labels.shape != b.labels.shape and a.spacing != b.spacing
    assert WMH_SMALL.grid(noisy) == ((32, 37, 32), (6.0, 6.0, 6.0))

    def noise_over_signal(case):  # Rician air level relative to the brain's median
        flair = case.images[0]
        air = np.zeros(flair.shape, dtype=bool)
        air[:2, :2, :] = True
        return flair[air].mean() / np.median(flair[flair > np.percentile(flair, 60)])

    assert noise_over_signal(b) > 2.0 * noise_over_signal(a)


def test_wmh_same_seed_same_arrays(wmh_anatomies):
    site = WMH_SMALL.sites[1]
    a = synthetic.make_wmh_case(4, site, WMH_SMALL, wmh_anatomies[site.name])
    b = synthetic.make_wmh_case(4, site, WMH_SMALL, wmh_anatomies[site.name])
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = synthetic.make_wmh_case(6, site, WMH_SMALL, wmh_anatomies[site.name])
    assert not np.array_equal(a.labels, c.labels)
    with pytest.raises(ValueError, match="fine grid"):
        synthetic.make_wmh_case(4, site, WMH_SMALL, wmh_anatomies["quiet"])


def test_wmh_config_validation():
    with pytest.raises(ValueError, match="repeat a name"):
        synthetic.WMHConfig(sites=(WMH_SMALL.sites[0], WMH_SMALL.sites[0]))
    with pytest.raises(ValueError, match="load_ml"):
        synthetic.WMHConfig(load_ml=(5.0, 1.0))
    with pytest.raises(ValueError, match="contrast"):
        synthetic.SiteConfig("x", (1.0, 1.0, 3.0), contrast=(0.9, 1.5))
    with pytest.raises(ValueError, match="preset"):
        write_benchmark("unused", n_cases=1, preset="hard")
    # the published-fact defaults: 3 mm slices at two sites, a thin-slice 3D site
    names = [s.name for s in synthetic.WMH_SITES]
    assert names[:3] == ["utrecht", "singapore", "amsterdam-ge3t"]
    assert [s.spacing[2] for s in synthetic.WMH_SITES[:2]] == [3.0, 3.0]
    assert synthetic.WMH_SITES[2].spacing[2] < 3.0


def test_write_wmh_records_sites(tmp_path):
    out = tmp_path / "wmh"
    paths = write_benchmark(out, n_cases=3, seed=2, anatomy="phantom", preset="wmh", wmh=WMH_SMALL)
    assert len(paths) == 3 * 3 + 1
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["generator"]["preset"] == "wmh"
    assert [e["site"] for e in meta["training"]] == ["quiet", "noisy", "quiet"]
    assert synthetic.read_sites(out) == {
        "case_000": "quiet",
        "case_001": "noisy",
        "case_002": "quiet",
    }
    case = load_case(find_cases(out)[1])
    assert case.spacing == pytest.approx((6.0, 6.0, 6.0))
    expected = synthetic.make_wmh_case((2, 1), WMH_SMALL.sites[1], WMH_SMALL, "phantom")
    np.testing.assert_array_equal(case.labels, expected.labels)


def test_cli_synth_preset_wmh_rejects_a_grid(tmp_path, capsys):
    from napari_boundary_seg.cli import main

    argv = ["synth", "--out", str(tmp_path / "w"), "--cases", "1", "--preset", "wmh"]
    assert main([*argv, "--shape", "24", "28", "8"]) == 2
    assert "--shape/--spacing apply to the easy preset" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
