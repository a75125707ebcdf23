"""The worker bodies of the widgets, with no Qt import: generators of events
that ``_runner.Runner`` runs in a napari ``thread_worker``. Each builds its
inputs and its layers' data here, in the worker, never in the GUI thread.

- :func:`predict_job`, :func:`prediction_layer_job`: predict a volume (Predict,
  and Train after a run);
- :func:`training_job`: build the cases, train, and after each epoch predict
  the slice on view (:class:`PreviewEvent`);
- :func:`predict_for_correction`, :func:`finetune_job`,
  :func:`finetune_layers_job`: the Finetune widget's prediction and fine-tune.

See docs/DESIGN.md, "The widgets".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg._widgets._checkpoints import (
    checkpoint_axis,
    load_checked_checkpoint,
    prediction_outputs,
)
from napari_boundary_seg._widgets._edits import foreground_flags
from napari_boundary_seg._widgets._layers import (
    ImageStack,
    compact_labels,
    images_from_layers,
    mark_output,
    output_label_colormap,
)
from napari_boundary_seg.core.progress import Progress

logger = logging.getLogger(__name__)


def predict_job(
    checkpoint: Any,
    images: np.ndarray,
    spacing: tuple[float, ...],
    device: str = "auto",
    axis: int | None = None,
    affine: np.ndarray | None = None,
    flips: bool = False,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Worker body: predict a volume, yielding progress.

    Parameters
    ----------
    checkpoint
        A checkpoint path (loaded and checked here, in the worker:
        :func:`load_checked_checkpoint`), ``(model, checkpoint dict)`` from
        :func:`core.checkpoint.load_checkpoint`, or a model.
    images
        ``(M, *spatial)`` float32 modalities.
    spacing
        Voxel size, numpy axis order.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    axis
        Slicing axis; None: the one the model was trained with.
    affine
        The volume's voxel-to-world affine (the layers'): the model sees the
        volume reoriented as in training.
    flips
        Test-time mirroring (:func:`core.predict.iter_predict_volume`).

    Returns
    -------
    probs, labels
        ``(C, *spatial)`` float32 probabilities and ``(*spatial)`` labels.
    """
    from napari_boundary_seg.core.predict import iter_predict_volume

    if isinstance(checkpoint, str | Path):
        yield Progress(0, 0, "loading the checkpoint")
        checkpoint = load_checked_checkpoint(checkpoint, images.shape[0], images.ndim - 1)
    result = yield from iter_predict_volume(
        checkpoint, images, tuple(spacing), device=device, axis=axis, affine=affine, flips=flips
    )
    return result


def prediction_layer_job(
    checkpoint: str, stack: ImageStack, device: str, name: str
) -> Generator[Any, Any, Any]:
    """Worker body: predict the volume and build its Labels layer (here, not in
    the GUI thread, which only adds it)."""
    from napari.layers import Labels

    _, labels = yield from predict_job(
        checkpoint, stack.images, stack.spacing, device, affine=stack.affine
    )
    data = compact_labels(labels)
    layer = Labels(
        data,
        name=name,
        colormap=output_label_colormap("prediction"),
        **stack.geometry,
    )
    layer.metadata.update(mark_output("prediction"))
    layer.metadata["napari_boundary_seg"] = {
        "checkpoint": str(checkpoint),
        "foreground_voxels": int((data > 0).sum()),
    }
    return layer


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


PREVIEW_LAYER_WAIT_S = 5.0
"""How long the training waits, at most, for the GUI to add the preview layer."""


