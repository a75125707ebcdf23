"""Inference widget on tiny data under Xvfb: a checkpoint made by a tiny
training run, predictions in 2D and 3D with the input's geometry, and the
errors (wrong channel count, corrupted file, NaNs, nothing chosen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_boundary_seg._widgets._layers import images_from_layers
from napari_boundary_seg._widgets.inference import InferenceWidget, checkpoint_in_channels

SHAPE = (6, 32, 32)


def _volumes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[1:5, 8:16, 10:20] = 1
    flair = (rng.normal(0.3, 0.05, SHAPE) + 0.5 * labels).astype(np.float32)
    t1 = (rng.normal(0.6, 0.05, SHAPE) - 0.3 * labels).astype(np.float32)
    return flair, t1, labels


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, train_tiny) -> str:
    """best.pt of a one-epoch run of a tiny 2-modality UNet (slices along axis 0)."""
    flair, t1, labels = _volumes()
    done = train_tiny(
        tmp_path_factory.mktemp("ckpt"), [flair, t1], labels, (2.0, 1.0, 1.0), 0, ("FLAIR", "T1")
    )
    assert done.best_checkpoint is not None
    return done.best_checkpoint


@pytest.mark.parametrize("ndim", [2, 3])
def test_predict_adds_layers_with_input_geometry(
    make_napari_viewer, qtbot, checkpoint, errors, ndim
):
    viewer = make_napari_viewer()
    flair, t1, _ = _volumes()
    if ndim == 2:
        flair, t1 = flair[2], t1[2]
    scale = (2.0, 0.5, 0.5)[-ndim:]
    translate = (10.0, -3.0, 4.0)[-ndim:]
    viewer.add_image(flair, name="FLAIR", scale=scale, translate=translate)
    viewer.add_image(t1, name="T1", scale=scale, translate=translate)
    widget = InferenceWidget(viewer)
    widget.images.select(["FLAIR", "T1"])
    widget.checkpoint.setText(checkpoint)
    worker = widget.start()
    assert worker is not None, errors
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert errors == []
    prob = viewer.layers["FLAIR probability"]
    pred = viewer.layers["FLAIR prediction"]
    assert prob._type_string == "image" and pred._type_string == "labels"
    assert prob.data.shape == pred.data.shape == flair.shape
    for layer in (prob, pred):
        np.testing.assert_allclose(layer.scale, scale)
        np.testing.assert_allclose(layer.translate, translate)
    assert prob.data.dtype == np.float32
    assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0
    probs, labels = widget.last_result
    assert probs.shape == (2, *flair.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.data, probs.argmax(axis=0))
    np.testing.assert_allclose(prob.data, 1.0 - probs[0], atol=1e-6)
    # predicting again never overwrites the earlier prediction: new names
    first = pred.data.copy()
    n_layers = len(viewer.layers)
    widget.start()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert len(viewer.layers) == n_layers + 2
    assert viewer.layers["FLAIR prediction"] is pred
    np.testing.assert_array_equal(pred.data, first)
    assert widget.prediction_layer.name == "FLAIR prediction [2]"
    assert "FLAIR probability [2]" in viewer.layers


def test_layers_in_another_order_are_stacked_as_the_model_was_trained(
    make_napari_viewer, qtbot, checkpoint, errors, monkeypatch
):
    from napari_boundary_seg._widgets import _layers

    infos: list[str] = []
    monkeypatch.setattr(_layers, "show_info", lambda m: infos.append(str(m)))
    flair, t1, _ = _volumes()
    results = []
    for order in (("FLAIR", "T1"), ("T1", "FLAIR")):
        viewer = make_napari_viewer()
        for name in order:  # the widget stacks the layers in the viewer's order
            viewer.add_image({"FLAIR": flair, "T1": t1}[name], name=name)
        widget = InferenceWidget(viewer)
        widget.checkpoint.setText(checkpoint)
        assert widget.images.selected_names() == list(order)
        assert widget.start() is not None, errors
        qtbot.waitUntil(lambda w=widget: not w.busy, timeout=20_000)
        results.append(widget.last_result[0])
    assert errors == []
    assert len(infos) == 1 and "FLAIR, T1" in infos[0]  # only the swapped viewer says so
    np.testing.assert_array_equal(results[0], results[1])


def test_stack_for_checkpoint_reorders_only_known_names(make_napari_viewer, monkeypatch):
    from napari_boundary_seg._widgets import _layers
    from napari_boundary_seg._widgets.inference import stack_for_checkpoint

    monkeypatch.setattr(_layers, "show_info", lambda m: None)
    viewer = make_napari_viewer()
    t1 = viewer.add_image(np.zeros((3, 4), np.float32), name="T1")
    flair = viewer.add_image(np.ones((3, 4), np.float32), name="FLAIR")
    stack = images_from_layers([t1, flair])
    model_order = stack_for_checkpoint(stack, ["FLAIR", "T1"])
    assert model_order.names == ["FLAIR", "T1"]
    assert model_order.images[0].sum() == 12 and model_order.images[1].sum() == 0
    assert stack_for_checkpoint(stack, ["0000", "0001"]) is stack
    assert stack_for_checkpoint(stack, []) is stack


def test_layer_list_follows_moves_and_renames(make_napari_viewer):
    from napari_boundary_seg._widgets._fields import LayerList

    viewer = make_napari_viewer()
    for name in ("a", "b", "c"):
        viewer.add_image(np.zeros((3, 4), np.float32), name=name)
    chooser = LayerList(viewer, type(viewer.layers["a"]))
    chooser.select(["a", "c"])
    viewer.layers.move(2, 0)  # c to the bottom: now c, a, b
    assert chooser.selected_names() == ["c", "a"]  # channel order = the viewer's order
    viewer.layers["a"].name = "FLAIR"
    assert [chooser.item(i).text() for i in range(chooser.count())] == ["c", "FLAIR", "b"]


def test_images_from_layers_stacks_channels(make_napari_viewer):
    viewer = make_napari_viewer()
    a = viewer.add_image(np.ones((3, 4), np.uint8), name="a", scale=(2.0, 3.0))
    b = viewer.add_image(np.zeros((3, 4), np.float64), name="b", scale=(2.0, 3.0))
    stack = images_from_layers([a, b])
    assert stack.images.shape == (2, 3, 4) and stack.images.dtype == np.float32
    assert stack.images[0].sum() == 12 and stack.images[1].sum() == 0
    assert stack.spacing == (2.0, 3.0) and stack.names == ["a", "b"]


def test_bad_inputs_notify(make_napari_viewer, qtbot, checkpoint, errors, tmp_path):
    viewer = make_napari_viewer()
    flair, t1, _ = _volumes()
    viewer.add_image(flair, name="FLAIR")
    viewer.add_image(t1, name="T1")
    nan = flair.copy()
    nan[0, 1, 2] = np.nan
    viewer.add_image(nan, name="nan")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00garbage")
    widget = InferenceWidget(viewer)

    def attempt(layers: list[str], path: str) -> None:
        errors.clear()
        widget.images.select(layers)
        widget.checkpoint.setText(path)
        widget.start()
        qtbot.waitUntil(lambda: widget.worker is None and bool(errors), timeout=20_000)

    attempt([], checkpoint)
    assert "No image layer" in errors[0]
    attempt(["FLAIR", "T1"], "")
    assert "No checkpoint chosen" in errors[0]
    attempt(["FLAIR", "T1"], str(tmp_path / "missing.pt"))
    assert "not found" in errors[0]
    attempt(["FLAIR", "nan"], checkpoint)
    assert "'nan'" in errors[0] and "NaN" in errors[0]
    # checked in the worker: a corrupted file, a model for another channel count
    attempt(["FLAIR", "T1"], str(broken))
    assert "broken.pt" in errors[0] and "checkpoint" in errors[0]
    attempt(["FLAIR"], checkpoint)
    assert "2 modality channel(s)" in errors[0] and "1 image layer(s)" in errors[0]
    assert len(errors) == 1
    assert "FLAIR prediction" not in viewer.layers
    assert widget.run_button.isEnabled()  # usable again


def test_checkpoint_in_channels_reads_hparams(checkpoint):
    from napari_boundary_seg.core.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    assert checkpoint_in_channels((model, ckpt)) == 2
    assert checkpoint_in_channels(ckpt) == 2
    assert Path(checkpoint).name == "best.pt"


def test_empty_prediction_says_no_foreground(make_napari_viewer, qtbot, monkeypatch, errors):
    from napari_boundary_seg._widgets import inference
    from napari_boundary_seg.core.progress import Progress

    def nothing(checkpoint, images, spacing, device="auto", axis=None, affine=None, flips=False):
        yield Progress(1, 1, "slices")
        probs = np.zeros((2, *images.shape[1:]), np.float32)
        probs[0] = 1.0  # background everywhere
        return probs, np.zeros(images.shape[1:], np.int64)

    monkeypatch.setattr(inference, "predict_job", nothing)
    monkeypatch.setattr(inference, "check_checkpoint_path", str)
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((4, 5), np.float32), name="FLAIR")
    widget = InferenceWidget(viewer)
    widget.checkpoint.setText("any.pt")
    assert widget.start() is not None, errors
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert "no foreground predicted" in widget.status.text()
    assert "FLAIR prediction" in viewer.layers
    assert "done" in widget.progress.text() and "elapsed" not in widget.progress.text()


def test_probability_layer_is_transparent_at_zero_and_left_out_of_image_pickers(
    make_napari_viewer,
):
    from napari_boundary_seg._widgets.inference import add_prediction_layers

    viewer = make_napari_viewer()
    flair = viewer.add_image(np.ones((4, 5), np.float32), name="FLAIR")
    widget = InferenceWidget(viewer)
    stack = images_from_layers([flair])
    probs = np.zeros((2, 4, 5), np.float32)
    probs[0] = 1.0
    prob, pred = add_prediction_layers(viewer, probs, np.zeros((4, 5), int), stack, "FLAIR")
    rgba = prob.colormap.map(np.array([0.0, 0.15, 1.0]))
    assert rgba[0, 3] == 0.0 and rgba[1, 3] == 0.0  # transparent at 0 and near it
    assert rgba[2, 3] == 1.0
    assert prob.blending == "translucent"
    # the image picker offers the scan, not the probability; "show all" lists it
    names = lambda: [widget.images.item(i).text() for i in range(widget.images.count())]  # noqa: E731
    assert names() == ["FLAIR"]
    widget.images.show_all.setChecked(True)
    assert prob.name in names()


def test_image_picker_shows_the_model_modalities(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((4, 5), np.float32), name="a")
    widget = InferenceWidget(viewer)
    assert widget.images.hint.isHidden()
    widget.checkpoint.setText(checkpoint)
    assert widget.images.hint.text() == "model trained on: FLAIR, T1"


def test_mirror_box_predicts_with_test_time_flips(make_napari_viewer, qtbot, checkpoint, errors):
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.predict import predict_volume

    viewer = make_napari_viewer()
    flair, t1, _ = _volumes()
    viewer.add_image(flair, name="FLAIR", scale=(2.0, 1.0, 1.0))
    viewer.add_image(t1, name="T1", scale=(2.0, 1.0, 1.0))
    widget = InferenceWidget(viewer)
    widget.checkpoint.setText(checkpoint)
    assert widget.flips.value is False and "mirror" in widget.flips.text
    widget.flips.value = True
    assert widget.start() is not None, errors
    qtbot.waitUntil(lambda: not widget.busy, timeout=20_000)
    assert errors == []
    images = np.stack([flair, t1])
    expected, _ = predict_volume(load_checkpoint(checkpoint), images, (2.0, 1.0, 1.0), flips=True)
    plain, _ = predict_volume(load_checkpoint(checkpoint), images, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(widget.last_result[0], expected, atol=1e-6)
    assert not np.allclose(widget.last_result[0], plain, atol=1e-6)
