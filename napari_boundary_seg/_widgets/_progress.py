"""Epoch and step progress bars with elapsed and remaining time, inside a widget.

As careamics-napari shows training progress: one bar for the epochs, one for
the steps of the current epoch, each with its elapsed and estimated remaining
time (from the mean time of the steps done so far). napari's activity dialog
shows the same run; these bars are where the user already looks.
"""

from __future__ import annotations

import time

from qtpy.QtWidgets import QGridLayout, QLabel, QProgressBar, QWidget

from napari_boundary_seg._widgets._common import format_duration as format_seconds

__all__ = ["RunProgress", "format_seconds"]


class RunProgress(QWidget):
    """Two bars: epochs (1-based) and steps of the current epoch, with times."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.epoch_bar = QProgressBar()
        self.step_bar = QProgressBar()
        self.epoch_time = QLabel("")
        self.step_time = QLabel("")
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setVerticalSpacing(2)
        for row, (name, bar, times) in enumerate(
            (
                ("Epoch", self.epoch_bar, self.epoch_time),
                ("Step", self.step_bar, self.step_time),
            )
        ):
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
        self._t0: float | None = None
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

    def start(self, epochs: int, start_epoch: int, steps_per_epoch: int) -> None:
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
            f"{format_seconds(elapsed)} elapsed, ~{format_seconds(left_total)} left"
        )
        self.step_time.setText(
            f"{format_seconds(now - (self._epoch_t0 or now))}, ~{format_seconds(left_epoch)} left"
        )

    def epoch_done(self, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) ended (validation included)."""
        self.epoch_bar.setValue(epoch + 1)
        self.epoch_bar.setFormat(f"{epoch + 1}/{self._epochs}")

    def finish(self, text: str) -> None:
        """The run ended: fill the step bar's text with ``text``; the times keep
        the elapsed time only (nothing is left)."""
        if self._t0 is not None:
            self.epoch_time.setText(f"{format_seconds(time.perf_counter() - self._t0)} elapsed")
        else:
            self.epoch_time.setText("")
        self.step_time.setText("")
        self.step_bar.setRange(0, 1)
        self.step_bar.setValue(1 if text == "done" else 0)
        self.step_bar.setFormat(text)