def training_job(
    config: Any,
    make_cases: Callable[[], tuple[list[Any], list[Any] | None]] | None,
    control: Any,
    ended: threading.Event,
    preview: tuple[ImageStack, Callable[[], tuple[int, int] | None]] | None = None,
    preview_shown: threading.Event | None = None,
) -> Generator[Any, Any, Any]:
    """Worker body: build the cases (here, not in the GUI thread), then train.

    With ``preview = (stack, where)``, after each epoch the epoch's model
    predicts the slice ``where()`` returns (``(axis, index)``, read from the
    viewer by the GUI thread; None: no preview now) and a
    :class:`PreviewEvent` is yielded. A failed preview is logged, never fatal.

    ``preview_shown``, set by the GUI once the preview layer is in the viewer:
    after the first preview the training waits for it (once, at most
    :data:`PREVIEW_LAYER_WAIT_S`, or until a stop), so that napari adds that
    layer (its one long event-loop turn of the run) with the CPU to itself,
    not beside a training step; later previews are written in place.
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
                    continue
                if preview_shown is not None:  # once: a layer that failed is not waited for again
                    wait_until(preview_shown, control, PREVIEW_LAYER_WAIT_S)
                    preview_shown = None
    finally:
        ended.set()


def wait_until(flag: threading.Event, control: Any, timeout: float) -> bool:
    """Block until ``flag`` is set, ``control`` asks to stop or ``timeout``
    seconds have passed; returns whether ``flag`` was set."""
    deadline = time.monotonic() + timeout
    while not flag.is_set() and not control.stop_requested:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        flag.wait(min(left, 0.05))
    return flag.is_set()


def predict_for_correction(
    checkpoint: str,
    images: np.ndarray,
    spacing: tuple[float, ...],
    device: str,
    affine: np.ndarray | None = None,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray, int]]:
    """Predict and report the checkpoint's slicing axis: ``(foreground
    probability (*spatial) float32, labels (*spatial) uint8 or int32, axis)``, the
    layers' data built here in the worker."""
    yield Progress(0, 0, "loading the checkpoint")
    loaded = load_checked_checkpoint(checkpoint, images.shape[0], images.ndim - 1)
    axis = checkpoint_axis(loaded[1], images.ndim - 1, affine, spacing)
    probs, labels = yield from predict_job(loaded, images, spacing, device, affine=affine)
    foreground, labels = prediction_outputs(probs, labels)
    return foreground, labels, axis


def finetune_job(
    checkpoint: str,
    images: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, ...],
    slices: Sequence[int],
    settings: dict[str, Any],
    old_pred: np.ndarray | None,
    control: Any,
    truth: np.ndarray | None = None,
    affine: np.ndarray | None = None,
) -> Generator[Any, None, tuple[Any, dict[str, Any] | None]]:
    """Worker body: fine-tune, then (unless stopped) predict with both models and compare.

    ``labels`` and ``truth`` are copies made in the GUI thread, ``images`` a stack
    made in the worker (:func:`finetune_layers_job`).
    Returns ``(FinetuneResult, evaluation or None)``; the evaluation of
    :func:`core.finetune.evaluate_finetune` gains ``untouched_truth`` (the
    untouched row against ``truth``, None without one), ``round`` (the round's
    point on the correction curve, :func:`core.rounds.round_point`), ``foreground``
    (:func:`foreground_flags` of the old and the new prediction) and the
    layers' data ``new_labels`` (uint8, or int32 beyond 255).
    """
    from napari_boundary_seg.core.finetune import compare_models, evaluate_finetune, finetune
    from napari_boundary_seg.core.rounds import round_point

    result = yield from finetune(
        checkpoint, images, labels, spacing, slices, control=control, affine=affine, **settings
    )
    if result.stopped or result.checkpoint is None:
        return result, None
    evaluation = yield from evaluate_finetune(
        result,
        images,
        labels,
        spacing,
        old_pred=old_pred,
        device=settings.get("device"),
        affine=affine,
    )
    old, new = evaluation["old_pred"], evaluation["new_pred"]
    taught = sorted({*result.slices, *result.verified_slices})  # corrected or checked
    evaluation["untouched_truth"] = None
    if truth is not None:
        against = compare_models(old, new, truth, spacing, taught, result.axis)
        evaluation["untouched_truth"] = against["untouched"]
    evaluation["round"] = round_point(old, new, taught, result.axis, truth)
    evaluation["foreground"] = {
        "old": foreground_flags(old, taught, result.axis),
        "new": foreground_flags(new, taught, result.axis),
    }
    evaluation["new_labels"] = compact_labels(new)
    return result, evaluation


def finetune_layers_job(
    layers: Sequence[Any], checkpoint: str, *args: Any, **kwargs: Any
) -> Generator[Any, None, tuple[Any, dict[str, Any] | None]]:
    """:func:`finetune_job` on the image ``layers`` stacked and checked here, in
    the worker (``_layers.images_from_layers``: a fresh copy), not in the
    Start click."""
    stack = images_from_layers(layers)
    return (yield from finetune_job(checkpoint, stack.images, *args, affine=stack.affine, **kwargs))
