"""``train``: train a UNet on a data set folder (or cross-validate it with ``--folds``).

:func:`run_training` drives the trainer's events with tqdm bars; Ctrl-C asks for
a clean stop and the exit code follows the run's
:class:`~napari_boundary_seg.core.events.Outcome`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_boundary_seg.cli._common import (
    PROG,
    RUN_FILES,
    CommandError,
    Interrupted,
    NewFolders,
    add_threads_option,
    as_typed,
    check_device,
    drive,
    error_message,
    is_writer,
    out,
    progress_bar,
    restore_sigint,
    set_threads,
    stop_on_sigint,
    warn,
)
from napari_boundary_seg.cli.train_options import (
    TRAIN_FLAGS,
    add_run_start_options,
    add_train_options,
    config_from_args,
)

HELP = (
    "train a UNet with GDL, or GDL + boundary loss (--loss gdl+bl); --preset quick on a "
    "CPU, paper (GDL + BL) on a GPU"
)

FOLD_COLUMNS = ("fold", "case", "dice", "hd95", "lesion_recall", "lesion_f1", "checkpoint")
"""The columns of ``folds.csv`` and of each fold's ``test_metrics.csv``."""


def add_parser(sub: Any) -> None:
    """Add ``train`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help=HELP,
        usage="%(prog)s (--data DIR --out DIR | --resume RUN/last.pt | --config FILE) "
        "[--preset {quick,paper}] [options]",
        description="Train on a data set folder. Starts from a preset (quick: the CPU-sized "
        "Quick start; paper: the paper's GPU-sized setup; the first line of output says "
        "which) that the other options change. Writes best.pt (best validation DSC), "
        "last.pt, metrics.csv and config.json to --out; prepared cases go to the per-user "
        "cache. Ctrl-C stops cleanly at the next step and saves last.pt; continue with "
        "--resume OUT/last.pt.",
    )
    add_train_options(p)
    add_threads_option(p)
    add_run_start_options(p)
    p.add_argument(
        "--folds",
        type=_folds_value,
        metavar="K",
        help="cross-validation by patient: K folds, or loo (leave one patient out); each "
        "fold trains in OUT/fold_N, writes its test patients' predictions to "
        "OUT/fold_N/test/ and their figures to OUT/folds.csv; a finished fold is skipped "
        "when the command is run again",
    )
    p.set_defaults(func=run)


def _folds_value(text: str) -> int | str:
    """``--folds``: ``loo`` or an integer >= 2."""
    from napari_boundary_seg.core.folds import LEAVE_ONE_OUT
    from napari_boundary_seg.core.validate import check_int

    if text == LEAVE_ONE_OUT:
        return text
    try:
        return check_int(int(text), "--folds", 2)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an integer >= 2 or {LEAVE_ONE_OUT}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """The ``train`` command; a library message names the flags typed, not the
    config's fields."""
    try:
        return _train(args)
    except (ValueError, TypeError) as err:
        raise CommandError(as_typed(str(err), TRAIN_FLAGS)) from err


def run_training(config, cases=None, desc: str = "train", quiet: bool = False, **kwargs) -> int:
    """Drive :func:`~napari_boundary_seg.core.train.train` with tqdm bars; Ctrl-C
    requests a clean stop. Returns the exit code (1 when a non-finite loss stopped it).
    ``quiet`` shows nothing (the ranks other than 0 of a torchrun run).
    Used by ``train``; ``finetune`` drives its own generator (other events)."""
    from tqdm.auto import tqdm

    from napari_boundary_seg.core.events import (
        DoneEvent,
        EpochEvent,
        InfoEvent,
        Outcome,
        StepEvent,
        TrainControl,
    )
    from napari_boundary_seg.core.progress import Progress
    from napari_boundary_seg.core.train import train

    control = TrainControl()
    previous = stop_on_sigint(control)
    bar = None
    done: DoneEvent | None = None
    try:
        for event in train(config, cases, control, **kwargs):
            if quiet and not isinstance(event, DoneEvent):
                continue
            if isinstance(event, InfoEvent):
                tqdm.write(f"{desc}: {event.message}")
            elif isinstance(event, Progress):
                pass
            elif isinstance(event, StepEvent):
                if bar is None:  # epochs counted from 1, as in every message
                    desc_epoch = f"epoch {event.epoch + 1}/{config.epochs}"
                    bar = progress_bar(event.steps_per_epoch, desc_epoch, "step", False)
                    bar.n = event.step
                bar.update(1)
                bar.set_postfix(
                    loss=f"{event.loss:.4f}", alpha=f"{event.w_region:.2f}", refresh=False
                )
            elif isinstance(event, EpochEvent):
                if bar is not None:
                    bar.close()
                    bar = None
                tqdm.write(
                    f"epoch {event.epoch + 1}/{config.epochs}: loss {event.train_loss:.4f} "
                    f"(region {event.region:.4f}, "
                    f"boundary {event.boundary:.4f}, alpha {event.w_region:.2f}), lr {event.lr:g}, "
                    f"val DSC {event.val_dice:.4f}, HD {event.val_hd:.2f} mm, "
                    f"HD95 {event.val_hd95:.2f} mm{' *best*' if event.is_best else ''}"
                )
            elif isinstance(event, DoneEvent):
                done = event
    finally:
        if bar is not None:
            bar.close()
        restore_sigint(previous)
    if done is None:  # pragma: no cover - train always ends with a DoneEvent
        raise CommandError("training ended without a result")
    code = 1 if done.outcome is Outcome.NON_FINITE else 0
    if quiet:
        return code
    out(f"{desc}: {done.reason}")
    verdict = _verdict(done, config)
    if verdict.bad:
        warn(verdict.text())
    if done.best_checkpoint:
        out(f"best checkpoint: {done.best_checkpoint}")
    if done.last_checkpoint:
        out(f"last checkpoint: {done.last_checkpoint}")
    if config.cache_dir is not None:
        from napari_boundary_seg.core.cache import cache_info

        out(
            f"cache: {cache_info(config.cache_dir).describe()} (shared by runs on the same "
            f"data and settings; {PROG} cache --clear empties it)"
        )
    if control.stop_requested and done.outcome is Outcome.STOPPED:
        if done.last_checkpoint:
            raise Interrupted(
                f"interrupted: {done.reason}; {done.last_checkpoint} is kept; continue with "
                f"{PROG} train --resume {done.last_checkpoint}"
            )
        raise Interrupted(f"interrupted: {done.reason}; no checkpoint was written")
    return code


