"""The empty-prediction basin in numbers: the boundary term's arithmetic and gradients.

The regimes map (``benchmarks/boundary_regimes.sh``) trains GDL and GDL + boundary
loss (BL) at several lesion loads. This script measures, on a fixed sample of the
training slices of each load, why the boundary term can hold a network in the
basin where it predicts no foreground:

1. The arithmetic of ``L_B = mean(s · φ)`` on the labels alone: ``L_B`` (φ in mm and
   in voxels) and the GDL of the perfect prediction (s = ground truth), the empty one
   (s = 0, where ``L_B = 0``), the lesions dilated by one voxel in-plane and a
   uniform 0.5 (an untrained network); the reward of the perfect prediction over the
   empty one, ``L_B(perfect) − L_B(empty)``, beside the cost ``d / N`` of one
   false-positive voxel at d = 1, 3, 10 mm (``N`` voxels in the sample), and how many
   such voxels cancel the whole reward.
2. At freshly initialised UNets (the runs' architecture and seeds) and at each run's
   ``best.pt`` and ``last.pt``: the norm of the gradient with respect to the network's
   parameters of each term on its own (GDL, BL with φ in mm, BL with φ in voxels),
   the cosines between them, the derivative of each term with respect to the bias of
   the foreground logit (> 0: a descent step lowers the foreground everywhere), the
   share of ``|∂L/∂z_fg|`` on background pixels, the mean foreground probability
   (the basin: near 0) and, with the run's weights at that epoch, the ratio
   ``|w_B ∇BL| / |w_GDL ∇GDL|``.

The sample is what the trainer draws: the study's split (``split_study_cases``),
the training cases prepared and sliced by ``core.data.SliceDataset`` with the
run's preprocessing and φ rule (``core.distance.phi_maps``), and the first
``--slices`` items of the trainer's epoch-0 order (``modes.slices.epoch_order``).
Gradients are averaged over batches of the run's ``batch_size`` in train mode
(batch-norm statistics per batch, as in a training step), the losses are the
trainer's (``core.losses``).

Resumable: one JSON per (load, model) under ``--out/load_<L>/``; a present JSON is
kept, unless it was computed from an unfinished run whose checkpoint has changed
since. ``--report`` only writes ``basin_gradients.md``, ``labels.csv`` and
``gradients.csv`` from the JSONs.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/basin_gradients.py \\
        --data runs/boundary-regimes/data --runs runs/boundary-regimes/runs \\
        --out benchmarks/results/boundary_regimes/basin_gradients

Results and the command of the committed run: ``--out``/README.md. See
``docs/STUDY.md``, "The regimes map", and ``docs/DESIGN.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_boundary_seg.core.losses import boundary_loss, generalized_dice_loss, one_hot

FP_DISTANCES = (1.0, 3.0, 10.0)
"""Distances (mm, or voxels for φ in voxels) of the single false-positive voxel."""
PREDICTIONS = ("perfect", "empty", "dilated", "half")
TERMS = ("gdl", "bl_mm", "bl_vox")
LOAD_RE = re.compile(r"^load_(?P<load>[0-9.]+)$")
RUN_RE = re.compile(r"^(?P<arm>.+)-seed(?P<seed>\d+)$")


@dataclass
class Sample:
    """A fixed batch of training slices with both φ rules."""

    images: torch.Tensor  # (B, M, H, W)
    labels: torch.Tensor  # (B, H, W) int64
    phi_mm: torch.Tensor  # (B, C, H, W)
    phi_vox: torch.Tensor  # (B, C, H, W)
    num_classes: int
    info: dict[str, Any]


# ---------------------------------------------------------------------------
# the sample


def load_folders(data: Path, loads: Sequence[str] | None) -> list[tuple[str, Path]]:
    """``(load, folder)`` of each complete ``load_<L>`` folder under ``data`` (its
    dataset.json there and as many label files as it lists), by decreasing load."""
    found = []
    for folder in sorted(Path(data).iterdir()) if Path(data).is_dir() else []:
        match = LOAD_RE.match(folder.name)
        if not match or (loads is not None and match["load"] not in loads):
            continue
        if not data_complete(folder):
            print(f"load {match['load']}: {folder} is not complete yet, skipped", flush=True)
            continue
        found.append((match["load"], folder))
    return sorted(found, key=lambda item: -float(item[0]))


def data_complete(folder: Path) -> bool:
    """True when ``folder/dataset.json`` exists and every case it lists has its label
    (the study writes the cases first: a split of a partial folder would differ)."""
    try:
        listed = json.loads((folder / "dataset.json").read_text()).get("training", [])
    except (OSError, ValueError):
        return False
    return bool(listed) and all((folder / entry["label"]).is_file() for entry in listed)


def reference_config(runs_load: Path) -> Any:
    """The TrainConfig of the load's runs (their data settings are shared): the first
    ``config.json`` under ``runs_load``, or a study's (``STUDY_TRAIN``: the regimes
    script's slices, width, split and batch size)."""
    from napari_boundary_seg.core.config import TrainConfig
    from napari_boundary_seg.study.config import STUDY_TRAIN

    for path in sorted(runs_load.glob("*/config.json")) if runs_load.is_dir() else []:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    return STUDY_TRAIN


