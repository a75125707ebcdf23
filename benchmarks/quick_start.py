"""Quick start on the sample case: validation DSC against wall time, per epoch.

Trains :func:`napari_boundary_seg.core.presets.quick_start_config` on the
sample case (``File > Open Sample``), validating on a block of slices it does
not train on (:func:`napari_boundary_seg.core.presets.split_slices`), and
prints one line per epoch: wall time since the start (reading the sample and
computing its distance maps included), validation DSC, HD95 and the loss. The
last lines say when the DSC first reached the bar (0.7) and the best DSC.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/quick_start.py [--threads 2] [--set epochs=20 ...]

``--set KEY=VALUE`` replaces a preset value (VALUE is JSON: ``lr=0.003``,
``slice_size=null``, ``schedule={"kind": "paper", "step": 0.1}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

BAR = 0.7


def parse_sets(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = json.loads(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", help="a data folder: run on one of its cases instead of the sample (a real scan)"
    )
    parser.add_argument("--case", help="the case of --data (default: its first)")
    parser.add_argument(
        "--modalities", help="comma-separated modality indices of --data to load (default: all)"
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_boundary_seg._sample_data import sample_case_files
    from napari_boundary_seg.core.data import CaseFiles, find_cases, load_case
    from napari_boundary_seg.core.orientation import native_slice_axis
    from napari_boundary_seg.core.presets import quick_start_config, split_slices
    from napari_boundary_seg.core.train import EpochEvent, InfoEvent, train

    config = quick_start_config(device="cpu", seed=args.seed, **parse_sets(args.set))
    what = "the sample case" if not args.data else f"{args.data} {args.case or ''}"
    print(
        f"# quick start on {what}; {platform.node()} {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
        f"threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"# config: {json.dumps({k: v for k, v in config.to_dict().items() if v is not None})}")
    if args.data:  # a real scan, as File > Open gives its layers (stored order, its affine)
        found = find_cases(args.data)
        chosen = next((f for f in found if f.case_id == args.case), None) if args.case else found[0]
        if chosen is None:
            raise SystemExit(f"no case {args.case} in {args.data}")
        if args.modalities:
            keep = [int(i) for i in args.modalities.split(",")]
            chosen = CaseFiles(
                chosen.case_id,
                tuple(chosen.image_paths[i] for i in keep),
                chosen.label_path,
                tuple(chosen.modalities[i] for i in keep),
            )
        case = load_case(chosen)
    else:
        files = sample_case_files()
        case = load_case(
            CaseFiles("sample", (files["FLAIR"], files["T1"]), files["lesions"], ("FLAIR", "T1"))
        )
    # what the Train widget does: the plane from the affine, never from the view; the
    # whole volume normalised before the held-out block is cut out of it
    axis = native_slice_axis(case.affine, case.spacing, config.axis)
    train_cases, val_cases = split_slices(
        case.images,
        case.labels,
        case.spacing,
        axis,
        config.val_fraction,
        case_id=case.case_id,
        modalities=case.modalities,
        affine=case.affine,
        normalize=config.normalize,
    )
    print(
        f"# train {[c.case_id for c in train_cases]}, validation {[c.case_id for c in val_cases]}"
    )
    print(f"{'epoch':>5} {'wall_s':>7} {'val_dsc':>7} {'val_hd95':>8} {'loss':>7} {'alpha':>5}")
    reached = None
    best = (float("nan"), 0, 0.0)
    for event in train(config, train_cases, val_cases=val_cases):
        if isinstance(event, InfoEvent) and event.steps_per_epoch:
            wall = time.perf_counter() - t_start
            print(
                f"# data ready at {wall:.1f} s: {event.num_train_slices} training slices, "
                f"{event.steps_per_epoch} steps per epoch, {event.num_parameters} parameters"
            )
        if isinstance(event, EpochEvent):
            wall = time.perf_counter() - t_start
            print(
                f"{event.epoch + 1:>5} {wall:>7.1f} {event.val_dice:>7.3f} {event.val_hd95:>8.1f} "
                f"{event.train_loss:>7.3f} {event.w_region:>5.2f}",
                flush=True,
            )
            if reached is None and event.val_dice >= BAR:
                reached = (event.epoch + 1, wall)
            if not event.val_dice <= best[0]:
                best = (event.val_dice, event.epoch + 1, wall)
    total = time.perf_counter() - t_start
    if reached:
        print(f"# DSC >= {BAR} first at epoch {reached[0]}, {reached[1]:.1f} s")
    else:
        print(f"# DSC never reached {BAR}")
    print(f"# best DSC {best[0]:.3f} at epoch {best[1]} ({best[2]:.1f} s); total {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
