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


def test_demo_viewer_docks_every_declared_widget(make_napari_viewer, plugin_cache, monkeypatch):
    import napari

    from napari_boundary_seg import _demo

    created = []

    def viewer_factory(*args, show=False, **kwargs):
        created.append(make_napari_viewer(*args, show=False, **kwargs))
        return created[-1]

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    viewer = _demo.open_demo_viewer(show=False)
    assert [layer.name for layer in viewer.layers] == ["FLAIR", "T1", "lesions"]
    names = _demo.widget_names()
    assert {"Distance", "Compare"} <= set(names)
    docked = viewer.window.dock_widgets
    assert all(f"{n} (napari-boundary-seg)" in docked for n in names)
    # readable tabs: short titles, the full name as a tooltip
    from qtpy.QtWidgets import QTabBar

    tabs = [
        bar.tabText(i)
        for bar in viewer.window._qt_window.findChildren(QTabBar)
        for i in range(bar.count())
    ]
    assert sorted(tabs) == sorted(names)
    assert all(len(t) <= 8 for t in tabs)
    # axial view at the slice with the most lesion voxels
    assert viewer.dims.not_displayed == (2,)
    busiest = int((viewer.layers["lesions"].data > 0).sum(axis=(0, 1)).argmax())
    assert viewer.dims.current_step[2] == busiest


def test_demo_falls_back_to_headless_without_display(plugin_cache, monkeypatch):
    from napari_boundary_seg import _demo

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(_demo.sys, "platform", "linux")
    assert not _demo.has_display()
    lines: list[str] = []
    original = _demo.run_headless_demo
    monkeypatch.setattr(_demo, "run_headless_demo", lambda echo: original(echo, train=False))
    assert _demo.run_demo(echo=lines.append, threads=1) == 0
    assert lines[0].startswith("demo: torch uses 1 CPU thread")
    assert lines[1].startswith("Headless demo")
    assert "Signed distance maps" in lines[3] and " mm" in lines[3]
