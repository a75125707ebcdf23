"""``finetune``: fine-tune a checkpoint on corrected slices of one scan (the logic
lives in :mod:`napari_boundary_seg.core.finetune`, shared with the widget)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import (
    PROG,
    RUN_FILES,
    CommandError,
    Interrupted,
    NewFolders,
    add_affine_option,
    add_threads_option,
    as_typed,
    check_affine,
    check_axis,
    check_device,
    check_option,
    drive,
    error_message,
    out,
    progress_bar,
    read_labels,
    restore_sigint,
    set_threads,
    stop_on_sigint,
    warn,
)
from napari_boundary_seg.core.config import FinetuneConfig, settings
from napari_boundary_seg.options import Option, add_options, flag_message, option_values

logger = logging.getLogger(__name__)

HELP = "fine-tune a checkpoint on corrected slices of one scan"

FINETUNE_FLAGS = {
    **{s.name: s.flag for s in settings(FinetuneConfig) if s.flag and "_" in s.name},
    "mix_cases": "--mix-data",
}
"""The fine-tune's arguments that its messages name, and the flags they are shown as."""

FINETUNE_OPTIONS = [Option(s, s.flag) for s in settings(FinetuneConfig) if s.flag]
"""The options generated from :class:`~napari_boundary_seg.core.config.FinetuneConfig`."""


def add_parser(sub: Any) -> None:
    """Add ``finetune`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "finetune",
        help=HELP,
        description="Fine-tune CHECKPOINT on the corrected slices of one scan (the same core "
        "function as the napari widget): --image (one per modality, in the model's order) and "
        "--labels (the corrected labels). --slices names the corrected slices along the "
        "model's slicing axis; without it, the slices where the labels differ from the model's "
        "prediction are used. --verified-slices names slices checked as correct without "
        "painting. Only the corrected and verified slices teach: a checkpoint trained in 3D is "
        "fine-tuned on 3D patches of its patch size that hold one, with the other slices of "
        "the patch left out of the loss. Writes best.pt, last.pt, metrics.csv, "
        "config.json and "
        "lineage.json (parent, slices, settings, metrics before/after) to --out, then prints "
        "DSC and HD95 of the old and the new model on the corrected and untouched slices.",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="the model to start from")
    p.add_argument("--image", required=True, type=Path, action="append", help="a modality (repeat)")
    p.add_argument("--labels", required=True, type=Path, help="corrected labels (NIfTI)")
    p.add_argument("--slices", type=int, nargs="+", help="corrected slices (default: auto-detect)")
    p.add_argument("--axis", type=int, help="slicing axis (default: the checkpoint's)")
    add_options(p, settings(FinetuneConfig), required=("out_dir",))
    p.add_argument("--mix-data", type=Path, help="original training data folder to mix in")
    add_threads_option(p)
    add_affine_option(p, "labels and images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The ``finetune`` command; a library message names the flags typed."""
    try:
        return _finetune(args)
    except (ValueError, TypeError) as err:
        raise CommandError(as_typed(str(err), FINETUNE_FLAGS)) from err


def _finetune(args: argparse.Namespace) -> int:
    """Check the options, the images and the labels, then fine-tune."""
    import numpy as np

    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.finetune import LINEAGE_NAME
    from napari_boundary_seg.core.io import (
        check_finite,
        check_not_input,
        ensure_writable_dir,
        read_nifti,
    )

    flags = {o.spec.name: o.flag for o in FINETUNE_OPTIONS}
    try:
        config = FinetuneConfig(**option_values(args, FINETUNE_OPTIONS))
    except (ValueError, TypeError) as err:
        text = flag_message(error_message(err), "FinetuneConfig", lambda n: flags.get(n, n))
        raise CommandError(text) from err
    for index in args.slices or []:
        check_option(index, "--slices", 0)
    check_device(config.device)
    outputs = [args.out / name for name in (*RUN_FILES, LINEAGE_NAME)]
    check_not_input(outputs, [args.checkpoint, *args.image, args.labels], "--out")
    volumes = [read_nifti(path, as_labels=False) for path in args.image]
    labels = read_labels(args.labels)
    for path, vol in zip(args.image, volumes, strict=True):
        check_finite(vol.data, path)
        if vol.data.shape != labels.data.shape:
            raise CommandError(
                f"{path} has shape {vol.data.shape}, {args.labels} {labels.data.shape}"
            )
    for path, vol in [*zip(args.image[1:], volumes[1:], strict=True), (args.labels, labels)]:
        check_affine(args.image[0], volumes[0], path, vol, args.allow_affine_mismatch)
    images = np.stack([v.data for v in volumes])
    spacing = volumes[0].spacing[: images.ndim - 1]
    check_axis(args.axis, "--axis", images.ndim - 1)
    model, checkpoint = load_checkpoint(args.checkpoint)
    affine = volumes[0].affine
    if args.axis is not None:
        axis = args.axis
    elif images.ndim == 4:  # the plane the model was trained on, found through the affine
        from napari_boundary_seg.core.checkpoint import preprocess_from_checkpoint
        from napari_boundary_seg.core.orientation import native_slice_axis

        prep = preprocess_from_checkpoint(checkpoint)
        axis = native_slice_axis(affine if prep.canonical else None, spacing, prep.axis)
    else:
        axis = 0
    axis = axis % (images.ndim - 1)
    set_threads(args, "finetune")
    with NewFolders(args.out):
        ensure_writable_dir(args.out)
        return _finetune_in(args, config, model, checkpoint, images, labels, spacing, axis, affine)


