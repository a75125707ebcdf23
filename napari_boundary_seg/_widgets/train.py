"""Training widget: layers or a dataset folder in, a trained UNet and its prediction out.

The widget is thin. Its form is magicgui widgets (layer pickers, file
pickers, numeric fields) in a scroll area, the rarely changed ones in a
collapsible "Advanced settings" section; a preset choice fills them ("Quick
start", :func:`core.presets.quick_start_config`, or the paper's). It fills a
:class:`core.train.TrainConfig` from its fields (:meth:`TrainWidget.settings`
then :func:`build_config`), checks the inputs, and runs :func:`core.train.train`
in a napari generator ``thread_worker`` (:class:`TrainRunner`). It only listens
to the events the trainer yields: epoch and step bars with elapsed and
remaining time (:class:`~napari_boundary_seg._widgets._progress.RunProgress`)
and napari's progress bar, live curves of the loss terms, alpha and the
validation DSC / HD (:class:`~napari_boundary_seg._widgets._charts.TrainingCurves`,
redrawn at most every :data:`REDRAW_INTERVAL_MS`; the charts live in
``_charts``), and after each epoch a live preview of the slice
on view, predicted in the worker (:class:`PreviewEvent`) and written into one
``training preview`` Labels layer in place. Building the cases (and so the
distance maps of a whole volume), the preview and the prediction's layer
happen inside the worker, never in the GUI thread. The status follows the run
state exactly (Pause, Resume, Stop; epochs counted from 1); after a run the
prediction comes from ``best.pt`` (never from the untrained ``last.pt`` of a
run stopped in its first epoch) into a layer of its own name.

Slice plane: "auto" / axial / coronal / sagittal (``TrainConfig.axis``),
from the scan's orientation (the layer's affine, :func:`_common.layer_affine`),
never from the view: the validation block, the 3D patch clipping and the live
preview use the stored axis of that plane (:func:`_common.native_slice_axis`),
and after Start a 2D view is turned to show it (the view follows the
training). A run that ends badly (:func:`core.verdict.judge_run`) says so
under the status, on the charts and in a napari warning.

Mode: "Train on" 2D slices (the paper, both presets) or 3D patches
(``TrainConfig.dims``); the patch size in voxels per numpy axis (3D only; by
default :data:`core.patches.DEFAULT_PATCH_SIZE` clipped to the labels layer,
and at Start to the longest training part left beside the validation block,
:func:`fit_patch`); augmentation default / on / off (``augment`` None / True /
False: default on in 3D, off in 2D); under Advanced the foreground share of
the 3D patches (``oversample``). The prediction after a run, the live preview
and fine-tuning follow the checkpoint's mode: a 3D checkpoint predicts by
sliding windows, its preview by the windows covering the slice on view
(:class:`core.preview.SlicePreview`), and "Fine-tune from" sets the form to the
checkpoint's mode and patch (:meth:`TrainWidget.follow_checkpoint`).

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
from qtpy.QtCore import QEvent, QObject, QPoint, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_boundary_seg._widgets._charts import REDRAW_INTERVAL_MS, AlphaPlot, TrainingCurves
from napari_boundary_seg._widgets._common import (
    Delivery,
    ImageStack,
    ProgressRelay,
    check_device,
    controlled_worker_class,
    images_from_layers,
    is_segmentation_labels,
    labels_array,
    layer_affine,
    layer_steps,
    mark_output,
    native_slice_axis,
    notify_error,
    offered_image,
    output_label_colormap,
    require_layer,
    show_slicing_axis,
    start_progress_worker,
    unique_layer_name,
)
from napari_boundary_seg._widgets._progress import RunProgress
from napari_boundary_seg._widgets.inference import (
    check_checkpoint_channels,
    load_checked_checkpoint,
    predict_job,
)
from napari_boundary_seg.core.orientation import PLANES, SLICE_PLANES
from napari_boundary_seg.core.presets import split_slices, validation_block
from napari_boundary_seg.core.progress import Progress

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

__all__ = [
    "PREVIEW_NAME",
    "REDRAW_INTERVAL_MS",
    "PreviewEvent",
    "TrainRunner",
    "TrainWidget",
    "TrainingCurves",
    "build_config",
    "cases_from_layers",
    "fit_patch",
    "prediction_layer_job",
    "preset_values",
    "unique_layer_name",
    "validation_block",
]

LOSS_CHOICES = [
    ("GDL + BL (α schedule)", "gdl+bl"),
    ("GDL", "gdl"),
    ("BL alone", "bl"),
    ("Cross-entropy", "ce"),
    ("Dice", "dice"),
]
SCHEDULE_CHOICES = [
    ("paper (α − step per epoch)", "paper"),
    ("constant α", "constant"),
    ("reference code", "reference-code"),
]

BL_ALONE_WARNING = (
    "⚠ Boundary loss alone (α = 0 from the start) collapses to an empty "
    "foreground in binary problems (Kervadec et al. 2019). Use GDL + BL with an "
    "α schedule."
)


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
    """True when the boundary loss is the whole objective in the first epoch."""
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


def cases_from_layers(
    stack: ImageStack,
    labels: np.ndarray,
    axis: int,
    val_fraction: float,
    case_id: str = "viewer",
    affine: np.ndarray | None = None,
    normalize: str | None = "robust",
) -> tuple[Callable[[], tuple[list[Any], list[Any]]], slice | None]:
    """A function building the ``core.data.Case`` objects of the viewer's layers.

    The volume is split along ``axis`` (stored numpy order) into training cases
    and one validation case (:func:`core.presets.validation_block`,
    :func:`core.presets.split_slices`); the cases carry the layer's ``affine``
    so that the trainer finds the same anatomy in each, and the intensities
    the whole volume has under ``normalize`` (the training config's rule).
    The returned function is called inside the worker; it returns
    ``(train_cases, val_cases)``.
    """
    block = validation_block(labels, axis, val_fraction)

    def make() -> tuple[list[Any], list[Any]]:
        return split_slices(
            stack.images,
            labels,
            stack.spacing,
            axis,
            val_fraction,
            case_id=case_id,
            modalities=stack.names,
            affine=affine,
            normalize=normalize,
        )

    return make, block


def _core_takes_planes() -> bool:
    """True when ``TrainConfig.axis`` accepts a plane name (``"auto"``, ``"axial"``...)."""
    from napari_boundary_seg.core.train import TrainConfig

    try:
        TrainConfig(axis="auto")
    except (TypeError, ValueError):
        return False
    return True


def config_axis(plane: str, native: int | None) -> str | int:
    """``TrainConfig.axis`` of a run on slices of ``plane``.

    The plane itself, resolved by the trainer from each case's affine, the
    same rule as the command line; where the trainer takes only an axis
    index: the stored axis ``native`` the widget found from the layer's
    affine (layers), or the plane's axis in RAS order (folders).
    """
    if _core_takes_planes():
        return plane
    if native is not None:
        return int(native)
    return PLANES.get(plane, PLANES["axial"])


def fit_patch(
    patch: Sequence[int], shape: Sequence[int], axis: int, block: slice | None
) -> tuple[int, ...]:
    """A 3D patch that fits the training parts of one volume split along ``axis``.

    The patch is clipped to the volume's ``shape``; with a validation ``block``
    held out, its extent along ``axis`` is also clipped to the longest
    training part (before or after the block). A shorter part cannot hold a
    patch: :meth:`TrainWidget.validate` leaves it out of training.
    """
    fitted = [min(int(p), int(n)) for p, n in zip(patch, shape, strict=True)]
    if block is not None:
        longest = max(block.start, int(shape[axis]) - block.stop)
        fitted[axis] = max(1, min(fitted[axis], longest))
    return tuple(fitted)


def _fitting_cases(
    make: Callable[[], tuple[list[Any], list[Any]]], patch: Sequence[int]
) -> Callable[[], tuple[list[Any], list[Any]]]:
    """``make`` keeping only the training cases that hold a ``patch``."""

    def fitting() -> tuple[list[Any], list[Any]]:
        train, val = make()
        kept = [c for c in train if all(n >= p for n, p in zip(c.labels.shape, patch, strict=True))]
        return kept, val

    return fitting


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
        preview: tuple[ImageStack, Callable[[], tuple[int, int] | None]] | None = None,
    ) -> Any:
        """Start training ``config`` in a worker thread.

        ``make_cases`` (called in the worker) returns ``(cases, val_cases)``
        (``val_cases`` None: the trainer splits ``cases``); None trains on
        ``config.data``. ``preview``: see :func:`_training_job`.
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
            preview,
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


@dataclasses.dataclass(frozen=True)
class PreviewEvent:
    """The live preview after an epoch: the predicted labels of one slice.

    ``epoch`` is 0-based (as the trainer counts); ``axis`` and ``index`` the
    slice in the volume (numpy order; ignored for a 2D image), ``labels`` its
    ``(*slice shape)`` prediction.
    """

    epoch: int
    axis: int
    index: int
    labels: np.ndarray


def _preview_event(
    previewer: Any, checkpoint: str, epoch: int, where: tuple[int, int]
) -> PreviewEvent:
    """Load the epoch's weights (``last.pt``) and predict one slice (worker thread).

    The checkpoint says the mode: a 3D model predicts the slab of sliding
    windows of its training patch size that covers the slice
    (:meth:`core.preview.SlicePreview.predict`).
    """
    from napari_boundary_seg.core.checkpoint import (
        inference_settings,
        model_from_checkpoint,
        read_checkpoint,
    )

    saved = read_checkpoint(checkpoint)
    model = model_from_checkpoint(saved, checkpoint)
    axis, index = where
    labels = previewer.predict(model, axis, index, inference_settings(saved).patch_size)
    return PreviewEvent(epoch, axis, index, labels)


def _training_job(
    config: Any,
    make_cases: Callable[[], tuple[list[Any], list[Any] | None]] | None,
    control: Any,
    ended: threading.Event,
    preview: tuple[ImageStack, Callable[[], tuple[int, int] | None]] | None = None,
) -> Generator[Any, Any, Any]:
    """Worker body: build the cases (here, not in the GUI thread), then train.

    With ``preview = (stack, where)``, after each epoch the epoch's model
    predicts the slice ``where()`` returns (``(axis, index)``, read from the
    viewer by the GUI thread; None: no preview now) and a
    :class:`PreviewEvent` is yielded. A failed preview is logged, never fatal.
    """
    from napari_boundary_seg.core.train import EpochEvent, preprocess_config, train

    previewer = None
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
            if (
                preview is not None
                and isinstance(event, EpochEvent)
                and config.out_dir is not None
                and not control.stop_requested
            ):
                where = preview[1]()
                if where is None:
                    continue
                try:
                    if previewer is None:
                        from napari_boundary_seg.core.preview import SlicePreview

                        stack = preview[0]
                        previewer = SlicePreview(
                            stack.images,
                            stack.spacing,
                            preprocess_config(config),
                            affine=stack.affine,
                        )
                    last = str(Path(config.out_dir) / "last.pt")
                    yield _preview_event(previewer, last, event.epoch, where)
                except Exception:  # noqa: BLE001 - a preview never ends a run
                    logger.warning("live preview failed", exc_info=True)
    finally:
        ended.set()


# ---------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------


PRESET_CHOICES = [
    ("Quick start (a model in minutes on a CPU)", "quick"),
    ("Paper (Kervadec et al. 2019)", "paper"),
    ("Custom", "custom"),
]
PRESET_HELP = {
    "quick": (
        "Quick start: UNet width 16 on slices at their own size, 15 short epochs, "
        "GDL first and α down to 0.5, lr 2e-3. On the sample case it passes a "
        "validation DSC of 0.7 within minutes on 2 CPU cores (README, Quick start)."
    ),
    "paper": (
        "The paper's setup: UNet width 64, 256×256 slices, 100 epochs, α from 1 "
        "by −0.01 per epoch; hours on a CPU, use a GPU."
    ),
    "custom": "Your own settings.",
}


def preset_values(preset: str) -> dict[str, Any]:
    """The widget's field values of a preset (``"quick"`` or ``"paper"``)."""
    from napari_boundary_seg.core.presets import quick_start_config
    from napari_boundary_seg.core.train import TrainConfig

    # the paper: the trainer's defaults with its slices resized to 256 × 256
    config = quick_start_config() if preset == "quick" else TrainConfig(slice_size=256)
    schedule = dict(config.schedule)
    return {
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "slice_size": config.slice_size or 0,
        "depth": config.depth,
        "base_channels": config.base_channels,
        "skip_empty_slices": config.skip_empty_slices,
        "max_steps_per_epoch": config.max_steps_per_epoch or 0,
        "lr_patience": config.lr_patience,
        "val_fraction": config.val_fraction,
        "loss": config.loss.value,
        "schedule_kind": schedule["kind"],
        "alpha_start": schedule.get("start", 1.0),
        "alpha_step": schedule.get("step", 0.01),
        "alpha_floor": schedule.get("floor", 0.01),
        "dims": config.dims,
        "augment": _AUGMENT_VALUE[config.augment],
        "oversample": config.oversample,
    }


#: The augmentation choice's values and ``TrainConfig.augment``.
AUGMENT_CHOICES = [
    ("default (on in 3D, off in 2D)", "default"),
    ("on", "on"),
    ("off", "off"),
]
_AUGMENT_CONFIG = {"default": None, "on": True, "off": False}
_AUGMENT_VALUE = {v: k for k, v in _AUGMENT_CONFIG.items()}
DIMS_CHOICES = [("2D slices (the paper)", 2), ("3D patches", 3)]


def default_patch(shape: Sequence[int] | None) -> tuple[int, int, int]:
    """:data:`core.patches.DEFAULT_PATCH_SIZE` clipped to a volume's ``shape``
    (None, or not 3 axes: the default itself)."""
    from napari_boundary_seg.core.patches import DEFAULT_PATCH_SIZE

    if shape is None or len(shape) != 3:
        return tuple(DEFAULT_PATCH_SIZE)
    return tuple(min(int(p), int(n)) for p, n in zip(DEFAULT_PATCH_SIZE, shape, strict=True))


def _section(title: str) -> QLabel:
    label = QLabel(title)
    label.setStyleSheet("font-weight: bold; margin-top: 4px;")
    return label


class TrainWidget(QWidget):
    """Dock widget: train (or fine-tune) a UNet with the boundary loss.

    The form is made of magicgui widgets (layer pickers that follow the
    viewer, file pickers, numeric fields) in a scroll area, with the rarely
    changed settings in a collapsible "Advanced" section; the α plot, the live
    curves and the progress bars are plain Qt.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers give the data and receive the prediction.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        from magicgui import widgets as mw
        from qtpy.QtWidgets import QScrollArea
        from superqt import QCollapsible

        from napari_boundary_seg._widgets._common import device_choices, follow_layer_list
        from napari_boundary_seg.core.device import resolve_device

        self.viewer = napari_viewer
        self.runner = TrainRunner(self)
        self._preview_delivery = Delivery(self)
        self._waiting_preview: PreviewEvent | None = None
        self.events: list[Any] = []
        self.last_done: Any = None
        self.device_used = ""
        self._pbar: Any = None
        self._predict_worker: Any = None
        self.prediction_layer: Any = None
        self.preview_layer: Any = None
        self._steps_total = 0
        self._start_epoch = 0
        self._stack: ImageStack | None = None
        self._closing = False
        self._val_block: slice | None = None
        #: the stored (numpy) axis the run slices along (layers source)
        self._native_axis: int | None = None
        #: "the view now shows ..." after Start, or ""
        self._view_note = ""
        self._config: Any = None
        self._last_position: tuple[int, int] | None = None  # (epoch, step), 0-based
        self._preview_at: tuple[int, int] | None = None
        self._applying_preset = False
        #: the run state shown in the status: idle, preparing, running, pausing,
        #: paused, stopping, predicting, done
        self.state = "idle"
        #: extra TrainConfig fields for the next runs (tests, fine-tuning)
        self.overrides: dict[str, Any] = {}

        preload_training_modules()

        # -- preset ---------------------------------------------------------
        self.preset = mw.ComboBox(choices=PRESET_CHOICES, value="quick", label="Preset")
        self.preset_help = QLabel(PRESET_HELP["quick"])
        self.preset_help.setWordWrap(True)
        self.preset_help.setStyleSheet("font-size: 10px; color: #aaaaaa;")

        # -- data -----------------------------------------------------------
        self.source = mw.RadioButtons(
            choices=[("Layers", "layers"), ("Dataset folder", "folder")],
            value="layers",
            orientation="vertical",
            label="Source",
        )
        self.show_all_images = mw.CheckBox(value=False, text="list φ / probability layers too")
        self.images = mw.Select(choices=self._image_choices, label="Image layer(s)")
        self.images.tooltip = "Modalities, stacked as channels in the viewer's order"
        self.images.native.setFixedHeight(62)
        self.labels = mw.ComboBox(choices=self._labels_choices, label="Labels layer")
        self.labels.tooltip = "Integer Labels layers only"
        self.folder = mw.FileEdit(mode="d", label="Dataset folder")
        self.folder.tooltip = "imagesTr/ + labelsTr/, WMH or ISLES layout"
        self.val_fraction = mw.FloatSpinBox(
            value=0.2, min=0.0, max=0.9, step=0.05, label="Validation"
        )
        self.val_fraction.tooltip = (
            "Folder: fraction of cases (patient-wise) held out for validation.\n"
            "Layers: a block of neighbouring slices of that size is held out."
        )
        self.data_form = mw.Container(
            widgets=[
                self.source,
                self.images,
                self.show_all_images,
                self.labels,
                self.folder,
                self.val_fraction,
            ],
            labels=True,
        )

        # -- mode: 2D slices or 3D patches ------------------------------------------
        self.dims = mw.ComboBox(choices=DIMS_CHOICES, value=2, label="Train on")
        self.dims.tooltip = (
            "2D: the paper's slices along the slice axis. 3D: patches of the volume at "
            "its own spacing, predicted by Gaussian-weighted sliding windows."
        )
        self.patch = [
            mw.SpinBox(value=p, min=1, max=4096, label=f"axis {k}")
            for k, p in enumerate(default_patch(None))
        ]
        self.patch_row = mw.Container(
            widgets=self.patch, layout="horizontal", labels=False, label="Patch (voxels)"
        )
        self.patch_row.margins = (0, 0, 0, 0)
        self.patch_row.native.layout().setSpacing(2)
        self.patch_row.tooltip = (
            "3D patch per numpy axis (the layer's axes 0, 1, 2). Default: 96×96×32 "
            "clipped to the volume; along the split axis also to the training block."
        )
        self._patch_auto = default_patch(None)
        self.augment = mw.ComboBox(choices=AUGMENT_CHOICES, value="default", label="Augmentation")
        self.augment.tooltip = (
            "Flips, 90° rotations, intensity, scale/rotation/elastic; φ stays the exact "
            "distance map of the augmented label. Default: on in 3D, off in 2D (the paper)."
        )
        self.mode_form = mw.Container(
            widgets=[self.dims, self.patch_row, self.augment], labels=True
        )

        # -- training ---------------------------------------------------------
        self.epochs = mw.SpinBox(value=20, min=1, max=100000, label="Epochs")
        self.lr = mw.FloatSpinBox(value=2e-3, min=1e-6, max=1.0, step=1e-4, label="Learning rate")
        self.lr.native.setDecimals(5)
        self.loss = mw.ComboBox(choices=[(t, v) for t, v in LOSS_CHOICES], label="Loss")
        self.schedule = mw.ComboBox(
            choices=[(t, v) for t, v in SCHEDULE_CHOICES], label="α schedule"
        )
        self.schedule.tooltip = (
            "paper: α from its start, minus the step after each epoch, never below the "
            "floor (the default). constant: one α. reference code: the boundary weight "
            "grows from its start by the step (no cap), the GDL weight floored."
        )
        self.alpha_start = mw.FloatSpinBox(value=1.0, min=0.0, max=1.0, step=0.05, label="α start")
        self.alpha_step = mw.FloatSpinBox(
            value=0.02, min=0.0, max=1.0, step=0.005, label="step / epoch"
        )
        self.alpha_floor = mw.FloatSpinBox(value=0.5, min=0.0, max=1.0, step=0.01, label="α floor")
        for box in (self.alpha_start, self.alpha_step, self.alpha_floor):
            box.native.setDecimals(3)
        self.train_form = mw.Container(
            widgets=[
                self.epochs,
                self.lr,
                self.loss,
                self.schedule,
                self.alpha_start,
                self.alpha_step,
                self.alpha_floor,
            ],
            labels=True,
        )
        self.alpha_plot = AlphaPlot()
        self.warning = QLabel(BL_ALONE_WARNING)
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #ffb74d; font-weight: bold;")
        self.warning.setVisible(False)

        # -- advanced ------------------------------------------------------------
        self.batch_size = mw.SpinBox(value=8, min=1, max=1024, label="Batch size")
        self.slice_size = mw.SpinBox(
            value=16, min=0, max=2048, step=16, label="Slice size (0: native)"
        )
        self.slice_size.tooltip = "Slices are resized to N×N; 0 (native) keeps their size"
        self.depth = mw.SpinBox(value=4, min=1, max=6, label="UNet depth")
        self.base_channels = mw.SpinBox(value=16, min=2, max=256, step=8, label="UNet width")
        self.num_classes = mw.SpinBox(value=2, min=2, max=255, label="Classes")
        self.num_classes.tooltip = "Classes, background included (from the labels layer)"
        self.axis = mw.ComboBox(
            choices=[(p, p) for p in SLICE_PLANES], value="auto", label="Slice plane"
        )
        self.axis.tooltip = (
            "Plane of the 2D training slices, from the scan's orientation (its affine), "
            "never from the view. auto: axial, or the thick-slice axis when one spacing "
            "is more than 3× the others."
        )
        self.skip_empty = mw.CheckBox(value=False, text="foreground slices only")
        self.skip_empty.tooltip = "Train only on the slices that hold some foreground"
        self.max_steps = mw.SpinBox(value=1, min=0, max=1_000_000, label="Steps / epoch")
        self.max_steps.tooltip = "Cap on the steps of an epoch; 0: all (every slice once)"
        self.lr_patience = mw.SpinBox(value=10, min=1, max=10000, label="lr patience")
        self.lr_patience.tooltip = "Halve the lr after this many epochs without a better DSC"
        auto = f"auto ({resolve_device('auto')})"
        self.device = mw.ComboBox(
            choices=[(auto if d == "auto" else d, d) for d in device_choices()], label="Device"
        )
        self.seed = mw.SpinBox(value=0, min=0, max=2**31 - 1, label="Seed")
        self.output = mw.FileEdit(
            mode="d", value=str(Path.home() / "boundary-seg-runs"), label="Output folder"
        )
        self.output.tooltip = "Each run writes a new run-YYYYmmdd-HHMMSS folder here"
        self.finetune = mw.FileEdit(mode="r", filter="*.pt *.pth", label="Fine-tune from")
        self.oversample = mw.FloatSpinBox(
            value=1 / 3, min=0.0, max=1.0, step=0.05, label="Foreground share"
        )
        self.oversample.native.setDecimals(3)
        self.oversample.tooltip = (
            "3D: share of the patches centred on a random lesion voxel (nnU-Net: 1/3); "
            "0: uniform sampling"
        )
        self.advanced_form = mw.Container(
            widgets=[
                self.batch_size,
                self.slice_size,
                self.oversample,
                self.depth,
                self.base_channels,
                self.num_classes,
                self.axis,
                self.skip_empty,
                self.max_steps,
                self.lr_patience,
                self.device,
                self.seed,
                self.output,
                self.finetune,
            ],
            labels=True,
        )
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(self.advanced_form.native)
        self.advanced.setContentsMargins(0, 0, 0, 0)
        self.advanced.content().layout().setContentsMargins(0, 0, 0, 0)

        self.predict_after = mw.CheckBox(value=True, text="add the best model's prediction")
        self.live_preview = mw.CheckBox(value=True, text="live preview of the shown slice")
        self.live_preview.tooltip = (
            "After each epoch the model predicts the slice the viewer shows (in the "
            "worker thread) and the 'training preview' layer is updated"
        )
        self.output_form = mw.Container(widgets=[self.predict_after, self.live_preview])

        # -- controls, progress, status and curves ---------------------------------
        self.start_button = QPushButton("Start")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)
        self.progress = RunProgress()
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setToolTip(
            "Epochs and steps are counted from 1. 'HD —': the Hausdorff distance of an "
            "empty prediction is infinite, so it is not shown as a number (nor as the "
            "image diagonal the averages use)."
        )
        self.verdict: Any = None
        self.verdict_label = QLabel("")
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setStyleSheet("color: #ff8a65; font-weight: bold;")
        self.verdict_label.setVisible(False)
        self.curves = TrainingCurves()
        curves_box = QGroupBox("Live curves")
        curves_layout = QVBoxLayout(curves_box)
        curves_layout.setContentsMargins(2, 2, 2, 2)
        curves_layout.addWidget(self.curves)

        title = QLabel("Train a UNet with the boundary loss")
        title.setStyleSheet("font-size: 14px; font-weight: bold;")
        title.setWordWrap(True)
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(4, 4, 4, 4)
        column.setSpacing(4)
        column.addWidget(title)
        column.addWidget(self.preset.native)
        column.addWidget(self.preset_help)
        column.addWidget(_section("Data"))
        column.addWidget(self.data_form.native)
        column.addWidget(_section("Mode"))
        column.addWidget(self.mode_form.native)
        column.addWidget(_section("Training"))
        column.addWidget(self.train_form.native)
        column.addWidget(self.alpha_plot)
        column.addWidget(self.warning)
        column.addWidget(self.advanced)
        column.addWidget(self.output_form.native)
        column.addLayout(buttons)
        column.addWidget(self.progress)
        column.addWidget(self.status)
        column.addWidget(self.verdict_label)
        column.addWidget(curves_box)
        column.addStretch(1)
        self.settings_widgets = (
            self.preset.native,
            self.data_form.native,
            self.mode_form.native,
            self.train_form.native,
            self.advanced,
            self.output_form.native,
        )
        from qtpy.QtWidgets import QComboBox, QLineEdit

        for combo in content.findChildren(QComboBox):  # long entries must not widen the dock
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(8)
        for edit in content.findChildren(QLineEdit):
            edit.setMinimumWidth(60)
        for picker in (self.folder, self.output, self.finetune):  # "…", not "Choose directory"
            button = picker.choose_btn.native
            button.setToolTip(button.text())
            button.setText("…")
            button.setFixedWidth(28)
        from qtpy.QtWidgets import QAbstractItemView

        for view in content.findChildren(QAbstractItemView):
            view.setMinimumWidth(60)
        from qtpy.QtWidgets import QAbstractSpinBox

        for box in self.patch:  # three in a row: no +/- buttons, so they fit the dock
            box.native.setButtonSymbols(QAbstractSpinBox.ButtonSymbols.NoButtons)
            box.native.lineEdit().setMinimumWidth(24)
            box.native.setStyleSheet("min-width: 22px;")  # napari's style asks for 90 px
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # a scroll bar that comes and goes would resize the plots (a matplotlib redraw)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.scroll.setWidget(content)
        # the form fits the dock's width (down to 300 px); Qt may still scroll a
        # focused field into view sideways (at the end of a run): never
        horizontal = self.scroll.horizontalScrollBar()
        horizontal.valueChanged.connect(lambda value: value and horizontal.setValue(0))
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        self.setMinimumWidth(300)

        # -- wiring -------------------------------------------------------
        follow_layer_list(napari_viewer, self.reset_choices)
        self.preset.changed.connect(self._on_preset)
        for box in (self.alpha_start, self.alpha_step, self.alpha_floor, self.epochs, self.loss):
            box.changed.connect(self._update_schedule_view)
        for box in (
            self.epochs,
            self.lr,
            self.loss,
            self.alpha_start,
            self.alpha_step,
            self.alpha_floor,
            self.batch_size,
            self.slice_size,
            self.depth,
            self.base_channels,
            self.skip_empty,
            self.max_steps,
            self.lr_patience,
            self.val_fraction,
            self.dims,
            self.augment,
            self.oversample,
            *self.patch,
        ):
            box.changed.connect(self._to_custom)
        self.dims.changed.connect(self._on_dims)
        self.schedule.changed.connect(self._on_schedule_kind)
        self.labels.changed.connect(self._on_labels)
        self.num_classes.changed.connect(self._update_schedule_view)
        self.source.changed.connect(self._on_source)
        self.show_all_images.changed.connect(lambda *_: self.images.reset_choices())
        napari_viewer.dims.events.current_step.connect(self._update_preview_at)
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
        self.reset_choices()
        self.images.value = [layer for _, layer in self._image_choices()]
        self._apply_preset("quick")
        self._on_source()
        self._on_dims()
        self._set_running(False)

    # -- pickers ---------------------------------------------------------------
    def _image_choices(self, _: Any = None) -> list[tuple[str, Any]]:
        # the same layers as the other widgets' image pickers
        show_all = self.show_all_images.value if hasattr(self, "show_all_images") else False
        return [
            (layer.name, layer) for layer in self.viewer.layers if offered_image(layer, show_all)
        ]

    def _labels_choices(self, _: Any = None) -> list[tuple[str, Any]]:
        # segmentations only: no outline, outcome map or live preview
        return [
            (layer.name, layer) for layer in self.viewer.layers if is_segmentation_labels(layer)
        ]

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer pickers (napari calls this when layers change)."""
        for form in (self.data_form,):
            form.reset_choices()

    def image_layers(self) -> list[Any]:
        """The chosen image layers, in the viewer's order."""
        chosen = {id(layer) for layer in self.images.value}
        return [layer for layer in self.viewer.layers if id(layer) in chosen]

    def labels_layer(self) -> Any:
        """The chosen labels layer (None when there is none)."""
        return self.labels.value

    def configure(
        self, images: Sequence[str] | None = None, labels: str | None = None, **fields: Any
    ) -> None:
        """Set the form from code (scripts, benchmarks, tests).

        Parameters
        ----------
        images, labels
            Layer names for the image and labels pickers.
        **fields
            Field names of this widget and their values, e.g. ``epochs=2``,
            ``slice_size=128`` (0: native), ``base_channels=16``, ``device="cpu"``,
            ``output="/tmp/runs"``, ``preset="quick"``.
        """
        self.reset_choices()
        if "preset" in fields:
            self.preset.value = fields.pop("preset")
        if images is not None:
            self.images.value = [self.viewer.layers[name] for name in images]
        if labels is not None:
            self.labels.value = self.viewer.layers[labels]
        for name, value in fields.items():
            widget = getattr(self, name, None)
            if widget is None or not hasattr(widget, "value"):
                raise ValueError(f"TrainWidget has no field {name!r}")
            widget.value = value

    @property
    def busy(self) -> bool:
        """True while a run, or the prediction after it, is going on."""
        return self.runner.running or self._predict_worker is not None

    # -- field logic ---------------------------------------------------------
    def _on_preset(self, value: str) -> None:
        if value != "custom":
            self._apply_preset(value)
        self.preset_help.setText(PRESET_HELP[value])

    def _apply_preset(self, preset: str) -> None:
        """Set the fields to a preset's values (``"quick"`` or ``"paper"``)."""
        values = preset_values(preset)
        self._applying_preset = True
        try:
            self.preset.value = preset
            self.schedule.value = values["schedule_kind"]
            for name in (
                "epochs",
                "lr",
                "batch_size",
                "slice_size",
                "depth",
                "base_channels",
                "lr_patience",
                "val_fraction",
                "loss",
            ):
                getattr(self, name).value = values[name]
            self.max_steps.value = values["max_steps_per_epoch"]
            self.skip_empty.value = values["skip_empty_slices"]
            self.alpha_start.value = values["alpha_start"]
            self.alpha_step.value = values["alpha_step"]
            self.alpha_floor.value = values["alpha_floor"]
            self.dims.value = values["dims"]
            self.augment.value = values["augment"]
            self.oversample.value = values["oversample"]
        finally:
            self._applying_preset = False
        self.preset_help.setText(PRESET_HELP[preset])
        self._update_schedule_view()

    def _to_custom(self, *_: Any) -> None:
        if not self._applying_preset and self.preset.value != "custom":
            self._applying_preset = True
            try:
                self.preset.value = "custom"
            finally:
                self._applying_preset = False
            self.preset_help.setText(PRESET_HELP["custom"])

    def _on_source(self, *_: Any) -> None:
        layers = self.source.value == "layers"
        self.labels.enabled = layers
        self.folder.enabled = not layers
        self.num_classes.enabled = not layers
        self._on_labels()

    def _on_labels(self, *_: Any) -> None:
        """Follow the labels layer: its class count and whether it is binary."""
        if self.source.value == "layers":
            layer = self.labels.value
            if layer is not None:
                try:
                    top = int(np.max(np.asarray(layer.data))) if layer.data.size else 0
                    self.num_classes.value = max(top + 1, 2)
                except (TypeError, ValueError):
                    pass
                self._fit_default_patch(layer.data.shape)
        self._update_preview_at()
        self._update_schedule_view()

    def _fit_default_patch(self, shape: Sequence[int]) -> None:
        """Set the patch to the default clipped to ``shape`` unless the user changed it."""
        if self.patch_size() != self._patch_auto:
            return
        self._patch_auto = default_patch(shape)
        applying, self._applying_preset = self._applying_preset, True
        try:
            for box, value in zip(self.patch, self._patch_auto, strict=True):
                box.value = value
        finally:
            self._applying_preset = applying

    def patch_size(self) -> tuple[int, int, int]:
        """The patch fields (voxels, numpy axis order)."""
        return tuple(int(box.value) for box in self.patch)

    def _on_dims(self, *_: Any) -> None:
        """Show the fields of the chosen mode: the patch and the foreground share
        in 3D, the slice size and the empty-slice filter in 2D."""
        three = self.dims.value == 3
        self.patch_row.visible = three
        self.oversample.visible = three
        self.slice_size.visible = not three
        self.skip_empty.visible = not three

    def _on_schedule_kind(self, *_: Any) -> None:
        kind = self.schedule.value
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
        boxes = (self.alpha_start, self.alpha_step, self.alpha_floor)
        for box, text, value in zip(boxes, names, defaults, strict=True):
            box.label = text or box.label
            box.visible = bool(text)
            if not self._applying_preset:
                with box.changed.blocked():
                    box.value = value
        if not self._applying_preset:
            self._to_custom()
        self._update_schedule_view()

    def schedule_params(self) -> dict[str, float]:
        return schedule_params(
            self.schedule.value,
            self.alpha_start.value,
            self.alpha_step.value,
            self.alpha_floor.value,
        )

    def _is_binary(self) -> bool:
        return self.num_classes.value <= 2

    def _update_schedule_view(self, *_: Any) -> None:
        loss = self.loss.value
        uses_schedule = loss == "gdl+bl"
        for box in (self.schedule, self.alpha_start, self.alpha_step, self.alpha_floor):
            box.enabled = uses_schedule
        kind = self.schedule.value
        params = self.schedule_params()
        try:
            weights = planned_weights(loss, kind, params, self.epochs.value)
        except (TypeError, ValueError) as exc:
            self.status.setText(f"α schedule: {exc}")
            weights = []
        self.alpha_plot.set_weights(weights)
        collapse = boundary_only_from_start(loss, kind, params) and self._is_binary()
        self.warning.setVisible(collapse)

    # -- live preview -------------------------------------------------------------
    def _update_preview_at(self, *_: Any) -> None:
        """Remember (GUI thread) which slice of the labels layer the viewer shows,
        along the training axis; the worker reads it after each epoch."""
        layer = self.labels.value if self.source.value == "layers" else None
        if layer is None:
            self._preview_at = None
            return
        axis = self._native_axis
        if axis is None:
            axis = native_slice_axis(layer, self.axis.value)
        if layer.ndim == 2:
            self._preview_at = (0, 0)
            return
        try:
            point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        except (TypeError, ValueError, IndexError):
            self._preview_at = None
            return
        n = layer.data.shape[axis]
        self._preview_at = (axis, int(np.clip(round(float(point[axis])), 0, n - 1)))

    def _follow_training_plane(self) -> None:
        """After Start, a 2D view shows the plane the run trains on (the view
        follows the training; the training never follows the view)."""
        layer = self.labels.value if self.source.value == "layers" else None
        axis = self._native_axis
        if layer is None or axis is None or layer.ndim != 3:
            return
        if self._closing or not self.runner.running:
            return
        if show_slicing_axis(self.viewer, layer, axis):
            logger.info("the view now slices along axis %d, the training plane", axis)
            self._update_preview_at()

    def _preview_where(self) -> tuple[int, int] | None:
        """The slice to preview now (read by the worker thread)."""
        return self._preview_at if self.live_preview.value else None

    def _on_preview(self, event: PreviewEvent) -> None:
        """Show the preview slice in the preview layer, updating its data in place.

        The first preview makes the layer in steps, one per event-loop turn
        (``_common.layer_steps``: inserted hidden, shown, then filled), as
        every other result is delivered; a preview that comes meanwhile waits
        for the layer (only the newest is kept)."""
        if self._stack is None:
            return
        shape = self._stack.images.shape[1:]
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != shape:
            pending = self._preview_delivery.pending
            self._waiting_preview = event
            if not pending:
                self.preview_layer = None
                geometry = dict(self._stack.geometry)
                metadata = mark_output("preview", geometry.pop("metadata", None))
                self._preview_delivery.run(
                    *layer_steps(
                        self.viewer,
                        "labels",
                        np.zeros(shape, dtype=np.uint8),
                        done=self._preview_made,
                        activate=False,
                        name=PREVIEW_NAME,
                        opacity=0.6,
                        colormap=output_label_colormap("preview"),
                        metadata=metadata,
                        **geometry,
                    )
                )
            return
        self._write_preview(layer, event)

    def _preview_made(self, layer: Any) -> None:
        """The preview layer is in the viewer: show the newest preview in it."""
        self.preview_layer = layer
        event, self._waiting_preview = self._waiting_preview, None
        if event is not None:
            self._write_preview(layer, event)

    def _write_preview(self, layer: Any, event: PreviewEvent) -> None:
        data = layer.data
        data[...] = 0
        if data.ndim == 2:
            data[...] = event.labels
        else:
            index = [slice(None)] * 3
            index[event.axis] = event.index
            data[tuple(index)] = event.labels
        layer.refresh()
        found = int((event.labels > 0).sum())
        what = f"{found} foreground pixels" if found else "no foreground predicted"
        layer.metadata.update(mark_output("preview"))
        layer.metadata["napari_boundary_seg"] = {"epoch": event.epoch + 1}
        self._preview_text = f"Preview (epoch {event.epoch + 1}, slice {event.index}): {what}."
        self._show_status()

    # -- settings -> config ------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The widget's fields as ``TrainConfig`` keyword arguments (plus the
        schedule fields, see :func:`build_config`); data fields are added by
        :meth:`validate`."""
        finetune = path_text(self.finetune)
        settings = {
            "loss": self.loss.value,
            "schedule_kind": self.schedule.value,
            "schedule_params": self.schedule_params(),
            "epochs": self.epochs.value,
            "lr": self.lr.value,
            "batch_size": self.batch_size.value,
            "slice_size": self.slice_size.value or None,
            "depth": self.depth.value,
            "base_channels": self.base_channels.value,
            "skip_empty_slices": self.skip_empty.value,
            "max_steps_per_epoch": self.max_steps.value or None,
            "lr_patience": self.lr_patience.value,
            "device": self.device.value,
            "seed": self.seed.value,
            "val_fraction": self.val_fraction.value,
            "num_classes": self.num_classes.value,
            "out_dir": path_text(self.output),
            "init_checkpoint": finetune or None,
            "dims": self.dims.value,
            "patch_size": self.patch_size() if self.dims.value == 3 else None,
            "oversample": self.oversample.value,
            "augment": _AUGMENT_CONFIG[self.augment.value],
        }
        return settings

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
        loaded = None
        if settings["init_checkpoint"]:
            loaded = load_checked_checkpoint(settings["init_checkpoint"], None)
            settings.update(self.follow_checkpoint(loaded[1]))
        make_cases = None
        n_channels = None
        self._stack = None
        plane = self.axis.value
        axis = None
        self._native_axis = None
        if self.source.value == "layers":
            labels_layer = require_layer(self.labels.value, "labels")
            stack = images_from_layers(self.image_layers())
            labels = labels_array(labels_layer)
            settings["num_classes"] = check_labels(
                labels, labels_layer.name, stack.images.shape[1:]
            )
            # the data says the axis (its affine), never the viewer
            axis = native_slice_axis(labels_layer, plane)
            self._native_axis = axis
            make_cases, block = cases_from_layers(
                stack,
                labels,
                axis,
                settings["val_fraction"],
                affine=layer_affine(labels_layer),
            )
            if settings.get("dims") == 3:
                if labels.ndim != 3:
                    raise ValueError(
                        f"3D patches need a 3D volume: labels '{labels_layer.name}' has shape "
                        f"{tuple(labels.shape)}. Choose 'Train on: 2D slices'."
                    )
                settings["patch_size"] = fit_patch(
                    settings["patch_size"], labels.shape, axis, block
                )
                make_cases = _fitting_cases(make_cases, settings["patch_size"])
            self._val_block = block
            n_channels = stack.images.shape[0]
            self._stack = stack
        else:
            text = path_text(self.folder)
            folder = Path(text).expanduser()
            if not text or not folder.is_dir():
                raise ValueError(f"Dataset folder not found: '{text}'.")
            from napari_boundary_seg.core.data import find_cases

            if not find_cases(folder):
                raise ValueError(f"No cases found in '{folder}' (generic, WMH or ISLES layout).")
            settings["data"] = str(folder)
            if self.image_layers():
                try:
                    self._stack = images_from_layers(self.image_layers())
                except (TypeError, ValueError):
                    self._stack = None  # no prediction afterwards, training still runs
        settings["axis"] = config_axis(plane, axis)
        if loaded is not None and n_channels is not None:
            check_checkpoint_channels(loaded, n_channels, settings["init_checkpoint"])
        settings["out_dir"] = str(new_run_folder(output))
        return build_config(settings), make_cases

    def follow_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """Fine-tuning follows the checkpoint's mode: its ``dims`` and 3D patch
        size go into the form (shown) and are returned as settings."""
        from napari_boundary_seg.core.checkpoint import training_mode

        mode = training_mode(checkpoint)
        self.dims.value = mode["dims"]
        if mode["dims"] == 3:
            for box, value in zip(self.patch, mode["patch_size"], strict=True):
                box.value = int(value)
        return {"dims": mode["dims"], "patch_size": mode["patch_size"]}

    # -- run state and status ----------------------------------------------------
    STATE_TEXT = {
        "idle": "Ready.",
        "preparing": "Preparing the data…",
        "running": "Training",
        "pausing": "Pausing after the current step…",
        "paused": "Paused",
        "stopping": "Stopping after the current step…",
        "predicting": "Predicting with the trained model…",
        "done": "Done",
    }

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state = state
        self._detail = detail
        self._show_status()

    def _show_status(self) -> None:
        detail = getattr(self, "_detail", "")
        head = self.STATE_TEXT[self.state]
        text = f"{head} — {detail}" if detail else head
        preview = getattr(self, "_preview_text", "")
        if preview and self.state in ("running", "pausing", "paused", "stopping"):
            text = f"{text}\n{preview}"
        self.status.setText(text)

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
        self._last_position = None
        self._preview_text = ""
        self.verdict = None
        self.verdict_label.setVisible(False)
        self._config = config
        self._update_preview_at()
        # the view follows in a turn of its own: napari slices every layer again
        QTimer.singleShot(0, self._follow_training_plane)
        self.curves.reset(config.epochs)
        self.curves.start_timer()
        self.progress.reset(config.epochs)
        self.progress.busy("preparing data")
        # napari's activity-dialog bar costs 20-300 ms to build (the first one
        # shows the dialog's widgets): built right after the click returns, so
        # the click itself stays short and the status shows "Preparing" at once
        QTimer.singleShot(0, self._open_progress)
        preview = None
        if self._stack is not None and self.source.value == "layers":
            preview = (self._stack, self._preview_where)
        self.runner.start(config, make_cases, preview)
        self._set_running(True)
        self._set_state("preparing", f"checkpoints go to {config.out_dir}")
        return True

    def _open_progress(self) -> None:
        # a run is what the user now watches: bring the buttons, the bars, the
        # status and the start of the curves into view (the form is taller than
        # most docks): the Start row goes to the top of the dock. Not
        # ensureWidgetVisible(curves): curves taller than the dock get centred,
        # which scrolls the bars above them out of view.
        content = self.scroll.widget()
        content.layout().activate()  # the geometry of the state just set
        top = self.start_button.mapTo(content, QPoint(0, 0)).y() - 4
        bar = self.scroll.verticalScrollBar()
        bar.setValue(max(0, min(top, bar.maximum())))
        if self._pbar is None and self.runner.running and not self._closing:
            self._pbar = ProgressRelay("Training", parent=self)
            if self._steps_total:
                self._pbar.set(0, self._steps_total, "training")
            else:
                self._pbar.set(0, 0, "preparing data")

    def toggle_pause(self) -> None:
        if not self.runner.running or self.state in ("stopping", "preparing"):
            return
        if self.runner.paused:
            self.runner.resume()
            self.pause_button.setText("Pause")
            self._set_state("running", self._position_text("resumed"))
        else:
            self.runner.pause()
            self.pause_button.setText("Resume")
            self._set_state("pausing")

    def stop(self) -> None:
        if self.runner.running:
            self.runner.stop()
            self.pause_button.setText("Pause")
            self.pause_button.setEnabled(False)
            self._set_state("stopping")

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
        for widget in self.settings_widgets:
            widget.setEnabled(not running)
        if not running:
            self.pause_button.setText("Pause")

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
            if self.runner.paused and self.state in ("pausing", "paused"):
                self._set_state(
                    "paused",
                    f"before step {event.step + 1} of epoch {event.epoch + 1}; Resume or Stop",
                )
        elif name == "PreviewEvent":
            self._on_preview(event)
        elif isinstance(event, Progress) and self._steps_total == 0:
            self._set_progress(event.done, event.total, event.message)

    def _set_progress(self, done: int, total: int, message: str = "") -> None:
        if self._pbar is not None:
            self._pbar.set(done, total, message)

    _spe = 0

    def _on_info(self, event: Any) -> None:
        if event.device:
            self.device_used = event.device
        if event.steps_per_epoch:
            self._start_epoch = event.start_epoch
            self._spe = event.steps_per_epoch
            self._steps_total = (self._config.epochs - event.start_epoch) * event.steps_per_epoch
            self._set_progress(0, self._steps_total, "training")
            self.progress.start(self._config.epochs, event.start_epoch, event.steps_per_epoch)
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
            if self.state == "preparing":
                self._set_state(
                    "running",
                    f"on {self.device_used}: {event.num_train_slices} {self._items_text()}, "
                    f"{event.steps_per_epoch} steps per epoch{val}",
                )
        elif self.state == "preparing":
            self._set_state("preparing", f"{event.message} ({self.device_used})")

    def _items_text(self) -> str:
        """What an epoch's items are: slices, or 3D patches of their size."""
        config = self._config
        if config is None or config.dims != 3:
            return "slices"
        aug = "augmented " if config.augment_enabled else ""
        return f"{aug}3D patches of {'×'.join(map(str, config.patch_size))}"

    def _on_step(self, event: Any) -> None:
        spe = event.steps_per_epoch
        self._spe = spe
        self._last_position = (event.epoch, event.step)
        done = (event.epoch - self._start_epoch) * spe + event.step + 1
        self.curves.add_step(
            event.epoch + (event.step + 1) / spe, event.loss, event.region, event.boundary
        )
        self.progress.step(event.epoch, event.step)
        self._set_progress(done, self._steps_total, f"epoch {event.epoch + 1}")

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
        if self.state == "running":
            self._set_state("running", detail)
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
        from napari_boundary_seg.core.verdict import judge_run

        done = self.last_done
        scores = [float(row.get("val_dice", math.nan)) for row in (done.history if done else [])]
        scores = [d for d in scores if math.isfinite(d)]
        best = max(scores) if scores else None
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
        return judge_run(best, predicted_voxels, reference, total)

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
            self._set_state("done", f"{epochs_done} epoch(s) trained")
        elif done.outcome is Outcome.STOPPED:
            self.progress.finish("stopped")
            self._set_state(
                "done",
                f"stopped by request ({self._position_text() or 'before the first step'}; "
                f"{epochs_done} epoch(s) complete)",
            )
        else:
            self.progress.finish("stopped")
            self._set_state("done", f"stopped: {done.reason}")
            notify_error(f"Training stopped: {done.reason}")

    def _on_failed(self, exc: BaseException) -> None:
        self.progress.finish("failed")
        self._set_state("done", f"training failed: {exc}")
        notify_error(exc)

    def _on_finished(self) -> None:
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        self._set_running(False)
        done = self.last_done
        if done is not None and not self._closing and self.predict_after.value:
            self._predict_after(done)

    # -- prediction after training -------------------------------------------------
    def prediction_checkpoint(self, done: Any) -> tuple[str | None, str]:
        """The checkpoint to predict with after a run, and why.

        ``best.pt`` whenever it exists (also after Stop); ``last.pt`` only when
        the run completed without writing a best one; a run stopped before
        its first epoch ended gives None (its ``last.pt`` is untrained).
        """
        if done.best_checkpoint:
            return done.best_checkpoint, "best.pt (best validation epoch)"
        if done.last_checkpoint and done.history:
            return done.last_checkpoint, "last.pt (no best.pt was written)"
        return None, "no epoch was completed, so there is no trained checkpoint"

    def _predict_after(self, done: Any) -> Any:
        """Predict the current image with the best model; returns the worker."""
        checkpoint, why = self.prediction_checkpoint(done)
        stack = self._stack
        if stack is None:
            return None
        if checkpoint is None:
            self._detail = f"{self._detail}. No prediction: {why}"
            self._show_status()
            return None
        run = Path(checkpoint).parent.name  # run-YYYYmmdd-HHMMSS[-k]: keep the time
        run = run.split("-", 2)[-1] if run.startswith("run-") else run
        name = unique_layer_name(self.viewer, f"prediction {Path(checkpoint).stem} {run}")
        detail = self._detail
        self._set_state("predicting", f"with {why}")

        def returned(layer: Any) -> None:
            layer = self._deliver_prediction(layer)
            self.prediction_layer = layer
            found = int(layer.metadata["napari_boundary_seg"]["foreground_voxels"])
            what = f"{found} foreground voxels" if found else "no foreground predicted"
            self._set_state(
                "done", f"{detail}. Prediction with {why} added as '{layer.name}': {what}."
            )
            self._show_verdict(self.judge(found))

        def finished() -> None:
            if self._closing:  # the widget may be gone
                return
            self._predict_worker = None
            if self.state == "predicting":  # no prediction came back
                self._set_state("done", detail)
                self._show_verdict(self.judge())

        device = self.device_used or "auto"
        worker = start_progress_worker(
            lambda: prediction_layer_job(checkpoint, stack, device, name),
            returned,
            "Predicting with the trained model",
            start=False,
        )
        worker.finished.connect(finished)
        self._predict_worker = worker
        worker.start()
        return worker

    def _deliver_prediction(self, layer: Any) -> Any:
        """Put the prediction (a Labels layer built in the worker) in the viewer.

        Adding a Labels layer costs napari 0.3-0.8 s of event loop here (its
        brush and polygon overlays), so when this run's live-preview layer is
        in the viewer it becomes the prediction: its data replaced in place,
        renamed, no layer added. The next run makes a new preview layer, so an
        earlier prediction is never overwritten.
        """
        preview = self.preview_layer
        if (
            preview is not None
            and preview in self.viewer.layers
            and preview.data.shape == layer.data.shape
        ):
            self.preview_layer = None
            preview.data = layer.data
            preview.metadata = dict(layer.metadata)
            preview.name = layer.name
            preview.opacity = layer.opacity
            preview.colormap = layer.colormap
            preview.visible = True
            return preview
        self.viewer.add_layer(layer)
        return layer

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


#: Name of the live-preview Labels layer (updated in place after each epoch).
PREVIEW_NAME = "training preview"


def path_text(edit: Any) -> str:
    """The text of a magicgui ``FileEdit`` as typed ("" when empty; its
    ``value`` would turn "" into the current folder)."""
    return str(edit.line_edit.value).strip()


def prediction_layer_job(
    checkpoint: str, stack: ImageStack, device: str, name: str
) -> Generator[Any, Any, Any]:
    """Worker body: predict the volume and build its Labels layer (here, not in
    the GUI thread, which only adds it)."""
    from napari.layers import Labels

    _, labels = yield from predict_job(
        checkpoint, stack.images, stack.spacing, device, affine=stack.affine
    )
    labels = np.asarray(labels)
    data = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32)
    layer = Labels(data, name=name, colormap=output_label_colormap("prediction"), **stack.geometry)
    layer.metadata.update(mark_output("prediction"))
    layer.metadata["napari_boundary_seg"] = {
        "checkpoint": str(checkpoint),
        "foreground_voxels": int((data > 0).sum()),
    }
    return layer
