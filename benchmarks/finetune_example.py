"""Fine-tuning on corrections, measured on the built-in benchmark (README: "Fine-tuning
on your corrections").

    .venv/bin/python benchmarks/finetune_example.py            # ~10 min on a busy 2-core CPU

1. writes a small built-in benchmark (``core.synthetic.write_benchmark``, what
   ``napari-boundary-seg synth`` does) into ``runs/finetune-example/data``;
2. trains a small UNet briefly on all cases but the last (``core.train``);
3. predicts the held-out last case and "corrects" a few slices: the prediction
   is replaced by the ground truth on the ``--corrected`` slices with the most
   lesion voxels (what a user does with napari's brush);
4. fine-tunes on those slices only (``core.finetune.finetune``, the function the
   widget and ``napari-boundary-seg finetune`` call), once alone and once mixed
   1:1 with slices of the training set;
5. reports DSC and HD95 against the *ground truth* on the corrected and on the
   untouched slices, before and after, into
   ``benchmarks/results/finetune/finetune_example.{json,md}``.

Everything is seeded; a rerun on a CPU gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "finetune-example")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune")
    p.add_argument("--cases", type=int, default=6, help="benchmark cases (last one held out)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 80, 64))
    p.add_argument("--size", type=int, default=64, help="slice size (pixels)")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the base model")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch of the base model")
    p.add_argument("--corrected", type=int, default=4, help="slices corrected by hand")
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--alpha-start", type=float, default=0.8)
    p.add_argument("--alpha-step", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch_threads()

    from napari_boundary_seg.core.data import find_cases, load_cases
    from napari_boundary_seg.core.finetune import compare_models, finetune
    from napari_boundary_seg.core.predict import predict_volume
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.synthetic import write_benchmark
    from napari_boundary_seg.core.train import TrainConfig, train

    tic = time.perf_counter()
    data = args.work / "data"
    if not (data / "dataset.json").exists():
        write_benchmark(data, n_cases=args.cases, seed=0, shape=tuple(args.shape))
    cases = load_cases(find_cases(data))
    train_cases, held_out = cases[:-1], cases[-1]
    axis = 2
    base_dir = args.work / "base"
    base_ckpt = base_dir / "last.pt"
    if not base_ckpt.exists():
        config = TrainConfig(
            out_dir=str(base_dir),
            epochs=args.epochs,
            max_steps_per_epoch=args.steps,
            batch_size=8,
            slice_size=args.size,
            axis=axis,
            depth=3,
            base_channels=8,
            val_fraction=0.0,
            device=args.device,
            overwrite=True,
        )
        run_to_end(train(config, train_cases))
    t_base = time.perf_counter() - tic

    spacing = held_out.spacing
    truth = held_out.labels
    _, old_pred = predict_volume(str(base_ckpt), held_out.images, spacing, device=args.device)
    other = tuple(k for k in range(truth.ndim) if k != axis)
    fg_per_slice = (truth > 0).sum(axis=other)
    slices = sorted(int(s) for s in np.argsort(-fg_per_slice, kind="stable")[: args.corrected])
    corrected = old_pred.copy()
    index = [slice(None)] * truth.ndim
    for s in slices:
        index[axis] = s
        corrected[tuple(index)] = truth[tuple(index)]

    runs = {}
    for name, mix_ratio in (("corrected slices only", 0.0), ("mixed 1:1 with training", 1.0)):
        t0 = time.perf_counter()
        result = run_to_end(
            finetune(
                base_ckpt,
                held_out.images,
                corrected,
                spacing,
                slices,
                mix_cases=train_cases if mix_ratio else None,
                mix_ratio=mix_ratio,
                alpha_start=args.alpha_start,
                alpha_step=args.alpha_step,
                epochs=args.ft_epochs,
                lr=args.lr,
                out_dir=args.work / f"ft-mix{mix_ratio:g}",
                device=args.device,
                overwrite=True,
            )
        )
        seconds = time.perf_counter() - t0
        _, new_pred = predict_volume(result.checkpoint, held_out.images, spacing)
        runs[name] = {
            "vs_ground_truth": compare_models(old_pred, new_pred, truth, spacing, slices, axis),
            "vs_corrections": compare_models(old_pred, new_pred, corrected, spacing, slices, axis),
            "mix_slices": len(result.mix_slices),
            "finetune_seconds": round(seconds, 1),
            "voxels_changed": int((old_pred != new_pred).sum()),
        }
    report = {
        "command": "python benchmarks/finetune_example.py " + " ".join(argv or sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "held_out_case": held_out.case_id,
        "corrected_slices": slices,
        "axis": axis,
        "base_training_seconds": round(t_base, 1),
        "total_seconds": round(time.perf_counter() - tic, 1),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_example.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "finetune_example.md").write_text(table)
    print(table)
    return 0


def markdown(report: dict) -> str:
    """The README table: DSC / HD95 against the ground truth, before -> after."""
    lines = [
        f"Held-out case {report['held_out_case']}, corrected slices {report['corrected_slices']} "
        f"(axis {report['axis']}); DSC and HD95 (mm) against the ground truth, "
        "parent model -> fine-tuned.",
        "",
        "| fine-tune | slices | n | DSC before | DSC after | HD95 before | HD95 after |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in report["runs"].items():
        for group, row in run["vs_ground_truth"].items():
            lines.append(
                f"| {name} | {group} | {row['n_slices']} | {row['dice_old']:.3f} | "
                f"{row['dice_new']:.3f} | {row['hd95_old']:.1f} | {row['hd95_new']:.1f} |"
            )
    lines.append("")
    lines.append(
        f"Total {report['total_seconds']:.0f} s (base model {report['base_training_seconds']:.0f} s)."
    )
    return "\n".join(lines) + "\n"


def torch_threads() -> None:
    import torch

    torch.set_num_threads(2)


if __name__ == "__main__":
    sys.exit(main())
