"""The plots of the widgets: one matplotlib canvas (:class:`PlotCanvas`; the
planned α weights, :class:`AlphaPlot`; the fine-tune rounds,
:class:`RoundsPlot`) and the live curves of a run, small line
charts painted with QPainter and redrawn by a timer (:class:`LineChart`,
:class:`TrainingCurves`, :class:`FinetuneCurves`).

Qt widgets only; no napari, no torch. See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from napari_boundary_seg.core.config import LossKind, uses_schedule

__all__ = [
    "REDRAW_INTERVAL_MS",
    "AlphaPlot",
    "FinetuneCurves",
    "LineChart",
    "PlotCanvas",
    "RoundsPlot",
    "TrainingCurves",
    "chart_titles",
]

#: Why the total loss may rise while the model improves (the charts' tooltip).
TOTAL_LOSS_HELP = (
    "total = α·regional + (1 − α)·boundary. As α moves weight to the boundary "
    "term, a distance in mm (mean of s·φ, negative at a good solution), the total "
    "changes scale: it can rise while the model improves. Judge the model by the "
    "validation DSC, each term on its own chart."
)
BOUNDARY_HELP = (
    "Boundary term L_B: the mean of the softmax s times the signed distance φ, "
    "in mm. It falls (more negative) as the predicted foreground moves inside "
    "the lesions."
)


def chart_titles(loss: str) -> tuple[str, str]:
    """The total-loss and boundary charts' titles for a loss kind: the α formula
    for GDL + BL; for a loss without the boundary term (GDL, CE, Dice) the
    boundary term is computed and shown but not trained on, and the title says so."""
    kind = LossKind(loss)
    if uses_schedule(kind):
        return "total: α·GDL + (1−α)·BL", "boundary term: distance (mm)"
    if kind is LossKind.BL:
        return "total: BL alone", "boundary term: distance (mm)"
    return f"total: {kind.value.upper()}", "BL, not trained on (mm)"


#: The regional loss each kind reports, by name (GDL beside the boundary loss).
REGION_NAMES = {LossKind.CE: "CE", LossKind.DICE: "Dice", LossKind.GDL_CE: "GDL + CE"}


def region_name(loss: str) -> str:
    """The regional loss that ``loss`` reports: CE, Dice or GDL + CE alone, else GDL."""
    return REGION_NAMES.get(LossKind(loss), "GDL")


def region_title(loss: str) -> str:
    """The regional-term chart's title (:func:`region_name`)."""
    return f"regional term ({region_name(loss)})"


def weight_labels(loss: str) -> tuple[str, str]:
    """The planned-weights legend for ``loss``: α and 1 − α under the GDL + BL
    schedule; otherwise the regional loss's weight and the boundary loss's."""
    kind = LossKind(loss)
    if uses_schedule(kind):
        return "α (GDL)", "1−α (BL)"
    return ("no regional term" if kind is LossKind.BL else region_name(loss)), "BL"


#: The live curves redraw at most this often (ms); events in between only
#: append data. Keeps the Qt event loop free while a model trains.
REDRAW_INTERVAL_MS = 400

_DARK = "#262930"  # napari's dark theme background
_FG = "#dddddd"


def _style_axes(ax: Any, title: str) -> None:
    ax.set_facecolor(_DARK)
    for spine in ax.spines.values():
        spine.set_color("#888888")
    ax.tick_params(colors=_FG, labelsize=6, length=2, pad=1)
    ax.set_title(title, fontsize=7, color=_FG, pad=2)


