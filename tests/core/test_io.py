"""NIfTI read/write: geometry round trip, dtypes, no overwrite, errors naming files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_boundary_seg.core.io import (
    NiftiVolume,
    atomic_path,
    is_label_file,
    nifti_stem,
    read_nifti,
    write_nifti,
)


def _affine(spacing=(0.9, 1.2, 3.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [-10.0, 20.5, 3.25]
    return a


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_image_round_trip_keeps_affine_spacing_and_values(tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 7, 5)).astype(np.float64)
    path = write_nifti(tmp_path / f"img{suffix}", data, affine=_affine())
    vol = read_nifti(path)
    assert isinstance(vol, NiftiVolume)
    assert vol.data.dtype == np.float32 and vol.data.shape == (6, 7, 5)
    np.testing.assert_allclose(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.affine, _affine(), atol=1e-6)
    assert vol.spacing == pytest.approx((0.9, 1.2, 3.0))
    assert not vol.is_labels
    if suffix == ".nii.gz":  # gzip follows the name
        with gzip.open(path) as handle:
            handle.read(10)


def test_2d_round_trip_spacing_has_two_entries(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = write_nifti(tmp_path / "slice.nii.gz", data, spacing=(0.5, 2.0))
    vol = read_nifti(path)
    assert vol.data.shape == (3, 4)
    assert vol.spacing == pytest.approx((0.5, 2.0))
    np.testing.assert_allclose(np.diag(vol.affine), [0.5, 2.0, 1.0, 1.0])


def test_spacing_only_gives_diagonal_affine_and_none_gives_identity(tmp_path):
    data = np.zeros((4, 5, 6), dtype=np.float32)
    vol = read_nifti(write_nifti(tmp_path / "a.nii.gz", data, spacing=(2.0, 3.0, 4.0)))
    np.testing.assert_allclose(vol.affine, np.diag([2.0, 3.0, 4.0, 1.0]))
    vol = read_nifti(write_nifti(tmp_path / "b.nii.gz", data))
    np.testing.assert_allclose(vol.affine, np.eye(4))
    assert vol.spacing == (1.0, 1.0, 1.0)


def test_spacing_disagreeing_with_affine_is_refused(tmp_path):
    with pytest.raises(ValueError, match="disagrees"):
        write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 3, 3)), affine=_affine(), spacing=(1, 1, 1))


@pytest.mark.parametrize(
    ("values", "dtype"),
    [([0, 1, 2], np.uint8), ([0, 300], np.int16), ([-1, 0, 1], np.int16)],
)
def test_labels_stored_in_smallest_integer_dtype(tmp_path, values, dtype):
    labels = np.zeros((6, 7, 5), dtype=np.int64)
    labels.ravel()[: len(values)] = values
    path = write_nifti(tmp_path / "seg.nii.gz", labels, spacing=(1.0, 1.0, 2.0))
    assert np.dtype(nib.load(str(path)).get_data_dtype()) == np.dtype(dtype)
    vol = read_nifti(path)
    assert vol.is_labels and vol.data.dtype.kind in "iu"
    np.testing.assert_array_equal(vol.data, labels)


def test_bool_mask_stored_as_uint8(tmp_path):
    mask = np.zeros((3, 4, 5), dtype=bool)
    mask[1, 2, 3] = True
    vol = read_nifti(write_nifti(tmp_path / "m.nii", mask))
    assert vol.data.dtype == np.uint8 and vol.data.sum() == 1 and vol.data[1, 2, 3] == 1


def test_as_labels_forces_integer_and_rejects_fractions(tmp_path):
    path = write_nifti(tmp_path / "float_labels.nii.gz", np.array([[[0.0, 1.0], [2.0, 1.0]]]))
    assert read_nifti(path).data.dtype == np.float32  # float on disk -> float by default
    forced = read_nifti(path, as_labels=True)
    assert forced.data.dtype.kind in "iu"
    np.testing.assert_array_equal(forced.data, [[[0, 1], [2, 1]]])
    frac = write_nifti(tmp_path / "frac.nii.gz", np.array([[[0.0, 0.5]]]))
    with pytest.raises(ValueError, match=r"frac\.nii\.gz.*not integer-valued"):
        read_nifti(frac, as_labels=True)


def test_as_labels_false_gives_float32_for_integer_file(tmp_path):
    path = write_nifti(tmp_path / "x.nii.gz", np.array([[[1, 2], [3, 4]]], dtype=np.int16))
    vol = read_nifti(path, as_labels=False)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, [[[1, 2], [3, 4]]])


def test_scaled_integer_file_is_read_as_float(tmp_path):
    img = nib.Nifti1Image(np.array([[[1, 2]]], dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    vol = read_nifti(tmp_path / "scaled.nii")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, [[[10.5, 11.0]]])


def test_no_overwrite_without_permission(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(FileExistsError, match=r"a\.nii\.gz"):
        write_nifti(path, np.ones((2, 2, 2), dtype=np.float32))
    assert read_nifti(path).data.sum() == 0  # untouched
    write_nifti(path, np.ones((2, 2, 2), dtype=np.float32), overwrite=True)
    assert read_nifti(path).data.sum() == 8
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "a.nii.gz"]
    assert leftovers == []  # the temporary file was renamed, not left behind


def test_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_save(img, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        read_nifti(tmp_path / "missing.nii.gz")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt.*not a NIfTI"):
        read_nifti(text)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz"):
        read_nifti(broken)
    with pytest.raises(ValueError, match="is a folder"):
        read_nifti(tmp_path)


def test_ndim_check_names_file_and_squeezes_trailing_singletons(tmp_path):
    path4 = write_nifti(tmp_path / "four.nii.gz", np.zeros((3, 4, 5, 2), dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"four\.nii\.gz: expected a 3D volume, got shape \(3, 4, 5, 2\)"
    ):
        read_nifti(path4, ndim=3)
    path1 = write_nifti(tmp_path / "one.nii.gz", np.zeros((3, 4, 5, 1), dtype=np.float32))
    vol = read_nifti(path1, ndim=3)
    assert vol.data.shape == (3, 4, 5) and len(vol.spacing) == 3


def test_write_rejects_bad_names_and_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        write_nifti(tmp_path / "a.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        write_nifti(tmp_path / "a.nii", np.zeros(5))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_nifti(tmp_path / "nope" / "a.nii", np.zeros((2, 2)))


def test_nifti_stem():
    assert nifti_stem("/x/case_0000.nii.gz") == "case_0000"
    assert nifti_stem("a.b.NII") == "a.b"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("labelsTr/case_001.nii.gz", True),
        ("imagesTr/case_001_0000.nii.gz", False),
        ("subject_seg.nii.gz", True),
        ("wmh.nii.gz", True),
        ("brain_mask.nii", True),
        ("case_1/SMIR.Brain.XX.O.OT.123/SMIR.Brain.XX.O.OT.123.nii", True),
        ("case_1/SMIR.Brain.XX.O.CT_CBF.123/SMIR.Brain.XX.O.CT_CBF.123.nii", False),
        ("pre/FLAIR.nii.gz", False),
        ("case_0003.nii.gz", False),
    ],
)
def test_is_label_file_by_name(name, expected):
    assert is_label_file(name) is expected


def test_is_label_file_by_data():
    rng = np.random.default_rng(0)
    few = rng.integers(0, 3, size=(6, 7, 5)).astype(np.uint8)
    many = rng.integers(0, 255, size=(20, 20, 20)).astype(np.uint8)
    assert is_label_file("volume.nii.gz", few) is True
    assert is_label_file("volume.nii.gz", many) is False
    assert is_label_file("volume.nii.gz", few.astype(np.float32)) is True
    assert is_label_file("volume.nii.gz", few.astype(np.float32) + 0.5) is False
    assert is_label_file("volume.nii.gz", few.astype(bool)) is True
    assert is_label_file("volume.nii.gz") is False


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    with atomic_path(target) as tmp:
        assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".metrics.csv.")
        Path(tmp).write_text("new\n")
        assert target.read_text() == "old\n"  # replaced only when the block ends
    assert target.read_text() == "new\n"
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]  # no temp left


def test_new_files_get_the_umask_mode_and_overwrite_keeps_the_old_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.float32))
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        write_nifti(path, np.ones((3, 3, 3), np.float32), overwrite=True)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_read_nifti_squeezes_a_trailing_singleton_and_refuses_a_tampered_header(tmp_path):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data[..., None], np.eye(4)), str(tmp_path / "four.nii.gz"))
    assert read_nifti(tmp_path / "four.nii.gz").data.shape == (2, 3, 4)
    for name in ("t.nii", "t.nii.gz"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(path))
        raw = bytearray(
            gzip.decompress(path.read_bytes()) if name.endswith("gz") else path.read_bytes()
        )
        raw[40:56] = np.array([3, 1024, 1024, 512, 1, 1, 1, 1], "<i2").tobytes()
        path.write_bytes(gzip.compress(bytes(raw)) if name.endswith("gz") else bytes(raw))
        with pytest.raises(ValueError, match=r"t\.nii.*\(1024, 1024, 512\)"):
            read_nifti(path)


def test_stale_temp_files_are_cleaned_and_names_fit_the_limit(tmp_path):
    from napari_boundary_seg.core.io import clean_stale_temp, fit_name, is_hidden_or_temp

    dead = tmp_path / ".a.nii.gz.2147483646-0123abcd.tmp.nii.gz"  # no such process
    alive = tmp_path / f".b.nii.gz.{__import__('os').getpid()}-0123abcd.tmp.nii.gz"
    other = tmp_path / ".hidden_but_not_ours"
    for p in (dead, alive, other):
        p.write_bytes(b"x")
    assert clean_stale_temp(tmp_path) == [dead]
    assert alive.exists() and other.exists() and is_hidden_or_temp(alive)
    long = "c" * 300
    name = fit_name(long, "_probs.nii.gz")
    assert len(name.encode()) <= 255 and name.endswith("_probs.nii.gz")
    assert name == fit_name(long, "_probs.nii.gz") and fit_name("short", ".nii") == "short.nii"
    with atomic_path(tmp_path / (long[:250] + ".nii")) as tmp:  # the temporary name fits too
        Path(tmp).write_bytes(b"ok")
    assert (tmp_path / (long[:250] + ".nii")).read_bytes() == b"ok"
