"""Leave one patient out on a folder of real scans: GDL against GDL + BL.

For every arm, seed and patient: train on the other patients (2D slices along
the plane the scans give, canonical orientation, intensities robustly scaled within the head,
slices resampled to the training spacing: the package's defaults), predict
the held-out patient on its native grid with ``predict_volume`` and score it
with ``case_metrics`` (DSC, HD95, lesion recall and F1). Resumable: a fold
whose ``metrics.json`` exists is not run again; ``--max-minutes`` stops
starting new folds after that much wall time, so the study runs in parts.
``--set KEY=VALUE`` changes a ``TrainConfig`` field of every arm (a partial
``schedule`` updates the arm's), ``--modalities`` keeps the named channels,
and ``--eval-every N`` also scores the run's ``last.pt`` on the test patient
every N epochs (``curve.csv``: a diagnostic of training length, never used to
pick the model); ``--snapshots N`` keeps ``last.pt`` every N epochs and also
scores each fold's snapshots and final model as one ensemble.

    OMP_NUM_THREADS=1 python benchmarks/real_data.py DATA_DIR --out OUT

Prints one row per fold and the means per arm; writes ``OUT/folds.csv`` and
``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from quick_start import parse_sets  # benchmarks/, the script's folder

from napari_boundary_seg.core.checkpoint import load_checkpoint, read_checkpoint
from napari_boundary_seg.core.data import CaseFiles, find_cases, load_case
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.core.metrics import case_metrics
from napari_boundary_seg.core.predict import iter_predict_ensemble
from napari_boundary_seg.core.presets import QUICK_START
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import EpochEvent, TrainConfig, train

ARMS = {
    "gdl": {"loss": "gdl"},
    "gdl_bl": {"loss": "gdl+bl", "schedule": QUICK_START["schedule"]},
    "gdl_ce": {"loss": "gdl+ce"},
}
ARMS.update(  # the same losses trained on another plane (the base arms: axial)
    {f"{arm}_{plane}": {**values, "axis": plane} for arm, values in list(ARMS.items())
     for plane in ("coronal", "sagittal")}
)  # fmt: skip
COLUMNS = [
    "arm", "seed", "test", "dice", "hd95", "lesion_recall", "lesion_f1",
    "ref_lesions", "pred_voxels", "ref_voxels", "train_s", "epochs",
    "n_target_small", "lesion_recall_small", "n_target_medium", "lesion_recall_medium",
    "n_target_large", "lesion_recall_large", "modalities", "sets", "flips",
]  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="data folder (nnU-Net, WMH or ISLES layout)")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumable)")
    p.add_argument(
        "--arms", default="gdl,gdl_bl",
        help=f"comma-separated, of {', '.join(ARMS)} (default gdl,gdl_bl; plain arms: axial)",
    )  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per fold (default 30)")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch (default 40)")
    p.add_argument("--width", type=int, default=16, help="UNet width (default 16)")
    p.add_argument("--max-minutes", type=float, default=55.0, help="start no fold after this")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--slice-oversample", type=float, default=1 / 3, help="foreground slice share (1/3)"
    )
    p.add_argument("--augment", action="store_true", help="flips and intensity augmentation")
    p.add_argument(
        "--flips", action="store_true", help="test-time mirroring when predicting the test patient"
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also score, per arm and test patient, the ensemble of the seeds' models "
        "(their probabilities averaged: core.predict.iter_predict_ensemble)",
    )
    p.add_argument(
        "--ensemble-arms", metavar="A,B,...",
        help="also score, per test patient, the models of these arms (every seed) as one "
        "ensemble, e.g. gdl,gdl_coronal,gdl_sagittal: a multi-planar ensemble",
    )  # fmt: skip
    p.add_argument(
        "--snapshots", type=int, default=0, metavar="N",
        help="also keep last.pt every N epochs and score, per fold, the ensemble of those "
        "snapshots and the final model (a snapshot ensemble; arm '<arm> snapshots')",
    )  # fmt: skip
    p.add_argument(
        "--pretrain", type=int, default=0, metavar="N",
        help="start every fold from a UNet pretrained on N synthetic WMH-like cases (synth "
        "--preset wmh, FLAIR + T1; built once in OUT/pretrain with the folds' --set values, "
        "then reused)",
    )  # fmt: skip
    p.add_argument(
        "--pretrain-epochs", type=int, default=30, help="epochs of 25 steps (default 30)"
    )
    p.add_argument("--only", help="comma-separated test patients (default: every one)")
    p.add_argument("--modalities", help="comma-separated modality names to train on (default: all)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a TrainConfig field for every arm (VALUE is JSON: 'schedule={\"floor\": 0.9}')",
    )  # fmt: skip
    p.add_argument(
        "--eval-every", type=int, default=0, metavar="N",
        help="also score last.pt on the test patient every N epochs (curve.csv; diagnostic only)",
    )  # fmt: skip
    p.add_argument("--cache-dir", type=Path, help="distance-map cache (default OUT/cache)")
    p.add_argument(
        "--repredict", action="store_true", help="predict and score finished folds again"
    )
    return p.parse_args(argv)


def recipe_config(args: argparse.Namespace, out: Path, **values) -> TrainConfig:
    """The Quick start's values (its α schedule left to the arms), the width,
    the CPU, ``out`` and the cache, then ``values``, then the ``--set``
    values (a partial ``schedule`` updates the arm's)."""
    base = {k: v for k, v in QUICK_START.items() if k != "schedule"}
    base.update(
        base_channels=args.width,
        device="cpu",
        out_dir=str(out),
        overwrite=True,
        cache_dir=str(args.cache_dir or args.out / "cache"),
        **values,
    )
    for key, value in parse_sets(args.set).items():
        if key == "schedule" and isinstance(base.get(key), dict):
            value = {**base[key], **value}
        base[key] = value
    return TrainConfig(**base)


def fold_config(args: argparse.Namespace, arm: str, seed: int, out: Path) -> TrainConfig:
    pretrain = {"init_checkpoint": str(pretrained(args))} if args.pretrain else {}
    return recipe_config(
        args,
        out,
        epochs=args.epochs,
        max_steps_per_epoch=args.steps,
        val_fraction=0.0,  # two training patients: no patient to spare; last.pt is used
        seed=seed,
        slice_oversample=args.slice_oversample,
        augment=True if args.augment else None,
        **ARMS[arm],
        **pretrain,
    )


def pretrained(args: argparse.Namespace) -> Path:
    """``OUT/pretrain/run/last.pt``: a UNet of the folds' width trained on
    ``args.pretrain`` synthetic WMH-like cases (FLAIR + T1, several simulated
    sites, punctate and confluent lesions at loads up to 150 mL) with the folds'
    recipe (GDL, augmentation, poly lr, weight average, the ``--set`` values),
    ``--pretrain-epochs`` epochs of 25 steps. Built on the first call, reused
    after (resumable like the folds)."""
    from napari_boundary_seg.cli import main as cli

    folder = args.out / "pretrain"
    last = folder / "run" / "last.pt"
    if last.is_file() and read_checkpoint(last)["position"]["epoch"] >= args.pretrain_epochs:
        return last
    cases = folder / "cases"
    if not (cases / "dataset.json").is_file():
        synth = ["synth", "--preset", "wmh", "--out", str(cases), "--cases", str(args.pretrain)]
        if cli([*synth, "--overwrite"] if cases.exists() else synth) != 0:
            raise SystemExit(f"could not write the synthetic pretraining cases to {cases}")
    config = recipe_config(
        args, folder / "run", data=str(cases), seed=0, epochs=args.pretrain_epochs,
        max_steps_per_epoch=25, lr_decay="poly", ema=0.99, augment=True, val_fraction=0.17,
    )  # fmt: skip
    print(f"pretraining on {args.pretrain} synthetic WMH-like cases: {folder}", flush=True)
    run_to_end(train(config))
    return last


def keep_modalities(files, names: str | None):
    """``files`` with only the modalities named in ``names`` (comma-separated), in that order."""
    if not names:
        return files
    wanted = [n.strip() for n in names.split(",")]
    out = []
    for f in files:
        lower = [m.lower() for m in f.modalities]
        missing = [n for n in wanted if n.lower() not in lower]
        if missing:
            raise SystemExit(f"{f.case_id}: no modality {missing}; it has {list(f.modalities)}")
        keep = [lower.index(n.lower()) for n in wanted]
        out.append(CaseFiles(f.case_id, tuple(f.image_paths[i] for i in keep), f.label_path,
                             tuple(f.modalities[i] for i in keep)))  # fmt: skip
    return out


def score(last, case, out: Path | None = None, flips: bool = False) -> dict:
    """Predict ``case`` with the checkpoint ``last`` (native grid; a list of
    checkpoints: their ensemble) and score it."""
    paths = last if isinstance(last, list) else [last]
    models = [load_checkpoint(path) for path in paths]
    _, pred = run_to_end(
        iter_predict_ensemble(models, case.images, case.spacing, affine=case.affine, flips=flips)
    )
    if out is not None:
        write_nifti(out, pred.astype(np.uint8), affine=case.affine, overwrite=True)
    return {**case_metrics(pred, case.labels, case.spacing), "pred_voxels": int((pred > 0).sum())}


def result_row(args, arm: str, seed, test, case, m: dict, **extra) -> dict:
    """A fold's (or an ensemble's) row of ``folds.csv`` from its :func:`score`."""
    return {
        "arm": arm, "seed": seed, "test": test.case_id, "dice": m["dice"], "hd95": m["hd95"],
        "lesion_recall": m.get("lesion_recall"), "lesion_f1": m.get("lesion_f1"),
        "ref_lesions": m.get("n_target"), "pred_voxels": m["pred_voxels"],
        "ref_voxels": int((case.labels > 0).sum()), "epochs": args.epochs,
        "modalities": ",".join(test.modalities), "sets": " ".join(args.set),
        "flips": bool(args.flips), **extra,
        # lesion recall by size (mm³ bins of core.metrics.DEFAULT_SIZE_BINS)
        **{f"{k}_{b}": m.get(f"{k}_{b}") for b in ("small", "medium", "large")
           for k in ("n_target", "lesion_recall")},
    }  # fmt: skip


def fold_dir(args, arm: str, seed, test) -> Path:
    """The folder of one fold's run: ``OUT/<arm>_seed<seed>/test_<case>``."""
    return args.out / f"{arm}_seed{seed}" / f"test_{test.case_id}"


def score_models(args, paths: list[Path], test, pred: Path, done_file: Path, arm: str, seed):
    """Score several checkpoints on ``test`` as one ensemble, write the row to
    ``done_file`` (a json, read back on a later run) and return it."""
    case = load_case(test)
    m = score(paths, case, pred, args.flips)
    row = result_row(args, arm, seed, test, case, m)
    done_file.write_text(json.dumps(row, indent=1, default=float))
    return row


def run_fold(args, arm, seed, files, test) -> dict:
    out = fold_dir(args, arm, seed, test)
    done_file = out / "metrics.json"
    if done_file.is_file() and not args.repredict:
        return json.loads(done_file.read_text())
    last = out / "last.pt"
    trained = last.is_file() and read_checkpoint(last)["position"]["epoch"] >= args.epochs
    if trained:  # a finished run: only predicted (again)
        previous = json.loads(done_file.read_text()) if done_file.is_file() else {}
        train_s = float(previous.get("train_s", float("nan")))
    else:
        train_files = [f for f in files if f.case_id != test.case_id]
        config = fold_config(args, arm, seed, out)
        t0, curve, scoring = time.perf_counter(), [], 0.0
        test_case = load_case(test) if args.eval_every else None
        for event in train(config, train_files, val_cases=[]):
            if not isinstance(event, EpochEvent):
                continue
            if args.snapshots and (event.epoch + 1) % args.snapshots == 0:
                if event.epoch + 1 < args.epochs:  # the final model is last.pt itself
                    shutil.copyfile(last, out / f"snapshot_epoch{event.epoch + 1}.pt")
            if not args.eval_every:
                continue
            if (event.epoch + 1) % args.eval_every == 0 and event.epoch + 1 < args.epochs:
                t1 = time.perf_counter()  # the epoch's last.pt on the test patient
                m = score(last, test_case, flips=args.flips)
                curve.append({"epoch": event.epoch + 1, "dice": m["dice"],
                              "lesion_recall": m.get("lesion_recall"),
                              "pred_voxels": m["pred_voxels"], "w_region": event.w_region})  # fmt: skip
                scoring += time.perf_counter() - t1
        train_s = time.perf_counter() - t0 - scoring
    case = load_case(test)
    m = score(last, case, out / f"{test.case_id}_pred.nii.gz", args.flips)
    pred_voxels = m["pred_voxels"]
    if not trained and args.eval_every:
        curve.append({"epoch": args.epochs, "dice": m["dice"], "lesion_recall":
                      m.get("lesion_recall"), "pred_voxels": pred_voxels, "w_region": None})  # fmt: skip
        with open(out / "curve.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, list(curve[0]))
            writer.writeheader()
            writer.writerows(curve)
    row = result_row(
        args, arm, seed, test, case, m, train_s=round(train_s, 1), steps_per_epoch=args.steps
    )
    done_file.write_text(json.dumps(row, indent=1, default=float))
    return row


def run_snapshots(args, arm: str, seed, test) -> dict | None:
    """A fold's snapshots (``snapshot_epoch*.pt``) and its ``last.pt`` as one
    ensemble, scored (``snapshots.json`` in the fold's folder, kept like a
    fold's); None without snapshots."""
    out = fold_dir(args, arm, seed, test)
    done_file = out / "snapshots.json"
    if done_file.is_file() and not args.repredict:
        return json.loads(done_file.read_text())
    snaps = sorted(out.glob("snapshot_epoch*.pt"), key=lambda p: int(p.stem.split("epoch")[1]))
    if not snaps or not (out / "last.pt").is_file():
        return None
    pred = out / f"{test.case_id}_snapshots_pred.nii.gz"
    return score_models(args, [*snaps, out / "last.pt"], test, pred, done_file,
                        f"{arm} snapshots", seed)  # fmt: skip


def run_ensemble(args, arms: list[str], test) -> dict | None:
    """The seeds' ``last.pt`` of ``arms`` for one test patient as one ensemble,
    scored (``OUT/<arm>[+<arm>...]_ensemble/test_<case>/metrics.json``, kept
    like a fold's); None unless every model is there and there are two or more."""
    seeds = args.seeds.split(",")
    paths = [fold_dir(args, arm, s, test) / "last.pt" for arm in arms for s in seeds]
    if len(paths) < 2 or not all(p.is_file() for p in paths):
        return None
    arm = "+".join(arms)
    out = args.out / f"{arm}_ensemble" / f"test_{test.case_id}"
    done_file = out / "metrics.json"
    if done_file.is_file() and not args.repredict:
        return json.loads(done_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    pred = out / f"{test.case_id}_pred.nii.gz"
    row = score_models(args, paths, test, pred, done_file, f"{arm} ensemble", "+".join(seeds))
    print(
        f"{row['arm']} test {test.case_id}: DSC {row['dice']:.3f} HD95 {row['hd95']:.1f} mm, "
        f"lesion recall {row['lesion_recall']:.2f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    unknown = [
        a for a in f"{args.arms},{args.ensemble_arms or ''}".split(",") if a and a not in ARMS
    ]
    if unknown:
        print(f"unknown arm(s) {unknown}: the arms are {', '.join(ARMS)}")
        return 2
    torch.set_num_threads(args.threads)
    files = keep_modalities(find_cases(args.data), args.modalities)
    if len(files) < 2:
        print(f"{args.data}: needs at least 2 labelled cases, found {len(files)}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows, snapshot_rows, pending = [], [], 0
    for arm in args.arms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for test in files:
                if args.only and test.case_id not in args.only.split(","):
                    continue
                done = fold_dir(args, arm, seed, test) / "metrics.json"
                if not done.is_file() and (time.perf_counter() - t_start) / 60 > args.max_minutes:
                    pending += 1
                    continue
                row = run_fold(args, arm, seed, files, test)
                rows.append(row)
                print(
                    f"{arm:7s} seed {seed} test {row['test']}: DSC {row['dice']:.3f} "
                    f"HD95 {row['hd95']:.1f} mm, lesion recall {row['lesion_recall']:.2f}, "
                    f"F1 {row['lesion_f1']:.2f} ({row['train_s']:.0f} s)",
                    flush=True,
                )
                snap = run_snapshots(args, arm, seed, test) if args.snapshots else None
                if snap is not None:
                    snapshot_rows.append(snap)
                    print(f"{snap['arm']} seed {seed} test {snap['test']}: DSC "
                          f"{snap['dice']:.3f}, lesion recall {snap['lesion_recall']:.2f}",
                          flush=True)  # fmt: skip
    arms = args.arms.split(",")
    rows += snapshot_rows
    arms += list(dict.fromkeys(r["arm"] for r in snapshot_rows))
    groups = [[arm] for arm in args.arms.split(",")] if args.ensemble else []
    if args.ensemble_arms:
        groups.append(args.ensemble_arms.split(","))
    if groups and not pending:
        for group in groups:
            ensemble_rows = [
                row
                for test in files
                if not args.only or test.case_id in args.only.split(",")
                for row in [run_ensemble(args, group, test)]
                if row is not None
            ]
            if ensemble_rows:
                rows += ensemble_rows
                arms.append(ensemble_rows[0]["arm"])
    with open(args.out / "folds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| arm | folds | mean DSC | mean HD95 (mm) | mean lesion recall | mean lesion F1 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for arm in arms:
        sel = [r for r in rows if r["arm"] == arm]
        if sel:
            mean = {k: float(np.mean([r[k] for r in sel])) for k in
                    ("dice", "hd95", "lesion_recall", "lesion_f1")}  # fmt: skip
            lines.append(
                f"| {arm} | {len(sel)} | {mean['dice']:.3f} | {mean['hd95']:.1f} | "
                f"{mean['lesion_recall']:.2f} | {mean['lesion_f1']:.2f} |"
            )
    summary = "\n".join(lines)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)
    wall = time.perf_counter() - t_start
    print(f"wall time of this part: {wall / 60:.1f} min; folds left for a next part: {pending}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
