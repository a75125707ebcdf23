"""Part 4 of ``bench data``: the 3D loader as a rate, φ of warped samples, workers.

Kept apart from :mod:`napari_boundary_seg.bench` (which re-exports these names)
for its size. Rates are patches per second of one worker: the CPU time of this
process (one thread, ``OMP_NUM_THREADS=1``), which is what a DataLoader worker
on a core of its own delivers; the wall-clock rate is reported next to it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_boundary_seg.core import kernels

__all__ = ["loader_rate", "loader_rate_cases", "loader_workers", "rate_dataset", "waiting_share"]


def loader_workers(rate: float, batch: int, step_s: float) -> int:
    """Workers delivering ``rate`` patches/s each that keep up with a step of
    ``step_s`` seconds consuming ``batch`` patches."""
    return max(1, math.ceil(batch / (step_s * rate)))


def waiting_share(rate: float, workers: int, batch: int, step_s: float) -> float:
    """Share of the step loop spent waiting for data when ``workers`` deliver
    ``rate`` patches/s each and a step of ``step_s`` seconds takes ``batch``."""
    period = max(step_s, batch / (workers * rate))
    return 1.0 - step_s / period


_RATE_CONFIGS = {
    "no augmentation": None,
    "intensity only": {"flip": 0.0, "permute": 0.0, "rot90": 0.0, "warp": 0.0},
    "flips only": {
        "permute": 0.0,
        "rot90": 0.0,
        "warp": 0.0,
        **dict.fromkeys(("gamma", "contrast", "brightness", "noise", "blur"), 0.0),
    },
    "every sample warped": {"warp": 1.0},
    "default augmentation": {},
}


def rate_dataset(volume: tuple[int, ...], patch: tuple[int, ...], seed: int) -> Any:
    """A :class:`~napari_boundary_seg.core.patches.PatchDataset` of one phantom case
    of ``volume`` at 1 mm, held in memory in the cache's dtypes."""
    from napari_boundary_seg.core.distance import class_distance_maps
    from napari_boundary_seg.core.patches import PatchDataset, VolumeEntry
    from napari_boundary_seg.core.synthetic import make_case

    case = make_case(seed, shape=volume, spacing=(1.0,) * len(volume), anatomy="phantom")
    labels = np.asarray(case.labels, dtype=np.uint8)
    arrays = {
        "image": np.asarray(case.images, dtype=np.float32),
        "labels": labels,
        "dist": class_distance_maps(labels, 2, spacing=tuple(case.spacing)),
        "fg": np.argwhere(labels > 0).astype(np.int32),
    }
    entry = VolumeEntry(
        Path("."),
        "rate",
        labels.shape,
        tuple(float(s) for s in case.spacing),
        ("FLAIR", "T1"),
        (),
        2,
        len(arrays["fg"]),
    )
    dataset = PatchDataset([entry], patch, seed=seed)
    dataset._open[0] = arrays
    return dataset


def loader_rate(dataset: Any, config: Any, samples: int) -> tuple[float, float]:
    """Patches per second of one worker, ``dataset.sample`` with augmentation
    ``config`` (CPU time of this process, wall time)."""
    dataset.augment = config
    dataset.sample(1, 0)  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(samples):
        dataset.sample(1, i)
    return samples / (time.process_time() - cpu), samples / (time.perf_counter() - wall)


