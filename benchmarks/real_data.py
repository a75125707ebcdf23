"""Leave one patient out on a folder of real scans: GDL against GDL + BL.

For every arm, seed and patient: train on the other patients (2D slices along
the plane the scans give, canonical orientation, z-scored within the head,
slices resampled to the training spacing: the package's defaults), predict
the held-out patient on its native grid with ``predict_volume`` and score it
with ``case_metrics`` (DSC, HD95, lesion recall and F1). Resumable: a fold
whose ``metrics.json`` exists is not run again; ``--max-minutes`` stops
starting new folds after that much wall time, so the study runs in parts.

    OMP_NUM_THREADS=1 python benchmarks/real_data.py DATA_DIR --out OUT

Prints one row per fold and the means per arm; writes ``OUT/folds.csv`` and
``OUT/summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_boundary_seg.core.checkpoint import load_checkpoint, read_checkpoint
from napari_boundary_seg.core.data import find_cases, load_case
from napari_boundary_seg.core.io import write_nifti
from napari_boundary_seg.core.metrics import case_metrics
from napari_boundary_seg.core.predict import predict_volume
from napari_boundary_seg.core.presets import QUICK_START
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import TrainConfig, train

ARMS = {
    "gdl": {"loss": "gdl"},
    "gdl_bl": {"loss": "gdl+bl", "schedule": QUICK_START["schedule"]},
}
COLUMNS = [
    "arm", "seed", "test", "dice", "hd95", "lesion_recall", "lesion_f1",
    "ref_lesions", "pred_voxels", "ref_voxels", "train_s", "epochs",
]  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="data folder (nnU-Net, WMH or ISLES layout)")
    p.add_argument("--out", type=Path, required=True, help="results folder (resumable)")
    p.add_argument("--arms", default="gdl,gdl_bl", help="comma-separated: gdl, gdl_bl")
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
    p.add_argument("--only", help="comma-separated test patients (default: every one)")
    p.add_argument(
        "--repredict", action="store_true", help="predict and score finished folds again"
    )
    return p.parse_args(argv)


def fold_config(args: argparse.Namespace, arm: str, seed: int, out: Path) -> TrainConfig:
    values = {k: v for k, v in QUICK_START.items() if k != "schedule"}
    values.update(
        epochs=args.epochs,
        max_steps_per_epoch=args.steps,
        base_channels=args.width,
        val_fraction=0.0,  # two training patients: no patient to spare; last.pt is used
        seed=seed,
        device="cpu",
        out_dir=str(out),
        overwrite=True,
        cache_dir=str(args.out / "cache"),
        slice_oversample=args.slice_oversample,
        augment=True if args.augment else None,
    )
    values.update(ARMS[arm])
    return TrainConfig(**values)


def run_fold(args, arm, seed, files, test) -> dict:
    out = args.out / f"{arm}_seed{seed}" / f"test_{test.case_id}"
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
        t0 = time.perf_counter()
        run_to_end(train(config, train_files, val_cases=[]))
        train_s = time.perf_counter() - t0
    case = load_case(test)
    _, pred = predict_volume(load_checkpoint(last), case.images, case.spacing, affine=case.affine)
    write_nifti(out / f"{test.case_id}_pred.nii.gz", pred.astype(np.uint8), affine=case.affine,
                overwrite=True)  # fmt: skip
    m = case_metrics(pred, case.labels, case.spacing)
    row = {
        "arm": arm, "seed": seed, "test": test.case_id, "dice": m["dice"], "hd95": m["hd95"],
        "lesion_recall": m.get("lesion_recall"), "lesion_f1": m.get("lesion_f1"),
        "ref_lesions": m.get("n_target"), "pred_voxels": int((pred > 0).sum()),
        "ref_voxels": int((case.labels > 0).sum()), "train_s": round(train_s, 1),
        "epochs": args.epochs, "steps_per_epoch": args.steps,
        # lesion recall by size (mm³ bins of core.metrics.DEFAULT_SIZE_BINS)
        **{f"{k}_{b}": m.get(f"{k}_{b}") for b in ("small", "medium", "large")
           for k in ("n_target", "lesion_recall")},
    }  # fmt: skip
    done_file.write_text(json.dumps(row, indent=1, default=float))
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    files = find_cases(args.data)
    if len(files) < 2:
        print(f"{args.data}: needs at least 2 labelled cases, found {len(files)}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows, pending = [], 0
    for arm in args.arms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for test in files:
                if args.only and test.case_id not in args.only.split(","):
                    continue
                done = args.out / f"{arm}_seed{seed}" / f"test_{test.case_id}" / "metrics.json"
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
    with open(args.out / "folds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| arm | folds | mean DSC | mean HD95 (mm) | mean lesion recall | mean lesion F1 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for arm in args.arms.split(","):
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
