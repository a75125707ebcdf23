"""Screenshots of every dock widget of the plugin, in a real napari window.

Run under a display (or Xvfb)::

    xvfb-run -a .venv/bin/python docs/screenshots.py            # every widget + overview
    xvfb-run -a .venv/bin/python docs/screenshots.py distance   # some widgets only
    xvfb-run -a .venv/bin/python docs/screenshots.py finetune_rounds  # two fine-tune rounds

For each widget declared in ``napari.yaml`` it opens napari with the sample
lesion case, docks the widget, lets it do its job when a ``prepare`` function
is known for it (below), and saves ``docs/screenshots/<widget>.png``; then
``overview.png`` with every widget docked as tabs; ``starter`` gives
``starter_model.png``: File > Open Sample > Starter model, Predict docked and
clicked once with nothing else chosen. The PNGs are reduced to 256 colours when
needed to stay under about 300 KB.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PLUGIN = "napari-boundary-seg"
OUT = Path(__file__).resolve().parent / "screenshots"
WINDOW = (1600, 1000)


def slug(display_name: str) -> str:
    """File name of a widget's screenshot: ``"Distance"`` -> ``"distance"``."""
    return display_name.lower().split()[0].replace("/", "-")


def wait_for(widget: Any, timeout: float = 60.0) -> None:
    """Process Qt events until ``widget.busy`` turns False."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while getattr(widget, "busy", False) and time.monotonic() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    settle()


def settle(seconds: float = 0.5) -> None:
    """Let napari draw."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def busiest_slice(labels: np.ndarray, axis: int) -> int:
    """Index of the slice along ``axis`` with the most foreground."""
    other = tuple(i for i in range(labels.ndim) if i != axis)
    return int(np.argmax((labels > 0).sum(axis=other)))


def simulated_prediction(labels: np.ndarray) -> np.ndarray:
    """A plausible imperfect prediction for the comparison screenshot.

    The lesions shifted by one voxel, the smallest lesion dropped (a false
    negative) and a small blob added elsewhere (a false positive). Only for
    pictures: named "prediction (simulated)" in the viewer.
    """
    from scipy import ndimage

    pred = np.roll(labels > 0, 1, axis=1)
    components, n = ndimage.label(pred)
    if n > 1:
        sizes = ndimage.sum(pred, components, index=range(1, n + 1))
        pred[components == 1 + int(np.argmin(sizes))] = False
    z = busiest_slice(labels, 2)
    centre = np.array(labels.shape) // 2
    pred[centre[0] - 2 : centre[0] + 2, centre[1] + 8 : centre[1] + 11, z - 1 : z + 2] = True
    return pred.astype(np.uint8)


# ------------------------------------------------------------ per widget set-up
def prepare_distance(viewer: Any, widget: Any) -> None:
    """Distance map of the lesions, 3D, with the contour."""
    from napari_boundary_seg._widgets.distance import Mode

    widget.labels_combo.set_layer("lesions")
    widget.class_spin.setValue(1)
    widget.set_mode(Mode.VOLUME)
    widget.compute()
    wait_for(widget)
    viewer.layers["lesions"].visible = False


def prepare_compare(viewer: Any, widget: Any) -> None:
    """A simulated prediction against the lesions, table filled, a row chosen."""
    lesions = viewer.layers["lesions"]
    viewer.add_labels(
        simulated_prediction(lesions.data),
        name="prediction (simulated)",
        scale=lesions.scale,
        translate=lesions.translate,
        units=lesions.units,
        visible=False,
    )
    widget.pred_combo.set_layer("prediction (simulated)")
    widget.gt_combo.set_layer("lesions")
    widget.compare()
    wait_for(widget)
    lesions.visible = False
    z = busiest_slice(lesions.data, 2)
    rows = [r["slice"] for r in widget.slice_rows]
    if z in rows:
        row = 1 + rows.index(z)
        widget.table.selectRow(row)
        widget.go_to_row(row)