def _verdict(done, config):
    """:func:`core.verdict.judge_run` of a finished run: its best validation DSC
    (the widgets add their prediction's size)."""
    from napari_boundary_seg.core.verdict import best_val_dice, judge_run

    return judge_run(best_val_dice(done.history), loss=config.loss)


def _preset_line(args: argparse.Namespace) -> tuple[str, str]:
    """The preset of a new run (``--preset``, else paper with a CUDA GPU and quick
    without) and the first line of output that says it."""
    from napari_boundary_seg.core.device import resolve_device
    from napari_boundary_seg.core.presets import PRESETS

    if args.preset is not None:
        name, why = args.preset, "--preset"
    else:
        device = args.device or "auto"
        try:
            gpu = resolve_device(device).type == "cuda"
        except ValueError as err:
            raise CommandError(f"--device: {error_message(err)}") from err
        name = "paper" if gpu else "quick"
        why = "a CUDA GPU is used" if gpu else "no CUDA GPU found"
        why += (
            "; --preset quick for the CPU-sized run"
            if gpu
            else ("; --preset paper for the paper's GPU-sized run")
        )
    return name, f"train: preset {name} ({why}): {PRESETS[name].split(': ', 1)[1]}"


def _train(args: argparse.Namespace) -> int:
    from napari_boundary_seg.core.cache import default_cache_dir, is_user_cache_dir
    from napari_boundary_seg.core.io import check_not_input, ensure_writable_dir
    from napari_boundary_seg.core.presets import preset_config
    from napari_boundary_seg.core.validate import check_unet_size

    base, base_source = None, ""
    if args.resume is None:
        name, line = _preset_line(args)
        if is_writer():
            out(line)
        base, base_source = preset_config(name).to_dict(), f"--preset {name}"
    else:
        if args.preset is not None:
            raise CommandError("--preset starts a new run; --resume continues with its own values")
        from napari_boundary_seg.core.checkpoint import checkpoint_config, read_checkpoint

        if is_writer():
            out(f"train: resuming {args.resume} with its own settings")
        base = checkpoint_config(read_checkpoint(args.resume))
        base["resume_from"] = str(args.resume)
        base["init_checkpoint"] = None
        base_source = f"--resume {args.resume}"
        if args.out is None:
            base["out_dir"] = str(args.resume.parent)
    config = config_from_args(args, base, base_source)
    if args.init_checkpoint is not None:
        if not args.init_checkpoint.is_file():
            raise FileNotFoundError(f"no such checkpoint: {args.init_checkpoint}")
        config = config.replace(init_checkpoint=str(args.init_checkpoint))
    if config.data is None:
        raise CommandError("train needs --data DIR (or --resume of a run that has one)")
    folds = getattr(args, "folds", None)
    if folds is not None and (args.resume is not None or args.init_checkpoint is not None):
        raise CommandError("--folds trains from scratch: it takes no --resume or --init-checkpoint")
    if config.out_dir is None:
        raise CommandError("train needs --out DIR for its checkpoints")
    if not Path(config.data).is_dir():
        raise FileNotFoundError(f"no such data folder: {config.data}")
    if config.init_checkpoint is None:  # a checkpoint brings its own network
        check_unet_size(
            config.depth,
            config.base_channels,
            names=("--depth", "--base-channels"),
            spatial_dims=config.dims,
        )
        from napari_boundary_seg.core.modes import mode_for

        mode_for(config).check_config(config, "--depth")
    check_device(config.device)  # before any folder is made
    set_threads(args, "train")
    if args.cache_dir is None and (config.cache_dir is None or is_user_cache_dir(config.cache_dir)):
        config = config.replace(cache_dir=str(default_cache_dir()))  # this user's, this machine's
    folder = Path(config.out_dir)
    inputs = [Path(p) for p in (config.init_checkpoint, args.config) if p is not None]
    check_not_input([folder / name for name in RUN_FILES], inputs, "--out")
    if folds is not None:
        return _train_folds(config, folds)
    from napari_boundary_seg.core import distributed

    with NewFolders(folder, Path(config.cache_dir)):
        ensure_writable_dir(folder)
        # started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK set): one process of a DDP run
        with distributed.init_from_env(config.device) as context:
            return run_training(config, quiet=not context.is_writer)


