"""The Qt event loop while every dock widget works on the sample case, in a real napari window.

    xvfb-run -a .venv/bin/python benchmarks/event_loop_sample.py   # a few minutes on a 2-core CPU

napari opens the sample case (96×112×96 at 2 mm, FLAIR + T1 + lesions) and a
10 ms ``QTimer`` records the gaps of the Qt event loop while each widget
works and delivers its result into the viewer, one after the other:

1. Distance map: φ of the lesions (3D), the φ and ∂G layers added;
2. Train: data preparation with the distance maps, training, validation, the
   run's end and the prediction of the best model (the Start click itself,
   where napari builds its progress bar, is printed apart);
3. Predict: the trained model on FLAIR + T1, probability and labels layers added;
4. Compare: that prediction against the lesions, TP/FP/FN layer and table;
   then the same comparison again ("Compare again"), its layer updated in
   place (``layer.data = ...``, no layer added);
5. Finetune: a prediction into a corrections layer, two slices corrected,
   one epoch of fine-tuning, the evaluation, the changed-voxel layer and table.

For each it prints the worst gap, from the click to the result shown (the
delivery included), and the click itself; for the Train run also the worst gap
around its first live preview (the preview layer made in steps and filled);
and each worst gap's ratio to napari alone adding a layer of the same size in
the same run (goal: at most 1.5). First, as a reference with no code
of this plugin, napari alone: the gaps while napari adds one Labels layer
(the lesions, copied) and one Image layer (FLAIR, copied) of the sample case,
each in the event-loop turn after the "click" (``viewer.add_labels`` /
``viewer.add_image``, then its first paint), each added ``--repeats`` times
(default 3) and the median taken, since one add varies by a third from the
next: the least a widget that adds a layer can cost on this machine. As the
viewer fills (more layers to draw, five docks), napari's own cost of adding a layer grows: just before each
widget runs, the same reference is taken again in the viewer as it is then
(the layer added, measured, removed), and each worst gap's ratio to that one
is printed too: what the plugin adds to napari's own work. The bar: no gap over
100 ms when any widget delivers its result, and the Start click under 100 ms.
Figures measured on a shared machine vary with its load; run it again on yours.

``--only predict compare --checkpoint best.pt`` runs some widgets only;
``--stacks`` prints, for each worst gap, what the GUI thread was doing
(its Python stack sampled every 2 ms from another thread, and the garbage
collections inside the gap) and profiles the click; with
``EVENT_LOOP_STACKS=file.jsonl`` the samples are also written there.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BAR_MS = 100
LABELS, BOTH = ("labels",), ("labels", "image")
WIDGETS = ("napari", "distance", "train", "predict", "compare", "finetune")


class StackSampler:
    """Samples the GUI thread's Python stack every 2 ms from another thread
    (``--stacks``): what the GUI thread was doing inside the worst gap."""

    def __init__(self) -> None:
        import gc
        import threading

        self.samples: list[tuple[float, list[str]]] = []
        self.collections: list[tuple[float, float, int]] = []  # start, end (ms), generation
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import sys

        while not self._stop.wait(0.002):
            frame = sys._current_frames().get(self._main)
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{Path(code.co_filename).name}:{code.co_name}")
                frame = frame.f_back
            self.samples.append((time.perf_counter() * 1e3, stack))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter() * 1e3
        if phase == "start":
            self._gc_start = now
        else:
            self.collections.append((self._gc_start, now, info["generation"]))

    def stop(self) -> None:
        import gc

        gc.callbacks.remove(self._on_gc)
        self._stop.set()
        self._thread.join()

    def print_gap(self, start_ms: float, end_ms: float, top: int = 25) -> None:
        from collections import Counter

        inside = [(t, s) for t, s in self.samples if start_ms < t < end_ms]
        for a, b, generation in self.collections:
            if start_ms < b and a < end_ms and b - a > 5:
                print(
                    f"  garbage collection (gen {generation}) {a - start_ms:.0f}-{b - start_ms:.0f} ms"
                )
        counts: Counter[str] = Counter()
        for _, stack in inside:
            counts.update(set(stack))
        print(f"  worst gap: {len(inside)} samples, functions by inclusive samples:")
        for name, n in counts.most_common(top):
            print(f"    {n:5d}  {name}")
        dump = os.environ.get("EVENT_LOOP_STACKS")
        if dump:
            import json

            with open(dump, "a") as f:
                f.write(json.dumps([[t - start_ms, st] for t, st in inside]) + "\n")
        print("  timeline (runs of samples with the same 4 frames under the event loop):")
        runs: list[list[Any]] = []
        for t, stack in inside:
            below = stack[: max(len(stack) - 3, 0)]  # drop main/watch/<module>
            key = " < ".join(below[-4:][::-1]) + " ... " + (below[0] if below else "")
            if runs and runs[-1][1] == key:
                runs[-1][2] = t
            else:
                runs.append([t, key, t])
        for t0, key, t1 in runs:
            if t1 - t0 >= 4:
                print(f"    {t0 - start_ms:6.0f}-{t1 - start_ms:4.0f} ms  {key}")


def watch(
    stacks: bool, app: Any, start: Callable[[], Any], busy: Callable[[], bool]
) -> dict[str, float]:
    """Run ``start`` (the click) and the event loop until ``busy()`` is False,
    then 300 ms more; returns the click's time, the worst gap and the wall time.
    ``stacks``: print what the GUI thread did in the worst gap."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter() * 1e3))
    sampler = StackSampler() if stacks else None
    timer.start()
    app.processEvents()
    t0 = time.perf_counter()
    profile = None
    if stacks:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    started = start()
    click = time.perf_counter() - t0
    if profile is not None:
        import pstats

        profile.disable()
        print("  the click, by cumulative time:")
        pstats.Stats(profile).sort_stats("cumulative").print_stats(18)
    if started is None:
        timer.stop()
        raise RuntimeError("the run did not start")
    ticks.append(time.perf_counter() * 1e3)  # the gap containing the click ends here
    first = len(ticks) - 1
    while busy():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError("not done after 30 min")
    end = time.perf_counter() + 0.3  # whatever the delivery queued
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    gaps = [b - a for a, b in zip(ticks[first:], ticks[first + 1 :], strict=False)]
    if sampler is not None:
        sampler.stop()
        if gaps:
            k = int(np.argmax(gaps))
            sampler.print_gap(ticks[first + k], ticks[first + k + 1])
    return {
        "click_ms": click * 1e3,
        "worst_ms": float(max(gaps)) if gaps else float("nan"),
        "ticks": len(gaps),
        "wall_s": time.perf_counter() - t0,
        "tick_ms": ticks[first:],
    }


