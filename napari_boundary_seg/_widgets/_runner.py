"""Running a widget's work: one :class:`Runner` for the event generators of
all five widgets, and the delivery of their results to the viewer.

- :class:`Runner`: one generator (a ``_jobs`` body) at a time in a napari
  ``thread_worker``: start, pause, resume, stop, shutdown; its events as Qt
  signals; ``core`` :class:`~core.progress.Progress` events fed to a napari
  progress bar (:class:`ProgressRelay`) and the widget's progress panel;
  errors shown as notifications; the run buttons disabled while it runs.
  :func:`start_progress_worker` is the short form for a one-shot job.
- :func:`controlled_worker_class`: a worker whose ``quit()`` (napari's window
  close, app quit) asks a trainer to stop, so it saves ``last.pt`` and ends.
- :class:`Delivery`: a result's GUI steps one per event-loop turn;
  :func:`layer_steps`: adding a layer in three such steps.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from napari.layers import Labels, Layer
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QWidget

from napari_boundary_seg._widgets._layers import insert_layer_quietly, notify_error
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)


class ProgressRelay(QObject):
    """A napari progress bar fed at most every ``interval_ms``.

    napari's progress widgets call ``QApplication.processEvents()`` when they
    are made and on every update; updating them once per training step would
    re-enter the event loop from inside signal handlers and cost GUI time.
    ``set`` only stores the latest values; a timer applies them. The napari
    bar itself is made by the timer's first tick, not in the Start click
    (making it relays out the window: ≈ 200 ms under load, measured).
    """

    def __init__(self, description: str, interval_ms: int = 200, parent: QObject | None = None):
        super().__init__(parent)
        self.bar: Any = None
        self._closed = False
        self._prefix = description
        self._pending: tuple[int, int, str] | None = (0, 0, "")
        self._message = ""
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.flush)
        self._timer.start()

    def set(self, done: int, total: int, message: str = "") -> None:
        self._pending = (done, total, message)

    def flush(self) -> None:
        pending = self._pending
        if self._closed or pending is None:
            return
        self._pending = None
        if self.bar is None:
            from napari.utils import progress

            self.bar = progress(total=0, desc=self._prefix)
        bar = self.bar
        done, total, message = pending
        if bar.total != total:
            bar.total = total
        bar.n = min(done, total) if total else done
        bar.update(0)
        if message and message != self._message:
            self._message = message
            bar.set_description(f"{self._prefix}: {message}")

    def close(self) -> None:
        self._closed = True
        bar, self.bar = self.bar, None
        try:
            self._timer.stop()
        except RuntimeError:  # the Qt side was deleted with its parent
            pass
        if bar is not None:
            bar.close()


#: A second ``quit()`` of a :func:`controlled_worker_class` worker this long
#: after the first one aborts it instead of waiting for the trainer's next
#: step boundary (s).
FORCE_QUIT_AFTER_S = 30.0


@functools.cache
def controlled_worker_class() -> type:
    """napari's ``GeneratorWorker`` whose ``quit()`` stops a trainer cleanly.

    Set ``worker.control`` to the run's ``core.train.TrainControl`` (pass this
    class as ``create_worker(..., _worker_class=...)``). napari quits every
    registered worker when its window closes (task status ``cancel_all``) and
    when the application quits (``wait_for_workers_to_quit``). A plain
    ``quit()`` drops the generator at its next yield, so the trainer would
    never see the stop request nor write ``last.pt`` for the step it reached.
    Here the first ``quit()`` asks the trainer to stop (it saves and returns
    at its next step boundary); a ``quit()`` more than
    :data:`FORCE_QUIT_AFTER_S` later, or :meth:`force_quit`, aborts. With
    ``control`` None it quits as napari's worker does.
    """
    from napari.qt.threading import GeneratorWorker

    class ControlledWorker(GeneratorWorker):
        control: Any = None
        _quit_at: float | None = None

        def quit(self) -> None:
            control = self.control
            now = time.monotonic()
            if control is not None and (
                self._quit_at is None or now - self._quit_at < FORCE_QUIT_AFTER_S
            ):
                if self._quit_at is None:
                    self._quit_at = now
                control.stop()  # also wakes a paused run
                return
            super().quit()

        def force_quit(self) -> None:
            GeneratorWorker.quit(self)

    return ControlledWorker


def _disconnect(*signals: Any) -> None:
    """Disconnect every slot of ``signals`` (a worker being abandoned)."""
    for signal in signals:
        try:
            signal.disconnect()
        except (TypeError, RuntimeError):
            pass


class Runner(QObject):
    """One event generator at a time in a napari ``thread_worker``.

    Parameters
    ----------
    parent
        The widget (the runner lives as long as it).
    description
        The napari progress bar's text and the context of an error message.
    relay
        Feed :class:`~core.progress.Progress` events to a napari progress bar
        (:class:`ProgressRelay`, made at :meth:`start`).
    panel
        A ``_progress.ProgressPanel`` fed the same events (started and finished
        with the run).
    buttons
        Disabled while a run goes on.
    notify
        Show an error of the generator as a notification
        (``_layers.notify_error``); the ``failed`` signal carries it anyway.

    Signals
    -------
    event(object)
        Every event the generator yields.
    done(object)
        The generator's return value.
    failed(object)
        The exception raised inside the worker.
    finished()
        The worker ended (after ``done`` or ``failed``).
    """

    event = Signal(object)
    done = Signal(object)
    failed = Signal(object)
    finished = Signal()

    def __init__(
        self,
        parent: QObject | None = None,
        description: str = "",
        relay: bool = True,
        panel: Any = None,
        buttons: Sequence[QWidget] = (),
        notify: bool = True,
    ) -> None:
        super().__init__(parent)
        self.description = description
        self.panel = panel
        self.buttons = list(buttons)
        self.notify = notify
        self._use_relay = relay
        self.relay: ProgressRelay | None = None
        self.worker: Any = None
        self.control: Any = None
        self.paused = False
        self._ended = threading.Event()
        self._ended.set()

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Callable[..., Generator[Any, Any, Any]],
        *args: Any,
        control: Any = None,
        ended: threading.Event | None = None,
        description: str | None = None,
        message: str | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run ``job(*args, **kwargs)`` in a worker thread; returns the worker
        (not started when ``start`` is False: connect to it first).

        ``control`` (a ``core.train.TrainControl``) makes the run pausable and
        stoppable, also by napari's window close; ``ended`` is set by the job
        once its trainer has saved its checkpoints (:meth:`shutdown` waits for it).
        ``message``: the progress panel's first words.
        """
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a run is already going on")
        if description is not None:
            self.description = description
        self.control = control
        self.paused = False
        if ended is None:  # nothing to wait for at shutdown
            ended = threading.Event()
            ended.set()
        self._ended = ended
        worker = create_worker(
            job,
            *args,
            _start_thread=False,
            _ignore_errors=True,
            _worker_class=controlled_worker_class(),
            **kwargs,
        )
        worker.control = control
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self.done.emit)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        if self._use_relay:
            # not a child of the runner: its ``event`` signal hides QObject.event
            self.relay = ProgressRelay(self.description, parent=self.parent())
        if self.panel is not None:
            self.panel.start(self.description.lower() if message is None else message)
        for button in self.buttons:
            button.setEnabled(False)
        if start:
            worker.start()
        return worker

    def _yielded(self, event: Any) -> None:
        if isinstance(event, Progress):
            if self.relay is not None:
                self.relay.set(event.done, event.total, event.message)
            if self.panel is not None:
                self.panel.set(event.done, event.total, event.message)
        self.event.emit(event)

    def set_progress(self, done: int, total: int, message: str = "") -> None:
        """Progress the widget works out itself (training steps)."""
        if self.relay is not None:
            self.relay.set(done, total, message)
        if self.panel is not None and hasattr(self.panel, "set"):
            self.panel.set(done, total, message)

    def _errored(self, error: BaseException) -> None:
        if self.panel is not None and getattr(self.panel, "running", False):
            self.panel.finish("failed")
        if self.notify:
            notify_error(error, self.description or "worker")
        self.failed.emit(error)

    def _finished(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
        if self.panel is not None and getattr(self.panel, "running", False):
            self.panel.finish("done")
        self.worker = None
        self.control = None
        self.paused = False
        for button in self.buttons:
            try:
                button.setEnabled(True)
            except RuntimeError:  # deleted with the widget
                pass
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
        """Ask the run to stop at its next step: a trainer saves its last
        checkpoint and returns a ``DoneEvent`` (outcome stopped)."""
        if self.control is not None:
            self.control.stop()  # also wakes a paused run

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Stop and wait (blocking, at most ``timeout_s``) until the run has
        ended; then quit the worker. Used when the widget or napari closes.
        Returns True when it ended in time."""
        if not self.running:
            return True
        self.stop()
        ended = self._ended.wait(timeout_s) if self.control is not None else True
        worker = self.worker
        if worker is not None:
            _disconnect(worker.yielded, worker.returned, worker.errored)
            worker.force_quit()
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.close()
        if not ended:
            logger.warning("the run did not stop within %.1f s; abandoning it", timeout_s)
        return ended


def start_progress_worker(
    make_generator: Callable[[], Generator[Any, Any, Any]],
    on_returned: Callable[[Any], None],
    description: str = "",
    on_event: Callable[[Any], None] | None = None,
    start: bool = True,
    button: QWidget | None = None,
) -> Any:
    """Run a ``core`` progress generator with a :class:`Runner` of its own.

    A napari progress bar follows the yielded :class:`~core.progress.Progress`
    events; other events go to ``on_event``. An exception in the generator
    becomes a napari error notification (its message; the type too when it is
    not bad input) and is not re-raised, so the viewer stays usable. Returns
    the worker (started unless ``start`` is False: connect to ``finished``
    before starting, or a fast worker may finish first). ``button`` is
    disabled while the worker runs.
    """
    runner = Runner(description=description, buttons=[button] if button is not None else ())
    runner.done.connect(on_returned)
    if on_event is not None:
        runner.event.connect(lambda e: None if isinstance(e, Progress) else on_event(e))

    def job() -> Generator[Any, Any, Any]:
        return (yield from make_generator())

    worker = runner.start(job, start=False)
    worker.runner = runner  # the runner lives as long as its worker
    if start:
        worker.start()
    return worker


# ---------------------------------------------------------------- delivery
#: Pause between two delivery steps (ms): Qt runs its due timers and draws the
#: window in between (a zero-delay timer would run the next step first).
STEP_PAUSE_MS = 15


#: How many modules were loaded at the last freeze (0: none yet).
_FROZEN_AT_MODULES = 0
#: Freeze again once this many more modules are loaded (torch's first import
#: by a job brings about 1,500, and its objects with them).
REFREEZE_MODULES = 200


def freeze_long_lived_objects() -> None:
    """Move every object alive now (napari, Qt, torch and their modules,
    hundreds of thousands of them) to Python's permanent GC generation
    (``gc.freeze``), so that a full collection, which the many objects of a
    new napari layer set off, scans only what came after (measured on the
    sample case: a full collection alone froze the window 120-190 ms).

    Done at the first delivery, and again only when a job has since imported
    a library (torch in the first training: :data:`REFREEZE_MODULES` more
    modules), so a handful of times per process. The young generations are
    collected first (a few ms); cyclic garbage already in the oldest
    generation at that moment is never freed, a bounded one-time cost like
    that of objects created at import time.
    """
    global _FROZEN_AT_MODULES
    import gc
    import sys

    loaded = len(sys.modules)
    if _FROZEN_AT_MODULES and loaded < _FROZEN_AT_MODULES + REFREEZE_MODULES:
        return
    gc.collect(1)
    gc.freeze()
    _FROZEN_AT_MODULES = loaded


class Delivery(QObject):
    """Run a result's GUI steps (add a layer, fill a table) one per event-loop turn.

    Each napari layer added costs the GUI thread its own time (vispy visual,
    layer controls, first draw); one after the other in a single slot they
    freeze the window for their sum. Here the event loop runs (and draws)
    between two steps, :data:`STEP_PAUSE_MS` apart, so the longest freeze is
    the longest step (:func:`layer_steps` splits adding a layer in three).
    A step that returns a list of steps has them run next, a turn each.
    ``pending`` is True until the last step has run.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._steps: list[Callable[[], Any]] = []

    @property
    def pending(self) -> bool:
        return bool(self._steps)

    def run(self, *steps: Callable[[], Any]) -> None:
        """Queue ``steps``; each runs in its own event-loop turn, the first
        :data:`STEP_PAUSE_MS` from now: a result arrives with its worker's
        end (the runner's finish, napari's progress bar closed), which Qt
        delivers in the same turn and which must not add to the first step."""
        freeze_long_lived_objects()
        idle = not self._steps
        self._steps.extend(steps)
        if idle:
            QTimer.singleShot(STEP_PAUSE_MS, self._next)

    def _next(self) -> None:
        if not self._steps:
            return
        step = self._steps[0]
        try:
            follow = step()
        except Exception as error:  # noqa: BLE001 - shown, never raised into Qt
            self._steps.clear()
            notify_error(error, "showing the result")
            return
        if self._steps and self._steps[0] is step:
            self._steps.pop(0)
            if isinstance(follow, list):  # steps known only now run next, a turn each
                self._steps[0:0] = follow
        if self._steps:
            QTimer.singleShot(STEP_PAUSE_MS, self._next)


class RunsWork:
    """What a widget that runs its work in ``self.runner`` (a :class:`Runner`)
    and shows results with ``self.delivery`` (a :class:`Delivery`) tells
    tests and the user: the worker, its control, and whether it is busy."""

    runner: Runner
    delivery: Delivery

    @property
    def worker(self) -> Any:
        """The running worker, or None."""
        return self.runner.worker

    @property
    def control(self) -> Any:
        """The running job's ``TrainControl``, or None."""
        return self.runner.control

    @property
    def busy(self) -> bool:
        """True while the work runs or its results are being shown."""
        return self.runner.running or self.delivery.pending


def run_steps_now(steps: Sequence[Callable[[], Any]]) -> None:
    """Run :class:`Delivery` steps at once, in this turn (the follow-up steps a
    step returns included): a widget's synchronous API and its tests."""
    pending = list(steps)
    while pending:
        follow = pending.pop(0)()
        if isinstance(follow, list):
            pending[0:0] = follow


def layer_steps(
    viewer: Any,
    kind: str,
    data: Any,
    done: Callable[[Layer], Any] | None = None,
    activate: bool = True,
    hidden: Callable[[Layer], Any] | None = None,
    **kwargs: Any,
) -> list[Callable[[], Any]]:
    """:class:`Delivery` steps that add a new ``kind`` ("image" or "labels")
    layer in three event-loop turns instead of one.

    1. The layer is built hidden and inserted without being activated
       (:func:`insert_layer_quietly`): its vispy visual and layer controls.
       ``hidden(layer)``, when given, runs in a turn of its own next, the
       layer still hidden (nothing of it is drawn yet).
    2. It is shown as ``kwargs`` ask (``visible``, default True): napari
       slices it and the next paint draws it.
    3. It becomes the active layer (``activate``), then ``done(layer)`` runs.
    """
    from napari.layers import Image

    visible = bool(kwargs.pop("visible", True))
    made: list[Layer] = []

    def insert() -> None:
        cls = Labels if kind == "labels" else Image
        made.append(insert_layer_quietly(viewer, cls(data, visible=False, **kwargs)))

    def show() -> None:
        made[0].visible = visible

    def finish() -> None:
        layer = made[0]
        if activate and layer in viewer.layers:
            viewer.layers.selection.active = layer
        if done is not None:
            done(layer)

    if hidden is None:
        return [insert, show, finish]
    return [insert, lambda: hidden(made[0]), show, finish]


def overlay_part_steps(viewer: Any, layer: Layer, overlay: Any) -> list[Callable[[], Any]]:
    """Make a layer overlay (napari's ``layer.colorbar``) visible with each of
    its drawn parts hidden, and return :class:`Delivery` steps that show the
    parts again, one a turn.

    napari builds an overlay's vispy visual when it becomes visible, and the
    first paint that draws it builds and links a GL program for every part
    (the colorbar: its gradient, its frame, its tick lines and tick labels):
    on a CPU renderer the Distance map's worst freeze. Called while ``layer``
    is hidden (:func:`layer_steps`' ``hidden``), the visual is built with
    nothing drawn; each step then draws one more part, so each paint builds
    one program. The parts are napari's private canvas state
    (``_qt_viewer.canvas._layer_overlay_to_visual``): where they are not
    found, the overlay is simply shown (no steps).
    """
    overlay.visible = True
    try:
        canvas = viewer.window._qt_viewer.canvas
        node = canvas._layer_overlay_to_visual[layer][overlay].node
        parts = []
        for child in node.children:
            subvisuals = getattr(child, "_subvisuals", None) or [child]
            parts += [part for part in subvisuals if part.visible]
    except Exception:  # noqa: BLE001 - an optimisation only; napari's layout may change
        return []
    for part in parts:
        part.visible = False

    def show(part: Any) -> Callable[[], Any]:
        def step() -> None:
            part.visible = True

        return step

    return [show(part) for part in parts]


#: The characters of a number's label on napari's canvas (colorbar ticks).
NUMBER_GLYPHS = "0123456789-."
#: The glyphs vispy measures for the line height of every canvas text.
LAYOUT_GLYPHS = "ÅÉÑŐjgpqy "


def glyph_steps(viewer: Any, text: str, per_step: int = 3) -> list[Callable[[], Any]]:
    """:class:`Delivery` steps that render the glyphs of ``text`` (and the
    ones vispy measures for any text's layout) into the canvas's glyph cache,
    ``per_step`` characters a turn, before a step shows that text.

    napari draws canvas text (colorbar ticks, text overlay) from one glyph
    cache per canvas and renders a glyph the first time a paint needs it: a
    signed distance field at 256 pt on the CPU, 6-20 ms a character measured
    here. The first paint of the φ unit and colorbar rendered some 35 glyphs
    in one turn (the Distance map's worst freeze); rendered ahead, a few per
    turn, that paint only draws. A warm cache costs nothing. The cache is
    napari's private canvas state (``_qt_viewer.canvas._font_info``): where
    it is not found, no steps (the paint renders the glyphs as before).
    """
    try:
        info = viewer.window._qt_viewer.canvas._font_info
        font = info.font_manager.get_font(info.face)
    except Exception:  # noqa: BLE001 - an optimisation only; napari's layout may change
        return []
    chars = "".join(dict.fromkeys(LAYOUT_GLYPHS + text))

    def render(part: str) -> Callable[[], Any]:
        def step() -> None:
            for char in part:
                font[char]

        return step

    return [render(chars[i : i + per_step]) for i in range(0, len(chars), per_step)]
