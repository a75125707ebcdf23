"""The ``study`` subcommand: options generated from the study's declared settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_boundary_seg.core.folds import LEAVE_ONE_OUT
from napari_boundary_seg.core.settings import settings
from napari_boundary_seg.options import add_options, option_values
from napari_boundary_seg.study.config import StudyConfig, study_train_settings
from napari_boundary_seg.study.run import iter_study

__all__ = ["STUDY_FLAGS", "add_study_parser"]

STUDY_FLAGS = {
    "max_steps_per_epoch": "--steps-per-epoch",
    "slice_size": "--size",
    "steps_per_epoch": "",
}
"""The study's flags for ``TrainConfig`` settings whose ``train`` flag differs (``""``:
no option). The study's ``--steps-per-epoch`` is the cap of every run's epochs; its
3D epochs are one tiling of the volumes under that cap (``STUDY_TRAIN``)."""


def add_study_parser(sub: Any, drive: Callable[..., Any]) -> None:
    """Add the ``study`` subcommand to an argparse subparsers object.

    ``drive(generator, desc, unit)`` runs a ``Progress`` generator with a
    progress bar and returns its value (the CLI's tqdm driver).
    """
    import argparse

    p = sub.add_parser(
        "study",
        help="loss study: GDL vs GDL+BL (two alpha schedules) vs BL alone vs CE, several seeds",
        description="Train the same UNet with every loss and seed on one patient-wise "
        "train/validation/test split and budget, evaluate each best checkpoint on the "
        "held-out test cases in 3D (DSC, HD, HD95, ASSD, AVD, lesion recall/F1, small-lesion "
        "recall), and write results.md/.csv (mean ± std over seeds), per_case.csv, "
        "per_run.csv, validation_curves.png and study.json to --out. Each run has its own "
        "folder (best.pt, last.pt, metrics.csv): rerunning skips finished runs and resumes "
        "unfinished ones. With --folds K (or loo), every arm and seed runs in each fold of a "
        "cross-validation by patient and the test figures of all folds are pooled.",
    )
    own = add_options(p, settings(StudyConfig))
    run = p.add_argument_group("the runs (TrainConfig settings, the study's defaults)")
    trained = add_options(run, study_train_settings(), flags=STUDY_FLAGS)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: evaluate and report the finished runs (marked partial if some "
        "are missing)",
    )

    def handler(args: argparse.Namespace) -> int:
        import shlex
        import sys

        values = option_values(args, own)
        values["folds"] = _folds_argument(
            values.get("folds"), Path(values["data"]), values.get("synth_cases")
        )
        config = StudyConfig(**values, **option_values(args, trained))
        command = " ".join(shlex.quote(a) for a in ["napari-boundary-seg", *sys.argv[1:]])
        result = drive(
            iter_study(config, report_only=args.report_only, command=command), "study", "step"
        )
        print(Path(result.files["table_md"]).read_text(), end="")  # calibration included
        for role, path in result.files.items():
            print(f"{role}: {path}")
        if not result.complete:
            print("PARTIAL: some runs have not finished (rerun the command to continue them)")
        return 0

    p.set_defaults(func=handler)


def _folds_argument(text: str | None, data: Path, synth: int | None) -> int | str | None:
    """``--folds`` checked before anything is written: an integer >= 2 or ``loo``,
    no more folds than the patients of ``data`` (or the ``synth`` cases it will get)."""
    if text is None:
        return None
    if text == LEAVE_ONE_OUT:
        folds: int | str = text
    else:
        try:
            folds = int(text)
        except ValueError:
            raise ValueError(
                f"--folds takes an integer >= 2 or {LEAVE_ONE_OUT}, got {text!r}"
            ) from None
        if folds < 2:
            raise ValueError(f"--folds must be at least 2, got {folds}")
    if data.is_dir():
        from napari_boundary_seg.core.data import find_cases

        n_patients = len({str(c.case_id) for c in find_cases(data)})
    elif synth is not None:
        n_patients = synth
    else:
        return folds  # the study names the missing folder
    if folds != LEAVE_ONE_OUT and int(folds) > n_patients:
        raise ValueError(
            f"--folds {folds} needs at least {folds} patients, {data} has {n_patients}"
        )
    if folds == LEAVE_ONE_OUT and n_patients < 2:
        raise ValueError(
            f"--folds {LEAVE_ONE_OUT} needs at least 2 patients, {data} has {n_patients}"
        )
    return folds
