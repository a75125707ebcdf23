"""The correction curve: what k corrected slices are worth on the rest of a scan.

A simulated person starts from the shipped starter model (a small 2D UNet trained on
the ``wmh`` preset of the synthetic benchmark, ``napari_boundary_seg/models/``) and a
scan it has not seen: a simulated site held out of the preset
(:data:`HELDOUT_SITE`, drawn by ``core.synthetic_wmh.make_wmh_case``) and the real MS
scans of ``../shared/data/lesjak2017-ms`` (skipped, with the reason, when absent).
Each round the person corrects the slices where the current prediction is worst
(most wrong voxels; the prediction is replaced by the reference there, so they
become verified slices), k = 1, 2, 4, 8, 16 in all (cumulative), and fine-tunes the
current model with ``core.finetune.finetune`` (the function of the widget and the
``finetune`` command; only verified slices teach). DSC, HD95 and lesion F1 are
measured on the slices nobody corrected (the corrected ones are blanked in both
prediction and reference), together with the k = 0 model and, on the real scans, a
model trained from scratch on the two other, fully labelled patients (leave one
patient out, the starter's architecture and budget) on the same slices.

Arms: ``ft_gdl`` (fine-tune, α = 1: generalized Dice only), ``ft_gdl_bl`` (fine-tune,
α = 0.5: GDL + boundary loss, where the starter's schedule ended), ``scratch`` (a
randomly initialised network of the same shape trained, through the same function,
on the ``ft_gdl_bl`` arm's verified slices for as many steps as that arm's rounds
took in all). Seeds 0, 1, 2 (slice order within a round, and the scratch init).

Resumable and in parts: every (target, arm, seed, k) point is a JSON file under
``--out/points``; a finished point is not run again; ``--max-minutes`` starts no new
point after that much wall time. Checkpoints, predictions and the simulated scan go
to ``--work`` (not committed). ``--report`` only gathers the points into
``results.csv``, ``summary.md`` and ``curve.png``.

    OMP_NUM_THREADS=1 python benchmarks/finetune_curve.py --targets sim,patient26 &
    OMP_NUM_THREADS=1 python benchmarks/finetune_curve.py --targets patient07,patient19
    python benchmarks/finetune_curve.py --report

Results, timing and the commands of the committed run:
``benchmarks/results/finetune_curve/README.md``; where fine-tuning lives: docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "napari_boundary_seg" / "models" / "starter_model.zip"
REAL = ROOT.parent / "shared" / "data" / "lesjak2017-ms"
K_VALUES = (0, 1, 2, 4, 8, 16)
ARMS = ("ft_gdl", "ft_gdl_bl", "scratch")
ARM_ALPHA = {"ft_gdl": 1.0, "ft_gdl_bl": 0.5}
"""Constant α of the fine-tune arms (loss = α·GDL + (1 − α)·BL)."""


# ---------------------------------------------------------------------------
# the simulated person (pure logic, tested in tests/test_finetune_curve.py)


def slice_errors(pred: np.ndarray, ref: np.ndarray, axis: int) -> np.ndarray:
    """Wrong voxels (prediction ≠ reference) per slice along ``axis``."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    other = tuple(a for a in range(pred.ndim) if a != axis)
    return (np.asarray(pred) != np.asarray(ref)).sum(axis=other)


def worst_slices(
    pred: np.ndarray, ref: np.ndarray, axis: int, k: int, verified: Iterable[int] = ()
) -> tuple[int, ...]:
    """The ``k`` verified slices after a round: ``verified`` kept, topped up with the
    slices of the most wrong voxels (ties: lower index first), sorted."""
    kept = sorted({int(s) for s in verified})
    if len(kept) > k:
        raise ValueError(f"{len(kept)} slices already verified, more than k = {k}")
    errors = slice_errors(pred, ref, axis)
    if k > errors.size:
        raise ValueError(f"k = {k} but the scan has {errors.size} slices along axis {axis}")
    order = [int(s) for s in np.argsort(-errors, kind="stable") if int(s) not in kept]
    return tuple(sorted(kept + order[: k - len(kept)]))


def corrected_volume(
    pred: np.ndarray, ref: np.ndarray, axis: int, slices: Sequence[int]
) -> np.ndarray:
    """The prediction with the reference painted over ``slices`` (what the person hands over)."""
    out = np.array(pred, copy=True)
    index: list[Any] = [slice(None)] * out.ndim
    index[axis] = list(slices)
    out[tuple(index)] = np.asarray(ref)[tuple(index)]
    return out


