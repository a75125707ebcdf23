"""``napari-boundary-seg demo``: napari with the sample case and every widget docked.

With a display, the Train widget is put on its "Quick start" preset
(:func:`napari_boundary_seg.core.presets.quick_start_config`) and started: the
live preview shows the segmentation forming and the run ends with its
prediction added as a layer. Where there is no display (Linux without
``DISPLAY`` / ``WAYLAND_DISPLAY``, or Qt fails to start) it runs a headless
demo on the same data instead: the sample lesion case, its signed distance
maps, a quick-start training run on the slices outside a held-out block, and
the DSC of its prediction on that block, printing what it does and its wall
time.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PLUGIN = "napari-boundary-seg"

Echo = Callable[[str], None]


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def loss_text(config: Any) -> str:
    """The objective of ``config`` in words: "GDL", or "GDL + BL (α from 1 down to 0.5)"."""
    from napari_boundary_seg.core.config import LossKind, uses_schedule

    loss = LossKind(config.loss)
    if not uses_schedule(loss):
        return {LossKind.GDL: "GDL"}.get(loss, loss.value)
    schedule = dict(config.schedule)
    if schedule.get("kind") == "paper":
        start, floor = schedule.get("start", 1.0), schedule.get("floor", 0.01)
        return f"GDL + BL (α from {start:g} down to {floor:g})"
    return f"GDL + BL ({schedule.get('kind')} α schedule)"


def has_display() -> bool:
    """False on Linux without ``DISPLAY`` or ``WAYLAND_DISPLAY``; True elsewhere."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def widget_names() -> list[str]:
    """Display names of the dock widgets declared in the plugin's manifest."""
    import npe2

    pm = npe2.PluginManager.instance()
    if PLUGIN not in {m.name for m in pm.iter_manifests()}:
        pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    return [w.display_name for w in manifest.contributions.widgets or []]


def axial_view(viewer: Any, labels_layer: Any) -> None:
    """Slice along the last axis (inferior-superior in RAS data), anterior up,
    at the slice with the most foreground of ``labels_layer``."""
    from napari_boundary_seg._widgets._layers import move_to_slice

    viewer.dims.order = (
        *range(viewer.dims.ndim - 3),
        viewer.dims.ndim - 1,
        viewer.dims.ndim - 2,
        viewer.dims.ndim - 3,
    )
    scene = getattr(viewer, "scene", viewer)  # napari >= 0.9: viewer.scene.camera
    scene.camera.orientation2d = ("up", "right")
    data = labels_layer.data
    busiest = int((data > 0).sum(axis=tuple(range(data.ndim - 1))).argmax())
    move_to_slice(viewer, labels_layer, data.ndim - 1, busiest)
    viewer.reset_view()


TRAIN_WIDGET = "Train"


def open_demo_viewer(show: bool = True, dock: bool = True) -> Any:
    """A napari viewer with the sample case (axial view) and, if ``dock``, every
    widget of the plugin docked as tabs, the first one (Distance) in front."""
    import napari

    viewer = napari.Viewer(title="napari-boundary-seg demo", show=show)
    viewer.open_sample(PLUGIN, "lesion_case")
    axial_view(viewer, viewer.layers["lesions"])
    if dock:
        docks = [
            viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
            for name in widget_names()
        ]
        for name in widget_names():
            dock = viewer.window.dock_widgets[f"{name} ({PLUGIN})"].parent()
            dock.setWindowTitle(name)  # the tab's text, without the plugin's name
            dock.setToolTip(name)
        if docks:
            raise_dock(viewer, widget_names()[0])
    return viewer


def raise_dock(viewer: Any, name: str) -> None:
    """Bring the dock widget ``name`` (display name) to the front of its tabs,
    now and again once the window is shown (Qt forgets a raise before that)."""
    from qtpy.QtCore import QTimer

    widget = viewer.window.dock_widgets.get(f"{name} ({PLUGIN})")
    if widget is None:
        return
    dock = widget.parent()
    dock.raise_()
    QTimer.singleShot(0, dock.raise_)


def start_quick_start(viewer: Any, **overrides: Any) -> Any:
    """Start the docked Train widget on its Quick start preset (FLAIR + T1 and
    the lesions, checkpoints in a temporary folder) and bring it to the front;
    returns the widget. Its live preview follows the slice on view and the run
    ends with the best model's prediction as a layer. ``overrides``: further
    ``TrainConfig`` fields (tests shrink the run)."""
    import tempfile

    widget = viewer.window.dock_widgets.get(f"{TRAIN_WIDGET} ({PLUGIN})")
    if widget is None:
        return None
    widget.preset.value = "quick"
    widget.overrides = {"out_dir": tempfile.mkdtemp(prefix="nbs-demo-"), **overrides}
    raise_dock(viewer, TRAIN_WIDGET)
    widget.start()
    return widget


def run_gui_demo(echo: Echo = _stdout) -> int:
    """Open the demo viewer, start the quick-start training, run napari's event
    loop (returns when closed)."""
    import napari

    viewer = open_demo_viewer()
    echo(f"napari is open with the sample lesion case and {len(widget_names())} widgets docked.")
    if start_quick_start(viewer) is not None:
        echo(
            "The Train widget runs its Quick start on the sample case: watch the "
            "'training preview' layer and the curves; the prediction follows."
        )
    napari.run()
    return 0