def _finetune_in(args, config, model, checkpoint, images, labels, spacing, axis, affine) -> int:
    """Fine-tune (finding the corrected slices first unless given), then compare the
    old and the new model; the exit code."""
    from napari_boundary_seg.core.events import Outcome, TrainControl
    from napari_boundary_seg.core.finetune import differing_slices, finetune
    from napari_boundary_seg.core.modes import mode_for
    from napari_boundary_seg.core.predict import iter_predict_volume

    old_pred = None
    slices = args.slices
    if not slices:
        _, old_pred = drive(
            iter_predict_volume(
                (model, checkpoint),
                images,
                spacing,
                axis=axis,
                device=config.device,
                affine=affine,
            ),
            "predict",
            "batch",
        )
        slices = differing_slices(labels.data, old_pred, axis)
        if not slices and not config.verified_slices:
            raise CommandError(
                f"{args.labels} equals the model's prediction: no corrected slice found; "
                "paint a correction, or name the slices checked as correct with "
                "--verified-slices"
            )
        out(f"corrected slices (differ from the prediction, axis {axis}): {slices}")
    control = TrainControl()
    gen = finetune(
        args.checkpoint,
        images,
        labels.data,
        spacing,
        slices,
        config,
        axis=axis,
        affine=affine,
        mix_cases=args.mix_data,
        control=control,
    )
    result = _drive_finetune(gen, control, config.epochs)
    mode = mode_for(checkpoint)
    if mode.patch_size is not None:
        out(
            f"finetune: a 3D checkpoint, trained on 3D patches of {mode.patch_size} "
            "holding the corrected slices"
        )
    out(f"finetune: {result.reason}; lineage {result.lineage_path}")
    if control.stop_requested and result.outcome is Outcome.STOPPED:
        kept = f"{result.checkpoint} is kept" if result.checkpoint else "no checkpoint written"
        hint = (
            f"; continue with {PROG} finetune --checkpoint {result.checkpoint} and the "
            "same images and labels into another --out"
            if result.checkpoint
            else ""
        )
        raise Interrupted(f"interrupted: {result.reason}; {kept}{hint}")
    if result.stopped or result.checkpoint is None:
        return 1
    _compare(args, config.device, result, images, labels, spacing, old_pred, affine)
    return 0


def _drive_finetune(gen: Any, control: Any, epochs: int) -> Any:
    """Run the fine-tune's events with one tqdm bar over every step; Ctrl-C asks
    ``control`` for a clean stop. Returns the ``FinetuneResult``."""
    from napari_boundary_seg.core.events import EpochEvent, InfoEvent, StepEvent
    from napari_boundary_seg.core.progress import run_to_end

    bar = None

    def show(event: Any) -> None:
        nonlocal bar
        if isinstance(event, StepEvent):
            if bar is None:
                bar = progress_bar(epochs * event.steps_per_epoch, "finetune", "step")
            bar.update(1)
            bar.set_postfix(loss=f"{event.loss:.4f}", alpha=f"{event.w_region:.2f}")
        elif isinstance(event, EpochEvent):
            logger.info("epoch %d: loss %.4f", event.epoch, event.train_loss)
        elif isinstance(event, InfoEvent):
            logger.info("finetune: %s", event.message)

    previous = stop_on_sigint(control)
    try:
        return run_to_end(gen, show)
    finally:
        if bar is not None:
            bar.close()
        restore_sigint(previous)


def _compare(args, device, result, images, labels, spacing, old_pred, affine) -> None:
    """Print DSC and HD95 of the old and the new model on the corrected and the
    untouched slices (a warning when the new one is worse on the corrected ones)."""
    from napari_boundary_seg.core.finetune import evaluate_finetune, worse_on_corrected

    evaluation = drive(
        evaluate_finetune(
            result,
            images,
            labels.data,
            spacing,
            old_pred=old_pred,
            device=device,
            affine=affine,
        ),
        "compare",
        "batch",
    )
    out(f"new checkpoint: {result.checkpoint} (parent {result.parent})")
    out(f"{'slices':<10} {'n':>4} {'DSC old':>8} {'DSC new':>8} {'HD95 old':>9} {'HD95 new':>9}")
    for group, row in evaluation["comparison"].items():
        out(
            f"{group:<10} {row['n_slices']:>4} {row['dice_old']:>8.3f} "
            f"{row['dice_new']:>8.3f} {row['hd95_old']:>9.2f} {row['hd95_new']:>9.2f}"
        )
    warning = worse_on_corrected(evaluation["comparison"])
    if warning:
        warn(warning)