def blank_slices(volume: np.ndarray, axis: int, slices: Sequence[int]) -> np.ndarray:
    """``volume`` with ``slices`` set to 0 (left out of the scoring)."""
    out = np.array(volume, copy=True)
    index: list[Any] = [slice(None)] * out.ndim
    index[axis] = list(slices)
    out[tuple(index)] = 0
    return out


def uncorrected_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    axis: int,
    corrected: Sequence[int],
    spacing: Sequence[float],
) -> dict[str, float]:
    """DSC, HD95 (mm), lesion F1 and volumes (ml) on the slices not in ``corrected``."""
    from napari_boundary_seg.core.metrics import case_metrics

    p = blank_slices(pred > 0, axis, corrected)
    r = blank_slices(ref > 0, axis, corrected)
    m = case_metrics(p, r, spacing)
    return {
        "dice": float(m["dice"]),
        "hd95": float(m["hd95"]),
        "lesion_f1": float(m["lesion_f1"]),
        "pred_ml": float(m["volume_pred"]) / 1000.0,
        "ref_ml": float(m["volume_target"]) / 1000.0,
    }


def round_epochs(items: int, batch: int, steps: int) -> int:
    """Epochs over ``items`` fine-tuning slices (batches of ``min(batch, items)``) that
    give at least ``steps`` optimiser steps."""
    per_epoch = math.ceil(items / max(1, min(batch, items)))
    return max(1, math.ceil(steps / per_epoch))


def round_index(k: int) -> int:
    """1 for the first round (k = 1), 2 for k = 2, ...; 0 for k = 0."""
    return K_VALUES.index(k)


def summarise(rows: Sequence[dict[str, Any]], key: str) -> dict[tuple, tuple[float, float, int]]:
    """``(target, arm, k) -> (mean, sd, n)`` of ``key`` over seeds (sd 0 for one seed)."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        value = row.get(key)
        if value is None or not np.isfinite(value):
            continue
        groups.setdefault((row["target"], row["arm"], row["k"]), []).append(float(value))
    return {
        g: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
        for g, v in groups.items()
    }


# ---------------------------------------------------------------------------
# scans, models


HELDOUT_SEED = 2026
HELDOUT_LOAD_ML = (8.0, 25.0)
"""Lesion load of the held-out simulated scan (ml): moderate, like patient26's 8 ml, so
that lesions remain on the slices left uncorrected at k = 16."""


def heldout_site():
    """A simulated site outside the preset's (other voxel size, contrast, noise, bias)."""
    from napari_boundary_seg.core.synthetic_wmh import SiteConfig

    return SiteConfig(
        "heldout-1.5t", (1.8, 1.8, 3.3), contrast=(1.35, 1.8), noise=0.055, bias=0.18, gm_wm=1.4
    )


def load_target(name: str, work: Path):
    """``Case`` of target ``name``: ``sim`` (the held-out site) or a real patient id."""
    from napari_boundary_seg.core.data import case_from_arrays, find_cases, load_case

    if name == "sim":
        cached = work / "sim_case.npz"
        if not cached.is_file():
            from napari_boundary_seg.core.synthetic_wmh import WMHConfig, make_wmh_case

            config = dataclasses.replace(WMHConfig(), load_ml=HELDOUT_LOAD_ML)
            case = make_wmh_case(HELDOUT_SEED, heldout_site(), config, case_id="sim")
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                cached,
                images=case.images,
                labels=case.labels,
                spacing=np.asarray(case.spacing),
                affine=case.affine,
            )
        z = np.load(cached)
        return case_from_arrays(
            list(z["images"]),
            z["labels"],
            tuple(z["spacing"]),
            case_id="sim",
            affine=z["affine"],
            modalities=("FLAIR", "T1"),
        )
    for f in find_cases(REAL):
        if f.case_id == name:
            return load_case(f)
    raise ValueError(f"no target {name!r}: use sim or a patient of {REAL}")


def starter_checkpoint(work: Path) -> Path:
    """The starter model's embedded checkpoint, unpacked once into ``work``."""
    out = work / "starter.pt"
    if not out.is_file():
        work.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(STARTER) as archive:
            out.write_bytes(archive.read("checkpoint.pt"))
    return out


