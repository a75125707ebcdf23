"""The progress panel of the widgets: bars with the elapsed and the estimated
remaining time, inside the widget (where the user already looks; napari's
activity dialog shows the same run).

One class, :class:`ProgressPanel`, in two sizes: one bar and a line under it
(a prediction, a fine-tune: :meth:`~ProgressPanel.start`,
:meth:`~ProgressPanel.set`, :meth:`~ProgressPanel.finish`), or, as
careamics-napari shows training, a bar for the epochs and one for the steps of
the current epoch, each with its times (``levels=2``:
:meth:`~ProgressPanel.start_epochs`, :meth:`~ProgressPanel.step`,
:meth:`~ProgressPanel.epoch_done`).

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from napari_boundary_seg._widgets._layers import format_duration

__all__ = ["ProgressPanel", "format_duration"]


class ProgressPanel(QWidget):
    """Progress bars with elapsed and remaining time.

    Parameters
    ----------
    levels
        1: one bar (a magicgui ``ProgressBar``) and a line with the step, the
        elapsed and the remaining time; ``set`` only stores the latest values
        (cheap, call it per event), a timer shows them every ``interval_ms``.
        2: the epochs (1-based) and the steps of the current epoch, each with
        its times (from the mean time of the steps done so far).
    """

    def __init__(
        self, parent: QWidget | None = None, interval_ms: int = 250, levels: int = 1
    ) -> None:
        super().__init__(parent)
        self.levels = levels
        self._t0: float | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.flush)
        self._pending: tuple[int, int, str] | None = None
        self._last: tuple[int, int, str] = (0, 0, "")
        if levels == 1:
            self._one_bar()
        else:
            self._two_bars()

    # -- one bar ----------------------------------------------------------------
    def _one_bar(self) -> None:
        from magicgui.widgets import ProgressBar

        self.magic = ProgressBar(min=0, max=1, value=0)
        self.bar = self.magic.native
        self.label = QLabel("")
        self.label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(self.bar)
        layout.addWidget(self.label)
        self.setVisible(False)

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self, message: str = "") -> None:
        """Start timing a run (the bar busy until the first ``set``)."""
        self._t0 = time.monotonic()
        self._last = (0, 0, message)
        self._pending = (0, 0, message)
        self.setVisible(True)
        self.flush()
        self._timer.start()

    def set(self, done: int, total: int, message: str = "") -> None:
        """Store the latest progress (``total`` 0: unknown); shown by the timer."""
        self._pending = (int(done), int(total), message or self._last[2])

    def text(self) -> str:
        """The line under the bar (two bars: the step bar's text)."""
        return self.label.text() if self.levels == 1 else self.step_bar.format()

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self._t0 is None:
            return
        done, total, message = self._last = pending
        try:
            if total > 0:
                self.bar.setRange(0, total)
                self.bar.setValue(min(done, total))
            else:
                self.bar.setRange(0, 0)  # busy
        except RuntimeError:  # the Qt side is gone
            return
        elapsed = time.monotonic() - self._t0
        parts = [message] if message else []
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total > 0 and 0 < done < total:
            parts.append(f"about {format_duration(elapsed * (total - done) / done)} left")
        self.label.setText(", ".join(parts))

    def finish(self, message: str = "done") -> None:
        """End the run: the bar full (or as far as it got) and ``message``."""
        if self.levels == 2:
            self._finish_epochs(message)
            return
        self.flush()
        try:
            self._timer.stop()
        except RuntimeError:
            return
        if self._t0 is None:
            return
        elapsed = time.monotonic() - self._t0
        self._t0 = None
        done, total, _ = self._last
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(max(total, 1) if message == "done" else min(done, max(total, 1)))
        self.label.setText(f"{message} in {format_duration(elapsed)}")

    # -- epochs and steps ---------------------------------------------------------
    def _two_bars(self) -> None:
        self.epoch_bar = QProgressBar()
        self.step_bar = QProgressBar()
        self.epoch_time = QLabel("")
        self.step_time = QLabel("")
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setVerticalSpacing(2)
        rows = (("Epoch", self.epoch_bar, self.epoch_time), ("Step", self.step_bar, self.step_time))
        for row, (name, bar, times) in enumerate(rows):
            bar.setTextVisible(True)
            bar.setMaximumHeight(16)
            times.setStyleSheet("font-size: 10px;")
            times.setWordWrap(True)  # wraps in a narrow dock instead of widening it
            layout.addWidget(QLabel(name), row, 0)
            layout.addWidget(bar, row, 1)
            layout.addWidget(times, row, 2)
        layout.setColumnStretch(1, 1)
        self.reset()

    def reset(self, epochs: int = 0) -> None:
        """Idle bars for a run of ``epochs`` epochs."""
        self._epochs = max(int(epochs), 0)
        self._t0 = None
        self._epoch_t0: float | None = None
        self._steps_done = 0
        self._steps_total = 0
        self._spe = 0
        for bar in (self.epoch_bar, self.step_bar):
            bar.setRange(0, 1)
            bar.setValue(0)
        self.epoch_bar.setFormat(f"0/{self._epochs}" if self._epochs else "")
        self.step_bar.setFormat("")
        self.epoch_time.setText("")
        self.step_time.setText("")

    def busy(self, message: str) -> None:
        """An indeterminate step bar (data preparation)."""
        self.step_bar.setRange(0, 0)
        self.step_bar.setFormat(message)

    def start_epochs(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
        """Training begins (``start_epoch`` 0-based, as the trainer counts)."""
        self._epochs = epochs
        self._spe = max(steps_per_epoch, 1)
        self._steps_total = (epochs - start_epoch) * self._spe
        self._steps_done = 0
        self._t0 = time.perf_counter()
        self._epoch_t0 = self._t0
        self.epoch_bar.setRange(0, max(epochs, 1))
        self.epoch_bar.setValue(start_epoch)
        self.epoch_bar.setFormat(f"{start_epoch}/{epochs}")
        self.step_bar.setRange(0, self._spe)
        self.step_bar.setValue(0)
        self.step_bar.setFormat(f"0/{self._spe}")

    def step(self, epoch: int, step: int) -> None:
        """Step ``step`` (0-based) of epoch ``epoch`` (0-based) is done."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = self._epoch_t0 = now
        if step == 0:
            self._epoch_t0 = now - 1e-9
        self._steps_done += 1
        self.epoch_bar.setFormat(f"epoch {epoch + 1}/{self._epochs}")
        self.step_bar.setValue(step + 1)
        self.step_bar.setFormat(f"{step + 1}/{self._spe}")
        elapsed = now - self._t0
        per_step = elapsed / self._steps_done
        left_total = per_step * max(self._steps_total - self._steps_done, 0)
        left_epoch = per_step * max(self._spe - step - 1, 0)
        self.epoch_time.setText(
            f"{format_duration(elapsed)} elapsed, ~{format_duration(left_total)} left"
        )
        self.step_time.setText(
            f"{format_duration(now - (self._epoch_t0 or now))}, ~{format_duration(left_epoch)} left"
        )

    def epoch_done(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) ended (validation included)."""
        self.epoch_bar.setValue(epoch + 1)
        self.epoch_bar.setFormat(f"{epoch + 1}/{self._epochs}")

    def _finish_epochs(self, text: str) -> None:
        """The step bar's text says ``text``; the times keep the elapsed time
        only (nothing is left)."""
        if self._t0 is not None:
            self.epoch_time.setText(f"{format_duration(time.perf_counter() - self._t0)} elapsed")
        else:
            self.epoch_time.setText("")
        self.step_time.setText("")
        self.step_bar.setRange(0, 1)
        self.step_bar.setValue(1 if text == "done" else 0)
        self.step_bar.setFormat(text)