def build_sample(
    data_dir: Path, config: Any, test_fraction: float, n_slices: int, seed: int
) -> tuple[Sample, Sample]:
    """The first ``n_slices`` items of the trainer's epoch-0 order (seed ``seed``) of the
    study's training cases, prepared as the trainer prepares them, φ in mm and voxels;
    and all the training slices' labels and φ (no images)."""
    from napari_boundary_seg.core.data import SliceDataset, find_cases, load_case
    from napari_boundary_seg.core.modes.base import preprocess_config
    from napari_boundary_seg.core.modes.slices import collate, epoch_order, foreground_items
    from napari_boundary_seg.study.run import split_study_cases

    files = find_cases(data_dir)
    train, val, test = split_study_cases(
        files, test_fraction, config.val_fraction, config.split_seed
    )
    cases = [load_case(f) for f in train]
    preprocess = preprocess_config(config)
    kwargs = {"distance": config.distance, "empty_slices": config.empty_slice_phi}
    mm = SliceDataset(cases, config.num_classes, preprocess, phi_units="mm", **kwargs)
    order = epoch_order(len(mm), seed, 0, foreground_items(mm), config.slice_oversample)[:n_slices]
    images, labels, phi_mm = collate(mm, order.tolist())
    spacing = {
        mm.case_ids[int(mm.case_index[int(i)])]: mm.case_spacing[int(mm.case_index[int(i)])]
        for i in order
    }
    vox = SliceDataset(cases, config.num_classes, preprocess, phi_units="voxels", **kwargs)
    phi_vox = vox.dist.index_select(0, order)
    every = Sample(mm.images[:0], mm.labels.long(), mm.dist, vox.dist, config.num_classes, {})
    inplane = np.array([s[1:] for s in spacing.values()], dtype=float)
    info = {
        "data": str(data_dir),
        "train_cases": [f.case_id for f in train],
        "n_val": len(val),
        "n_test": len(test),
        "slices": [int(i) for i in order],
        "sample_seed": seed,
        "distance": config.distance,
        "empty_slice_phi": config.empty_slice_phi,
        "slice_size": config.slice_size,
        "inplane_spacing_mm": [float(inplane.min()), float(inplane.max())],
    }
    return Sample(images, labels.long(), phi_mm, phi_vox, config.num_classes, info), every


# ---------------------------------------------------------------------------
# 1. the arithmetic on the labels


