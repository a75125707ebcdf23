"""The Train widget's run status: its :class:`~_logic.RunState`, the status
line, the events of the trainer shown as they come (bars, curves, figures),
and the verdict of a run that ended badly (:func:`core.verdict.judge_run`).

:class:`RunStatus` is a part of ``train.TrainWidget`` (a mixin: it reads the
widget's ``runner``, ``progress``, ``curves``, ``status`` and run fields).

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from napari_boundary_seg._widgets._layers import notify_error
from napari_boundary_seg._widgets._logic import RunState

logger = logging.getLogger(__name__)


class RunStatus:
    """The status part of the Train widget."""

    _state: RunState = RunState.IDLE
    _detail = ""
    _preview_text = ""
    _epoch_text = ""
    _spe = 0

    @property
    def state(self) -> RunState:
        """The run state (a ``str`` enum: ``"running"`` compares equal)."""
        return self._state

    @state.setter
    def state(self, value: RunState | str) -> None:
        self._state = RunState(value)

    def _set_state(self, state: RunState | str, detail: str = "") -> None:
        self.state = state
        self._detail = detail
        self._show_status()

    def _show_status(self) -> None:
        head = self.state.text
        text = f"{head} — {self._detail}" if self._detail else head
        if self._preview_text and self.state.active:
            text = f"{text}\n{self._preview_text}"
        self.status.setText(text)

    def _position_text(self, prefix: str = "") -> str:
        """``"epoch E/N, step S/K"`` (1-based) of the last step done."""
        if self._last_position is None or self._config is None:
            return prefix
        epoch, step = self._last_position
        spe = max(self._spe, 1)
        where = f"epoch {epoch + 1}/{self._config.epochs}, step {step + 1}/{spe} done"
        return f"{prefix}; {where}" if prefix else where

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
            # a pause event still in the queue after Resume or Stop changes nothing
            if self.runner.paused and self.state in (RunState.PAUSING, RunState.PAUSED):
                self._set_state(
                    RunState.PAUSED,
                    f"before step {event.step + 1} of epoch {event.epoch + 1}; Resume or Stop",
                )
        elif name == "PreviewEvent":
            self._on_preview(event)
        # Progress events (data preparation) go to napari's bar through the runner

    def _on_info(self, event: Any) -> None:
        if event.device:
            self.device_used = event.device
        if event.steps_per_epoch:
            self._start_epoch = event.start_epoch
            self._spe = event.steps_per_epoch
            self._steps_total = (self._config.epochs - event.start_epoch) * event.steps_per_epoch
            self.runner.set_progress(0, self._steps_total, "training")
            self.progress.start_epochs(
                self._config.epochs, event.start_epoch, event.steps_per_epoch
            )
            val = (
                f", validation on {event.num_val_cases} case(s)"
                if event.num_val_cases
                else ", no validation case"
            )
            if self._val_block is not None:
                val = (
                    f", validation on slices {self._val_block.start}–{self._val_block.stop - 1} "
                    "(not trained on)"
                )
            if self.state is RunState.PREPARING:
                self._set_state(
                    RunState.RUNNING,
                    f"on {self.device_used}: {event.num_train_slices} {self._items_text()}, "
                    f"{event.steps_per_epoch} steps per epoch{val}",
                )
        elif self.state is RunState.PREPARING:
            self._set_state(RunState.PREPARING, f"{event.message} ({self.device_used})")

    def _items_text(self) -> str:
        """What an epoch's items are: slices, or 3D patches of their size."""
        from napari_boundary_seg.core.modes import mode_for

        return "slices" if self._config is None else mode_for(self._config).items_text(self._config)

    def _on_step(self, event: Any) -> None:
        spe = event.steps_per_epoch
        self._spe = spe
        self._last_position = (event.epoch, event.step)
        done = (event.epoch - self._start_epoch) * spe + event.step + 1
        self.curves.add_step(
            event.epoch + (event.step + 1) / spe, event.loss, event.region, event.boundary
        )
        self.progress.step(event.epoch, event.step)
        self.runner.set_progress(done, self._steps_total, f"epoch {event.epoch + 1}")

    def _on_epoch(self, event: Any) -> None:
        empty = self._empty_validation(event)
        self.curves.add_epoch(event.epoch, event.w_region, event.val_dice, event.val_hd, empty)
        self.progress.epoch_done(event.epoch)
        if math.isnan(event.val_dice):
            figures = "no validation data"
        elif empty:
            figures = f"val DSC {event.val_dice:.3f}, no foreground predicted (HD —)"
        elif event.val_hd_inf:
            figures = (
                f"val DSC {event.val_dice:.3f}, HD — ({event.val_hd_inf} case(s) "
                "with an empty prediction or label)"
            )
        else:
            figures = f"val DSC {event.val_dice:.3f}, HD {event.val_hd:.1f} mm"
        detail = (
            f"epoch {event.epoch + 1}/{self._config.epochs} on {self.device_used}: "
            f"loss {event.train_loss:.4f}, α {event.w_region:.2f}, {figures}"
            + (" (best so far)" if event.is_best else "")
        )
        self._epoch_text = detail
        if self.state is RunState.RUNNING:
            self._set_state(RunState.RUNNING, detail)
        else:  # pausing, paused or stopping: keep that state, show the figures
            self._detail = detail
            self._show_status()

    def _empty_validation(self, event: Any) -> bool:
        """True when every validation case got an empty prediction (HD infinite
        and DSC 0): "no foreground predicted"."""
        cases = next(
            (
                e.num_val_cases
                for e in self.events
                if type(e).__name__ == "InfoEvent" and e.steps_per_epoch
            ),
            0,
        )
        return bool(cases) and event.val_hd_inf >= cases and event.val_dice == 0

    def judge(self, predicted_voxels: int | None = None) -> Any:
        """The :func:`core.verdict.judge_run` of the last run: its best
        validation DSC and, when given, its final prediction's foreground
        against the labels layer's."""
        from napari_boundary_seg.core.verdict import best_val_dice, judge_run

        done = self.last_done
        best = best_val_dice(done.history if done else [])
        reference = total = None
        layer = self.labels.value if self.source.value == "layers" else None
        if predicted_voxels is not None and layer is not None:
            try:
                data = np.asarray(layer.data)
                reference, total = int((data > 0).sum()), int(data.size)
            except (TypeError, ValueError):
                pass
        elif predicted_voxels is not None and self._stack is not None:
            total = int(np.prod(self._stack.images.shape[1:]))
        loss = None if self._config is None else self._config.loss
        return judge_run(best, predicted_voxels, reference, total, loss=loss)

    def _show_verdict(self, verdict: Any) -> None:
        """A run that ended badly says so: a warning line under the status, a
        note on the validation chart and a napari warning."""
        self.verdict = verdict
        text = verdict.text()
        self.verdict_label.setText(f"⚠ {text}" if text else "")
        self.verdict_label.setVisible(bool(text))
        if text:
            self.curves.set_verdict(f"ended badly: {verdict.short()}")
            from napari.utils.notifications import show_warning

            logger.warning("%s", text)
            show_warning(text)

    def _on_done(self, done: Any) -> None:
        from napari_boundary_seg.core.events import Outcome

        self.last_done = done
        epochs_done = len(done.history)
        if not (self.predict_after.value and self._stack is not None):
            self._show_verdict(self.judge())  # judged now: no prediction follows
        if not done.stopped:
            self.progress.finish("done")
            self._set_state(RunState.DONE, f"{epochs_done} epoch(s) trained")
        elif done.outcome is Outcome.STOPPED:
            self.progress.finish("stopped")
            self._set_state(
                RunState.DONE,
                f"stopped by request ({self._position_text() or 'before the first step'}; "
                f"{epochs_done} epoch(s) complete)",
            )
        else:
            self.progress.finish("stopped")
            self._set_state(RunState.DONE, f"stopped: {done.reason}")
            notify_error(f"Training stopped: {done.reason}")

    def _on_failed(self, exc: BaseException) -> None:
        self.progress.finish("failed")
        self._set_state(RunState.DONE, f"training failed: {exc}")
        notify_error(exc)