def worst_gap_within(ticks_ms: list[float], start_ms: float, end_ms: float) -> float:
    """The worst event-loop gap overlapping ``[start_ms, end_ms]`` (perf_counter ms)."""
    gaps = [
        b - a for a, b in zip(ticks_ms, ticks_ms[1:], strict=False) if b >= start_ms and a <= end_ms
    ]
    return float(max(gaps)) if gaps else float("nan")


def settle(app: Any, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def napari_alone(stacks: bool, app: Any, viewer: Any, kind: str) -> dict[str, float]:
    """The reference: the worst gap while napari adds one layer like the
    sample's (a copy of the lesions as Labels, or of FLAIR as Image), with no
    code of this plugin, in the event-loop turn after the click."""
    from qtpy.QtCore import QTimer

    state = {"busy": True}
    source = viewer.layers["lesions" if kind == "labels" else "FLAIR"]
    geometry = {"scale": source.scale, "translate": source.translate, "units": source.units}

    def add() -> None:
        data = np.array(source.data, copy=True)
        if kind == "labels":
            viewer.add_labels(data, name="reference labels", **geometry)
        else:
            viewer.add_image(
                data.astype(np.float32),
                name="reference image",
                colormap="magma",
                blending="additive",
                opacity=0.5,
                **geometry,
            )
        state["busy"] = False

    def start() -> bool:
        QTimer.singleShot(0, add)
        return True

    return watch(stacks, app, start, lambda: state["busy"])


def napari_reference(
    stacks: bool, app: Any, viewer: Any, kind: str, repeats: int
) -> dict[str, float]:
    """:func:`napari_alone` ``repeats`` times in the viewer as it is (the
    reference layer removed after each): the run with the median worst gap, and
    ``samples_ms``, every run's. One add varies by a third from one to the
    next on a quiet machine (164-287 ms in one run), so a single one is a
    poor yardstick for a ratio."""
    runs = []
    for _ in range(repeats):
        settle(app)
        runs.append(napari_alone(stacks, app, viewer, kind))
        viewer.layers.remove(f"reference {kind}")
    runs.sort(key=lambda m: m["worst_ms"])
    return {**runs[len(runs) // 2], "samples_ms": [m["worst_ms"] for m in runs]}


def napari_here(stacks: bool, app: Any, viewer: Any, kinds: tuple[str, ...], repeats: int) -> float:
    """The same reference in the viewer as it is now (its layers, its docks),
    just before a widget runs: the worse of napari alone adding each of
    ``kinds`` (the median of ``repeats`` adds each), the reference layers
    removed again before the widget starts."""
    worst = max(napari_reference(stacks, app, viewer, k, repeats)["worst_ms"] for k in kinds)
    settle(app)
    return worst


def report(name: str, m: dict[str, float]) -> None:
    verdict = "PASS" if m["worst_ms"] <= BAR_MS else "FAIL"
    print(
        f"{name:<13} worst gap {m['worst_ms']:4.0f} ms ({verdict}), click {m['click_ms']:4.0f} ms, "
        f"{m['ticks']} ticks in {m['wall_s']:.1f} s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    parser.add_argument("--slice-size", type=int, default=128, help="slice size (default 128)")
    parser.add_argument("--base-channels", type=int, default=16, help="UNet width (default 16)")
    parser.add_argument(
        "--finetune-epochs", type=int, default=1, help="fine-tuning epochs (default 1)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=WIDGETS,
        default=list(WIDGETS),
        help="run only these widgets (predict and finetune need train or --checkpoint; "
        "compare needs predict)",
    )
    parser.add_argument("--checkpoint", default="", help="a checkpoint instead of training")
    parser.add_argument(
        "--stacks", action="store_true", help="print what the GUI thread did in each worst gap"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="napari-alone adds per reference, their median the yardstick (default 3)",
    )
    args = parser.parse_args()
    only = set(args.only)
    if "compare" in only:
        only.add("predict")
    if only & {"predict", "finetune"} and not args.checkpoint:
        only.add("train")

    import napari

    from napari_boundary_seg._widgets.compare import CompareWidget
    from napari_boundary_seg._widgets.distance import DistanceMapWidget, Mode
    from napari_boundary_seg._widgets.finetune import FinetuneWidget
    from napari_boundary_seg._widgets.inference import InferenceWidget
    from napari_boundary_seg._widgets.train import TrainWidget

    viewer = napari.Viewer()
    viewer.open_sample("napari-boundary-seg", "lesion_case")
    app = napari.qt.get_qapp()
    scratch = Path(tempfile.mkdtemp(prefix="event-loop-"))
    shape = viewer.layers["FLAIR"].data.shape
    print(
        f"sample case {shape}; training {args.epochs} epoch(s) at {args.slice_size}² "
        f"slices, UNet width {args.base_channels}; bar {BAR_MS} ms; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    checkpoint = args.checkpoint

    def measure(name: str, kinds: tuple[str, ...], start: Any, busy: Any) -> None:
        """napari alone in the viewer as it is now, then the widget."""
        here = napari_here(args.stacks, app, viewer, kinds, args.repeats)  # ends settled
        results[name] = {**watch(args.stacks, app, start, busy), "here_ms": here}
        report(name, results[name])

    if "napari" in only:
        # 0. the reference: napari adding one layer, no plugin code
        for kind in ("labels", "image"):
            name = f"napari {kind}"
            results[name] = napari_reference(args.stacks, app, viewer, kind, args.repeats)
            report(name, results[name])
            samples = ", ".join(f"{v:.0f}" for v in results[name]["samples_ms"])
            print(f"{'':<13} median of {args.repeats} adds: {samples} ms", flush=True)

    if "distance" in only:
        # 1. Distance map
        distance = DistanceMapWidget(viewer)
        viewer.window.add_dock_widget(distance, name="distance")
        distance.labels_combo.set_layer("lesions")
        distance.set_mode(Mode.VOLUME)
        measure("Distance map", BOTH, distance.compute, lambda: distance.busy)

    if "train" in only:
        # 2. Train (start click, the run, its end and the prediction after it)
        train = TrainWidget(viewer)
        viewer.window.add_dock_widget(train, name="train")
        train.configure(
            images=["FLAIR", "T1"],
            labels="lesions",
            preset="custom",
            slice_size=args.slice_size,
            base_channels=args.base_channels,
            epochs=args.epochs,
            output=str(scratch / "train"),
            device="cpu",
        )
        # the first live preview: from its event to its layer made and filled
        # (in steps), plus the paint after it
        preview_times: dict[str, float] = {}

        def first_preview(event: Any) -> None:
            if type(event).__name__ == "PreviewEvent" and "event" not in preview_times:
                preview_times["event"] = time.perf_counter() * 1e3

        made = train._preview_made

        def timed_made(layer: Any) -> None:
            made(layer)
            preview_times.setdefault("made", time.perf_counter() * 1e3)

        train._preview_made = timed_made
        train.runner.event.connect(first_preview)  # after the widget's own slot
        measure("Train", LABELS, train.start, lambda: train.busy)
        if "event" in preview_times:
            start = preview_times["event"] - 1000.0  # the event's own turn included
            end = preview_times.get("made", preview_times["event"]) + 100.0
            worst = worst_gap_within(results["Train"]["tick_ms"], start, end)
            results["First preview"] = {
                "click_ms": float("nan"),
                "worst_ms": worst,
                "ticks": 0,
                "wall_s": (end - preview_times["event"]) / 1e3,
                "here_ms": results["Train"]["here_ms"],
            }
            report("First preview", results["First preview"])
        done = train.last_done
        checkpoint = done.best_checkpoint or done.last_checkpoint
        train.shutdown()

    if "predict" in only:
        # 3. Predict
        predict = InferenceWidget(viewer)
        viewer.window.add_dock_widget(predict, name="predict")
        predict.images.select(["FLAIR", "T1"])
        predict.checkpoint.setText(checkpoint)
        predict.device.set_device("cpu")
        measure("Predict", BOTH, predict.start, lambda: predict.busy)

    if "compare" in only:
        # 4. Compare
        compare = CompareWidget(viewer)
        viewer.window.add_dock_widget(compare, name="compare")
        compare.pred_combo.set_layer(predict.prediction_layer.name)
        compare.gt_combo.set_layer("lesions")
        measure("Compare", LABELS, compare.compare, lambda: compare.busy)
        # the same comparison again: its TP/FP/FN layer exists and is updated in
        # place (layer.data = ...), no layer added: what an in-place update costs
        measure("Compare again", LABELS, compare.compare, lambda: compare.busy)

    if "finetune" in only:
        # 5. Finetune: predict into a corrections layer, correct two slices, fine-tune
        finetune = FinetuneWidget(viewer)
        viewer.window.add_dock_widget(finetune, name="finetune")
        finetune.images.select(["FLAIR", "T1"])
        finetune.checkpoint.setText(checkpoint)
        finetune.device.set_device("cpu")
        finetune.out_folder.setText(str(scratch / "finetune"))
        finetune.epochs.setValue(args.finetune_epochs)
        measure("Finetune pred", BOTH, finetune.predict, lambda: finetune.busy)
        layer = viewer.layers["FLAIR corrections"]
        lesions = np.asarray(viewer.layers["lesions"].data)
        z = int(np.argmax((lesions > 0).sum(axis=(0, 1))))
        for s in (z - 2, z):
            truth = (lesions[:, :, s] > 0).astype(layer.data.dtype)
            rows, cols = np.nonzero(truth != layer.data[:, :, s])
            if rows.size == 0:
                rows, cols = np.array([0]), np.array([0])
                truth[0, 0] = 1 - layer.data[0, 0, s]
            layer.data_setitem((rows, cols, np.full(rows.size, s)), truth[rows, cols])
        measure("Finetune", LABELS, finetune.start_finetune, lambda: finetune.busy)

    # each result's worst gap against napari alone adding one layer of the
    # same size in this run: the labels reference for what adds a Labels layer
    # (or nothing), the worse of both references for what adds both kinds
    refs = {
        k: results[f"napari {k}"]["worst_ms"]
        for k in ("labels", "image")
        if f"napari {k}" in results
    }
    both = max(refs.values()) if refs else float("nan")
    reference = {
        "Distance map": both,
        "Predict": both,
        "Finetune pred": both,
    }
    print()
    print(
        "| widget | worst gap (ms) | ratio to napari alone (at the start) "
        "| napari alone just before (ms) | ratio to it | click (ms) | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    ratios, ratios_here = [], []
    for name, m in results.items():
        if name.startswith("napari "):
            ratio = here = ratio_here = ""
        else:
            ref = reference.get(name, refs.get("labels", float("nan")))
            value = m["worst_ms"] / ref if ref and ref == ref else float("nan")
            ratios.append((name, value))
            ratio = f"{value:.2f}"
            value_here = m["worst_ms"] / m["here_ms"] if m["here_ms"] else float("nan")
            ratios_here.append((name, value_here))
            here, ratio_here = f"{m['here_ms']:.0f}", f"{value_here:.2f}"
        print(
            f"| {name} | {m['worst_ms']:.0f} | {ratio} | {here} | {ratio_here} "
            f"| {m['click_ms']:.0f} | {m['wall_s']:.1f} |"
        )
    for label, values in (("at the start", ratios), ("just before", ratios_here)):
        if values:
            name, worst_ratio = max(values, key=lambda r: r[1])
            verdict = "PASS" if worst_ratio <= 1.5 else "FAIL"
            print(
                f"worst ratio to napari alone {label}: {worst_ratio:.2f} ({name}), "
                f"goal 1.5: {verdict}"
            )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    widgets = [m["worst_ms"] for name, m in results.items() if not name.startswith("napari ")]
    if widgets:
        worst = max(widgets)
        verdict = "PASS" if worst <= BAR_MS else "FAIL"
        print(f"worst of all widgets: {worst:.0f} ms, bar {BAR_MS} ms: {verdict}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
