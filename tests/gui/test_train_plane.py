"""The Train widget's slicing plane comes from the data (the layer's affine),
never from the view; the view follows the training. One long test trains the
Quick start on the sample opened as a user does, in napari's default view."""

from __future__ import annotations

import numpy as np
import pytest

from napari_boundary_seg._widgets._layers import layer_affine, native_slice_axis
from napari_boundary_seg._widgets.train import TrainWidget

SHAPE = (12, 16, 20)


def _add(viewer, affine=None, scale=(1.0, 1.0, 1.0)):
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[3:9, 5:11, 6:14] = 1
    image = (np.random.default_rng(0).normal(0.3, 0.05, SHAPE) + 0.5 * labels).astype("float32")
    meta = {} if affine is None else {"metadata": {"affine": affine}}
    viewer.add_image(image, name="scan", scale=scale, **meta)
    viewer.add_labels(labels, name="mask", scale=scale, **meta)


def _widget(viewer, tmp_path) -> TrainWidget:
    w = TrainWidget(viewer)
    w.configure(images=["scan"], labels="mask", output=str(tmp_path / "runs"), device="cpu")
    return w


def test_layer_affine_from_metadata_or_scale(make_napari_viewer):
    viewer = make_napari_viewer()
    saved = np.array([[0, 0, 2.0, 5], [0, -1.0, 0, 6], [3.0, 0, 0, 7], [0, 0, 0, 1]])
    layer = viewer.add_image(np.zeros(SHAPE), metadata={"affine": saved})
    np.testing.assert_array_equal(layer_affine(layer), saved)
    plain = viewer.add_image(np.zeros(SHAPE), scale=(3.0, 1.0, 0.5), translate=(1, 2, 3))
    np.testing.assert_array_equal(
        layer_affine(plain), [[3, 0, 0, 1], [0, 1, 0, 2], [0, 0, 0.5, 3], [0, 0, 0, 1]]
    )


@pytest.mark.parametrize(
    ("affine", "scale", "plane", "expected"),
    [
        (None, (1.0, 1.0, 1.0), "auto", 2),  # RAS order: axial is axis 2
        (None, (4.0, 1.0, 1.0), "auto", 0),  # thick slices along axis 0
        (None, (1.0, 1.0, 1.0), "sagittal", 0),
        (None, (1.0, 1.0, 1.0), "coronal", 1),
        # stored superior-inferior first (axis 0 -> z): axial is axis 0
        ([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]], (1, 1, 1), "auto", 0),
    ],
)
def test_slice_plane_comes_from_the_data_not_the_view(
    make_napari_viewer, tmp_path, affine, scale, plane, expected
):
    viewer = make_napari_viewer()
    _add(viewer, None if affine is None else np.asarray(affine, float), scale)
    w = _widget(viewer, tmp_path)
    w.axis.value = plane
    assert native_slice_axis(viewer.layers["mask"], plane) == expected
    seen = set()
    for order in [(0, 1, 2), (1, 0, 2), (2, 0, 1)]:  # whatever plane the viewer shows
        viewer.dims.order = order
        config, _ = w.validate()
        seen.add((w._native_axis, config.axis))
    assert len(seen) == 1 and w._native_axis == expected
    w.shutdown()


def test_the_view_follows_the_training_plane(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    _add(viewer)
    w = _widget(viewer, tmp_path)
    w.configure(epochs=1, depth=2, base_channels=4, batch_size=4, slice_size=16)
    assert viewer.dims.order == (0, 1, 2)  # napari's default: slices along axis 0
    assert w.start()
    qtbot.waitUntil(lambda: viewer.dims.order == (2, 0, 1))  # along axis 2, the axial plane
    assert w._preview_at is not None and w._preview_at[0] == 2
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    w.shutdown()


# --- the long one -----------------------------------------------------------------


@pytest.mark.slow
def test_quick_start_on_the_sample_in_the_default_view(
    make_napari_viewer, plugin_cache, tmp_path, qtbot, errors
):
    """LONG (1-4 min on 2 CPU cores): the sample through ``open_sample``, napari's
    default view (slicing along axis 0, the sagittal plane here), Start on the
    Quick start: validation DSC >= 0.7."""
    import torch

    viewer = make_napari_viewer()
    viewer.open_sample("napari-boundary-seg", "lesion_case")
    assert viewer.dims.order == (0, 1, 2)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="train")
    assert w.preset.value == "quick"
    w.configure(output=str(tmp_path / "runs"), device="cpu")
    threads = torch.get_num_threads()
    try:
        assert w.start(), errors
        assert w._native_axis == 2  # the sample's axial axis, whatever the view showed
        qtbot.waitUntil(lambda: not w.busy, timeout=600_000)
    finally:
        torch.set_num_threads(threads)
        w.shutdown()
    assert errors == []
    done = w.last_done
    assert done is not None and not done.stopped
    best = max(row["val_dice"] for row in done.history)
    print(f"quick start in the default view: best validation DSC {best:.3f}")
    assert best >= 0.7
    assert w.verdict is not None and not w.verdict.bad, w.verdict_label.text()