def predictions(labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """The probability maps ``(B, C, H, W)`` of :data:`PREDICTIONS`."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    fg = labels.numpy() > 0
    dilated = np.stack([ndimage.binary_dilation(s, cross) for s in fg]) if len(fg) else fg
    grown = torch.where(torch.from_numpy(dilated) & (labels == 0), 1, labels)
    half = torch.full((labels.shape[0], num_classes, *labels.shape[1:]), 0.0)
    half[:, 0] = 0.5
    half[:, 1:] = 0.5 / (num_classes - 1)
    return {
        "perfect": one_hot(labels, num_classes),
        "empty": one_hot(torch.zeros_like(labels), num_classes),
        "dilated": one_hot(grown, num_classes),
        "half": half,
    }


def label_arithmetic(sample: Sample) -> dict[str, Any]:
    """:data:`PREDICTIONS`' GDL and ``L_B`` (mm, voxels), the reward of the perfect
    prediction over the empty one and the cost of one false positive."""
    labels, c = sample.labels, sample.num_classes
    target = one_hot(labels, c)
    n_voxels = int(labels.numel()) * (c - 1)  # L_B's mean: images × foreground classes × pixels
    lesion = labels > 0
    out: dict[str, Any] = {
        "n_slices": int(labels.shape[0]),
        "n_voxels": n_voxels,
        "lesion_voxels": int(lesion.sum()),
        "lesion_share": float(lesion.float().mean()),
        "slices_with_lesion": int(lesion.flatten(1).any(dim=1).sum()),
        # φ = 0 on ∂G (every voxel of a lesion one slice thick, in 3D): no reward there
        "lesion_phi_zero_share": 1.0 - _masked_mean((sample.phi_mm[:, 1:] < 0).float(), lesion),
        "phi_mm_in_lesion_mean": _masked_mean(sample.phi_mm[:, 1:], lesion),
        "phi_vox_in_lesion_mean": _masked_mean(sample.phi_vox[:, 1:], lesion),
        "phi_mm_outside_mean": _masked_mean(sample.phi_mm[:, 1:], ~lesion),
        "phi_vox_outside_mean": _masked_mean(sample.phi_vox[:, 1:], ~lesion),
    }
    for name, probs in predictions(labels, c).items():
        out[f"gdl_{name}"] = float(generalized_dice_loss(probs, target))
        out[f"bl_mm_{name}"] = float(boundary_loss(probs, sample.phi_mm))
        out[f"bl_vox_{name}"] = float(boundary_loss(probs, sample.phi_vox))
    for units in ("mm", "vox"):
        reward = out[f"bl_{units}_perfect"] - out[f"bl_{units}_empty"]
        out[f"bl_{units}_reward"] = reward
        for d in FP_DISTANCES:
            cost = d / n_voxels
            out[f"bl_{units}_fp_cost_{d:g}"] = cost
            out[f"bl_{units}_fp_to_cancel_{d:g}"] = -reward / cost if reward < 0 else 0.0
    out["gdl_reward"] = out["gdl_perfect"] - out["gdl_empty"]
    return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values (B, 1, H, W)`` over ``mask (B, H, W)`` (NaN when empty)."""
    m = mask.unsqueeze(1).expand_as(values)
    return float(values[m].mean()) if bool(m.any()) else math.nan


# ---------------------------------------------------------------------------
# 2. the gradients at a network


def _flat(grads: Iterable[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


def _bl_key(units: str) -> str:
    """The boundary term of a run's φ units (clipped φ is measured as mm)."""
    return "bl_vox" if units == "voxels" else "bl_mm"


def _head_bias(model: torch.nn.Module) -> torch.Tensor | None:
    head = getattr(model, "head", None)
    return getattr(head, "bias", None)


def term_gradients(
    model: torch.nn.Module,
    sample: Sample,
    batch_size: int,
    weights: tuple[float, float] | None = None,
    bl_units: str = "mm",
) -> dict[str, Any]:
    """Each term's parameter gradient (averaged over batches of ``batch_size``, train
    mode), its norm, the cosines, ∂term/∂(foreground logit bias), the share of
    ``|∂term/∂z_fg|`` on background pixels and the foreground probability.

    ``weights``: the run's ``(w_GDL, w_B)`` at the checkpoint; ``bl_units`` (``"mm"`` or
    ``"voxels"``) is the φ of the run's boundary term, for the weighted ratio and
    ``w_b_equal_norm``, the ``w_B`` of ``(1 − w_B) GDL + w_B BL`` at which both
    gradients are equally long.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    bias = _head_bias(model)
    bias_index = next((i for i, p in enumerate(params) if p is bias), None)
    n = int(sample.labels.shape[0])
    grads = {t: torch.zeros(sum(p.numel() for p in params)) for t in TERMS}
    values = dict.fromkeys(TERMS, 0.0)
    logit_bg = dict.fromkeys(TERMS, 0.0)
    logit_all = dict.fromkeys(TERMS, 0.0)
    logit_sum = dict.fromkeys(TERMS, 0.0)
    bias_grad = dict.fromkeys(TERMS, math.nan)
    bias_acc = dict.fromkeys(TERMS, 0.0)
    p_fg_train = 0.0
    eval_probability = foreground_probability(model, sample, batch_size)  # before BN moves
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    offsets = np.cumsum([0] + [p.numel() for p in params])
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        share = (part.stop - part.start) / n
        x, y = sample.images[part], sample.labels[part]
        logits = model(x)
        probs = torch.softmax(logits.float(), dim=1)
        target = one_hot(y, sample.num_classes)
        value = {
            "gdl": generalized_dice_loss(probs, target, validate=False),
            "bl_mm": boundary_loss(probs, sample.phi_mm[part], validate=False),
            "bl_vox": boundary_loss(probs, sample.phi_vox[part], validate=False),
        }
        background = (y == 0).float()
        for t in TERMS:
            g = torch.autograd.grad(
                value[t], [*params, logits], retain_graph=True, allow_unused=True
            )
            flat = _flat(g[:-1], params)
            grads[t] += share * flat
            values[t] += share * float(value[t].detach())
            dz = g[-1][:, 1:].sum(dim=1)  # ∂/∂z_fg (with 2 classes, −∂/∂z_bg)
            logit_bg[t] += share * float((dz.abs() * background).sum())
            logit_all[t] += share * float(dz.abs().sum())
            logit_sum[t] += share * float(dz.sum())
            if bias_index is not None:
                lo = offsets[bias_index]
                bias_acc[t] += share * float(flat[lo + 1 : offsets[bias_index + 1]].sum())
        p_fg_train += share * float(probs.detach()[:, 1:].sum(dim=1).mean())
    model.load_state_dict(buffers)  # the train-mode passes moved the batch-norm statistics
    model.train(was_training)
    if bias_index is not None:
        bias_grad = bias_acc
    out: dict[str, Any] = {"p_fg_mean_train_mode": p_fg_train}
    for t in TERMS:
        out[f"{t}_value"] = values[t]
        out[f"{t}_grad_norm"] = float(grads[t].norm())
        out[f"{t}_dbias_fg"] = bias_grad[t]
        out[f"{t}_dz_fg_sum"] = logit_sum[t]
        out[f"{t}_dz_bg_share"] = logit_bg[t] / logit_all[t] if logit_all[t] > 0 else math.nan
    # the w_B of (1 - w_B) GDL + w_B BL at which both terms' gradients are equally long
    gdl_norm, bl_norm = out["gdl_grad_norm"], out[f"{_bl_key(bl_units)}_grad_norm"]
    out["w_b_equal_norm"] = gdl_norm / (gdl_norm + bl_norm) if gdl_norm + bl_norm > 0 else math.nan
    out["cos_gdl_bl_mm"] = _cos(grads["gdl"], grads["bl_mm"])
    out["cos_gdl_bl_vox"] = _cos(grads["gdl"], grads["bl_vox"])
    out["cos_bl_mm_bl_vox"] = _cos(grads["bl_mm"], grads["bl_vox"])
    if weights is not None:
        w_region, w_boundary = (float(w) for w in weights)
        bl = grads[_bl_key(bl_units)]
        gdl_part = w_region * float(grads["gdl"].norm())
        out["w_region"], out["w_boundary"] = w_region, w_boundary
        out["weighted_bl_over_gdl"] = (
            w_boundary * float(bl.norm()) / gdl_part if gdl_part > 0 else math.inf
        )
        total = w_region * grads["gdl"] + w_boundary * bl
        out["cos_total_gdl"] = _cos(total, grads["gdl"])
        out["total_dbias_fg"] = (
            w_region * bias_grad["gdl"] + w_boundary * bias_grad[_bl_key(bl_units)]
        )
    out.update(eval_probability)
    return out


def foreground_probability(
    model: torch.nn.Module, sample: Sample, batch_size: int
) -> dict[str, float]:
    """Eval-mode foreground probability on the sample: its mean, its mean on the lesions
    and the share of pixels predicted foreground (p > 0.5)."""
    was_training = model.training
    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, int(sample.labels.shape[0]), batch_size):
            logits = model(sample.images[start : start + batch_size])
            parts.append(torch.softmax(logits.float(), dim=1)[:, 1:].sum(dim=1))
    model.train(was_training)
    p = torch.cat(parts)
    lesion = sample.labels > 0
    return {
        "p_fg_mean": float(p.mean()),
        "p_fg_lesion_mean": float(p[lesion].mean()) if bool(lesion.any()) else math.nan,
        "pred_fg_share": float((p > 0.5).float().mean()),
        "true_fg_share": float(lesion.float().mean()),
    }


# ---------------------------------------------------------------------------
# the models


@dataclass
class ModelSource:
    name: str  # init-seed0, gdl-bl-paper-seed1.best, ...
    kind: str  # init | best | last
    arm: str
    seed: int
    path: Path | None


def model_sources(runs_load: Path, init_seeds: Sequence[int]) -> list[ModelSource]:
    """The fresh networks, then each run's best.pt and last.pt under ``runs_load``."""
    out = [ModelSource(f"init-seed{s}", "init", "init", s, None) for s in init_seeds]
    for run in sorted(runs_load.iterdir()) if runs_load.is_dir() else []:
        match = RUN_RE.match(run.name)
        if not match:
            continue
        for kind in ("best", "last"):
            path = run / f"{kind}.pt"
            if path.is_file():
                out.append(
                    ModelSource(f"{run.name}.{kind}", kind, match["arm"], int(match["seed"]), path)
                )
    return out


def _stamp(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _needs(out_file: Path, source: ModelSource | None) -> bool:
    """True when ``out_file`` is missing, or was computed from an unfinished run whose
    checkpoint has changed since."""
    if not out_file.is_file():
        return True
    if source is None or source.path is None:
        return False
    try:
        saved = json.loads(out_file.read_text())
    except (OSError, ValueError):
        return True
    return (not saved.get("finished", True)) and saved.get("stamp") != _stamp(source.path)


def model_gradients(
    source: ModelSource, sample: Sample, config: Any, in_channels: int
) -> dict[str, Any]:
    """:func:`term_gradients` at one network (fresh or read from its checkpoint)."""
    from napari_boundary_seg.core.checkpoint import load_checkpoint
    from napari_boundary_seg.core.config import TrainConfig, loss_weights
    from napari_boundary_seg.core.train import build_model

    record: dict[str, Any] = {
        "model": source.name,
        "kind": source.kind,
        "arm": source.arm,
        "seed": source.seed,
    }
    if source.path is None:
        hparams = {
            "in_channels": in_channels,
            "num_classes": config.num_classes,
            "depth": config.depth,
            "base_channels": config.base_channels,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)  # the trainer's initialisation of seed k
            model = build_model(hparams)
        record.update(hparams=hparams, epoch=0, finished=True, stamp=None)
        gradients = term_gradients(model, sample, config.batch_size)
    else:
        record["stamp"] = _stamp(source.path)
        model, checkpoint = load_checkpoint(source.path)
        run_config = TrainConfig.from_dict(checkpoint["config"])
        epoch = int(checkpoint["position"]["epoch"])
        history = _run_history(source.path.parent)
        done = max((int(h["epoch"]) for h in history), default=0)
        entry = next((h for h in history if int(h["epoch"]) == epoch), None)
        weights = None
        if entry is not None and "w_region" in entry:
            weights = (float(entry["w_region"]), float(entry["w_boundary"]))
        elif run_config.loss != "gdl+bl":
            weights = loss_weights(run_config.loss, (1.0, 0.0))
        val = [float(h["val_dice"]) for h in history if h.get("val_dice") not in (None, "")]
        record.update(
            hparams=dict(checkpoint["model"]),
            loss=str(run_config.loss),
            phi_units=run_config.phi_units,
            schedule=dict(run_config.schedule),
            epoch=epoch,
            epochs=run_config.epochs,
            finished=done >= run_config.epochs,
            epochs_done=done,
            val_dice_at_epoch=None if entry is None else float(entry.get("val_dice", math.nan)),
            val_dice_best=max(val) if val else None,
            val_dice_last=val[-1] if val else None,
        )
        gradients = term_gradients(
            model, sample, run_config.batch_size, weights, bl_units=run_config.phi_units
        )
    record.update(gradients)
    return record


def _run_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.csv rows (epoch, weights, validation DSC)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("epoch")]


# ---------------------------------------------------------------------------
# the report

LABEL_COLUMNS = [
    ("load", "load %"),
    ("slices_set", "slices"),
    ("n_slices", "n"),
    ("lesion_voxels", "lesion px"),
    ("slices_with_lesion", "slices w/ lesion"),
    ("lesion_share", "lesion share of px"),
    ("lesion_phi_zero_share", "lesion px with φ = 0"),
    ("bl_mm_perfect", "L_B mm perfect"),
    ("bl_mm_empty", "L_B mm empty"),
    ("bl_mm_dilated", "L_B mm dilated"),
    ("bl_mm_half", "L_B mm s=0.5"),
    ("bl_mm_fp_cost_1", "FP 1 mm"),
    ("bl_mm_fp_cost_3", "FP 3 mm"),
    ("bl_mm_fp_cost_10", "FP 10 mm"),
    ("bl_mm_fp_to_cancel_3", "FP@3 mm = reward"),
    ("bl_vox_perfect", "L_B vox perfect"),
    ("bl_vox_dilated", "L_B vox dilated"),
    ("bl_vox_half", "L_B vox s=0.5"),
    ("bl_vox_fp_to_cancel_3", "FP@3 vox = reward"),
    ("gdl_perfect", "GDL perfect"),
    ("gdl_empty", "GDL empty"),
    ("gdl_dilated", "GDL dilated"),
    ("gdl_half", "GDL s=0.5"),
]
GRADIENT_COLUMNS = [
    ("load", "load %"),
    ("model", "model"),
    ("epoch", "epoch"),
    ("finished", "run done"),
    ("val_dice_best", "val DSC best"),
    ("p_fg_mean", "mean p_fg"),
    ("p_fg_lesion_mean", "p_fg lesion"),
    ("pred_fg_share", "pred fg share"),
    ("gdl_value", "GDL"),
    ("bl_mm_value", "L_B mm"),
    ("gdl_grad_norm", "‖∇GDL‖"),
    ("bl_mm_grad_norm", "‖∇BL mm‖"),
    ("bl_vox_grad_norm", "‖∇BL vox‖"),
    ("cos_gdl_bl_mm", "cos(GDL, BL mm)"),
    ("cos_gdl_bl_vox", "cos(GDL, BL vox)"),
    ("gdl_dbias_fg", "∂GDL/∂b_fg"),
    ("bl_mm_dbias_fg", "∂BL mm/∂b_fg"),
    ("bl_mm_dz_bg_share", "BL: bg share of |∂z_fg|"),
    ("gdl_dz_bg_share", "GDL: bg share of |∂z_fg|"),
    ("w_b_equal_norm", "w_B of equal norms"),
    ("weighted_bl_over_gdl", "w_B‖∇BL‖ / w_G‖∇GDL‖"),
    ("total_dbias_fg", "∂(w_G GDL + w_B BL)/∂b_fg"),
]


STATE_COLUMNS = [
    ("load", "load %"),
    ("state", "state"),
    ("n", "networks"),
    ("epoch", "epoch"),
    ("p_fg_lesion_mean", "p_fg lesion"),
    ("gdl_grad_norm", "‖∇GDL‖"),
    ("bl_mm_grad_norm", "‖∇BL mm‖"),
    ("cos_gdl_bl_mm", "cos(GDL, BL mm)"),
    ("gdl_dbias_fg_pos", "share ∂GDL/∂b_fg > 0"),
    ("bl_mm_dbias_fg_pos", "share ∂BL mm/∂b_fg > 0"),
    ("bl_mm_dz_bg_share", "BL: bg share of |∂z_fg|"),
    ("w_b_equal_norm", "w_B of equal norms"),
    ("weighted_bl_over_gdl", "w_B‖∇BL‖ / w_G‖∇GDL‖"),
]
BASIN_DSC = 0.1
"""Validation DSC below which a checkpoint is in the basin (``study.config.BASIN_DSC``)."""


def network_state(row: Mapping[str, Any]) -> str:
    """``fresh``, or ``basin``/``out``, the run's loss and the checkpoint (best, last)."""
    if row.get("kind") == "init":
        return "fresh"
    dsc = row.get("val_dice_at_epoch")
    where = "basin" if dsc is not None and float(dsc) < BASIN_DSC else "out"
    return f"{where}, {row.get('loss', '?')}, {row.get('kind')}"


def state_rows(gradients: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Medians of :data:`STATE_COLUMNS` per (load, state); best.pt dropped where it
    holds last.pt's epoch."""
    last_epoch = {
        (r["load"], r["arm"], r["seed"]): r.get("epoch") for r in gradients if r["kind"] == "last"
    }
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in gradients:
        if r["kind"] == "best" and last_epoch.get((r["load"], r["arm"], r["seed"])) == r.get(
            "epoch"
        ):
            continue
        groups.setdefault((r["load"], network_state(r)), []).append(r)
    out = []
    for (load, state), rows in groups.items():
        row: dict[str, Any] = {"load": load, "state": state, "n": len(rows)}
        for key, _ in STATE_COLUMNS[3:]:
            if key.endswith("_pos"):
                values = [float(r[key[:-4]] > 0) for r in rows if r.get(key[:-4]) is not None]
            else:
                values = [float(r[key]) for r in rows if r.get(key) is not None]
            values = [v for v in values if not math.isnan(v)]
            row[key] = (
                float(np.mean(values) if key.endswith("_pos") else np.median(values))
                if values
                else None
            )
        out.append(row)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        if value == 0:
            return "0"
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return lines


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k, v in row.items() if k not in keys and not isinstance(v, dict | list)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_results(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The label rows and gradient rows of every ``load_<L>`` under ``out``."""
    labels, gradients = [], []
    folders = (
        [f for f in out.iterdir() if f.is_dir() and LOAD_RE.match(f.name)] if out.is_dir() else []
    )
    for folder in sorted(folders, key=lambda f: -float(LOAD_RE.match(f.name)["load"])):
        load = LOAD_RE.match(folder.name)["load"]
        path = folder / "labels.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            for name, title in (("sample", "sample"), ("all", "all training")):
                if name in saved:
                    labels.append({"load": load, "slices_set": title, **saved[name]})
        rows = [
            json.loads(p.read_text())
            for p in sorted(folder.glob("*.json"))
            if p.name not in ("labels.json", "sample.json")
        ]
        rows.sort(key=lambda r: (r["kind"] != "init", r["arm"], r["seed"], r["kind"]))
        gradients += [{"load": load, **r} for r in rows]
    return labels, gradients


def write_report(out: Path) -> Path:
    """``basin_gradients.md``, ``labels.csv`` and ``gradients.csv`` from the JSONs."""
    labels, gradients = read_results(out)
    _write_csv(out / "labels.csv", labels)
    _write_csv(out / "gradients.csv", gradients)
    lines = [
        "# The empty-prediction basin: the boundary term's arithmetic and gradients",
        "",
        "Written by `benchmarks/basin_gradients.py` (command, date, findings: README.md).",
        "Per load, a fixed sample of training slices drawn as the trainer draws them;",
        "L_B = mean(s·φ) over the sample's pixels, φ in mm (the runs') or in voxels.",
        "",
        "## 1. The boundary term on the labels alone",
        "",
        "On the sample of the gradients (below) and on all the training slices. Predictions:",
        "the ground truth (perfect), no foreground (empty, L_B = 0), the",
        "lesions dilated by one pixel in-plane, and s = 0.5 everywhere (an untrained",
        "network). `FP d mm`: what one false-positive pixel at d mm from the lesions adds",
        "to L_B (d / N); `FP@3 = reward`: how many such pixels at 3 mm (3 voxels) cancel",
        "the whole reward L_B(perfect) − L_B(empty).",
        "",
        *_table(labels, LABEL_COLUMNS),
        "",
        "## 2. Gradients with respect to the network's parameters",
        "",
        "Each term on its own, averaged over batches of the run's batch size in train",
        "mode. `∂/∂b_fg`: derivative with respect to the bias of the foreground logit",
        "(> 0: a descent step lowers the foreground probability everywhere). `bg share`:",
        "share of |∂L/∂z_fg| on background pixels. Mean p_fg: eval mode (as validation",
        "predicts). The last column weighs the run's φ term and GDL with the run's α at",
        "that epoch. `run done`: the run had finished all its epochs when measured",
        "(otherwise last.pt is the checkpoint of an unfinished run).",
        "",
        *_table(gradients, GRADIENT_COLUMNS),
        "",
        "## 3. By state",
        "",
        "Medians over the networks of each state: fresh (initialised, seeds), in the basin",
        f"(validation DSC at the checkpoint's epoch < {BASIN_DSC:g}) or out of it, by loss and",
        "checkpoint (best.pt of a stuck run is often an early epoch; last.pt the end). A",
        "run's best.pt and last.pt count once when they hold the same epoch. `share ∂/∂b_fg",
        "> 0`: share of the networks where the term asks for less foreground everywhere.",
        "",
        *_table(state_rows(gradients), STATE_COLUMNS),
        "",
    ]
    path = out / "basin_gradients.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------------------
# the command


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loads = load_folders(Path(args.data), args.loads)
    if not loads:
        print(f"no load_<L> folder with a dataset.json under {args.data}", file=sys.stderr)
        return 2
    started = time.time()
    computed = 0
    for load, data_dir in loads:
        tic = time.time()
        runs_load = Path(args.runs) / data_dir.name
        folder = out / data_dir.name
        folder.mkdir(exist_ok=True)
        sources = model_sources(runs_load, args.init_seeds)
        todo = [s for s in sources if _needs(folder / f"{s.name}.json", s)]
        need_labels = not (folder / "labels.json").is_file()
        if not todo and not need_labels:
            print(f"load {load}: all {len(sources)} models done", flush=True)
            continue
        config = reference_config(runs_load)
        torch.manual_seed(0)
        sample, every = build_sample(
            data_dir, config, args.test_fraction, args.slices, args.sample_seed
        )
        _write_json(folder / "sample.json", sample.info)
        print(
            f"load {load}: sample of {args.slices} slices in {time.time() - tic:.0f} s", flush=True
        )
        if need_labels:
            arithmetic = {"sample": label_arithmetic(sample), "all": label_arithmetic(every)}
            _write_json(folder / "labels.json", arithmetic)
        del every
        for source in todo:
            record = model_gradients(source, sample, config, int(sample.images.shape[1]))
            _write_json(folder / f"{source.name}.json", record)
            computed += 1
            print(
                f"  {source.name}: p_fg {record['p_fg_mean']:.3g}, "
                f"cos(GDL, BL mm) {record['cos_gdl_bl_mm']:.3f}",
                flush=True,
            )
        print(f"load {load}: {len(todo)} models in {time.time() - tic:.0f} s", flush=True)
    load_avg = os.getloadavg()
    with (out / "runs.log").open("a") as f:
        f.write(
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  {computed} models in "
            f"{time.time() - started:.0f} s, load average {load_avg[0]:.2f} {load_avg[1]:.2f} "
            f"{load_avg[2]:.2f}, torch threads {torch.get_num_threads()}: {' '.join(sys.argv)}\n"
        )
    print(f"report: {write_report(out)}")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="runs/boundary-regimes/data", help="folder of load_<L> data folders"
    )
    parser.add_argument(
        "--runs", default="runs/boundary-regimes/runs", help="folder of load_<L> run folders"
    )
    parser.add_argument("--out", default="benchmarks/results/boundary_regimes/basin_gradients")
    parser.add_argument("--loads", nargs="+", default=None, help="only these loads (e.g. 3 0.6)")
    parser.add_argument("--slices", type=int, default=32, help="slices in the sample")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the trainer's order")
    parser.add_argument("--init-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.6, help="the study's test share")
    parser.add_argument(
        "--report", action="store_true", help="only write the report from the JSONs"
    )
    args = parser.parse_args(argv)
    if args.slices < 1:
        parser.error(f"--slices must be >= 1, got {args.slices}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(f"report: {write_report(Path(args.out))}")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
