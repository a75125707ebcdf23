"""Training widget: layers or a dataset folder in, a trained UNet and its prediction out.

The widget is thin. It fills a :class:`core.train.TrainConfig` from its fields
(:meth:`TrainWidget.settings` then :func:`build_config`), checks the inputs,
and runs :func:`core.train.train` in a napari generator ``thread_worker``
(:class:`TrainRunner`). It only listens to the events the trainer yields: a
napari progress bar, live curves of the loss terms, alpha and the validation
DSC / HD (:class:`TrainingCurves`, redrawn at most every
:data:`REDRAW_INTERVAL_MS`). Building the cases (and so the distance maps of a
whole volume) happens inside the worker, never in the GUI thread.

Reusable pieces for the interactive fine-tuning loop: :class:`TrainRunner`
(start / pause / resume / stop / shutdown of one run), :class:`TrainingCurves`,
:func:`build_config` and :func:`cases_from_layers`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg._widgets._common import (
    DeviceCombo,
    ImageStack,
    LayerCombo,
    LayerList,
    PathEdit,
    ProgressRelay,
    check_device,
    controlled_worker_class,
    double_spin,
    images_from_layers,
    int_spin,
    labels_array,
    notify_error,
    require_layer,
    slicing_axis,
    start_progress_worker,
)
from napari_boundary_seg._widgets.inference import (
    add_prediction_layers,
    load_checked_checkpoint,
    predict_job,
)
from napari_boundary_seg.core.progress import Progress

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "REDRAW_INTERVAL_MS",
    "TrainRunner",
    "TrainWidget",
    "TrainingCurves",
    "build_config",
    "cases_from_layers",
]

#: The live curves redraw at most this often (ms); events in between only
#: append data. Keeps the Qt event loop free while a model trains.
REDRAW_INTERVAL_MS = 400

LOSS_CHOICES = [
    ("GDL + BL (α schedule)", "gdl+bl"),
    ("GDL", "gdl"),
    ("BL alone", "bl"),
    ("Cross-entropy", "ce"),
    ("Dice", "dice"),
]
SCHEDULE_CHOICES = [
    ("paper: α from start, −step per epoch, ≥ floor", "paper"),
    ("constant α", "constant"),
    ("reference code (BL weight grows)", "reference-code"),
]

BL_ALONE_WARNING = (
    "⚠ Boundary loss alone (α = 0 from the start) collapses to an empty "
    "foreground in binary problems (Kervadec et al. 2019). Use GDL + BL with an "
    "α schedule."
)

_DARK = "#262930"
_FG = "#dddddd"


# ---------------------------------------------------------------------------
# Settings -> core config, layers -> cases (no Qt)
# ---------------------------------------------------------------------------


def schedule_params(kind: str, start: float, step: float, floor: float) -> dict[str, float]:
    """The ``make_schedule`` parameters of the widget's three α fields.

    ``paper``: ``start, step, floor``; ``constant``: ``alpha = start``;
    ``reference-code``: ``boundary_start = start, step, region_floor = floor``.
    """
    if kind == "paper":
        return {"start": start, "step": step, "floor": floor}
    if kind == "constant":
        return {"alpha": start}
    if kind == "reference-code":
        return {"boundary_start": start, "step": step, "region_floor": floor}
    raise ValueError(f"unknown schedule kind {kind!r}")


def planned_weights(
    loss: str, kind: str, params: dict[str, float], epochs: int
) -> list[tuple[float, float]]:
    """``(w_region, w_boundary)`` per planned epoch for ``loss`` and the schedule.

    Only ``gdl+bl`` follows the schedule; a regional loss alone is ``(1, 0)``
    and the boundary loss alone ``(0, 1)``.
    """
    epochs = max(int(epochs), 1)
    if loss == "gdl+bl":
        from napari_boundary_seg.core.schedule import make_schedule

        return make_schedule(kind, **params).curve(epochs)
    if loss == "bl":
        return [(0.0, 1.0)] * epochs
    return [(1.0, 0.0)] * epochs


def boundary_only_from_start(loss: str, kind: str, params: dict[str, float]) -> bool:
    """True when the boundary loss is the whole objective at epoch 0."""
    if loss == "bl":
        return True
    if loss != "gdl+bl":
        return False
    from napari_boundary_seg.core.schedule import make_schedule

    try:
        return make_schedule(kind, **params).starts_boundary_only
    except (TypeError, ValueError):
        return False


def build_config(settings: dict[str, Any]) -> Any:
    """A :class:`core.train.TrainConfig` from a settings dict.

    ``settings`` holds ``TrainConfig`` keyword arguments plus the widget's
    schedule fields ``schedule_kind`` and ``schedule_params`` (turned into the
    config's ``schedule`` dict); other keys are ignored. Invalid values raise
    ValueError / TypeError from ``TrainConfig`` itself.
    """
    from napari_boundary_seg.core.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in settings.items() if k in names}
    if "schedule_kind" in settings:
        kwargs["schedule"] = {
            "kind": settings["schedule_kind"],
            **settings.get("schedule_params", {}),
        }
    return TrainConfig(**kwargs)


def check_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there.

    Raises
    ------
    ValueError
        Empty path, a file in the way, or no permission to write.
    """
    text = str(folder).strip()
    if not text:
        raise ValueError("No output folder chosen: give a folder for the checkpoints.")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"Output folder '{path}' is a file, not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"Output folder '{path}' is not writable: {exc.strerror or exc}.") from exc
    return path


def new_run_folder(output: Path) -> Path:
    """A fresh ``run-YYYYmmdd-HHMMSS[-k]`` folder under ``output``: a run never
    overwrites an earlier one's checkpoints."""
    stamp = time.strftime("run-%Y%m%d-%H%M%S")
    candidate = output / stamp
    k = 1
    while candidate.exists():
        k += 1
        candidate = output / f"{stamp}-{k}"
    return candidate


def check_labels(labels: np.ndarray, name: str, image_shape: Sequence[int]) -> int:
    """Check a label volume against the images; return the number of classes.

    Raises
    ------
    ValueError
        Shapes that differ, or no foreground voxel.
    """
    if tuple(labels.shape) != tuple(image_shape):
        raise ValueError(
            f"Shapes do not match: labels '{name}' is {tuple(labels.shape)}, "
            f"the image layer(s) are {tuple(image_shape)}."
        )
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        raise ValueError(
            f"Labels layer '{name}' has no foreground: paint or load some labels first."
        )
    return max(top + 1, 2)


def validation_block(labels: np.ndarray, axis: int, val_fraction: float) -> slice | None:
    """The contiguous block of slices along ``axis`` held out for validation.

    A single volume from the viewer has no other case to validate on, so a
    block of ``max(1, round(val_fraction * n))`` neighbouring slices becomes
    the validation case. Among the blocks that hold foreground and leave some
    for training, the one with the most foreground voxels is chosen (ties: the
    first). None when there is nothing to split (2D labels, ``val_fraction``
    0, fewer than 4 slices, or no such block).

    Parameters
    ----------
    labels
        ``(*spatial)`` integer labels, 3 axes to be split.
    axis
        The slicing axis (numpy order).
    val_fraction
        In ``[0, 1)``.
    """
    if labels.ndim != 3 or val_fraction <= 0:
        return None
    n = labels.shape[axis]
    if n < 4:
        return None
    k = min(max(1, round(val_fraction * n)), n - 1)
    other = tuple(a for a in range(3) if a != axis)
    per_slice = (labels > 0).sum(axis=other)
    total = int(per_slice.sum())
    windows = np.convolve(per_slice, np.ones(k, dtype=np.int64), mode="valid")
    best = None
    for start in np.argsort(-windows, kind="stable"):
        if 0 < int(windows[start]) < total:
            best = int(start)
            break
    if best is None:
        return None
    return slice(best, best + k)


def cases_from_layers(
    stack: ImageStack,
    labels: np.ndarray,
    axis: int,
    val_fraction: float,
    case_id: str = "viewer",
) -> tuple[Callable[[], tuple[list[Any], list[Any]]], slice | None]:
    """A function building the ``core.data.Case`` objects of the viewer's layers.

    The volume is split along ``axis`` into training cases and one validation
    case (:func:`validation_block`). The returned function is called inside
    the worker; it returns ``(train_cases, val_cases)``.
    """
    block = validation_block(labels, axis, val_fraction)

    def make() -> tuple[list[Any], list[Any]]:
        from napari_boundary_seg.core.data import case_from_arrays

        def case(index: slice | None, name: str) -> Any:
            sub = (slice(None),) * axis + (index,) if index is not None else ()
            return case_from_arrays(
                list(stack.images[(slice(None), *sub)]),
                labels[sub],
                stack.spacing,
                case_id=name,
                modalities=tuple(stack.names),
            )

        if block is None:
            return [case(None, case_id)], []
        n = labels.shape[axis]
        train = [
            case(part, f"{case_id}-{part.start}-{part.stop}")
            for part in (slice(0, block.start), slice(block.stop, n))
            if part.stop > part.start
        ]
        return train, [case(block, f"{case_id}-val-{block.start}-{block.stop}")]

    return make, block


# ---------------------------------------------------------------------------
# The worker: one training run
# ---------------------------------------------------------------------------


def preload_training_modules() -> None:
    """Import, in the calling (GUI) thread, what a training run imports lazily.

    The first ``torch.optim.Adam(...)`` imports ``torch._dynamo`` (with sympy:
    about a second of module initialisation), and the trainer imports the data,
    metrics and prediction modules (nibabel, scipy). Done in the worker, those
    imports stalled napari's event loop for 0.5-0.7 s (measured); done once
    when the widget opens, training never waits on them.
    """
    from napari_boundary_seg.core import data, metrics, predict  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 - an optional speed-up, never fatal
        logger.debug("torch._dynamo could not be preloaded", exc_info=True)


class TrainRunner(QObject):
    """One training run in a napari generator ``thread_worker``.

    Signals
    -------
    event(object)
        Every event the trainer yields (``StepEvent``, ``EpochEvent``, info...).
    done(object)
        The final ``DoneEvent`` (also when stopped).
    failed(object)
        The exception raised inside the worker.
    finished()
        The worker ended (after ``done`` or ``failed``).
    """

    event = Signal(object)
    done = Signal(object)
    failed = Signal(object)
    finished = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.control: Any = None
        self._ended = threading.Event()
        self._ended.set()
        self.paused = False

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        config: Any,
        make_cases: Callable[[], tuple[list[Any], list[Any] | None]] | None = None,
    ) -> Any:
        """Start training ``config`` in a worker thread.

        ``make_cases`` (called in the worker) returns ``(cases, val_cases)``
        (``val_cases`` None: the trainer splits ``cases``); None trains on
        ``config.data``.
        """
        from napari.qt.threading import create_worker

        from napari_boundary_seg.core.train import TrainControl

        if self.running:
            raise RuntimeError("a training run is already going on")
        self.control = TrainControl()
        self._ended = threading.Event()
        self.paused = False
        worker = create_worker(
            _training_job,
            config,
            make_cases,
            self.control,
            self._ended,
            _start_thread=False,
            _ignore_errors=True,
            _worker_class=controlled_worker_class(),
        )
        worker.control = self.control
        worker.yielded.connect(self.event.emit)
        worker.returned.connect(self.done.emit)
        worker.errored.connect(self.failed.emit)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    def _on_finished(self) -> None:
        self.worker = None
        self.paused = False
        self.finished.emit()

    def pause(self) -> None:
        if self.control is not None and self.running:
            self.control.pause()
            self.paused = True

    def resume(self) -> None:
        if self.control is not None:
            self.control.resume()
        self.paused = False

    def stop(self) -> None:
        """Ask the trainer to stop at its next step; it saves its last checkpoint
        and returns a ``DoneEvent`` with ``stopped=True``."""
        if self.control is not None:
            self.control.stop()  # also wakes a paused run

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Stop and wait (blocking, at most ``timeout_s``) until the trainer has
        ended; then quit the worker. Used when the widget or napari closes.
        Returns True when the trainer ended in time."""
        if not self.running:
            return True
        self.stop()
        ended = self._ended.wait(timeout_s)
        worker = self.worker
        if worker is not None:
            _disconnect(worker.yielded, worker.returned, worker.errored)
            worker.force_quit()
        if not ended:
            logger.warning("training did not stop within %.1f s; abandoning it", timeout_s)
        return ended


def _disconnect(*signals: Any) -> None:
    """Disconnect every slot of ``signals`` (a worker being abandoned)."""
    for signal in signals:
        try:
            signal.disconnect()
        except (TypeError, RuntimeError):
            pass


def _training_job(
    config: Any,
    make_cases: Callable[[], tuple[list[Any], list[Any] | None]] | None,
    control: Any,
    ended: threading.Event,
) -> Generator[Any, Any, Any]:
    """Worker body: build the cases (here, not in the GUI thread), then train."""
    from napari_boundary_seg.core.train import train

    try:
        cases, val_cases = None, None
        if make_cases is not None:
            yield Progress(0, 0, "preparing the cases")
            cases, val_cases = make_cases()
        run = train(config, cases, control, val_cases=val_cases)
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                return stop.value
            if type(event).__name__ == "DoneEvent":
                ended.set()  # the trainer has saved its checkpoints
            yield event
    finally:
        ended.set()


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _style_axes(ax: Any, title: str) -> None:
    ax.set_facecolor(_DARK)
    for spine in ax.spines.values():
        spine.set_color("#888888")
    ax.tick_params(colors=_FG, labelsize=6, length=2, pad=1)
    ax.set_title(title, fontsize=7, color=_FG, pad=2)


class _Canvas(QWidget):
    """A fixed-height matplotlib canvas with napari's dark background."""

    def __init__(self, height_px: int, n_axes: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.4, height_px / 100), dpi=100)
        self.figure.patch.set_facecolor(_DARK)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(height_px)
        self.canvas.setMinimumWidth(120)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def draw_now(self) -> None:
        self.canvas.draw_idle()


