"""NIfTI reader and writer through napari: geometry, dtype, overwrite rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_boundary_seg import _writer
from napari_boundary_seg._reader import napari_get_reader, read_layers

PLUGIN = "napari-boundary-seg"

DIAG = np.array(
    [[0.9, 0, 0, -10.0], [0, 1.1, 0, 20.0], [0, 0, 3.0, 5.5], [0, 0, 0, 1]], dtype=float
)
# rotation of 30 degrees about the last axis, anisotropic voxels, a translation
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = np.array(
    [[_c * 0.9, -_s * 1.1, 0, 3.0], [_s * 0.9, _c * 1.1, 0, -4.0], [0, 0, 3.0, 7.0], [0, 0, 0, 1]]
)


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def _scan_and_labels(tmp_path, affine):
    rng = np.random.default_rng(0)
    scan = rng.normal(size=(6, 7, 5)).astype(np.float32)
    labels = np.zeros((6, 7, 5), dtype=np.uint8)
    labels[2:4, 3:5, 1:3] = 1
    labels[0, 0, 0] = 2
    return (
        _save(tmp_path / "case_flair.nii.gz", scan, affine),
        _save(tmp_path / "case_seg.nii.gz", labels, affine),
        scan,
        labels,
    )


def test_reader_declines_other_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "image.tif")) is None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.png")]) is None
    assert napari_get_reader(str(tmp_path / "a.nii.gz")) is read_layers
    assert napari_get_reader(str(tmp_path / "A.NII")) is read_layers


def test_corrupt_nifti_raises_clear_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a nifti file at all")
    reader = napari_get_reader(str(bad))
    with pytest.raises(ValueError, match="broken.nii.gz"):
        reader(str(bad))


@pytest.mark.parametrize("affine", [DIAG, OBLIQUE], ids=["diagonal", "oblique"])
def test_scan_and_labels_overlay_exactly(make_napari_viewer, tmp_path, affine):
    scan_path, labels_path, scan, labels = _scan_and_labels(tmp_path, affine)
    affine = nib.load(scan_path).affine  # as stored (float32 in the header)
    viewer = make_napari_viewer()
    viewer.open([scan_path, labels_path], plugin=PLUGIN, stack=False)
    image, lab = viewer.layers["case_flair"], viewer.layers["case_seg"]
    assert image._type_string == "image" and lab._type_string == "labels"
    assert np.issubdtype(lab.data.dtype, np.integer)
    np.testing.assert_array_equal(lab.data, labels)
    np.testing.assert_allclose(image.data, scan)
    np.testing.assert_allclose(image.scale, [0.9, 1.1, 3.0])
    np.testing.assert_array_equal(image.metadata["affine"], affine)
    # every voxel of both layers lands where the NIfTI affine puts it
    for idx in [(0, 0, 0), (5, 6, 4), (2, 3, 1)]:
        expected = (affine @ np.array([*idx, 1.0]))[:3]
        np.testing.assert_allclose(image.data_to_world(idx), expected, atol=1e-9)
        np.testing.assert_allclose(lab.data_to_world(idx), expected, atol=1e-9)
    if np.allclose(affine, DIAG):
        np.testing.assert_allclose(image.translate, [-10.0, 20.0, 5.5])
    else:  # rotation shown through napari's affine; scale stays the spacing
        np.testing.assert_allclose(image.affine.affine_matrix[:3, 3], [3.0, -4.0, 7.0])


def test_writer_round_trip_keeps_affine_spacing_dtype(make_napari_viewer, tmp_path):
    scan_path, labels_path, scan, labels = _scan_and_labels(tmp_path, OBLIQUE)
    viewer = make_napari_viewer()
    viewer.open([scan_path, labels_path], plugin=PLUGIN, stack=False)
    out_labels = tmp_path / "out" / "saved_seg.nii.gz"
    out_labels.parent.mkdir()
    out_image = tmp_path / "out" / "saved_flair.nii"
    viewer.layers.selection = {viewer.layers["case_seg"]}
    viewer.layers.save(str(out_labels), selected=True, plugin=PLUGIN)
    viewer.layers.selection = {viewer.layers["case_flair"]}
    viewer.layers.save(str(out_image), selected=True, plugin=PLUGIN)

    saved = nib.load(str(out_labels))
    np.testing.assert_allclose(saved.affine, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(saved.header.get_zooms(), [0.9, 1.1, 3.0], rtol=1e-6)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), labels)
    saved_image = nib.load(str(out_image))
    assert saved_image.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved_image.affine, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(np.asarray(saved_image.dataobj), scan)

    # and read back through the plugin: same geometry as the original
    again = read_layers(str(out_labels))[0]
    assert again[2] == "labels"
    np.testing.assert_allclose(again[1]["affine"], viewer.layers["case_seg"].affine.affine_matrix)


def test_layer_made_in_napari_saves_scale_and_translate(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.zeros((4, 5), dtype=np.int32)
    data[1:3, 2:4] = 7
    viewer.add_labels(data, name="drawn", scale=(2.0, 0.5), translate=(10.0, -3.0))
    out = tmp_path / "drawn.nii.gz"
    viewer.layers.save(str(out), plugin=PLUGIN)
    saved = nib.load(str(out))
    expected = np.array([[2.0, 0, 0, 10.0], [0, 0.5, 0, -3.0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(saved.affine, expected)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), data)
    layer = read_layers(str(out))[0]
    np.testing.assert_allclose(layer[1]["scale"], (2.0, 0.5))
    np.testing.assert_allclose(layer[1]["translate"], (10.0, -3.0))


def test_moved_layer_saves_where_it_is_now(make_napari_viewer, tmp_path):
    scan_path, _, _, _ = _scan_and_labels(tmp_path, DIAG)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(scan_path, plugin=PLUGIN)
    layer.translate = (0.0, 0.0, 0.0)
    out = tmp_path / "moved.nii.gz"
    viewer.layers.save(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(nib.load(str(out)).affine[:3, 3], 0.0)


def test_writer_never_overwrites_outside_the_dialog(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.ones((3, 3, 3), dtype=np.uint8), name="mask")
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="mask.nii.gz"):
        _writer.write_labels(str(out), viewer.layers["mask"].data, {})
    with pytest.raises(FileExistsError):
        viewer.layers.save(str(out), plugin=PLUGIN)
    assert out.read_bytes() == b"precious"


def test_save_dialog_confirmed_overwrite_replaces(make_napari_viewer, tmp_path, monkeypatch):
    """napari's dialog (a QFileDialog that asks before replacing) may overwrite."""
    from napari.plugins._npe2 import file_extensions_string_for_layers
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    viewer.add_labels(np.full((3, 3, 3), 4, dtype=np.uint8), name="mask")
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"old")
    filters, _ = file_extensions_string_for_layers(list(viewer.layers))
    ours = next(f for f in filters.split(";;") if "NIfTI labels" in f)
    # the user picked our filter and confirmed "replace?" in the dialog
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ours))
    viewer.window._qt_viewer._save_layers_dialog(selected=False)
    assert (np.asarray(nib.load(str(out)).dataobj) == 4).all()
