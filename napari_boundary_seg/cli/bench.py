"""``bench``: the benchmarks, each printing ratios against a baseline measured in the
same run (the benchmarks themselves live in :mod:`napari_boundary_seg.bench`)."""

from __future__ import annotations

import argparse
from typing import Any

from napari_boundary_seg.cli._common import check_option, out
from napari_boundary_seg.core.config import DEFAULT_PATCH_SIZE

HELP = "benchmarks: ratios against a baseline measured in the same run"


def add_parser(sub: Any) -> None:
    """Add ``bench`` and its benchmarks to the subparsers ``sub``."""
    p = sub.add_parser(
        "bench",
        help=HELP,
        description="Run a benchmark and print its times and ratios.",
    )
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    d = bench_sub.add_parser(
        "distance",
        help="signed distance maps against plain scipy",
        description="Time core.distance against plain scipy on a 3D mask and on 2D slices.",
    )
    d.add_argument("--repeats", type=int, default=3, help="repeats, best time kept (default 3)")
    d.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    t = bench_sub.add_parser(
        "train",
        help="the engine's training step against a bare model step",
        description="Time the trainer's full step (batch from the cached data set, "
        "GDL + boundary loss, backward, Adam) against a bare step of the same network on "
        "ready-made tensors with cross-entropy, interleaved, and report the share of the "
        "step spent in the boundary loss. Bar: engine / bare <= 1.15.",
    )
    t.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    t.add_argument("--size", type=int, default=128, help="slice size (default 128)")
    t.add_argument("--repeats", type=int, default=10, help="timed repeats, medians (default 10)")
    t.add_argument("--warmup", type=int, default=2, help="untimed warm-up repeats (default 2)")
    t.add_argument("--depth", type=int, default=4, help="UNet levels (default 4)")
    t.add_argument("--base-channels", type=int, default=64, help="UNet width (default 64)")
    t.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    m = bench_sub.add_parser(
        "metrics",
        help="case evaluation (surface, volume, lesion figures) against plain scipy",
        description="Time core.metrics.case_metrics against a plain scipy evaluation "
        "(erosion surfaces, full-volume EDTs, ndimage.label) on a 160x192x160 case, and "
        "the connected-component labelling against scipy.ndimage.label.",
    )
    m.add_argument("--repeats", type=int, default=3, help="repeats, best time kept (default 3)")
    m.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    b = bench_sub.add_parser(
        "data",
        help="training memory vs number of cases, loader throughput, cost of φ recomputation",
        description="Peak resident memory of a 3D training process (a fresh process per "
        "setting) for --small and --large synthetic cases (bar: large / small <= 1.3); "
        "batches per second of augmented patches with 0, 1 and 2 DataLoader workers; the "
        "seconds spent recomputing φ per warped sample as a share of a training step at "
        "batch 8 x 128² (2D) and 2 x 96x96x32 (3D); the loader as a rate (patches per second "
        "per worker without augmentation, intensity only, flips only, every sample warped) "
        "from --rate-volume volumes, the warped-sample φ time against the whole-volume path, "
        "and the workers that feed a GPU step of --gpu-step-ms. The flags shrink it for a "
        "quick check.",
    )
    b.add_argument("--small", type=int, default=8, help="cases of the small run (default 8)")
    b.add_argument("--large", type=int, default=64, help="cases of the large run (default 64)")
    b.add_argument(
        "--shape", type=int, nargs=3, default=(48, 56, 48), help="case shape (default 48 56 48)"
    )
    b.add_argument("--spacing", type=float, default=4.0, help="voxel size in mm (default 4)")
    b.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        default=(32, 32, 16),
        help="patch of the memory and loader runs (default 32 32 16)",
    )
    b.add_argument("--steps", type=int, default=3, help="training steps per run (default 3)")
    b.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=3,
        help="memory of 3D patch training (default) or of 2D slice training",
    )
    b.add_argument("--loader-batches", type=int, default=8, help="batches timed (default 8)")
    b.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=(0, 1, 2),
        help="worker counts (default 0 1 2; none: no loader figures)",
    )
    b.add_argument("--batch-2d", type=int, default=8, help="2D step batch (default 8)")
    b.add_argument("--size-2d", type=int, default=128, help="2D step slice size (default 128)")
    b.add_argument("--batch-3d", type=int, default=2, help="3D step batch (default 2)")
    b.add_argument(
        "--patch-3d",
        type=int,
        nargs=3,
        default=DEFAULT_PATCH_SIZE,
        help=f"3D step patch (default {' '.join(map(str, DEFAULT_PATCH_SIZE))})",
    )
    b.add_argument(
        "--volume-3d",
        type=int,
        nargs=3,
        default=(96, 112, 96),
        help="volume the 3D patches come from, at 2 mm (default 96 112 96, the sample case)",
    )
    b.add_argument("--depth", type=int, default=4, help="UNet levels of the steps (default 4)")
    b.add_argument(
        "--base-channels", type=int, default=32, help="UNet width of the steps (default 32)"
    )
    b.add_argument(
        "--phi-samples", type=int, default=6, help="warped samples timed, 0: none (default 6)"
    )
    b.add_argument(
        "--rate-volume",
        type=int,
        nargs=3,
        default=(197, 233, 189),
        help="volume the loader rates are measured on, at 1 mm (default 197 233 189)",
    )
    b.add_argument(
        "--rate-samples",
        type=int,
        default=16,
        help="samples per loader rate and warped-φ timing, 0: no rates (default 16)",
    )
    b.add_argument(
        "--gpu-step-ms",
        type=float,
        default=30.0,
        help="GPU step time the workers must feed, in ms (default 30)",
    )
    b.add_argument("--gpu-batch", type=int, default=2, help="batch of that GPU step (default 2)")
    b.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark chosen and print its report; the exit code."""
    runners = {"distance": _distance, "train": _train, "metrics": _metrics, "data": _data}
    return runners[args.benchmark](args)


def _distance(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    check_option(args.repeats, "--repeats", 1)
    out(bench.format_bench(bench.bench_distance(repeats=args.repeats, seed=args.seed)))
    return 0


def _data(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    result = bench.bench_data(
        n_small=args.small,
        n_large=args.large,
        shape=tuple(args.shape),
        spacing=(args.spacing,) * 3,
        patch_size=tuple(args.patch_size),
        steps=args.steps,
        loader_batches=args.loader_batches,
        workers=tuple(args.workers),
        step_2d=(args.batch_2d, args.size_2d),
        step_3d=(args.batch_3d, tuple(args.patch_3d)),
        depth=args.depth,
        base_channels=args.base_channels,
        phi_samples=args.phi_samples,
        seed=args.seed,
        volume_3d=tuple(args.volume_3d),
        dims=args.dims,
        rate_volume=tuple(args.rate_volume),
        rate_samples=args.rate_samples,
        gpu_step_ms=args.gpu_step_ms,
        gpu_batch=args.gpu_batch,
    )
    out(bench.format_bench(result))
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench

    check_option(args.repeats, "--repeats", 1)
    out(bench.format_bench(bench.bench_metrics(repeats=args.repeats, seed=args.seed)))
    return 0


def _train(args: argparse.Namespace) -> int:
    from napari_boundary_seg import bench
    from napari_boundary_seg.core.validate import check_unet_fits, check_unet_size

    check_option(args.batch_size, "--batch-size", 1)
    check_option(args.size, "--size", 1)
    check_option(args.repeats, "--repeats", 1)
    check_option(args.warmup, "--warmup", 0)
    check_unet_size(args.depth, args.base_channels, names=("--depth", "--base-channels"))
    check_unet_fits(args.depth, args.size, "--depth")
    result = bench.bench_train(
        batch_size=args.batch_size,
        size=args.size,
        repeats=args.repeats,
        warmup=args.warmup,
        depth=args.depth,
        base_channels=args.base_channels,
        device=args.device,
        seed=args.seed,
    )
    out(bench.format_bench(result))
    return 0