class AlphaPlot(_Canvas):
    """α (regional weight) and the boundary weight over the planned epochs."""

    def __init__(self) -> None:
        super().__init__(105)
        from matplotlib.ticker import MaxNLocator

        self.axes = self.figure.add_subplot(111)
        self.axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        self.figure.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.87)
        _style_axes(self.axes, "planned weights per epoch")
        (self.region_line,) = self.axes.plot([], [], color="#4fc3f7", lw=1.2, label="α (GDL)")
        (self.boundary_line,) = self.axes.plot([], [], color="#ff8a65", lw=1.2, label="1−α (BL)")
        self.axes.legend(
            fontsize=6, loc="center right", facecolor=_DARK, labelcolor=_FG, frameon=False
        )

    def set_weights(self, weights: Sequence[tuple[float, float]]) -> None:
        epochs = np.arange(len(weights))
        w = np.asarray(weights, dtype=float).reshape(-1, 2)
        self.region_line.set_data(epochs, w[:, 0])
        self.boundary_line.set_data(epochs, w[:, 1])
        top = max(1.0, float(w.max()) if w.size else 1.0)
        self.axes.set_xlim(0, max(len(weights) - 1, 1))
        self.axes.set_ylim(-0.03 * top, 1.05 * top)
        self.draw_now()


