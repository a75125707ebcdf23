"""The loss study: GDL, GDL + boundary loss, boundary loss alone and CE, compared.

Reproduces the experiment of Kervadec et al. (MIDL 2019, Table 1 and Fig. 3) on
any labelled data set the trainer reads, by default the built-in benchmark:

1. the cases are split once, patient-wise, into training, validation and test
   cases (the test cases are never seen during training or model selection);
2. the same UNet is trained with every *arm* (loss and alpha schedule) and every
   seed, with the same split, slices, distance maps (built once and shared) and
   budget (epochs × steps per epoch); each run lives in its own folder
   (``best.pt``, ``last.pt``, ``metrics.csv``), so a rerun skips finished runs
   and resumes unfinished ones from ``last.pt``;
3. each run's best checkpoint (by validation DSC) segments the test cases in 3D
   and :func:`napari_boundary_seg.core.metrics.case_metrics` measures them;
4. the results are written as a table (mean ± std over seeds, markdown and CSV),
   a per-case CSV, a figure of the validation DSC and HD per epoch (mean over
   seeds) and a JSON record of the settings, the split and the library versions.

With ``folds`` (``study --folds K`` or ``--folds loo``) step 1 becomes a
cross-validation by patient: fold ``k`` tests the ``k``-th patient group of
:func:`~napari_boundary_seg.core.folds.fold_splits` and trains (and validates,
by the same rule on the remaining patients) on the others; every arm and seed
runs in every fold (``runs/fold_<k>/<arm>-seed<s>/``), writes its test
predictions there (``test/<case>.nii.gz``, native grid and affine), and the
per-case test figures of all folds are pooled, so the table and the paired
statistics see every patient once per arm and seed (``per_fold.csv`` keeps
the figures of each fold).

The alpha schedules are rescaled to the budget: the paper lowers alpha by 0.01
per epoch over 100 epochs, so that it reaches its floor (0.01) at the last
epoch; here the step is ``(1 - floor) / (epochs - 1)``, and the reference
code's schedule uses the same step.

``iter_study`` is a generator of :class:`~napari_boundary_seg.core.progress.Progress`
events (one per training step of the whole study) that returns a
:class:`StudyResult`; ``run_study`` drives it. Plotting uses matplotlib's Agg
backend, so this module lives outside ``core``.
"""

from napari_boundary_seg.study.command import add_study_parser
from napari_boundary_seg.study.config import (
    ARMS,
    CALIBRATION_BAR,
    COMPARISONS,
    MAIN_ARMS,
    SIZE_BINS_VOXELS,
    STUDY_TRAIN,
    TABLE_METRICS,
    StudyArm,
    StudyConfig,
    arm_schedule,
    size_bins,
)
from napari_boundary_seg.study.run import (
    StudyResult,
    _run_figures,  # noqa: F401  (tests import it from here)
    fold_study_cases,
    iter_study,
    run_study,
    split_study_cases,
)

__all__ = [
    "ARMS",
    "CALIBRATION_BAR",
    "COMPARISONS",
    "MAIN_ARMS",
    "SIZE_BINS_VOXELS",
    "STUDY_TRAIN",
    "TABLE_METRICS",
    "StudyArm",
    "StudyConfig",
    "StudyResult",
    "add_study_parser",
    "arm_schedule",
    "fold_study_cases",
    "iter_study",
    "run_study",
    "size_bins",
    "split_study_cases",
]