def run_headless_demo(echo: Echo = _stdout, train: bool = True) -> int:
    """Sample case, distance maps, (a quick-start training run and its DSC on the
    held-out slices), printed."""
    from napari_boundary_seg._sample_data import sample_case_files
    from napari_boundary_seg.core.data import CaseFiles, load_case
    from napari_boundary_seg.core.distance import signed_distance_map
    from napari_boundary_seg.core.progress import run_to_end

    echo("Headless demo (no display: napari's window cannot open here).")
    t_demo = t0 = time.perf_counter()
    files = sample_case_files()
    case = load_case(
        CaseFiles(
            case_id="sample",
            image_paths=(files["FLAIR"], files["T1"]),
            label_path=files["lesions"],
            modalities=("FLAIR", "T1"),
        )
    )
    labels = case.labels
    fraction = float((labels > 0).mean())
    echo(
        f"1. Sample lesion case: images {case.images.shape} ({', '.join(case.modalities)}), "
        f"spacing {case.spacing} mm, lesions {100 * fraction:.2f} % of the voxels "
        f"({time.perf_counter() - t0:.1f} s, cached in {files['lesions'].parent})."
    )

    t0 = time.perf_counter()
    phi = signed_distance_map(labels == 1, case.spacing)
    inside = phi[labels == 1]
    echo(
        f"2. Signed distance maps (3D, with spacing): φ of the lesions from "
        f"{phi.min():.1f} mm (deepest inside) to {phi.max():.1f} mm (farthest outside), "
        f"{int((inside == 0).sum())} boundary voxels at 0 ({time.perf_counter() - t0:.1f} s)."
    )
    if not train:
        return 0
    import tempfile

    from napari_boundary_seg.core.metrics import case_metrics
    from napari_boundary_seg.core.orientation import native_slice_axis
    from napari_boundary_seg.core.predict import predict_volume
    from napari_boundary_seg.core.presets import (
        quick_start_config,
        split_slices,
        validation_block,
    )
    from napari_boundary_seg.core.train import EpochEvent
    from napari_boundary_seg.core.train import train as train_model

    with tempfile.TemporaryDirectory(prefix="nbs-demo-") as out_dir:
        config = quick_start_config(out_dir=out_dir, device="cpu")
        # the plane from the scan's affine (as the Train widget), the whole volume
        # normalised before the held-out block is cut out of it
        axis = native_slice_axis(case.affine, case.spacing, config.axis)
        train_cases, val_cases = split_slices(
            case.images,
            labels,
            case.spacing,
            axis,
            config.val_fraction,
            case_id="sample",
            modalities=case.modalities,
            affine=case.affine,
            normalize=config.normalize,
        )
        block = validation_block(labels, axis, config.val_fraction)
        if block is None:  # the sample always has one; guard against a changed generator
            raise RuntimeError("the sample case has no block of slices to validate on")
        echo(
            f"3. Quick start: a UNet (depth {config.depth}, width {config.base_channels}) "
            f"for {config.epochs} epochs with {loss_text(config)}, trained on the slices "
            f"outside the block "
            f"{block.start}–{block.stop - 1} of axis {axis}, validated on that block."
        )
        t_train = time.perf_counter()

        def report(event: Any) -> None:
            if isinstance(event, EpochEvent):
                echo(
                    f"   epoch {event.epoch + 1}/{config.epochs}: loss {event.train_loss:.3f}, "
                    f"validation DSC {event.val_dice:.3f} "
                    f"({time.perf_counter() - t_demo:.0f} s since the start)"
                )

        done = run_to_end(train_model(config, train_cases, val_cases=val_cases), report)
        checkpoint = done.best_checkpoint or done.last_checkpoint
        echo(
            f"   trained in {time.perf_counter() - t_train:.0f} s; predicting with "
            f"{Path(checkpoint).name if checkpoint else 'the final weights'}."
        )
        _, pred = predict_volume(
            checkpoint or done.model, case.images, case.spacing, affine=case.affine
        )
    held_out = (slice(None),) * axis + (block,)
    dsc = float(case_metrics(pred[held_out], labels[held_out], spacing=case.spacing)["dice"])
    fraction_pred = float((pred > 0).mean())
    wall = time.perf_counter() - t_demo
    if fraction_pred == 0:
        echo("4. No foreground predicted.")
    else:
        echo(
            f"4. Prediction: {100 * fraction_pred:.2f} % of the voxels are lesion "
            f"(ground truth {100 * fraction:.2f} %)."
        )
    echo(
        f"Validation DSC {dsc:.3f} on slices the model did not train on; "
        f"wall time {wall:.0f} s (data preparation and training included)."
    )
    echo("Run `napari-boundary-seg demo` with a display to get the napari window.")
    return 0


def run_demo(headless: bool = False, echo: Echo = _stdout, threads: int | None = None) -> int:
    """The GUI demo when a display is available, else (or when asked) the headless one.

    torch's CPU thread count is chosen first and said on the first line
    (:func:`napari_boundary_seg.core.threads.choose_threads`: ``threads``, else
    ``OMP_NUM_THREADS``, else one per idle core): on a busy 2-core machine two
    threads spin against the other work and make training several times slower.
    """
    from napari_boundary_seg.core.threads import apply_threads, choose_threads

    echo(f"demo: {apply_threads(choose_threads(threads)).describe()}")
    if headless or not has_display():
        return run_headless_demo(echo)
    try:
        return run_gui_demo(echo)
    except Exception as error:  # Qt or OpenGL could not start: fall back
        logger.warning("napari could not start (%s); running the headless demo", error)
        echo(f"napari could not start ({type(error).__name__}: {error}).")
        return run_headless_demo(echo)
