"""Running the loss study: the split, the runs, their evaluation on the test cases.

``iter_study`` is a generator of :class:`~napari_boundary_seg.core.progress.Progress`
events (one per training step of the whole study) that returns a
:class:`StudyResult`; ``run_study`` drives it. The tables, figures and
``study.json`` are :mod:`napari_boundary_seg.study.report`'s.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core.folds import check_folds, fold_splits
from napari_boundary_seg.core.io import atomic_path
from napari_boundary_seg.core.progress import Progress, run_to_end
from napari_boundary_seg.study.config import (
    ARMS,
    COMPARISONS,
    SIZE_BINS_VOXELS,
    TABLE_METRICS,
    StudyConfig,
    arm_schedule,
    run_name,
    size_bins,
)
from napari_boundary_seg.study.report import (
    calibration_of,
    figure_case,
    plot_test_slice,
    summarise,
    versions_of,
    write_outputs,
)
from napari_boundary_seg.study_stats import case_comparisons_markdown, compare_cases

logger = logging.getLogger(__name__)

__all__ = [
    "StudyResult",
    "fold_study_cases",
    "iter_study",
    "run_study",
    "split_study_cases",
]


_DISTANCE_KEYS = ("hd", "hd95", "assd")
_RUN_FILES = ("best.pt", "last.pt", "metrics.csv")


@dataclass(frozen=True)
class StudyResult:
    """What a study wrote and measured.

    Attributes
    ----------
    summary
        One row per arm: ``arm``, ``label``, ``n_runs`` and ``<metric>_mean`` /
        ``<metric>_std`` over seeds for every :data:`TABLE_METRICS` key.
    per_case
        One row per (arm, seed, test case) with every ``case_metrics`` figure.
    files
        Written paths by role (``table_md``, ``table_csv``, ``per_case_csv``,
        ``per_run_csv``, ``figure``, ``config_json``; with folds ``per_fold_csv``).
    complete
        False when some runs had not finished (the table then says PARTIAL).
    summary_held
        As ``summary``, on the held-out site's cases (empty without one).
    calibration
        GDL's test DSC and small-lesion recall (means over seeds) and whether
        each meets :data:`CALIBRATION_BAR`; empty when GDL did not run.
    """

    summary: list[dict[str, Any]]
    per_case: list[dict[str, Any]]
    files: dict[str, str]
    complete: bool
    summary_held: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# split, run folders


def split_study_cases(
    cases: Sequence[Any], test_fraction: float, val_fraction: float, seed: int
) -> tuple[list[Any], list[Any], list[Any]]:
    """Patient-wise split into ``(train, val, test)``, independent of input order.

    Test cases are drawn first with ``round(test_fraction * n)`` (at least one),
    then ``round(val_fraction * n)`` (at least one) validation cases from the
    rest, both with :func:`~napari_boundary_seg.core.data.split_cases`.
    """
    from napari_boundary_seg.core.data import split_cases

    n = len(cases)
    if n < 3:
        raise ValueError(f"a study needs at least 3 cases (train, validation, test), got {n}")
    rest, test = split_cases(cases, test_fraction, seed)
    n_val = max(1, int(round(val_fraction * n)))
    if n_val >= len(rest):
        raise ValueError(f"{n} cases leave no training case after the test and validation split")
    train, val = split_cases(rest, n_val / len(rest), seed + 1)
    return list(train), list(val), list(test)


def fold_study_cases(
    cases: Sequence[Any], folds: int | str, val_fraction: float, seed: int
) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """``(train, val, test)`` per fold of a cross-validation by patient.

    The test cases of fold ``k`` are the ``k``-th patient group of
    :func:`~napari_boundary_seg.core.folds.fold_splits` (``folds``: an integer
    >= 2 or ``"loo"``); the others are split as :func:`split_study_cases` splits
    the rest: ``round(val_fraction * n)`` (at least one) of those ``n`` patients
    validate, with seed ``seed + 1``. ``val_fraction = 0``: no validation.
    """
    from napari_boundary_seg.core.data import split_cases

    out = []
    for index, (rest, test) in enumerate(fold_splits(cases, folds, seed), start=1):
        if val_fraction == 0:
            out.append((list(rest), [], list(test)))
            continue
        n_val = max(1, int(round(val_fraction * len(rest))))
        if n_val >= len(rest):
            raise ValueError(
                f"fold {index}: {len(rest)} training case(s) leave none after {n_val} for "
                f"validation; lower the validation fraction {val_fraction:g} (0: no validation)"
            )
        train, val = split_cases(rest, n_val / len(rest), seed + 1)
        out.append((list(train), list(val), list(test)))
    return out


@dataclass(frozen=True, eq=False)
class _Fold:
    """One train/validation/test split of the study and the folder of its runs;
    ``index`` is None for the single split of a study without folds."""

    index: int | None
    train: list[Any]
    val: list[Any]
    test: list[Any]
    runs_path: Path

    def run_label(self, arm: str, seed: int) -> str:
        name = run_name(arm, seed)
        return name if self.index is None else f"fold_{self.index}/{name}"


def _run_position(run_dir: Path) -> int | None:
    """Epochs done by the run in ``run_dir`` (from ``last.pt``), None without one."""
    from napari_boundary_seg.core.checkpoint import read_checkpoint

    last = run_dir / "last.pt"
    if not last.exists():
        return None
    checkpoint = read_checkpoint(last)
    return int(checkpoint["position"]["epoch"])


def _read_history(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    from napari_boundary_seg.core.train import read_metrics_csv

    return read_metrics_csv(path)  # epoch counted from 1


# ---------------------------------------------------------------------------
# the study


def _evaluate_run(
    run_dir: Path,
    test_cases: Sequence[Any],
    eval_batch_size: int,
    device: str,
    bins: Sequence[tuple[str, float, float]] = SIZE_BINS_VOXELS,
    cache_name: str = "test_metrics.csv",
    checkpoint_name: str = "best.pt",
    predictions_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Every case metric of the run's checkpoint (best by default) on the test cases
    (cached in CSV); with ``predictions_dir``, each prediction is also written there
    as ``<case>.nii.gz`` on the case's own grid with its affine."""
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.io import write_nifti
    from napari_boundary_seg.core.metrics import case_metric_columns, case_metrics
    from napari_boundary_seg.core.predict import predict_volume

    best = run_dir / checkpoint_name
    cache = run_dir / cache_name
    if not test_cases:
        return []
    case_ids = [str(c.case_id) for c in test_cases]
    written = predictions_dir is None or all(
        (predictions_dir / f"{c}.nii.gz").is_file() for c in case_ids
    )
    if written and cache.exists() and cache.stat().st_mtime >= best.stat().st_mtime:
        with open(cache, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if [r["case"] for r in rows] == case_ids and set(rows[0]) >= set(case_metric_columns(bins)):
            return [
                {"case": r["case"], **{k: float(v) for k, v in r.items() if k != "case"}}
                for r in rows
            ]
    model, checkpoint = load_checkpoint(best)
    rows = []
    for case in test_cases:
        _, pred = predict_volume(
            (model, checkpoint),
            case.images,
            case.spacing,
            batch_size=eval_batch_size,
            device=device,
            affine=case.affine,
        )
        if predictions_dir is not None:
            predictions_dir.mkdir(parents=True, exist_ok=True)
            write_nifti(
                predictions_dir / f"{case.case_id}.nii.gz",
                pred.astype(np.uint8 if int(pred.max(initial=0)) < 256 else np.int64),
                affine=case.affine,
                overwrite=True,
            )
        figures = case_metrics(pred, case.labels, case.spacing, size_bins=bins, unit="voxels")
        rows.append({"case": str(case.case_id), **figures})
    columns = ["case", *case_metric_columns(bins)]
    with atomic_path(cache) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _run_figures(rows: Sequence[Mapping[str, Any]], test_cases: Sequence[Any]) -> dict[str, float]:
    """One run's table figures: means over test cases (inf distances -> image diagonal);
    small-lesion recall pooled over the test cases' small lesions."""
    from napari_boundary_seg.core.metrics import replace_inf

    out: dict[str, float] = {}
    shapes = {str(c.case_id): (c.labels.shape, c.spacing) for c in test_cases}
    for key, _ in TABLE_METRICS:
        if key == "lesion_recall_small":
            n_target = sum(float(r["n_target_small"]) for r in rows)
            n_detected = sum(float(r["n_detected_small"]) for r in rows)
            out[key] = n_detected / n_target if n_target > 0 else math.nan
            out["n_small_lesions"] = n_target
            continue
        values = []
        for r in rows:
            value = float(r[key])
            if key in _DISTANCE_KEYS:
                shape, spacing = shapes[r["case"]]
                value = float(replace_inf(value, shape, spacing))
            values.append(value)
        finite = [v for v in values if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else math.nan
    out["n_inf_hd"] = float(sum(math.isinf(float(r["hd"])) for r in rows))
    return out


def _capped(row: Mapping[str, Any], grids: Mapping[str, Any]) -> dict[str, float]:
    """``hd95_capped``: the case's HD95 with an infinite one (an empty prediction or
    target) replaced by the image diagonal, as the tables count it."""
    from napari_boundary_seg.core.metrics import replace_inf

    shape, spacing = grids[str(row["case"])]
    return {"hd95_capped": float(replace_inf(float(row["hd95"]), shape, spacing))}


def iter_study(
    config: StudyConfig,
    *,
    report_only: bool = False,
    command: str | None = None,
) -> Generator[Progress, None, StudyResult]:
    """Run (or resume) the loss study; yields ``Progress`` per training step.

    Parameters
    ----------
    config
        The study's settings.
    report_only
        Train nothing: evaluate and report the runs that have finished (the
        outputs are marked partial when some have not).
    command
        The command line that started the study, recorded in the JSON.

    Returns
    -------
    StudyResult
    """
    from napari_boundary_seg.core import data as data_mod
    from napari_boundary_seg.core.modes import mode_for
    from napari_boundary_seg.core.train import (
        DoneEvent,
        EpochEvent,
        StepEvent,
        epoch_steps,
        library_versions,
        preprocess_config,
        train,
    )

    if config.loads is not None:
        from napari_boundary_seg.study.regimes import iter_load_map

        return (yield from iter_load_map(config, report_only=report_only, command=command))
    started = time.time()
    data_dir = Path(config.data)
    if config.folds is not None and not data_dir.exists() and config.synth_cases is not None:
        check_folds(config.folds, config.synth_cases)  # before anything is written
    if not data_dir.exists():
        if config.synth_cases is None:
            raise FileNotFoundError(
                f"no such data folder: {data_dir} (pass synth_cases / --synth N to write "
                "the built-in benchmark there)"
            )
        from napari_boundary_seg.core.synthetic import iter_write_benchmark

        logger.info(
            "writing %d synthetic cases (%s preset) to %s",
            config.synth_cases,
            config.synth_preset,
            data_dir,
        )
        grid: dict[str, Any] = {}
        if config.synth_shape is not None:
            grid["shape"] = tuple(config.synth_shape)
        if config.synth_spacing is not None:
            grid["spacing"] = tuple(config.synth_spacing)
        if config.synth_preset != "easy":
            grid["preset"] = config.synth_preset
        if config.synth_load is not None:
            from napari_boundary_seg.core.synthetic import wmh_load_config

            grid["wmh"] = wmh_load_config(config.synth_load / 100.0)
        for event in iter_write_benchmark(data_dir, config.synth_cases, config.synth_seed, **grid):
            yield Progress(0, 0, f"synth: {event.message}")
    files = data_mod.find_cases(data_dir)
    if config.folds is not None:
        check_folds(config.folds, len({str(f.case_id) for f in files}))
    cases = yield from data_mod.iter_load_cases(files)
    held_out: list[Any] = []
    sites: dict[str, str] = {}
    if config.held_out_site is not None:
        from napari_boundary_seg.core.synthetic import read_sites

        sites = read_sites(data_dir)
        known = sorted(set(sites.values()))
        if config.held_out_site not in known:
            raise ValueError(
                f"held-out site {config.held_out_site!r} is not among the sites of "
                f"{data_dir / 'dataset.json'}: {known}"
            )
        held_out = [c for c in cases if sites.get(str(c.case_id)) == config.held_out_site]
        cases = [c for c in cases if sites.get(str(c.case_id)) != config.held_out_site]
    if config.folds is None:
        train_cases, val_cases, test_cases = split_study_cases(
            cases, config.test_fraction, config.train.val_fraction, config.train.split_seed
        )
        folds = [_Fold(None, train_cases, val_cases, test_cases, config.runs_path)]
        logger.info(
            "split: %d train, %d validation, %d test cases%s",
            len(train_cases),
            len(val_cases),
            len(test_cases),
            f", {len(held_out)} of held-out site {config.held_out_site}" if held_out else "",
        )
    else:
        splits = fold_study_cases(
            cases, config.folds, config.train.val_fraction, config.train.split_seed
        )
        folds = [
            _Fold(k, train_, val_, test_, config.runs_path / f"fold_{k}")
            for k, (train_, val_, test_) in enumerate(splits, start=1)
        ]
        for fold in folds:
            logger.info(
                "fold %d/%d: %d train, %d validation, test %s",
                fold.index,
                len(folds),
                len(fold.train),
                len(fold.val),
                ", ".join(str(c.case_id) for c in fold.test),
            )
    # pooled over the folds: every case is tested once per arm and seed
    test_cases = [c for fold in folds for c in fold.test]
    # without validation, best.pt would be chosen by the training loss: test last.pt
    checkpoint_name = "best.pt" if config.train.val_fraction > 0 else "last.pt"
    arms = [next(a for a in ARMS if a.key == key) for key in config.arms]
    bins = size_bins(config.small_voxels)
    suffix = "" if bins == SIZE_BINS_VOXELS else f"_small{config.small_voxels:g}"
    # seed-major: an interrupted study has every arm at its first seed(s)
    runs = [(arm, seed) for seed in config.seeds for arm in arms]
    runs_path = config.runs_path
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path.mkdir(parents=True, exist_ok=True)
    for fold in folds:
        fold.runs_path.mkdir(parents=True, exist_ok=True)

    done_epochs = {
        (fold.index, arm.key, seed): (_run_position(fold.runs_path / run_name(arm.key, seed)) or 0)
        for fold in folds
        for arm, seed in runs
    }
    order = [(fold, arm, seed) for seed in config.seeds for fold in folds for arm in arms]
    todo = [
        (f, a, s) for f, a, s in order if done_epochs[(f.index, a.key, s)] < config.train.epochs
    ]
    # the slices and distance maps, built per fold and distance mode and shared by the runs
    # (with several folds, again for each seed: the order is seed-major)
    datasets: dict[str, Any] = {}
    shares_dataset = mode_for(config.train).shares_dataset  # 2D: one in-memory set per arm
    built_for: _Fold | None = None
    base = config.run_config(arms[0], config.seeds[0], runs_path / "unused")
    # every slice along the axis is kept, so the count does not depend on the mode
    slices = [sum(int(c.images.shape[1 + config.train.axis % 3]) for c in f.train) for f in folds]
    fold_steps = [
        epoch_steps(n, config.train.batch_size, config.train.max_steps_per_epoch) for n in slices
    ]
    steps = {fold.index: (n or 1) for fold, n in zip(folds, fold_steps, strict=True)}
    total = len(runs) * config.train.epochs * sum(steps.values())
    done = sum(min(e, config.train.epochs) * steps[key[0]] for key, e in done_epochs.items())
    run_seconds: dict[str, float] = {}
    if not report_only:
        for fold, arm, seed in todo:
            if built_for is not fold:
                datasets.clear()
                built_for = fold
            if shares_dataset and arm.phi not in datasets:
                where = "" if fold.index is None else f" of fold {fold.index}"
                yield Progress(0, 0, f"building slices and {arm.distance} distance maps{where}")
                datasets[arm.phi] = yield from data_mod.iter_build_dataset(
                    fold.train,
                    2,
                    preprocess_config(base),
                    distance=arm.distance,
                    phi_units=arm.phi_units,
                    empty_slices=arm.empty_slices,
                )
            name = fold.run_label(arm.key, seed)
            run_dir = fold.runs_path / run_name(arm.key, seed)
            train_config = config.run_config(arm, seed, run_dir)
            position = done_epochs[(fold.index, arm.key, seed)]
            if (run_dir / "last.pt").exists():
                train_config = train_config.replace(resume_from=str(run_dir / "last.pt"))
                logger.info("%s: resuming at epoch %d", name, position)
            else:
                train_config = train_config.replace(overwrite=True)
                logger.info("%s: starting", name)
            tic = time.perf_counter()
            dataset = datasets.get(arm.phi)  # None: the run reads the cache
            for event in train(train_config, fold.train, val_cases=fold.val, dataset=dataset):
                if isinstance(event, StepEvent):
                    done += 1
                    yield Progress(
                        done,
                        total,
                        f"{name} epoch {event.epoch + 1}/{config.train.epochs} loss {event.loss:.4f}",
                    )
                elif isinstance(event, EpochEvent):
                    logger.info(
                        "%s epoch %d/%d: loss %.4f (alpha %.3f), val DSC %.4f, HD %.1f mm%s",
                        name,
                        event.epoch + 1,
                        config.train.epochs,
                        event.train_loss,
                        event.w_region,
                        event.val_dice,
                        event.val_hd,
                        " *best*" if event.is_best else "",
                    )
                elif isinstance(event, DoneEvent) and event.stopped:
                    logger.warning("%s stopped: %s", name, event.reason)
            run_seconds[name] = time.perf_counter() - tic
            done_epochs[(fold.index, arm.key, seed)] = _run_position(run_dir) or 0
        datasets.clear()

    # evaluation of the finished runs on the test cases (and the held-out site)
    per_case: list[dict[str, Any]] = []
    per_run: list[dict[str, Any]] = []
    per_fold: list[dict[str, Any]] = []
    per_run_held: list[dict[str, Any]] = []
    histories: dict[str, dict[Any, list[dict[str, float]]]] = {}
    finished = [
        (a, s)
        for a, s in runs
        if all(done_epochs[(f.index, a.key, s)] >= config.train.epochs for f in folds)
    ]
    eval_seconds = 0.0
    grids = {str(c.case_id): (c.labels.shape, c.spacing) for c in [*test_cases, *held_out]}
    for i, (arm, seed) in enumerate(finished):
        name = run_name(arm.key, seed)
        yield Progress(i, len(finished), f"evaluating {name} on {len(test_cases)} test cases")
        rows: list[dict[str, Any]] = []
        held_rows: list[dict[str, Any]] = []
        bests: list[dict[str, float]] = []
        seconds = 0.0
        for fold in folds:
            run_dir = fold.runs_path / name
            tic = time.perf_counter()
            fold_rows = _evaluate_run(
                run_dir,
                fold.test,
                config.eval_batch_size,
                config.train.device,
                bins,
                f"test_metrics{suffix}.csv",
                checkpoint_name,
                predictions_dir=None if fold.index is None else run_dir / "test",
            )
            held_rows += _evaluate_run(
                run_dir,
                held_out,
                config.eval_batch_size,
                config.train.device,
                bins,
                f"heldout_{config.held_out_site}_metrics{suffix}.csv",
            )
            eval_seconds += time.perf_counter() - tic
            history = _read_history(run_dir)
            if checkpoint_name == "last.pt":
                best = history[-1] if history else {}
            else:
                best = max(history, key=lambda h: h.get("val_dice", -1.0)) if history else {}
            bests.append(best)
            run_train_seconds = float(sum(h.get("seconds", 0.0) for h in history))
            seconds += run_train_seconds
            if fold.index is None:
                histories.setdefault(arm.key, {})[seed] = history
                rows += fold_rows
                continue
            histories.setdefault(arm.key, {})[(fold.index, seed)] = history
            rows += [{"fold": fold.index, **r} for r in fold_rows]
            per_fold.append(
                {
                    "fold": fold.index,
                    "arm": arm.key,
                    "seed": seed,
                    "test_cases": " ".join(str(c.case_id) for c in fold.test),
                    "best_epoch": int(best.get("epoch", 0)),
                    "best_val_dice": best.get("val_dice", math.nan),
                    "train_seconds": run_train_seconds,
                    **_run_figures(fold_rows, fold.test),
                }
            )
        for r in rows:
            per_case.append({"set": "test", "arm": arm.key, "seed": seed, **r, **_capped(r, grids)})
        for r in held_rows:
            per_case.append(
                {"set": "held-out site", "arm": arm.key, "seed": seed, **r, **_capped(r, grids)}
            )
        if len(folds) == 1:
            best_epoch: float = int(bests[0].get("epoch", 0))
            best_val = bests[0].get("val_dice", math.nan)
        else:  # means over the folds
            best_epoch = float(np.mean([int(b.get("epoch", 0)) for b in bests]))
            best_val = float(np.mean([b.get("val_dice", math.nan) for b in bests]))
        common = {
            "arm": arm.key,
            "seed": seed,
            "best_epoch": best_epoch,  # counted from 1 (metrics.csv)
            "best_val_dice": best_val,
            "train_seconds": seconds,
        }
        per_run.append({**common, **_run_figures(rows, test_cases)})
        if held_rows:
            per_run_held.append({**common, **_run_figures(held_rows, held_out)})
    complete = len(finished) == len(runs)
    summary = summarise(arms, per_run)
    summary_held = summarise(arms, per_run_held) if per_run_held else []
    labels = {a.key: a.label for a in ARMS}
    ran = {a.key for a, _ in finished}
    stats_md = []
    for set_name, heading_suffix in (("test", "test cases"), ("held-out site", "held-out site")):
        rows_set = [r for r in per_case if r["set"] == set_name]
        if not rows_set:
            continue
        for a, b, heading in COMPARISONS:
            if a in ran and b in ran:
                comparisons = compare_cases(rows_set, a, b, seed=0)
                stats_md.append(
                    case_comparisons_markdown(comparisons, labels, f"{heading} ({heading_suffix})")
                )
    calibration = calibration_of(summary, config)
    figure_slice = None
    if "gdl" in ran and test_cases:
        yield Progress(len(finished), len(finished), "drawing the test-slice figure")
        shown = [a for a in arms if a.key in ran]
        if config.folds is None:
            figure_slice = plot_test_slice(
                out / "test_slice.png", runs_path, shown, config, test_cases
            )
        else:  # the case the pooled rule picks, by the models of the fold that tested it
            case = figure_case(test_cases)
            fold = next(f for f in folds if any(c is case for c in f.test))
            figure_slice = plot_test_slice(
                out / "test_slice.png", fold.runs_path, shown, config, [case], checkpoint_name
            )
    if config.folds is None:
        split: dict[str, Any] = {
            "train": [str(c.case_id) for c in folds[0].train],
            "validation": [str(c.case_id) for c in folds[0].val],
            "test": [str(c.case_id) for c in folds[0].test],
            "held_out_site": [str(c.case_id) for c in held_out],
        }
        train_slices: Any = slices[0]
        steps_per_epoch: Any = fold_steps[0]
    else:
        split = {
            "folds": [
                {
                    "fold": f.index,
                    "train": [str(c.case_id) for c in f.train],
                    "validation": [str(c.case_id) for c in f.val],
                    "test": [str(c.case_id) for c in f.test],
                }
                for f in folds
            ],
            "held_out_site": [],
        }
        train_slices, steps_per_epoch = slices, fold_steps
    files = write_outputs(
        config,
        out,
        arms,
        summary,
        per_case,
        per_run,
        histories,
        complete=complete,
        summary_held=summary_held,
        per_run_held=per_run_held,
        per_fold=per_fold,
        stats_md="\n".join(stats_md),
        calibration=calibration,
        extra={
            "command": command,
            "versions": versions_of(library_versions()),
            "split": split,
            "held_out_site": config.held_out_site,
            "sites": sites,
            "train_slices": train_slices,
            "steps_per_epoch": steps_per_epoch,
            **({} if config.folds is None else {"tested_checkpoint": checkpoint_name}),
            "schedules": {
                a.key: arm_schedule(a, config.train.epochs, config.alpha_floor) for a in arms
            },
            "distance": {a.key: a.distance for a in arms},
            "phi": {a.key: {"units": a.phi_units, "empty_slices": a.empty_slices} for a in arms},
            **({} if config.synth_load is None else {"lesion_load_percent": config.synth_load}),
            "size_bins_voxels": [list(b) for b in bins],
            "calibration": calibration,
            "runs_finished": [f.run_label(a.key, s) for a, s in finished for f in folds],
            "runs_missing": [
                f.run_label(a.key, s)
                for a, s in runs
                for f in folds
                if done_epochs[(f.index, a.key, s)] < config.train.epochs
            ],
            "train_seconds_this_invocation": run_seconds,
            "eval_seconds_this_invocation": eval_seconds,
            "wall_seconds_this_invocation": time.time() - started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    if figure_slice is not None:
        files["test_slice_figure"] = str(figure_slice)
    yield Progress(len(finished), len(finished), "done")
    return StudyResult(summary, per_case, files, complete, summary_held, calibration)


def run_study(
    config: StudyConfig,
    callback: Callable[[Progress], None] | None = None,
    **kwargs: Any,
) -> StudyResult:
    """:func:`iter_study` run to its end."""
    return run_to_end(iter_study(config, **kwargs), callback)