class PlotCanvas(QWidget):
    """A fixed-height matplotlib figure with napari's dark background.

    ``plot(x, {"label": ys, ...})`` redraws; ``figure`` and ``axes`` are public
    for anything more (:class:`AlphaPlot`). The height is fixed: a relayout
    of the window (a progress bar appearing) does not resize the figure,
    which would draw it again (≈ 90 ms).
    """

    def __init__(
        self,
        height_px: int = 220,
        width: float = 3.4,
        margins: tuple[float, float, float, float] = (0.16, 0.97, 0.2, 0.88),
    ) -> None:
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        # fixed margins, not tight_layout (which lays the text out again at every draw)
        self.figure = Figure(figsize=(width, height_px / 100), dpi=100)
        self.figure.patch.set_facecolor(_DARK)
        left, right, bottom, top = margins
        self.figure.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
        self.axes = self.figure.add_subplot(111)
        _style_axes(self.axes, "")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(height_px)
        self.canvas.setMinimumWidth(120)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def draw_now(self) -> None:
        self.canvas.draw_idle()

    def plot(
        self,
        x: Sequence[float],
        series: dict[str, Sequence[float]],
        title: str = "",
        xlabel: str = "",
        ylabel: str = "",
    ) -> None:
        """Redraw with one line per entry of ``series`` (all against ``x``)."""
        ax = self.axes
        ax.clear()
        _style_axes(ax, title)
        x = list(x)
        for label, ys in series.items():
            ax.plot(x, list(ys), label=label, linewidth=1.2)
        ax.set_xlabel(xlabel, fontsize=7, color=_FG)
        ax.set_ylabel(ylabel, fontsize=7, color=_FG)
        if len(series) > 1:
            ax.legend(fontsize=6, facecolor=_DARK, labelcolor=_FG)
        self.draw_now()


class AlphaPlot(PlotCanvas):
    """α (regional weight) and the boundary weight over the planned epochs."""

    def __init__(self) -> None:
        super().__init__(105, margins=(0.1, 0.98, 0.2, 0.87))
        from matplotlib.ticker import MaxNLocator

        self.axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        _style_axes(self.axes, "planned weights per epoch")
        region, boundary = weight_labels("gdl+bl")
        (self.region_line,) = self.axes.plot([], [], color="#4fc3f7", lw=1.2, label=region)
        (self.boundary_line,) = self.axes.plot([], [], color="#ff8a65", lw=1.2, label=boundary)
        self.axes.legend(
            fontsize=6, loc="center right", facecolor=_DARK, labelcolor=_FG, frameon=False
        )
        self._shown: np.ndarray | None = None  # the weights drawn last

    def legend_labels(self) -> tuple[str, str]:
        """The legend's two entries as drawn."""
        return self.region_line.get_label(), self.boundary_line.get_label()

    def set_weights(self, weights: Sequence[tuple[float, float]], loss: str = "gdl+bl") -> None:
        """Plot the planned ``(α, 1 − α)`` per epoch, the legend named for
        ``loss`` (:func:`weight_labels`); the same weights and loss as the
        last call draw nothing (the Train form refreshes on every layer added
        to the viewer, and a draw costs 30-90 ms of the event loop)."""
        w = np.asarray(weights, dtype=float).reshape(-1, 2)
        labels = weight_labels(loss)
        if (
            self._shown is not None
            and np.array_equal(w, self._shown)
            and labels == self.legend_labels()
        ):
            return
        self._shown = w
        self.region_line.set_label(labels[0])
        self.boundary_line.set_label(labels[1])
        self.axes.legend(
            fontsize=6, loc="center right", facecolor=_DARK, labelcolor=_FG, frameon=False
        )
        epochs = np.arange(1, len(w) + 1)  # counted from 1, as the live curves
        self.region_line.set_data(epochs, w[:, 0])
        self.boundary_line.set_data(epochs, w[:, 1])
        top = max(1.0, float(w.max()) if w.size else 1.0)
        self.axes.set_xlim(1, max(len(w), 2))
        self.axes.set_ylim(-0.03 * top, 1.05 * top)
        self.draw_now()


#: The colour of each measure of the rounds curve (``core.rounds``).
ROUND_COLOURS = {"reference": "#81c784", "agreement": "#4fc3f7"}
ROUND_LABELS = {"reference": "DSC vs reference", "agreement": "agreement with previous round"}
#: The marker face of a round by its state (else filled with its colour).
_ROUND_FACES = {"pending": "white", "discarded": "none", "undone": "none"}