def quick_checkpoint(viewer: Any) -> tuple[Path, str]:
    """A tiny UNet trained briefly on the sample case (core.train, no widget):
    returns a scratch folder and the checkpoint path."""
    import tempfile

    from napari_boundary_seg.core.data import case_from_arrays
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.train import TrainConfig, train

    flair, t1, lesions = (viewer.layers[n] for n in ("FLAIR", "T1", "lesions"))
    folder = Path(tempfile.mkdtemp(prefix="nbs-screenshot-"))
    case = case_from_arrays(
        [flair.data, t1.data], lesions.data, tuple(flair.scale), modalities=("FLAIR", "T1")
    )
    config = TrainConfig(
        out_dir=str(folder / "base"),
        epochs=3,
        slice_size=64,
        axis=2,
        depth=3,
        base_channels=8,
        device="cpu",
        val_fraction=0.0,
    )
    return folder, run_to_end(train(config, [case])).last_checkpoint


def prepare_train(viewer: Any, widget: Any) -> None:
    """The Quick start preset on the sample case (minutes on a CPU): curves,
    progress bars, the live preview and the best model's prediction."""
    import os
    import tempfile

    epochs = int(os.environ.get("NBS_SCREENSHOT_EPOCHS", "0"))  # 0: the preset's
    widget.overrides = {
        "device": "cpu",
        "out_dir": tempfile.mkdtemp(prefix="nbs-screenshot-"),
        **({"epochs": epochs} if epochs else {}),
    }
    widget.start()
    wait_for(widget, timeout=900)
    viewer.layers["lesions"].visible = False
    bar = widget.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())  # the progress bars, the status and the curves


def prepare_predict(viewer: Any, widget: Any) -> None:
    """Predict the sample case with a briefly trained checkpoint."""
    _, checkpoint = quick_checkpoint(viewer)
    widget.images.select(["FLAIR", "T1"])
    widget.checkpoint.setText(checkpoint)
    widget.device.setCurrentText("cpu")
    widget.start()
    wait_for(widget, timeout=600)
    viewer.layers["lesions"].visible = False


def prepare_finetune(viewer: Any, widget: Any) -> None:
    """A tiny UNet trained briefly on the sample case predicts; the true lesions
    are painted into two slices of the prediction (the user's corrections); a
    short fine-tune on them; the comparison table and the changed voxels."""
    lesions = viewer.layers["lesions"]
    folder, checkpoint = quick_checkpoint(viewer)
    widget.images.select(["FLAIR", "T1"])
    widget.checkpoint.setText(checkpoint)
    widget.device.setCurrentText("cpu")
    widget.out_folder.setText(str(folder / "finetune"))
    widget.predict()
    wait_for(widget)
    layer = viewer.layers["FLAIR corrections"]
    z = busiest_slice(lesions.data, 2)
    for s in (z - 2, z):
        truth = (lesions.data[:, :, s] > 0).astype(layer.data.dtype)
        rows, cols = np.nonzero(truth != layer.data[:, :, s])
        layer.data_setitem((rows, cols, np.full(rows.size, s)), truth[rows, cols])
    widget.epochs.setValue(5)
    widget.start_finetune()
    wait_for(widget, timeout=900)
    lesions.visible = False
    viewer.layers["FLAIR probability"].visible = False
    viewer.layers.selection.active = layer


def prepare_finetune_rounds(viewer: Any, widget: Any) -> None:
    """Two fine-tune rounds against the true lesions as reference: two slices
    corrected, fine-tune, keep; two more, fine-tune, keep. The dock is scrolled
    to the gain table and the rounds curve."""
    lesions = viewer.layers["lesions"]
    folder, checkpoint = quick_checkpoint(viewer)
    widget.images.select(["FLAIR", "T1"])
    widget.checkpoint.setText(checkpoint)
    widget.device.setCurrentText("cpu")
    widget.predict()
    wait_for(widget)
    layer = viewer.layers["FLAIR corrections"]
    widget.truth_combo.set_layer("lesions")
    widget.epochs.setValue(5)
    z = busiest_slice(lesions.data, 2)
    for k, pair in enumerate(((z - 2, z), (z + 2, z - 4))):
        for s in pair:
            truth = (lesions.data[:, :, s] > 0).astype(layer.data.dtype)
            rows, cols = np.nonzero(truth != layer.data[:, :, s])
            layer.data_setitem((rows, cols, np.full(rows.size, s)), truth[rows, cols])
        widget.out_folder.setText(str(folder / f"round{k + 1}"))
        widget.start_finetune()
        wait_for(widget, timeout=900)
        widget.decide(True)
    lesions.visible = False
    viewer.layers["FLAIR probability"].visible = False
    viewer.layers.selection.active = layer
    bar = widget.scroll_area.verticalScrollBar()
    bar.setValue(bar.maximum())


