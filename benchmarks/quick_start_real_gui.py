"""The Quick start on a real scan in a real napari window, as a person does it.

File > Open of a FLAIR and its lesion mask (the plugin's reader), the Train
widget docked, Start pressed on the Quick start (nothing else changed, the
view left as napari opens it). Prints the best validation DSC (on the held-out
block of slices) and the wall time from Start to the end of the run, and saves
a screenshot of the whole window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/quick_start_real_gui.py \\
        FLAIR.nii.gz MASK.nii.gz --screenshot docs/screenshots/real_scan.png

Needs a display (Xvfb); the scans are not part of the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("flair", type=Path, help="the FLAIR (.nii/.nii.gz)")
    p.add_argument("mask", type=Path, help="its lesion mask")
    p.add_argument("--screenshot", type=Path, help="PNG of the window at the end")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds (default 1800)")
    args = p.parse_args(argv)
    for path in (args.flair, args.mask):
        if not path.is_file():
            print(f"no such file: {path}")
            return 2

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_boundary_seg._widgets.train import TrainWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(args.flair), plugin="napari-boundary-seg")
    viewer.open(str(args.mask), plugin="napari-boundary-seg")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    app = QApplication.instance()
    out = Path(tempfile.mkdtemp(prefix="nbs-real-gui-"))
    widget.configure(output=str(out), device="cpu")
    for _ in range(20):
        app.processEvents()
    t0 = time.perf_counter()
    if not widget.start():
        print("Start was refused")
        return 1
    while widget.busy and time.perf_counter() - t0 < args.timeout:
        app.processEvents()
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    for _ in range(100):  # the prediction layer is added in steps
        app.processEvents()
        time.sleep(0.02)
    done = widget.last_done
    if done is None:
        print(f"the run did not end within {args.timeout:.0f} s")
        return 1
    dice = [row["val_dice"] for row in done.history]
    best = max(dice)
    print(
        f"quick start on {args.flair.name} (+ {args.mask.name}), load average "
        f"{os.getloadavg()[0]:.1f}: best validation DSC {best:.3f} at epoch "
        f"{dice.index(best) + 1} of {len(dice)}, {wall:.0f} s from Start to the end "
        f"(prediction included); per epoch: {', '.join(f'{d:.3f}' for d in dice)}"
    )
    if widget.verdict is not None:
        print(f"verdict: {widget.verdict_label.text()}")
    if args.screenshot is not None:
        from imageio.v3 import imwrite

        imwrite(args.screenshot, viewer.screenshot(canvas_only=False, flash=False))
        print(f"screenshot: {args.screenshot}")
    widget.shutdown()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