class RoundsPlot(PlotCanvas):
    """The correction curve: one point per fine-tune round, the slices taught
    (x) against a DSC (y, 0-1) on the untouched slices, by measure
    (:data:`ROUND_COLOURS`). Kept rounds (and the start) are joined by a line;
    a round waiting for a decision is filled white, a discarded one hollow, an
    undone one a cross; each is numbered."""

    def __init__(self) -> None:
        super().__init__(150, margins=(0.15, 0.97, 0.27, 0.86))
        self.points: list[tuple[str, float, float, str, int]] = []
        self._lay_out()  # no draw: the canvas draws when first shown

    def set_points(self, points: Sequence[tuple[str, float, float, str, int]]) -> None:
        """``(measure, x, y, state, round)`` per point (``core.rounds.Rounds.curve``)."""
        self.points = list(points)
        self._lay_out()
        self.draw_now()

    def _lay_out(self) -> None:
        from matplotlib.ticker import MaxNLocator

        ax = self.axes
        ax.clear()
        _style_axes(ax, "each fine-tune round")
        ax.set_xlabel("slices taught (corrected + checked)", fontsize=7, color=_FG, labelpad=1)
        ax.set_ylabel("DSC (0–1)", fontsize=7, color=_FG, labelpad=1)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        shown = [p for p in self.points if math.isfinite(p[2])]
        if not shown:
            ax.text(0.5, 0.5, "no round yet", ha="center", va="center", color="#888888",
                    fontsize=7, transform=ax.transAxes)  # fmt: skip
        for measure, colour in ROUND_COLOURS.items():
            mine = [p for p in shown if p[0] == measure]
            if not mine:
                continue
            path = [p for p in mine if p[3] in ("start", "kept", "pending")]
            ax.plot([p[1] for p in path], [p[2] for p in path], color=colour, lw=1.2,
                    label=ROUND_LABELS[measure])  # fmt: skip
            for _, x, y, state, index in mine:
                face = _ROUND_FACES.get(state, colour)
                marker = "x" if state == "undone" else "o"
                ax.plot([x], [y], marker=marker, ms=4, mec=colour, mfc=face, lw=0)
                if index:  # dropped rounds numbered below, the others above
                    below = state in ("discarded", "undone")
                    ax.annotate(str(index), (x, y), xytext=(0, -9 if below else 4),
                                textcoords="offset points", ha="center", fontsize=6,
                                color=_FG)  # fmt: skip
        xs = [p[1] for p in shown] or [0.0]
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5 if len(xs) > 1 else min(xs) + 1.5)
        ax.set_ylim(-0.03, 1.12)
        if shown:
            ax.legend(fontsize=6, loc="best", facecolor=_DARK, labelcolor=_FG, frameon=False)


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
        #: a remark drawn under the title (e.g. "no foreground predicted")
        self.note = ""

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
        if self.note:
            painter.setPen(QColor("#ffb74d"))
            painter.drawText(QPointF(left + 4, top + metrics.ascent() + 1), self.note)
            painter.setPen(QColor(_FG))
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

        total_title, boundary_title = chart_titles("gdl+bl")
        self.loss_chart = LineChart(total_title)
        self.loss_chart.setToolTip(TOTAL_LOSS_HELP)
        self.alpha_chart = LineChart("α (regional weight)", y_range=(-0.03, 1.03))
        self.region_chart = LineChart("regional term (GDL)")
        self.boundary_chart = LineChart(boundary_title)
        self.boundary_chart.setToolTip(BOUNDARY_HELP)
        self.dsc_chart = LineChart("validation DSC", y_range=(-0.03, 1.03))
        self.alpha_chart.y_ticks = self.dsc_chart.y_ticks = (1.0, 0.0)
        self.hd_chart = LineChart("validation HD (mm)")
        self.hd_chart.setToolTip(
            "Hausdorff distance of the validation prediction (mm). When the model "
            "predicts no foreground it is infinite: that epoch is left out (a gap), "
            "not drawn as the image diagonal."
        )
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

    def reset(self, planned_epochs: int | None = None, loss: str | None = None) -> None:
        """Forget the data (a new run of ``planned_epochs`` epochs); ``loss`` (the
        run's loss kind) titles the total and boundary charts (:func:`chart_titles`)."""
        if planned_epochs is not None:
            self.planned_epochs = max(int(planned_epochs), 1)
        if loss is not None:
            self.loss_chart.title, self.boundary_chart.title = chart_titles(loss)
            self.region_chart.title = region_title(loss)
        self.steps: list[float] = []
        self.loss: dict[str, list[float]] = {"total": [], "region": [], "boundary": []}
        self.epochs: list[int] = []
        self.alpha: list[float] = []
        self.dsc: list[float] = []
        self.hd: list[float] = []
        for chart in self.charts:
            chart.note = ""
        self._dirty = True
        self._redraw_if_dirty()

    def add_step(self, position: float, total: float, region: float, boundary: float) -> None:
        """One step; ``position`` in epochs (e.g. 1.5: half way through epoch 2)."""
        self.steps.append(position)
        for key, value in (("total", total), ("region", region), ("boundary", boundary)):
            self.loss[key].append(value)
        self._dirty = True

    def add_epoch(
        self, epoch: int, alpha: float, dsc: float, hd: float, empty: bool = False
    ) -> None:
        """One epoch (0-based, drawn 1-based). ``empty``: the model predicted no
        foreground on the validation data; its HD is infinite and is not drawn
        (a gap, and a note on both validation charts), never the image diagonal."""
        self.epochs.append(epoch)
        self.alpha.append(alpha)
        self.dsc.append(dsc)
        self.hd.append(math.nan if empty else hd)
        note = f"epoch {epoch + 1}: no foreground predicted" if empty else ""
        self.dsc_chart.note = self.hd_chart.note = note
        self._dirty = True

    def set_verdict(self, text: str) -> None:
        """A note on the loss and validation charts: the run ended badly."""
        self.loss_chart.note = self.dsc_chart.note = text
        self._dirty = True
        self._redraw_if_dirty()
        for chart in (self.loss_chart, self.dsc_chart):
            chart.update()

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