def _train_folds(config: Any, folds: int | str) -> int:
    """``train --folds``: one run per fold, its test patients predicted and scored."""
    import csv

    from napari_boundary_seg.core.data import find_cases, iter_check_cases
    from napari_boundary_seg.core.folds import fold_splits
    from napari_boundary_seg.core.io import atomic_path, ensure_writable_dir, write_text_atomic

    files = find_cases(config.data)
    if not files:
        raise CommandError(f"no cases found in {config.data}")
    splits = fold_splits(files, folds, seed=config.effective_split_seed)  # refuses too few
    # every case is checked before the first fold writes anything
    drive(iter_check_cases(files, config.num_classes, config.canonical), "check", "case")
    folder = Path(config.out_dir)
    ensure_writable_dir(folder)
    cache = config.cache_dir or str(folder / "cache")  # the folds share one cache
    rows: list[dict[str, Any]] = []
    for index, (train_files, test_files) in enumerate(splits, start=1):
        fold_dir = folder / f"fold_{index}"
        done_file = fold_dir / "test_metrics.csv"
        desc = f"fold {index}/{len(splits)}"
        if done_file.is_file():
            with open(done_file, newline="") as f:
                rows.extend(csv.DictReader(f))
            out(f"{desc}: done before, kept ({done_file})")
            continue
        names = ", ".join(c.case_id for c in test_files)
        out(f"{desc}: training on {len(train_files)} patient(s), testing on {names}")
        fold_config = config.replace(out_dir=str(fold_dir), cache_dir=cache, overwrite=True)
        code = run_training(fold_config, train_files, desc=desc)
        if code != 0:
            return code
        fold_rows = _test_fold(config, index, fold_dir, test_files, desc)
        with atomic_path(done_file) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, FOLD_COLUMNS)
            writer.writeheader()
            writer.writerows(fold_rows)
        rows.extend(fold_rows)
    lines = [",".join(FOLD_COLUMNS)]
    lines += [",".join(str(r[c]) for c in FOLD_COLUMNS) for r in rows]
    write_text_atomic(folder / "folds.csv", "\n".join(lines) + "\n")

    def mean(key: str) -> float:
        import math

        import numpy as np

        values = [float(r[key]) for r in rows if not math.isnan(float(r[key]))]
        return float(np.mean(values)) if values else float("nan")

    out(
        f"{len(rows)} test case(s) over {len(splits)} folds: mean DSC {mean('dice'):.3f}, "
        f"HD95 {mean('hd95'):.1f} mm, lesion recall {mean('lesion_recall'):.2f}, "
        f"F1 {mean('lesion_f1'):.2f} ({folder / 'folds.csv'})"
    )
    return 0


def _test_fold(
    config: Any, index: int, fold_dir: Path, test_files: list, desc: str
) -> list[dict[str, Any]]:
    """Predict a fold's test patients with its checkpoint (best.pt when it validated,
    else last.pt) into ``fold_dir/test/``; their rows of ``folds.csv``."""
    import numpy as np

    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.data import load_case
    from napari_boundary_seg.core.io import ensure_writable_dir, write_nifti
    from napari_boundary_seg.core.metrics import case_metrics
    from napari_boundary_seg.core.predict import iter_predict_volume

    test_dir = fold_dir / "test"
    best, last = fold_dir / "best.pt", fold_dir / "last.pt"
    chosen = best if best.is_file() and config.val_fraction > 0 else last
    model_and_checkpoint = load_checkpoint(chosen)
    ensure_writable_dir(test_dir)
    rows = []
    for files in test_files:
        case = load_case(files)
        _, pred = drive(
            iter_predict_volume(
                model_and_checkpoint, case.images, case.spacing, affine=case.affine
            ),
            f"{desc} predict {case.case_id}",
            "batch",
        )
        write_nifti(
            test_dir / f"{case.case_id}.nii.gz",
            pred.astype(np.uint8 if pred.max() < 256 else np.int64),
            affine=case.affine,
            overwrite=True,
        )
        m = case_metrics(pred, case.labels, case.spacing)
        rows.append(
            {
                "fold": index,
                "case": case.case_id,
                **{k: m[k] for k in ("dice", "hd95", "lesion_recall", "lesion_f1")},
                "checkpoint": chosen.name,
            }
        )
        out(
            f"{desc}: {case.case_id}: DSC {m['dice']:.3f}, HD95 {m['hd95']:.1f} mm, "
            f"lesion recall {m['lesion_recall']:.2f}, F1 {m['lesion_f1']:.2f}"
        )
    return rows