class LineChart(QWidget):
    """A small line chart painted with QPainter (a few hundred µs per paint).

    Used for the live curves instead of matplotlib: a matplotlib redraw costs
    about 90 ms of Python here, and several times that while the training
    thread competes for the GIL, which would stall napari's event loop.

    Parameters
    ----------
    title
        Shown in the top-left corner.
    y_range
        Fixed ``(low, high)``; None: follow the data.
    """

    MAX_POINTS = 300

    def __init__(self, title: str, y_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.title = title
        self.y_range = y_range
        #: values labelled on the y axis; None: the limits
        self.y_ticks: tuple[float, float] | None = None
        self.x_range: tuple[float, float] = (0.0, 1.0)
        self.series: list[tuple[np.ndarray, np.ndarray, str]] = []
        self.setMinimumSize(110, 70)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFixedHeight(82)
        self.paint_count = 0

    def set_series(
        self, series: Sequence[tuple[Sequence[float], Sequence[float], str]], x_max: float
    ) -> None:
        """Lines ``(x, y, colour)``; the x axis runs from 0 to ``x_max``.

        Lines longer than :attr:`MAX_POINTS` are shown as means of equal bins.
        """
        self.series = [
            (_bin_means(x, self.MAX_POINTS), _bin_means(y, self.MAX_POINTS), colour)
            for x, y, colour in series
        ]
        self.x_range = (0.0, max(float(x_max), 1e-9))
        self.update()

    def _y_limits(self) -> tuple[float, float]:
        if self.y_range is not None:
            return self.y_range
        values = [y[np.isfinite(y)] for _, y, _ in self.series]
        values = [v for v in values if v.size]
        if not values:
            return (0.0, 1.0)
        low = min(float(v.min()) for v in values)
        high = max(float(v.max()) for v in values)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        pad = 0.05 * (high - low)
        return (low - pad, high + pad)

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        from qtpy.QtCore import QPointF, QRectF
        from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen

        self.paint_count += 1
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.fillRect(self.rect(), QColor(_DARK))
        font = QFont(self.font())
        font.setPointSizeF(7.0)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        low, high = self._y_limits()
        tick_high, tick_low = self.y_ticks or (high, low)
        labels = [_tick(tick_high), _tick(tick_low)]
        left = max(metrics.horizontalAdvance(t) for t in labels) + 6
        top, bottom, right = metrics.height() + 2, metrics.height() + 2, 6
        plot = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        painter.setPen(QColor(_FG))
        painter.drawText(QPointF(left, metrics.ascent()), self.title)
        for value, label in zip((tick_high, tick_low), labels, strict=True):
            y = plot.bottom() - (value - low) / (high - low) * plot.height()
            painter.drawText(QPointF(2, y + metrics.ascent() / 2), label)
        x0, x1 = self.x_range
        baseline = self.height() - 2
        painter.drawText(QPointF(plot.left(), baseline), _tick(x0))
        x_label = _tick(x1)
        painter.drawText(
            QPointF(plot.right() - metrics.horizontalAdvance(x_label), baseline), x_label
        )
        painter.setPen(QPen(QColor("#777777"), 1))
        painter.drawRect(plot)
        if low < 0 < high:  # the zero line (the boundary loss is negative)
            y_zero = plot.bottom() - (0 - low) / (high - low) * plot.height()
            painter.setPen(QPen(QColor("#555555"), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(plot.left(), y_zero), QPointF(plot.right(), y_zero))
        sx = plot.width() / (x1 - x0)
        sy = plot.height() / (high - low)
        painter.setClipRect(plot)
        for xs, ys, colour in self.series:
            markers = len(xs) < 40
            path = QPainterPath()
            pen_down = False
            for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
                if not (math.isfinite(x) and math.isfinite(y)):
                    pen_down = False
                    continue
                point = QPointF(plot.left() + (x - x0) * sx, plot.bottom() - (y - low) * sy)
                if pen_down:
                    path.lineTo(point)
                else:
                    path.moveTo(point)
                    pen_down = True
                if markers:
                    path.addEllipse(point, 1.2, 1.2)
                    path.moveTo(point)
            painter.setPen(QPen(QColor(colour), 1.3))
            painter.drawPath(path)
        painter.end()


def _bin_means(values: Sequence[float], max_points: int) -> np.ndarray:
    """``values`` as floats; longer than ``max_points``: means of equal bins."""
    array = np.asarray(values, dtype=float)
    if array.size <= max_points:
        return array
    factor = -(-array.size // max_points)
    usable = array.size // factor * factor
    binned = array[:usable].reshape(-1, factor).mean(axis=1)
    if usable < array.size:
        binned = np.append(binned, array[usable:].mean())
    return binned


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


class TrainingCurves(QWidget):
    """Live curves of one run: the loss and its regional and boundary terms per
    step (the boundary term is in mm, hence its own chart), α, validation DSC
    and HD (mm) per epoch.

    ``add_step`` / ``add_epoch`` only store data; a timer repaints at most
    every :data:`REDRAW_INTERVAL_MS` when something changed.
    """

    COLOURS = {"total": "#eeeeee", "region": "#4fc3f7", "boundary": "#ff8a65"}

    @property
    def charts(self) -> tuple[LineChart, ...]:
        return (
            self.loss_chart,
            self.alpha_chart,
            self.region_chart,
            self.boundary_chart,
            self.dsc_chart,
            self.hd_chart,
        )

    def __init__(self) -> None:
        super().__init__()
        from qtpy.QtWidgets import QGridLayout

        self.loss_chart = LineChart("training loss (total)")
        self.alpha_chart = LineChart("α (regional weight)", y_range=(-0.03, 1.03))
        self.region_chart = LineChart("regional term")
        self.boundary_chart = LineChart("boundary term (mm)")
        self.dsc_chart = LineChart("validation DSC", y_range=(-0.03, 1.03))
        self.alpha_chart.y_ticks = self.dsc_chart.y_ticks = (1.0, 0.0)
        self.hd_chart = LineChart("validation HD (mm)")
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(3)
        for k, chart in enumerate(self.charts):
            grid.addWidget(chart, k // 2, k % 2)
        self.planned_epochs = 1
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self.reset()
        self._timer.start()

    def reset(self, planned_epochs: int | None = None) -> None:
        """Forget the data (a new run of ``planned_epochs`` epochs)."""
        if planned_epochs is not None:
            self.planned_epochs = max(int(planned_epochs), 1)
        self.steps: list[float] = []
        self.loss: dict[str, list[float]] = {"total": [], "region": [], "boundary": []}
        self.epochs: list[int] = []
        self.alpha: list[float] = []
        self.dsc: list[float] = []
        self.hd: list[float] = []
        self._dirty = True
        self._redraw_if_dirty()

    def add_step(self, position: float, total: float, region: float, boundary: float) -> None:
        """One step; ``position`` in epochs (e.g. 1.5: half way through epoch 2)."""
        self.steps.append(position)
        for key, value in (("total", total), ("region", region), ("boundary", boundary)):
            self.loss[key].append(value)
        self._dirty = True

    def add_epoch(self, epoch: int, alpha: float, dsc: float, hd: float) -> None:
        self.epochs.append(epoch)
        self.alpha.append(alpha)
        self.dsc.append(dsc)
        self.hd.append(hd)
        self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        n = self.planned_epochs
        for chart, key in (
            (self.loss_chart, "total"),
            (self.region_chart, "region"),
            (self.boundary_chart, "boundary"),
        ):
            chart.set_series([(self.steps, self.loss[key], self.COLOURS[key])], n)
        x_epochs = [e + 1 for e in self.epochs]
        self.alpha_chart.set_series([(x_epochs, self.alpha, "#4fc3f7")], n)
        self.dsc_chart.set_series([(x_epochs, self.dsc, "#81c784")], n)
        self.hd_chart.set_series([(x_epochs, self.hd, "#ffb74d")], n)

    def start_timer(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def stop_timer(self) -> None:
        try:
            self._timer.stop()
        except RuntimeError:  # already deleted with the widget
            pass


# ---------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------


def _form() -> QFormLayout:
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setContentsMargins(4, 4, 4, 4)
    form.setVerticalSpacing(3)
    return form


class TrainWidget(QWidget):
    """Dock widget: train (or fine-tune) a UNet with the boundary loss.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers give the data and receive the prediction.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.runner = TrainRunner(self)
        self.events: list[Any] = []
        self.last_done: Any = None
        self.device_used = ""
        self._pbar: Any = None
        self._predict_worker: Any = None
        self.prediction_layer: Any = None
        self._steps_total = 0
        self._start_epoch = 0
        self._stack: ImageStack | None = None
        self._closing = False
        self._val_block: slice | None = None
        #: extra TrainConfig fields for the next runs (tests, fine-tuning)
        self.overrides: dict[str, Any] = {}

        from napari_boundary_seg.core.train import TrainConfig

        preload_training_modules()
        self._defaults = TrainConfig()

        # -- data ---------------------------------------------------------
        self.from_layers = QRadioButton("Layers")
        self.from_folder = QRadioButton("Dataset folder")
        self.from_layers.setChecked(True)
        source_group = QButtonGroup(self)
        source_group.addButton(self.from_layers)
        source_group.addButton(self.from_folder)
        source_row = QHBoxLayout()
        source_row.addWidget(self.from_layers)
        source_row.addWidget(self.from_folder)
        self.images = LayerList(napari_viewer, Image)
        self.labels = LayerCombo(napari_viewer, (Labels, Image))
        self.folder = PathEdit("folder", placeholder="imagesTr/ + labelsTr/, WMH or ISLES")
        self.val_fraction = double_spin(self._default("val_fraction", 0.2), 0.0, 0.9, 0.05, 2)
        self.val_fraction.setToolTip(
            "Folder: fraction of cases (patient-wise) held out for validation.\n"
            "Layers: a block of neighbouring slices of that size is held out."
        )
        self.num_classes = int_spin(2, 2, 255)
        self.num_classes.setToolTip("Classes, background included (from the labels layer)")
        self.axis = QComboBox()
        self.axis.addItem("auto", None)
        for k in range(3):
            self.axis.addItem(str(k), k)
        self.axis.setToolTip(
            "Axis the 2D training slices are taken along. auto: the axis the viewer "
            "slices through (layers), axis 2 (folders: axial in RAS order)."
        )
        split_row = QHBoxLayout()
        split_row.addWidget(self.val_fraction)
        split_row.addWidget(QLabel("classes"))
        split_row.addWidget(self.num_classes)
        split_row.addWidget(QLabel("axis"))
        split_row.addWidget(self.axis)
        data_form = _form()
        data_form.addRow("Source", source_row)
        data_form.addRow("Image layer(s)", self.images)
        data_form.addRow("Labels layer", self.labels)
        data_form.addRow("Folder", self.folder)
        data_form.addRow("Validation", split_row)

        # -- loss and schedule -------------------------------------------
        self.loss = QComboBox()
        for text, value in LOSS_CHOICES:
            self.loss.addItem(text, value)
        self.schedule = QComboBox()
        for text, value in SCHEDULE_CHOICES:
            self.schedule.addItem(text, value)
        self.alpha_start = double_spin(1.0, 0.0, 1.0, 0.05, 3)
        self.alpha_step = double_spin(0.01, 0.0, 1.0, 0.005, 3)
        self.alpha_floor = double_spin(0.01, 0.0, 1.0, 0.01, 3)
        self.alpha_start_label = QLabel("α start")
        self.alpha_step_label = QLabel("step / epoch")
        self.alpha_floor_label = QLabel("α floor")
        alpha_row = QHBoxLayout()
        alpha_row.setSpacing(3)
        for label, box in (
            (self.alpha_start_label, self.alpha_start),
            (self.alpha_step_label, self.alpha_step),
            (self.alpha_floor_label, self.alpha_floor),
        ):
            column = QVBoxLayout()
            column.setSpacing(0)
            label.setStyleSheet("font-size: 10px;")
            column.addWidget(label)
            column.addWidget(box)
            alpha_row.addLayout(column)
        self.alpha_plot = AlphaPlot()
        self.warning = QLabel(BL_ALONE_WARNING)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb74d; font-weight: bold;")
        self.warning.setVisible(False)
        loss_form = _form()
        loss_form.addRow("Loss", self.loss)
        loss_form.addRow("α schedule", self.schedule)
        loss_form.addRow(alpha_row)
        loss_form.addRow(self.alpha_plot)
        loss_form.addRow(self.warning)

        # -- optimisation and output --------------------------------------
        self.epochs = int_spin(self._default("epochs", 100), 1, 100000)
        self.lr = double_spin(self._default("lr", 1e-3), 1e-6, 1.0, 1e-4, 6)
        self.batch_size = int_spin(self._default("batch_size", 8), 1, 1024)
        self.slice_size = int_spin(self._default("slice_size", 256), 16, 2048, 16)
        self.depth = int_spin(self._default("depth", 4), 1, 6)
        self.base_channels = int_spin(self._default("base_channels", 64), 2, 256, 8)
        self.device = DeviceCombo()
        self.seed = int_spin(self._default("seed", 0), 0, 2**31 - 1)
        self.output = PathEdit("folder", placeholder="folder for checkpoints")
        self.output.setText(str(Path.home() / "boundary-seg-runs"))
        self.finetune = PathEdit(
            "file", "Checkpoints (*.pt *.pth);;All files (*)", "optional: checkpoint"
        )
        self.predict_after = QCheckBox("add the best model's prediction as a layer")
        self.predict_after.setChecked(True)
        model_row = QHBoxLayout()
        model_row.addWidget(QLabel("depth"))
        model_row.addWidget(self.depth)
        model_row.addWidget(QLabel("width"))
        model_row.addWidget(self.base_channels)
        batch_row = QHBoxLayout()
        batch_row.addWidget(self.batch_size)
        batch_row.addWidget(QLabel("slice"))
        batch_row.addWidget(self.slice_size)
        run_form = _form()
        run_form.addRow("Epochs", self.epochs)
        run_form.addRow("Learning rate", self.lr)
        run_form.addRow("Batch", batch_row)
        run_form.addRow("UNet", model_row)
        run_form.addRow("Device", self.device)
        run_form.addRow("Seed", self.seed)
        run_form.addRow("Output", self.output)
        run_form.addRow("Fine-tune from", self.finetune)
        run_form.addRow(self.predict_after)

        self.tabs = QTabWidget()
        for title, form in (("Data", data_form), ("Loss && α", loss_form), ("Run", run_form)):
            page = QWidget()
            page_layout = QVBoxLayout(page)
            page_layout.setContentsMargins(0, 0, 0, 0)
            page_layout.addLayout(form)
            page_layout.addStretch(1)
            self.tabs.addTab(page, title)
        self.tabs.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        # -- controls, status and curves ----------------------------------
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.curves = TrainingCurves()
        curves_box = QGroupBox("Live curves")
        curves_layout = QVBoxLayout(curves_box)
        curves_layout.setContentsMargins(2, 2, 2, 2)
        curves_layout.addWidget(self.curves)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.tabs)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(curves_box)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        # -- wiring -------------------------------------------------------
        for box in (self.alpha_start, self.alpha_step, self.alpha_floor):
            box.valueChanged.connect(self._update_schedule_view)
        self.epochs.valueChanged.connect(self._update_schedule_view)
        self.loss.currentIndexChanged.connect(self._update_schedule_view)
        self.schedule.currentIndexChanged.connect(self._on_schedule_kind)
        self.labels.currentIndexChanged.connect(self._on_labels)
        self.num_classes.valueChanged.connect(self._update_schedule_view)
        self.from_layers.toggled.connect(self._on_source)
        self.runner.event.connect(self._on_event)
        self.runner.done.connect(self._on_done)
        self.runner.failed.connect(self._on_failed)
        self.runner.finished.connect(self._on_finished)
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        runner = self.runner  # the lambda keeps the Python side alive after deletion
        self.destroyed.connect(lambda *_: runner.shutdown())
        self._on_source()
        self._on_schedule_kind()
        self._set_running(False)

    @property
    def busy(self) -> bool:
        """True while a run, or the prediction after it, is going on."""
        return self.runner.running or self._predict_worker is not None

    def _default(self, name: str, fallback: Any) -> Any:
        return getattr(self._defaults, name, fallback)

    # -- field logic ---------------------------------------------------------
    def _on_source(self, *_: Any) -> None:
        layers = self.from_layers.isChecked()
        self.labels.setEnabled(layers)
        self.folder.setEnabled(not layers)
        self.num_classes.setEnabled(not layers)
        self._on_labels()

    def _on_labels(self, *_: Any) -> None:
        """Follow the labels layer: its class count and whether it is binary."""
        if self.from_layers.isChecked():
            layer = self.labels.layer()
            if layer is not None:
                try:
                    top = int(np.max(np.asarray(layer.data))) if layer.data.size else 0
                    self.num_classes.setValue(max(top + 1, 2))
                except (TypeError, ValueError):
                    pass
        self._update_schedule_view()

    def _on_schedule_kind(self, *_: Any) -> None:
        kind = self.schedule.currentData()
        names = {
            "paper": ("α start", "step / epoch", "α floor"),
            "constant": ("α", "", ""),
            "reference-code": ("BL start", "step / epoch", "GDL floor"),
        }[kind]
        defaults = {
            "paper": (1.0, 0.01, 0.01),
            "constant": (0.5, 0.0, 0.0),
            "reference-code": (0.01, 0.01, 0.1),
        }[kind]
        widgets = (
            (self.alpha_start_label, self.alpha_start),
            (self.alpha_step_label, self.alpha_step),
            (self.alpha_floor_label, self.alpha_floor),
        )
        for (label, box), text, value in zip(widgets, names, defaults, strict=True):
            label.setText(text)
            label.setVisible(bool(text))
            box.setVisible(bool(text))
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self._update_schedule_view()

    def schedule_params(self) -> dict[str, float]:
        return schedule_params(
            self.schedule.currentData(),
            self.alpha_start.value(),
            self.alpha_step.value(),
            self.alpha_floor.value(),
        )

    def _is_binary(self) -> bool:
        return self.num_classes.value() <= 2

    def _update_schedule_view(self, *_: Any) -> None:
        loss = self.loss.currentData()
        uses_schedule = loss == "gdl+bl"
        for box in (self.schedule, self.alpha_start, self.alpha_step, self.alpha_floor):
            box.setEnabled(uses_schedule)
        kind = self.schedule.currentData()
        params = self.schedule_params()
        try:
            weights = planned_weights(loss, kind, params, self.epochs.value())
        except (TypeError, ValueError) as exc:
            self.status.setText(f"α schedule: {exc}")
            weights = []
        self.alpha_plot.set_weights(weights)
        collapse = boundary_only_from_start(loss, kind, params) and self._is_binary()
        self.warning.setVisible(collapse)

    # -- settings -> config ------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The widget's fields as ``TrainConfig`` keyword arguments (plus the
        schedule fields, see :func:`build_config`); data fields are added by
        :meth:`validate`."""
        return {
            "loss": self.loss.currentData(),
            "schedule_kind": self.schedule.currentData(),
            "schedule_params": self.schedule_params(),
            "epochs": self.epochs.value(),
            "lr": self.lr.value(),
            "batch_size": self.batch_size.value(),
            "slice_size": self.slice_size.value(),
            "depth": self.depth.value(),
            "base_channels": self.base_channels.value(),
            "device": self.device.device(),
            "seed": self.seed.value(),
            "val_fraction": self.val_fraction.value(),
            "num_classes": self.num_classes.value(),
            "out_dir": self.output.text(),
            "init_checkpoint": self.finetune.text() or None,
        }

    def validate(
        self, **overrides: Any
    ) -> tuple[Any, Callable[[], tuple[list[Any], list[Any] | None]] | None]:
        """Check every input; return the config and the case builder.

        ``overrides`` replace settings (e.g. ``max_steps_per_epoch`` in tests or
        the fine-tuning loop). Raises ValueError / TypeError naming the problem.
        """
        settings = {**self.settings(), **overrides}
        check_device(settings["device"])
        output = check_output_folder(settings["out_dir"])
        make_cases = None
        n_channels = None
        self._stack = None
        axis = self.axis.currentData()
        if self.from_layers.isChecked():
            labels_layer = require_layer(self.labels.layer(), "labels")
            stack = images_from_layers(self.images.selected_layers())
            labels = labels_array(labels_layer)
            settings["num_classes"] = check_labels(
                labels, labels_layer.name, stack.images.shape[1:]
            )
            if axis is None:
                axis = slicing_axis(self.viewer, labels_layer) if labels.ndim == 3 else 0
            if labels.ndim == 3 and axis >= 3:
                raise ValueError(f"Slice axis {axis} does not exist in a 3D volume.")
            make_cases, block = cases_from_layers(stack, labels, axis, settings["val_fraction"])
            self._val_block = block
            n_channels = stack.images.shape[0]
            self._stack = stack
        else:
            text = self.folder.text()
            folder = Path(text).expanduser()
            if not text or not folder.is_dir():
                raise ValueError(f"Dataset folder not found: '{text}'.")
            from napari_boundary_seg.core.data import find_cases

            if not find_cases(folder):
                raise ValueError(f"No cases found in '{folder}' (generic, WMH or ISLES layout).")
            settings["data"] = str(folder)
            if self.images.selected_layers():
                try:
                    self._stack = images_from_layers(self.images.selected_layers())
                except (TypeError, ValueError):
                    self._stack = None  # no prediction afterwards, training still runs
        if axis is not None:
            settings["axis"] = axis
        if settings["init_checkpoint"]:
            load_checked_checkpoint(settings["init_checkpoint"], n_channels)
        settings["out_dir"] = str(new_run_folder(output))
        return build_config(settings), make_cases

    # -- run control -------------------------------------------------------------
    def start(self) -> bool:
        """Validate the inputs and start training; False (and a notification)
        when an input is bad."""
        if self.runner.running:
            notify_error("A training run is already going on: stop it first.")
            return False
        try:
            config, make_cases = self.validate(**self.overrides)
        except (ValueError, TypeError, OSError) as exc:
            notify_error(exc)
            return False
        self.events = []
        self.last_done = None
        self.device_used = ""
        self.prediction_layer = None
        self._steps_total = 0
        self._start_epoch = 0
        self._closing = False
        self.curves.reset(config.epochs)
        self.curves.start_timer()
        self._pbar = ProgressRelay("Training", parent=self)
        self._pbar.set(0, 0, "preparing data")
        self._config = config
        self.runner.start(config, make_cases)
        self._set_running(True)
        self.status.setText(f"Preparing data… checkpoints go to {config.out_dir}")
        return True

    def toggle_pause(self) -> None:
        if not self.runner.running:
            return
        if self.runner.paused:
            self.runner.resume()
            self.pause_button.setText("Pause")
            self.status.setText("Resumed.")
        else:
            self.runner.pause()
            self.pause_button.setText("Resume")
            self.status.setText("Paused (takes effect after the current step).")

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.pause_button.setText("Pause")
            self.status.setText("Stopping after the current step…")

    def shutdown(self) -> None:
        """Stop a run cleanly (the trainer keeps its last checkpoint); used when
        the widget or napari closes."""
        self._closing = True
        self.curves.stop_timer()
        self.runner.shutdown()
        worker, self._predict_worker = self._predict_worker, None
        if worker is not None:
            _disconnect(worker.returned, worker.errored)
            worker.quit()
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        self.tabs.setEnabled(not running)
        if not running:
            self.pause_button.setText("Pause")

    # -- events from the worker ----------------------------------------------------
    def _on_event(self, event: Any) -> None:
        self.events.append(event)
        name = type(event).__name__
        if name == "StepEvent":
            self._on_step(event)
        elif name == "EpochEvent":
            self._on_epoch(event)
        elif name == "InfoEvent":
            self._on_info(event)
        elif name == "PauseEvent":
            self.status.setText(f"Paused before step {event.step + 1} of epoch {event.epoch + 1}.")
        elif isinstance(event, Progress) and self._steps_total == 0:
            self._set_progress(event.done, event.total, event.message)

    def _set_progress(self, done: int, total: int, message: str = "") -> None:
        if self._pbar is not None:
            self._pbar.set(done, total, message)

    def _on_info(self, event: Any) -> None:
        if event.device:
            self.device_used = event.device
        if event.steps_per_epoch:
            self._start_epoch = event.start_epoch
            self._steps_total = (self._config.epochs - event.start_epoch) * event.steps_per_epoch
            self._set_progress(0, self._steps_total, "training")
            val = (
                f", validation on {event.num_val_cases} case(s)"
                if event.num_val_cases
                else ", no validation case"
            )
            self.status.setText(
                f"Training on {self.device_used}: {event.num_train_slices} slices, "
                f"{event.steps_per_epoch} steps per epoch{val}."
            )
        else:
            self.status.setText(f"{event.message} ({self.device_used})")

    def _on_step(self, event: Any) -> None:
        spe = event.steps_per_epoch
        done = (event.epoch - self._start_epoch) * spe + event.step + 1
        self.curves.add_step(
            event.epoch + (event.step + 1) / spe, event.loss, event.region, event.boundary
        )
        self._set_progress(done, self._steps_total, f"epoch {event.epoch + 1}")

    def _on_epoch(self, event: Any) -> None:
        self.curves.add_epoch(event.epoch, event.w_region, event.val_dice, event.val_hd)
        self.status.setText(
            f"Epoch {event.epoch + 1}/{self._config.epochs} on {self.device_used}: "
            f"loss {event.train_loss:.4f}, α {event.w_region:.2f}, "
            f"val DSC {event.val_dice:.3f}, HD {event.val_hd:.1f} mm"
            + (" (best)" if event.is_best else "")
        )

    def _on_done(self, done: Any) -> None:
        self.last_done = done
        checkpoint = done.best_checkpoint or done.last_checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        self.status.setText(f"Done ({done.reason}){where}.")
        if done.stopped and not done.reason.startswith("stopped by request"):
            notify_error(f"Training stopped: {done.reason}")

    def _on_failed(self, exc: BaseException) -> None:
        self.status.setText(f"Training failed: {exc}")
        notify_error(exc)

    def _on_finished(self) -> None:
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        self._set_running(False)
        done = self.last_done
        if done is not None and not self._closing and self.predict_after.isChecked():
            self._predict_after(done)

    # -- prediction after training -------------------------------------------------
    def _predict_after(self, done: Any) -> Any:
        """Predict the current image with the best model; returns the worker."""
        checkpoint = done.best_checkpoint or done.last_checkpoint
        stack = self._stack
        if checkpoint is None or stack is None:
            return None

        def returned(result: tuple[np.ndarray, np.ndarray]) -> None:
            probs, labels = result
            _, layer = add_prediction_layers(
                self.viewer, probs, labels, stack, stack.names[0], with_probability=False
            )
            self.prediction_layer = layer
            self.status.setText(
                f"{self.status.text()} Prediction of {Path(checkpoint).name} added as "
                f"'{layer.name}'."
            )

        def finished() -> None:
            self._predict_worker = None

        # the checkpoint is loaded (and checked) in the worker, not here
        device = self.device_used or "auto"
        worker = start_progress_worker(
            lambda: predict_job(checkpoint, stack.images, stack.spacing, device),
            returned,
            "Predicting with the best model",
            start=False,
        )
        worker.finished.connect(finished)
        self._predict_worker = worker
        worker.start()
        return worker

    # -- closing ---------------------------------------------------------------------
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt naming
        self.shutdown()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        # napari's remove_dock_widget un-parents the widget: stop the run then.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            if self.runner.running:
                self.shutdown()
        return super().event(event)
