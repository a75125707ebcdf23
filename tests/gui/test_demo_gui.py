"""The windowed demo starts the Train widget's Quick start on the sample case."""

from __future__ import annotations


def test_demo_starts_the_quick_start(make_napari_viewer, plugin_cache, monkeypatch, qtbot):
    import napari

    from napari_boundary_seg import _demo
    from napari_boundary_seg.core.presets import quick_start_config

    def viewer_factory(*args, show=False, **kwargs):
        return make_napari_viewer(*args, show=False, **kwargs)

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    viewer = _demo.open_demo_viewer(show=False, dock=False)  # every dock: test_sample_data
    viewer.window.add_plugin_dock_widget(_demo.PLUGIN, _demo.TRAIN_WIDGET)
    # shrunk to one step of a tiny UNet; the preset's other values are the run's
    tiny = {"epochs": 1, "max_steps_per_epoch": 1, "depth": 2, "base_channels": 4}
    widget = _demo.start_quick_start(viewer, **tiny)
    try:
        assert widget is not None and widget.runner.running and widget.preset.value == "quick"
        config, quick = widget._config, quick_start_config()
        for name in ("lr", "slice_size", "schedule", "batch_size", "val_fraction"):
            assert getattr(config, name) == getattr(quick, name), name
        assert all(getattr(config, k) == v for k, v in tiny.items())
        # the plane from the scan (auto: its axial axis 2), not from the view
        assert config.axis == "auto" and widget._native_axis == 2
        assert [layer.name for layer in widget.image_layers()] == ["FLAIR", "T1"]
        assert widget.labels.value.name == "lesions"
        assert "nbs-demo-" in config.out_dir
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
        # the run ends with the best model's prediction in the viewer
        assert widget.prediction_layer is not None
        assert widget.prediction_layer.name.startswith("prediction best ")
    finally:
        widget.stop()
        qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