PREPARE: dict[str, Callable[[Any, Any], None]] = {
    "Distance": prepare_distance,
    "Compare": prepare_compare,
    "Finetune": prepare_finetune,
    "Train": prepare_train,
    "Predict": prepare_predict,
}


# ------------------------------------------------------------------ screenshots
def save_png(array: np.ndarray, path: Path, max_width: int = 1600, budget: int = 300_000) -> int:
    """Save an RGBA screenshot as PNG; returns its size in bytes.

    Full colour when that fits in ``budget`` bytes, else reduced to 256
    colours (small colour swatches may shift a little then).
    """
    from PIL import Image

    image = Image.fromarray(np.asarray(array)[..., :3])
    if image.width > max_width:
        image = image.resize(
            (max_width, round(image.height * max_width / image.width)), Image.LANCZOS
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    if path.stat().st_size > budget:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def save_shot(viewer: Any, name: str, note: str = "") -> Path:
    """Let napari draw, save the window as ``docs/screenshots/<name>.png``, close it."""
    settle(1.0)
    path = OUT / f"{name}.png"
    size = save_png(viewer.screenshot(canvas_only=False, flash=False), path)
    print(f"{path} ({size / 1024:.0f} KB){': ' + note if note else ''}")
    viewer.close()
    return path


def new_viewer(dock: bool = False) -> Any:
    """A napari window with the sample case in an axial view (as the demo opens it)."""
    from napari_boundary_seg._demo import open_demo_viewer

    viewer = open_demo_viewer(show=True, dock=dock)
    viewer.window._qt_window.resize(*WINDOW)
    settle()
    viewer.reset_view()
    return viewer


def shoot_widget(name: str, prepare: Callable[[Any, Any], None] | None = None,
                 file: str | None = None, dock_width: int | None = None) -> Path:  # fmt: skip
    """Screenshot of one widget doing its job (``prepare``: another job than
    its :data:`PREPARE`; ``file``: another name; ``dock_width``: in pixels)."""
    from qtpy.QtCore import Qt

    viewer = new_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    if dock_width is not None:
        viewer.window._qt_window.resizeDocks([dock], [dock_width], Qt.Orientation.Horizontal)
    settle()
    prepare = prepare or PREPARE.get(name)
    if prepare is not None:
        prepare(viewer, widget)
    return save_shot(viewer, file or slug(name), f"dock width {dock.width()} px")


def shoot_overview(names: list[str]) -> Path:
    """Screenshot of the demo window: every widget docked as tabs, the first one at work."""
    viewer = new_viewer(dock=True)
    if names:
        viewer.window.dock_widgets[f"{names[0]} ({PLUGIN})"].parent().raise_()
        settle()
    if names and names[0] in PREPARE:
        PREPARE[names[0]](viewer, viewer.window.dock_widgets[f"{names[0]} ({PLUGIN})"])
    return save_shot(viewer, "overview")


def shoot_starter() -> Path:
    """Screenshot of the first click: the "Starter model" sample opened, Predict
    docked and clicked with nothing chosen (the lesions shown as outlines)."""
    import napari

    from napari_boundary_seg._demo import axial_view

    viewer = napari.Viewer(title="napari-boundary-seg starter model")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample(PLUGIN, "starter_model")
    axial_view(viewer, viewer.layers["lesions"])
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    settle()
    widget.run_button.click()
    wait_for(widget)
    viewer.layers["lesions"].contour = 1
    viewer.layers["FLAIR probability"].visible = False
    return save_shot(viewer, "starter_model", widget.status.text())


def main(argv: list[str]) -> int:
    from napari_boundary_seg._demo import widget_names

    names = widget_names()
    chosen = [n for n in names if not argv or slug(n) in argv]
    for name in chosen:
        shoot_widget(name)
    if not argv or "finetune_rounds" in argv:  # two rounds and the curve, in a narrow dock
        shoot_widget("Finetune", prepare_finetune_rounds, "finetune_rounds", dock_width=340)
    if not argv or "overview" in argv:
        shoot_overview(names)
    if not argv or "starter" in argv:
        shoot_starter()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