def scratch_checkpoint(base: Path, seed: int, work: Path) -> Path:
    """The starter's checkpoint with freshly initialised weights (seeded)."""
    import torch

    from napari_boundary_seg.core.checkpoint import read_checkpoint, save_checkpoint
    from napari_boundary_seg.core.unet import UNet

    out = work / f"scratch_init_seed{seed}.pt"
    if not out.is_file():
        source = read_checkpoint(base)
        torch.manual_seed(seed)
        fresh = dict(source)
        fresh["model_state"] = UNet(**source["model"]).state_dict()
        for key in ("optimizer_state", "lr_state", "scaler_state"):
            fresh.pop(key, None)
        fresh["history"] = []
        fresh["train_cases"] = []
        save_checkpoint(out, fresh)
    return out


def predict(checkpoint: Path, case) -> np.ndarray:
    from napari_boundary_seg.core.predict import predict_volume

    _, pred = predict_volume(
        str(checkpoint), case.images, case.spacing, affine=case.affine, device="cpu"
    )
    return pred.astype(np.uint8)


def cached_prediction(path: Path, checkpoint: Path, case) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    pred = predict(checkpoint, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pred)
    return pred


def lopo_model(args, base: Path, test: str, seed: int) -> Path:
    """A model trained from scratch on the real patients other than ``test`` (fully
    labelled), with the starter's network, preprocessing, schedule and step budget."""
    from napari_boundary_seg.core.checkpoint import checkpoint_config, read_checkpoint
    from napari_boundary_seg.core.config import TrainConfig
    from napari_boundary_seg.core.data import find_cases
    from napari_boundary_seg.core.progress import run_to_end
    from napari_boundary_seg.core.train import train

    out = args.work / "lopo" / f"{test}_seed{seed}"
    last = out / "last.pt"
    if last.is_file() and read_checkpoint(last)["position"]["epoch"] >= args.lopo_epochs:
        return last
    config = TrainConfig.from_dict(checkpoint_config(read_checkpoint(base))).replace(
        data=None,
        out_dir=str(out),
        epochs=args.lopo_epochs,
        max_steps_per_epoch=args.lopo_steps,
        val_fraction=0.0,
        seed=seed,
        device="cpu",
        overwrite=True,
        cache_dir=str(args.work / "lopo_cache"),
        init_checkpoint=None,
        resume_from=None,
    )
    files = [f for f in find_cases(REAL) if f.case_id != test]
    t0 = time.perf_counter()
    run_to_end(train(config, files, val_cases=[]))
    print(f"  lopo {test} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return last


# ---------------------------------------------------------------------------
# one point


def run_round(
    args, parent: Path, case, corrected: np.ndarray, slices, axis, out: Path, *, alpha, alpha_end,
    epochs, lr, batch, seed,
) -> Path:  # fmt: skip
    """One fine-tune through ``core.finetune.finetune``; returns its ``last.pt``."""
    from napari_boundary_seg.core.finetune import finetune
    from napari_boundary_seg.core.progress import run_to_end

    step = max(0.0, (alpha - alpha_end) / max(1, epochs - 1))
    result = run_to_end(
        finetune(
            parent,
            case.images,
            corrected,
            case.spacing,
            list(slices),
            axis=axis,
            affine=case.affine,
            epochs=epochs,
            alpha_start=alpha,
            alpha_step=step,
            alpha_floor=alpha_end,
            lr=lr,
            batch_size=batch,
            seed=seed,
            device="cpu",
            out_dir=str(out),
            overwrite=True,
        )
    )
    if result.checkpoint is None:
        raise RuntimeError(f"fine-tune {out} wrote no checkpoint ({result.reason})")
    return Path(result.checkpoint)


def point_path(args, target: str, arm: str, seed: int, k: int) -> Path:
    return args.out / "points" / f"{target}_{arm}_seed{seed}_k{k:02d}.json"


def score_row(args, ctx, pred: np.ndarray, slices, **fields) -> dict[str, Any]:
    case, axis = ctx["case"], ctx["axis"]
    row = dict(fields, slices=list(slices), k=len(slices))
    row.update(uncorrected_metrics(pred, case.labels, axis, slices, case.spacing))
    base = uncorrected_metrics(ctx["base_pred"], case.labels, axis, slices, case.spacing)
    row["base_dice"] = base["dice"]
    for seed, lopo in ctx.get("lopo", {}).items():
        if seed == fields.get("seed", 0):
            row["lopo_dice"] = uncorrected_metrics(lopo, case.labels, axis, slices, case.spacing)[
                "dice"
            ]
    return row


def run_target(args, target: str, t_start: float) -> int:
    """Every point of one target; returns how many were left for a next part."""
    from napari_boundary_seg.core.checkpoint import checkpoint_native_axis, read_checkpoint

    work = args.work / target
    base = starter_checkpoint(args.work)
    case = load_target(target, work)
    axis = checkpoint_native_axis(read_checkpoint(base), 3, case.affine, case.spacing)
    ctx: dict[str, Any] = {"case": case, "axis": axis}
    ctx["base_pred"] = cached_prediction(work / "pred_base.npy", base, case)
    seeds = [int(s) for s in args.seeds.split(",")]
    left = 0

    def late() -> bool:
        return (time.perf_counter() - t_start) / 60 > args.max_minutes

    if target != "sim":
        lopo = {}
        for seed in range(args.lopo_seeds):  # seeds 0.. whatever --seeds this part runs
            path = work / f"pred_lopo_seed{seed}.npy"
            if not path.is_file() and late():
                left += 1
                continue
            model = lopo_model(args, base, target, seed)
            lopo[seed] = cached_prediction(path, model, case)
        ctx["lopo"] = lopo
        # seeds beyond --lopo-seeds are compared with the LOPO model of seed 0
        for seed in seeds:
            if seed not in lopo and lopo:
                lopo[seed] = lopo[min(lopo)]

    k0 = point_path(args, target, "base", 0, 0)
    if not k0.is_file():
        row = score_row(args, ctx, ctx["base_pred"], (), target=target, arm="base", seed=0)
        write_point(k0, row)
    arms = args.arms.split(",")
    for seed in seeds:
        for arm in [a for a in ("ft_gdl", "ft_gdl_bl") if a in arms]:
            parent, verified, steps_so_far = base, (), 0
            pred, pred_file = ctx["base_pred"], None
            for k in K_VALUES[1:]:
                # a round of k <= batch sees every verified slice in each step: the seeds
                # (the slice order) give the same run, so it is run once, by the first seed
                owner = seeds[0] if k <= args.batch else seed
                out = work / arm / f"seed{owner}" / f"k{k:02d}"
                done = point_path(args, target, arm, seed, k)
                shared = point_path(args, target, arm, owner, k)
                if not done.is_file() and owner != seed and shared.is_file():
                    write_point(done, dict(json.loads(shared.read_text()), seed=seed,
                                           shared_with_seed=owner))  # fmt: skip
                if done.is_file():
                    row = json.loads(done.read_text())
                    parent, verified = out / "last.pt", tuple(row["slices"])
                    steps_so_far = row["steps_total"]
                    pred, pred_file = None, out.parent / f"pred_k{k:02d}.npy"
                    continue
                if late() or owner != seed:
                    left += len(K_VALUES) - K_VALUES.index(k)
                    break
                if pred is None:
                    pred = cached_prediction(pred_file, parent, case)
                verified = worst_slices(pred, case.labels, axis, k, verified)
                labels = corrected_volume(pred, case.labels, axis, verified)
                epochs = round_epochs(k, args.batch, args.steps)
                t0 = time.perf_counter()
                parent = run_round(
                    args, parent, case, labels, verified, axis, out, alpha=ARM_ALPHA[arm],
                    alpha_end=ARM_ALPHA[arm], epochs=epochs, lr=args.lr, batch=args.batch,
                    seed=seed,
                )  # fmt: skip
                train_s = time.perf_counter() - t0
                steps = epochs * math.ceil(k / min(args.batch, k))
                steps_so_far += steps
                pred = cached_prediction(out.parent / f"pred_k{k:02d}.npy", parent, case)
                row = score_row(args, ctx, pred, verified, target=target, arm=arm, seed=seed,
                                epochs=epochs, steps=steps, steps_total=steps_so_far,
                                train_s=round(train_s, 1))  # fmt: skip
                write_point(done, row)
                report_point(row)
        # scratch: the ft_gdl_bl arm's verified slices, its total steps
        for k in K_VALUES[1:] if "scratch" in arms else ():
            done = point_path(args, target, "scratch", seed, k)
            source = point_path(args, target, "ft_gdl_bl", seed, k)
            if done.is_file() or not source.is_file():
                continue
            if late():
                left += 1
                continue
            src = json.loads(source.read_text())
            verified = tuple(src["slices"])
            labels = corrected_volume(ctx["base_pred"], case.labels, axis, verified)
            epochs = round_epochs(k, args.batch, src["steps_total"])
            init = scratch_checkpoint(base, seed, args.work)
            out = work / "scratch" / f"seed{seed}" / f"k{k:02d}"
            t0 = time.perf_counter()
            last = run_round(
                args, init, case, labels, verified, axis, out, alpha=1.0, alpha_end=0.5,
                epochs=epochs, lr=args.scratch_lr, batch=args.batch, seed=seed,
            )  # fmt: skip
            train_s = time.perf_counter() - t0
            pred = predict(last, case)
            steps = epochs * math.ceil(k / min(args.batch, k))
            row = score_row(args, ctx, pred, verified, target=target, arm="scratch", seed=seed,
                            epochs=epochs, steps=steps, steps_total=steps,
                            train_s=round(train_s, 1))  # fmt: skip
            write_point(done, row)
            report_point(row)
    return left


def write_point(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1) + "\n")
    os.replace(tmp, path)


