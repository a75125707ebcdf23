"""Screenshots of every dock widget of the plugin, in a real napari window.

Run under a display (or Xvfb)::

    xvfb-run -a .venv/bin/python docs/screenshots.py            # every widget + overview
    xvfb-run -a .venv/bin/python docs/screenshots.py distance   # some widgets only

For each widget declared in ``napari.yaml`` it opens napari with the sample
lesion case, docks the widget, lets it do its job when a ``prepare`` function
is known for it (below), and saves ``docs/screenshots/<widget>.png``; then
``overview.png`` with every widget docked as tabs. The PNGs are reduced to 256
colours to stay small (about 150-300 KB).
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
WINDOW = (1500, 900)


def slug(display_name: str) -> str:
    """File name of a widget's screenshot: ``"Distance map"`` -> ``"distance"``."""
    return display_name.lower().split()[0].replace("/", "-")


def widget_names() -> list[str]:
    """Display names of the widgets declared in the plugin's manifest."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    return [w.display_name for w in manifest.contributions.widgets or []]


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


def axial_view(viewer: Any, labels_layer: Any) -> None:
    """Slice along the last (inferior-superior) axis, anterior up, at the busiest slice."""
    from napari_boundary_seg._widgets._common import move_to_slice

    viewer.dims.order = (2, 1, 0)
    viewer.camera.orientation2d = ("up", "right")
    move_to_slice(viewer, labels_layer, 2, busiest_slice(labels_layer.data, 2))
    viewer.reset_view()


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


PREPARE: dict[str, Callable[[Any, Any], None]] = {
    "Distance map": prepare_distance,
    "Compare to ground truth": prepare_compare,
}


# ------------------------------------------------------------------ screenshots
def save_png(array: np.ndarray, path: Path, max_width: int = 1400) -> int:
    """Save an RGBA screenshot as a 256-colour PNG; returns its size in bytes."""
    from PIL import Image

    image = Image.fromarray(np.asarray(array)[..., :3])
    if image.width > max_width:
        image = image.resize(
            (max_width, round(image.height * max_width / image.width)), Image.LANCZOS
        )
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path.stat().st_size


def new_viewer() -> Any:
    """A napari window with the sample case in an axial view."""
    import napari

    viewer = napari.Viewer(title="napari-boundary-seg")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample(PLUGIN, "lesion_case")
    axial_view(viewer, viewer.layers["lesions"])
    return viewer


def shoot_widget(name: str) -> Path:
    """Screenshot of one widget doing its job."""
    viewer = new_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle()
    if name in PREPARE:
        PREPARE[name](viewer, widget)
    settle(1.0)
    path = OUT / f"{slug(name)}.png"
    size = save_png(viewer.screenshot(canvas_only=False, flash=False), path)
    print(f"{path} ({size / 1024:.0f} KB)")
    viewer.close()
    return path


def shoot_overview(names: list[str]) -> Path:
    """Screenshot with every widget docked as tabs (the first one shown)."""
    viewer = new_viewer()
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, n, tabify=True) for n in names]
    if docks:
        first_dock, first_widget = docks[0]
        first_dock.raise_()
        if names[0] in PREPARE:
            PREPARE[names[0]](viewer, first_widget)
    settle(1.0)
    path = OUT / "overview.png"
    size = save_png(viewer.screenshot(canvas_only=False, flash=False), path)
    print(f"{path} ({size / 1024:.0f} KB)")
    viewer.close()
    return path


def main(argv: list[str]) -> int:
    names = widget_names()
    chosen = [n for n in names if not argv or slug(n) in argv]
    for name in chosen:
        shoot_widget(name)
    if not argv or "overview" in argv:
        shoot_overview(names)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