def loader_rate_cases(
    volume: tuple[int, ...],
    patch: tuple[int, ...],
    samples: int,
    seed: int,
    step_s: float,
    batch: int,
) -> list[dict]:
    """Part 4 of :func:`bench_data`: the loader as a rate, φ of warped samples, workers."""
    from napari_boundary_seg.core import augment as aug

    dataset = rate_dataset(volume, patch, seed)
    size = f"{'x'.join(map(str, patch))} from {'x'.join(map(str, volume))}"
    out, rates = [], {}
    for name, change in _RATE_CONFIGS.items():
        config = None if change is None else dataclasses.replace(aug.AugmentConfig(), **change)
        rates[name] = loader_rate(dataset, config, samples)
    base = rates["no augmentation"][0]
    for name, (rate, wall) in rates.items():
        out.append(
            {
                "name": f"loader, {name}",
                "baseline": "no augmentation",
                "baseline_s": 1.0 / base,
                "ours_s": 1.0 / rate,
                "ratio": rate / base,
                "bar": None,
                "passed": None,
                "text": f"{rate:.1f} patches/s per worker",
                "patches": size,
                "wall_clock_patches_per_s": wall,
                "workers_for_step": loader_workers(rate, batch, step_s),
            }
        )
    out.append(_warped_phi_case(dataset, samples, seed))
    warped, default = rates["every sample warped"][0], rates["default augmentation"][0]
    need = loader_workers(warped, batch, step_s)
    out.append(
        {
            "name": f"workers that feed a GPU step of {step_s * 1e3:g} ms at batch {batch}",
            "baseline": "one worker",
            "baseline_s": batch / warped,
            "ours_s": step_s,
            "ratio": warped * step_s / batch,
            "bar": None,
            "passed": None,
            "text": f"{need} with every sample warped, "
            f"{loader_workers(default, batch, step_s)} with the default augmentation "
            f"(warp p={aug.AugmentConfig().warp:g})",
            "workers_every_sample_warped": need,
            "waiting_share_one_fewer": waiting_share(warped, max(1, need - 1), batch, step_s),
        }
    )
    return out


_PHI_BAR_S = 0.065
"""Bar of the warped-sample φ median (s, one core): 20x under the 1.3 s that the
whole warped volume's transform took on the 197x233x189 volume."""


def _warped_phi_case(dataset: Any, samples: int, seed: int) -> dict:
    """φ time of warped samples drawn as in training: boundary path vs whole-volume path."""
    from napari_boundary_seg.core import augment as aug

    arrays = dataset.arrays(0)
    spacing = dataset.entries[0].spacing
    config = dataclasses.replace(aug.AugmentConfig(), warp=1.0)
    times: dict[str, list[float]] = {"boundary": [], "context": []}
    full = diff = 0.0
    for i in range(samples):
        _, patch, _ = dataset.locate(2, i)
        rng = np.random.default_rng([seed, i])
        warp = aug.draw_warp(arrays["labels"].shape, spacing, patch, config, rng)
        got = {}
        for method in ("boundary", "context"):
            stats: dict = {}
            got[method] = aug.warped_sample(
                arrays["image"],
                arrays["labels"],
                spacing,
                patch,
                warp,
                2,
                stats,
                phi=method,
                foreground=arrays["fg"],
            )
            times[method].append(stats["phi_cpu_s"])
            full += stats.get("full", 0)
        diff = max(diff, float(np.abs(got["boundary"].dist - got["context"].dist).max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    p95 = {k: float(np.percentile(v, 95)) for k, v in times.items()}
    ratio = med["context"] / med["boundary"]
    passed = med["boundary"] <= _PHI_BAR_S
    return {
        "name": "warped-sample φ",
        "baseline": "context, grown to the whole volume",
        "baseline_s": med["context"],
        "ours_s": med["boundary"],
        "ratio": ratio,
        "bar": None,
        "passed": bool(passed),
        "text": f"median {med['boundary'] * 1e3:.1f} ms, p95 {p95['boundary'] * 1e3:.1f} ms",
        "whole_volume_path": f"median {med['context'] * 1e3:.0f} ms, "
        f"p95 {p95['context'] * 1e3:.0f} ms ({int(full)}/{samples} whole volume)",
        "speedup_median": ratio,
        "verdict": f"{'PASS' if passed else 'FAIL'} (bar: median <= {_PHI_BAR_S * 1e3:g} ms)",
        "max_abs_phi_diff_mm": diff,
        "clock": "thread CPU time",
        "compiled_kernels": kernels.NUMBA,
    }