def report_point(row: dict[str, Any]) -> None:
    extra = f", LOPO {row['lopo_dice']:.3f}" if "lopo_dice" in row else ""
    print(
        f"{row['target']:9s} {row['arm']:9s} seed {row['seed']} k {row['k']:2d}: "
        f"DSC {row['dice']:.3f} (k=0 model on these slices {row['base_dice']:.3f}{extra}) "
        f"HD95 {row['hd95']:.1f} mm F1 {row['lesion_f1']:.2f} pred {row['pred_ml']:.1f} / "
        f"ref {row['ref_ml']:.1f} ml ({row.get('train_s', 0):.0f} s)",
        flush=True,
    )


# ---------------------------------------------------------------------------
# report


def read_points(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
    expanded = []
    for row in rows:  # the k = 0 model is the fine-tune arms' first point
        if row["arm"] == "base":
            for arm in ARM_ALPHA:
                expanded.append(dict(row, arm=arm))
        else:
            expanded.append(row)
    return expanded


def report(out: Path) -> str:
    rows = read_points(out)
    if not rows:
        return "no points yet"
    targets = sorted({r["target"] for r in rows}, key=lambda t: (t != "sim", t))
    stats = {key: summarise(rows, key) for key in
             ("dice", "hd95", "lesion_f1", "pred_ml", "base_dice", "lopo_dice", "ref_ml")}  # fmt: skip
    cols = ["target", "arm", "k", "n", "dice_mean", "dice_sd", "hd95_mean", "hd95_sd",
            "lesion_f1_mean", "lesion_f1_sd", "pred_ml_mean", "ref_ml", "base_dice_same_slices",
            "lopo_dice_same_slices"]  # fmt: skip
    lines = [",".join(cols)]
    md = [
        "DSC, HD95 (mm) and lesion F1 on the slices nobody corrected, mean ± sd over seeds; "
        "`k=0 here`: the starter model's DSC on the same slices; `LOPO here`: a model "
        "trained on the two other real patients, on the same slices.",
        "",
        "| target | arm | k | n | DSC | k=0 here | LOPO here | HD95 | lesion F1 | pred / ref ml |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        for arm in ARMS:
            for k in K_VALUES:
                g = (t, arm, k)
                if g not in stats["dice"]:
                    continue
                d, h, f, v = (stats[x][g] for x in ("dice", "hd95", "lesion_f1", "pred_ml"))
                b = stats["base_dice"][g][0]
                lo = stats["lopo_dice"].get(g, (float("nan"),))[0]
                ref = stats["ref_ml"][g][0]
                lines.append(",".join(str(x) for x in (
                    t, arm, k, d[2], f"{d[0]:.4f}", f"{d[1]:.4f}", f"{h[0]:.2f}", f"{h[1]:.2f}",
                    f"{f[0]:.4f}", f"{f[1]:.4f}", f"{v[0]:.2f}", f"{ref:.2f}", f"{b:.4f}",
                    f"{lo:.4f}")))  # fmt: skip
                md.append(
                    f"| {t} | {arm} | {k} | {d[2]} | {d[0]:.3f} ± {d[1]:.3f} | {b:.3f} | "
                    f"{lo:.3f} | {h[0]:.1f} ± {h[1]:.1f} | {f[0]:.2f} ± {f[1]:.2f} | "
                    f"{v[0]:.1f} / {ref:.1f} |"
                )
    md += ["", goal_lines(stats, targets)]
    (out / "results.csv").write_text("\n".join(lines) + "\n")
    text = "\n".join(md) + "\n"
    (out / "summary.md").write_text(text)
    plot(stats, targets, out / "curve.png")
    return text


def goal_lines(stats, targets) -> str:
    """The goal on the real scans at k = 8, per fine-tune arm."""
    out = ["Goal at k = 8 (real scans): gain ≥ 0.2 DSC over the k = 0 model on the same "
           "uncorrected slices, and ≥ 90 % of the LOPO model's DSC there.", ""]  # fmt: skip
    for t in targets:
        if t == "sim":
            continue
        for arm in ("ft_gdl", "ft_gdl_bl", "scratch"):
            g = (t, arm, 8)
            if g not in stats["dice"]:
                continue
            d = stats["dice"][g][0]
            b = stats["base_dice"][g][0]
            lo = stats["lopo_dice"].get(g, (float("nan"),))[0]
            ratio = d / lo if lo > 0 else float("nan")
            k0 = stats["dice"].get((t, "ft_gdl", 0), (float("nan"),))[0]
            ok = (d - b >= 0.2) and ratio >= 0.9
            out.append(
                f"- {t} {arm}: DSC {d:.3f}; gain {d - b:+.3f} over the k = 0 model on the same "
                f"slices ({d - k0:+.3f} over its DSC on the whole scan, {k0:.3f}); "
                f"{100 * ratio:.0f} % of LOPO ({lo:.3f}): {'met' if ok else 'missed'}"
            )
    return "\n".join(out)


def plot(stats, targets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), squeeze=False)
    colours = {"ft_gdl": "tab:blue", "ft_gdl_bl": "tab:red", "scratch": "tab:gray"}
    xs = np.arange(len(K_VALUES))
    for ax, t in zip(axes[0], targets, strict=False):
        for arm in ARMS:
            pts = [(i, stats["dice"][(t, arm, k)]) for i, k in enumerate(K_VALUES)
                   if (t, arm, k) in stats["dice"]]  # fmt: skip
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                            yerr=[p[1][1] for p in pts], label=arm, color=colours[arm],
                            marker="o", ms=3, capsize=2)  # fmt: skip
        for key, style, label in (("base_dice", ":", "k=0 model, same slices"),
                                  ("lopo_dice", "--", "LOPO (2 real patients)")):  # fmt: skip
            pts = [(i, stats[key][(t, "ft_gdl_bl", k)][0]) for i, k in enumerate(K_VALUES)
                   if (t, "ft_gdl_bl", k) in stats[key]]  # fmt: skip
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color="k", lw=1,
                        label=label)  # fmt: skip
        ax.set_xticks(xs, [str(k) for k in K_VALUES])
        ax.set_title("held-out simulated site" if t == "sim" else t, fontsize=9)
        ax.set_xlabel("corrected slices k")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("DSC on uncorrected slices")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="sim,patient07,patient19,patient26",
                   help="comma-separated: sim and/or real patient ids")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune_curve")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "finetune-curve")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (all)")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per round (30)")
    p.add_argument("--batch", type=int, default=4, help="slices per step (4)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate (1e-3)")
    p.add_argument("--scratch-lr", type=float, default=2e-3, help="scratch arm's (2e-3)")
    p.add_argument("--lopo-epochs", type=int, default=24, help="LOPO model: the starter's 24")
    p.add_argument("--lopo-steps", type=int, default=40, help="LOPO steps per epoch (40)")
    p.add_argument("--lopo-seeds", type=int, default=1, help="LOPO models per patient (1)")
    p.add_argument("--max-minutes", type=float, default=60.0, help="start no point after this")
    p.add_argument("--report", action="store_true", help="only gather the points")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.report:
        print(report(args.out))
        return 0
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.2f} at start; torch threads 1", flush=True)
    left = 0
    for target in args.targets.split(","):
        if target != "sim" and not REAL.is_dir():
            print(f"{target}: skipped, {REAL} is absent (the real scans are not shipped)")
            continue
        left += run_target(args, target, t_start)
    wall = time.perf_counter() - t_start
    print(
        f"wall time of this part: {wall / 60:.1f} min, load average {os.getloadavg()[0]:.2f}; "
        f"points left for a next part: {left}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
