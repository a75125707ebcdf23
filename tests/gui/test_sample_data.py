"""Sample data: one synthetic lesion case, generated once and cached."""

from __future__ import annotations

import numpy as np

from napari_boundary_seg import _sample_data
from napari_boundary_seg.core.synthetic import DEFAULT_SPACING


def test_sample_loads_three_layers_and_caches(make_napari_viewer, plugin_cache, monkeypatch):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-boundary-seg", "lesion_case")
    assert [layer.name for layer in layers] == ["FLAIR", "T1", "lesions"]
    flair, t1, lesions = layers
    assert flair._type_string == "image" and t1._type_string == "image"
    assert lesions._type_string == "labels" and np.issubdtype(lesions.data.dtype, np.integer)
    assert flair.data.shape == t1.data.shape == lesions.data.shape == _sample_data.SAMPLE_SHAPE
    for layer in layers:
        np.testing.assert_allclose(layer.scale, DEFAULT_SPACING)
        np.testing.assert_allclose(layer.translate, layer.metadata["affine"][:3, 3])
    # highly unbalanced: lesions are 0.1-1 % of the voxels
    fraction = (lesions.data > 0).mean()
    assert 0.001 <= fraction <= 0.01
    files = list(plugin_cache.rglob("*.nii.gz"))
    assert sorted(f.name for f in files) == ["FLAIR.nii.gz", "T1.nii.gz", "lesions.nii.gz"]

    # second use: served from the cache, not regenerated
    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached case")

    monkeypatch.setattr(_sample_data, "make_case", fail)
    again = _sample_data.make_lesion_sample()
    np.testing.assert_array_equal(again[2][0], lesions.data)