class FinetuneCurves(QWidget):
    """Live curves of a fine-tune, each on its own axis: the total loss, the
    boundary term (a distance, mm) and α (the regional weight, 0-1)."""

    def __init__(self) -> None:
        super().__init__()
        from qtpy.QtWidgets import QGridLayout

        self.loss_chart = LineChart("total loss")
        self.loss_chart.setToolTip(TOTAL_LOSS_HELP)
        self.boundary_chart = LineChart("boundary term (mm)")  # fits a 300 px dock
        self.boundary_chart.setToolTip(BOUNDARY_HELP)
        self.alpha_chart = LineChart("α (regional weight)", y_range=(-0.03, 1.03))
        self.alpha_chart.y_ticks = (1.0, 0.0)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(3)
        grid.addWidget(self.loss_chart, 0, 0)
        grid.addWidget(self.boundary_chart, 0, 1)
        grid.addWidget(self.alpha_chart, 1, 0)

    @property
    def charts(self) -> tuple[LineChart, ...]:
        return (self.loss_chart, self.boundary_chart, self.alpha_chart)

    def set_data(
        self, steps: Sequence[float], series: dict[str, Sequence[float]], epochs: float
    ) -> None:
        """``series`` holds ``"total"``, ``"boundary"`` and ``"α"`` per step."""
        colours = TrainingCurves.COLOURS
        self.loss_chart.set_series([(steps, series.get("total", []), colours["total"])], epochs)
        self.boundary_chart.set_series(
            [(steps, series.get("boundary", []), colours["boundary"])], epochs
        )
        self.alpha_chart.set_series([(steps, series.get("α", []), "#4fc3f7")], epochs)
