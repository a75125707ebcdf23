"""The check of training on a GPU, run by ``benchmarks/gpu_check.sh`` (see there).

Prints, for the device it runs on:

1. the training step time at batch 8 × 256² (2D, UNet depth 4, width 64) and
   batch 2 × 128³ (3D, depth 4, width 32) in precision 32 / bf16 / 16-mixed,
   with the peak GPU memory of each;
2. the ratio engine step / bare model step (bar ≤ 1.05 on the GPU): *engine*
   = the batch gathered by the trainer's loader, moved to the device, and
   :func:`~napari_boundary_seg.core.train.train_step` (softmax, GDL + boundary
   loss in float32, backward, Adam); *bare* = the same network on resident
   tensors with ``F.cross_entropy``, backward, Adam, at the same precision;
3. the share of the step spent waiting for data in the trainer's loop
   (DataLoader workers gathering 2D slices), and for 3D the loader's patches
   per second per worker with every sample warped (this machine's CPU) and the
   share of the measured 3D step spent waiting with the workers that
   ``bench data`` counts for a 30 ms step;
4. the time of φ (signed distance map) of a 197×233×189 volume (the MNI152
   grey matter mask when nilearn is installed, else random lesions);
5. a 2-process DistributedDataParallel run of the trainer (NCCL on 2 GPUs,
   gloo on one GPU or on the CPU) against one process, per-step time and
   throughput ratio.

``--cpu-smoke`` runs every part at tiny sizes on the CPU (a test runs it).
Nothing here is estimated: every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_boundary_seg.bench import blob_mask
from napari_boundary_seg.core import distributed
from napari_boundary_seg.core.data import PreprocessConfig, SliceDataset, case_from_arrays
from napari_boundary_seg.core.device import resolve_device
from napari_boundary_seg.core.losses import LossKind
from napari_boundary_seg.core.precision import PRECISIONS, autocast, make_scaler, plan_precision
from napari_boundary_seg.core.train import (
    StepEvent,
    TrainConfig,
    epoch_order,
    iter_batches,
    to_device,
    train,
    train_step,
)
from napari_boundary_seg.core.unet import UNet

FULL = {
    "case2d": {"batch": 8, "size": 256, "width": 64, "depth": 4},
    "case3d": {"batch": 2, "size": 128, "width": 32, "depth": 4},
    "repeats": 10,
    "warmup": 3,
    "wait_steps": 24,
    "workers": 4,
    "phi_shape": (197, 233, 189),
    "rate": {"volume": (197, 233, 189), "patch": (96, 96, 32), "samples": 12, "feed_ms": 30.0},
    "ddp": {"batch": 8, "size": 128, "width": 32, "depth": 4, "steps": 20},
}
SMOKE = {
    "case2d": {"batch": 2, "size": 32, "width": 4, "depth": 2},
    "case3d": {"batch": 1, "size": 16, "width": 4, "depth": 2},
    "repeats": 2,
    "warmup": 1,
    "wait_steps": 4,
    "workers": 1,
    "phi_shape": (40, 48, 38),
    "rate": {"volume": (40, 48, 38), "patch": (16, 16, 8), "samples": 3, "feed_ms": 30.0},
    "ddp": {"batch": 2, "size": 32, "width": 4, "depth": 2, "steps": 3},
}
BAR = 1.05


def say(text: str = "") -> None:
    print(text, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type != "cuda":
        return math.nan
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_unet(dims: int, in_channels: int, depth: int, width: int) -> UNet | None:
    """A UNet of ``dims`` spatial dimensions, or None when this build has no such UNet."""
    if dims == 2:
        return UNet(in_channels, 2, depth=depth, base_channels=width)
    if "spatial_dims" not in inspect.signature(UNet).parameters:
        return None
    return UNet(in_channels, 2, depth=depth, base_channels=width, spatial_dims=dims)


def slice_dataset(size: int, slices: int, cases: int, seed: int = 0) -> SliceDataset:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(cases):
        labels = blob_mask((size, size, slices), 0.005, seed=seed + i).astype(np.int64)
        image = (labels + rng.normal(0.0, 0.3, labels.shape)).astype(np.float32)
        out.append(case_from_arrays([image], labels, (1.0, 1.0, 3.0), case_id=f"g{i}"))
    return SliceDataset(out, 2, PreprocessConfig(slice_size=size, axis=2))


def batch_3d(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    from napari_boundary_seg.core.distance import class_distance_maps

    labels = np.stack(
        [blob_mask((size,) * 3, 0.005, seed=seed + b).astype(np.int64) for b in range(batch)]
    )
    dist = np.stack([class_distance_maps(lab, 2, (1.0, 1.0, 1.0)) for lab in labels])
    image = labels[:, None] + np.random.default_rng(seed).normal(0, 0.3, labels.shape)[:, None]
    return (
        torch.as_tensor(image, dtype=torch.float32),
        torch.as_tensor(labels),
        torch.as_tensor(dist, dtype=torch.float32),
    )


def time_precision(
    dims: int, case: dict, precision: str, device: torch.device, sizes: dict
) -> dict:
    """Median engine and bare step times (s) and peak memory of one precision."""
    plan = plan_precision(precision, device)
    if plan.note:
        return {"skipped": plan.note}
    torch.manual_seed(0)
    engine_model = make_unet(dims, 1, case["depth"], case["width"])
    if engine_model is None:
        return {"skipped": f"{dims}D not available in this build"}
    bare_model = make_unet(dims, 1, case["depth"], case["width"])
    bare_model.load_state_dict(engine_model.state_dict())
    engine_model.to(device)
    bare_model.to(device)
    engine_opt = torch.optim.Adam(engine_model.parameters(), lr=1e-3)
    bare_opt = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    engine_scaler, bare_scaler = make_scaler(plan, device), make_scaler(plan, device)
    b, size = case["batch"], case["size"]
    if dims == 2:
        dataset = slice_dataset(size, b, 1)
        order = epoch_order(len(dataset), 0, 0)

        def next_batch():
            return next(iter_batches(dataset, order, b, 0, 1))

    else:
        cpu_batch = batch_3d(b, size)

        def next_batch():
            return cpu_batch

    x, y, _ = to_device(next_batch(), device)

    def engine() -> None:
        train_step(
            engine_model,
            engine_opt,
            to_device(next_batch(), device),
            LossKind.GDL_BL,
            (0.5, 0.5),
            num_classes=2,
            scaler=engine_scaler,
            autocast_dtype=plan.dtype,
        )
        sync(device)

    def bare() -> None:
        bare_model.train()
        bare_opt.zero_grad(set_to_none=True)
        with autocast(device, plan.dtype):
            loss = F.cross_entropy(bare_model(x), y)
        if bare_scaler is not None:
            bare_scaler.scale(loss).backward()
            bare_scaler.step(bare_opt)
            bare_scaler.update()
        else:
            loss.backward()
            bare_opt.step()
        sync(device)

    times: dict[str, list[float]] = {"engine": [], "bare": []}
    peaks = {}
    for name, func in (("engine", engine), ("bare", bare)):  # peak memory of each alone
        reset_peak(device)
        func()
        peaks[name] = peak_mb(device)
    for r in range(sizes["warmup"] + sizes["repeats"]):
        order_ = [("engine", engine), ("bare", bare)]
        for name, func in order_ if r % 2 == 0 else order_[::-1]:
            tic = time.perf_counter()
            func()
            if r >= sizes["warmup"]:
                times[name].append(time.perf_counter() - tic)
    engine_s, bare_s = statistics.median(times["engine"]), statistics.median(times["bare"])
    return {
        "engine_s": engine_s,
        "bare_s": bare_s,
        "ratio": engine_s / bare_s,
        "peak_mb_engine": peaks["engine"],
        "peak_mb_bare": peaks["bare"],
    }


def data_wait(device: torch.device, sizes: dict) -> dict:
    """Share of the trainer's step loop spent waiting for the next batch."""
    case = sizes["case2d"]
    b, steps = case["batch"], sizes["wait_steps"]
    slices = max(8, b * steps // 2)
    dataset = slice_dataset(case["size"], slices, 2)
    torch.manual_seed(0)
    model = make_unet(2, 1, case["depth"], case["width"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = epoch_order(len(dataset), 0, 0)
    out = {}
    for workers in (0, sizes["workers"]):
        tic = time.perf_counter()  # the loader alone: how fast it can deliver
        for _ in iter_batches(dataset, order, b, 0, steps, workers):
            pass
        loader_rate = steps / (time.perf_counter() - tic)
        batches = iter_batches(dataset, order, b, 0, steps, workers)
        waited = total = 0.0
        for k in range(steps):
            tic = time.perf_counter()
            batch = next(batches)
            got = time.perf_counter()
            train_step(
                model, optimizer, to_device(batch, device), LossKind.GDL_BL, (0.5, 0.5),
                num_classes=2,
            )  # fmt: skip
            sync(device)
            if k >= 1:  # the first batch includes the workers' start
                waited += got - tic
                total += time.perf_counter() - tic
        out[workers] = (waited / total, loader_rate, (steps - 1) / total)
    return out


def phi_time(shape: tuple[int, ...]) -> dict:
    from napari_boundary_seg.core.distance import signed_distance_map

    source = f"random lesions {shape}"
    mask = None
    spec = importlib.util.find_spec("nilearn")
    if shape == (197, 233, 189) and spec is not None and spec.origin:
        path = (
            Path(spec.origin).parent
            / "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
        )
        if path.exists():
            from napari_boundary_seg.core.io import read_nifti

            mask = np.asarray(read_nifti(path).data) > 0.5
            source = "MNI152 2009 grey matter > 0.5 (nilearn)"
    if mask is None:
        mask = blob_mask(shape, 0.005, seed=0)
    times = []
    for _ in range(3):
        tic = time.perf_counter()
        signed_distance_map(mask, (1.0, 1.0, 1.0))
        times.append(time.perf_counter() - tic)
    return {"source": source, "shape": tuple(mask.shape), "seconds": min(times)}


def loader_feed(steps3d: dict[str, float], batch: int, sizes: dict) -> str:
    """The 3D loader's rate per worker (every sample warped, this CPU) and the
    share of the measured 3D step spent waiting with the workers ``bench data``
    counts for a step of ``sizes["rate"]["feed_ms"]``."""
    import dataclasses

    from napari_boundary_seg.bench import loader_rate, loader_workers, rate_dataset, waiting_share
    from napari_boundary_seg.core.augment import AugmentConfig

    spec = sizes["rate"]
    if not steps3d:
        return "3D loader vs the 3D step: no 3D step was measured"
    precision, step_s = min(steps3d.items(), key=lambda kv: kv[1])
    dataset = rate_dataset(spec["volume"], spec["patch"], 0)
    warped = dataclasses.replace(AugmentConfig(), warp=1.0)
    rate, _ = loader_rate(dataset, warped, spec["samples"])
    workers = loader_workers(rate, batch, spec["feed_ms"] / 1e3)
    share = waiting_share(rate, workers, batch, step_s)
    return (
        f"3D loader, every sample warped: {rate:.1f} patches/s per worker "
        f"({'×'.join(map(str, spec['patch']))} from {'×'.join(map(str, spec['volume']))}, "
        f"this CPU); with {workers} worker(s) (enough for a {spec['feed_ms']:g} ms step at "
        f"batch {batch}) the measured 3D step ({step_s * 1e3:.1f} ms, {precision}) would "
        f"spend {share * 100:.1f} % of its time waiting; {loader_workers(rate, batch, step_s)} "
        "worker(s) feed it"
    )


def _ddp_worker(rank: int, world: int, folder: str, device: str, backend: str, ddp: dict) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // (2 * world)))
    os.environ["LOCAL_RANK"] = str(rank)
    distributed.init_process(rank, world, f"file://{Path(folder) / 'store'}", backend)
    seconds = _ddp_run(device, ddp, world)
    Path(folder, f"ddp{rank}.json").write_text(json.dumps(seconds))
    torch.distributed.destroy_process_group()


def _ddp_run(device: str, ddp: dict, world: int) -> list[float]:
    b, steps = ddp["batch"], ddp["steps"]
    slices = b * world * steps
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        labels = blob_mask((ddp["size"], ddp["size"], slices // 2), 0.005, seed=i).astype(np.int64)
        image = (labels + rng.normal(0, 0.3, labels.shape)).astype(np.float32)
        cases.append(case_from_arrays([image], labels, (1.0, 1.0, 3.0), case_id=f"d{i}"))
    config = TrainConfig(
        epochs=1,
        batch_size=b,
        slice_size=ddp["size"],
        depth=ddp["depth"],
        base_channels=ddp["width"],
        device=device,
        val_fraction=0.0,
        max_steps_per_epoch=steps,
    )
    return [e.seconds for e in train(config, cases) if isinstance(e, StepEvent)]


def ddp_check(device: torch.device, sizes: dict) -> dict:
    import torch.multiprocessing as mp

    n_gpu = torch.cuda.device_count() if device.type == "cuda" else 0
    backend = "nccl" if n_gpu >= 2 else "gloo"
    where = "cuda" if device.type == "cuda" else "cpu"
    ddp = sizes["ddp"]
    single = _ddp_run(where, ddp, 1)[1:]
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _ddp_worker, args=(2, folder, where, backend, ddp), nprocs=2, start_method="spawn"
        )
        double = [json.loads(Path(folder, f"ddp{r}.json").read_text())[1:] for r in range(2)]
    t1 = statistics.median(single)
    t2 = statistics.median(max(a, b) for a, b in zip(*double, strict=True))
    return {
        "backend": backend,
        "gpus": n_gpu,
        "step_1proc_s": t1,
        "step_2proc_s": t2,
        "throughput_ratio": (2 * ddp["batch"] / t2) / (ddp["batch"] / t1),
    }


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"{torch.cuda.device_count()} GPU(s), bf16 {torch.cuda.is_bf16_supported()}"
        )
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--device", default="auto", help="device (default auto; cpu with smoke)")
    parser.add_argument("--save", type=Path, help="also write the output to this folder")
    parser.add_argument("--skip-ddp", action="store_true", help="skip the 2-process run")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.cpu_smoke else FULL
    device = resolve_device("cpu" if args.cpu_smoke else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train() does for fixed shapes
    lines: list[str] = []

    def out(text: str = "") -> None:
        lines.append(text)
        say(text)

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out(f"# gpu_check {'(cpu smoke: tiny sizes, not GPU figures)' if args.cpu_smoke else ''}")
    out(f"date: {stamp}")
    out(f"device: {device} — {device_line(device)}")
    out(f"torch {torch.__version__}, python {platform.python_version()}")
    out()
    out("## training step (median), engine / bare model step, peak GPU memory")
    steps3d: dict[str, float] = {}
    for dims, key in ((2, "case2d"), (3, "case3d")):
        case = sizes[key]
        shape = "×".join([str(case["size"])] * dims)
        title = (
            f"{dims}D batch {case['batch']} × {shape}, depth {case['depth']}, width {case['width']}"
        )
        for precision in PRECISIONS:
            try:
                r = time_precision(dims, case, precision, device, sizes)
            except torch.OutOfMemoryError as err:
                r = {"skipped": f"out of memory: {str(err).splitlines()[0]}"}
            if "skipped" in r:
                out(f"{title}, {precision:>8}: {r['skipped']}")
                continue
            if dims == 3:
                steps3d[precision] = r["engine_s"]
            verdict = "ok" if r["ratio"] <= BAR else "ABOVE BAR"
            memory = (
                f"peak {r['peak_mb_engine']:.0f} MiB (bare {r['peak_mb_bare']:.0f} MiB)"
                if device.type == "cuda"
                else "peak memory: n/a (not CUDA)"
            )
            out(
                f"{title}, {precision:>8}: engine {r['engine_s'] * 1e3:8.2f} ms, bare "
                f"{r['bare_s'] * 1e3:8.2f} ms, ratio {r['ratio']:.3f} (bar ≤ {BAR}: {verdict}), "
                f"{memory}"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out()
    out("## waiting for data (share of the step loop blocked on the next batch, 2D, 32)")
    for workers, (share, loader_rate, step_rate) in data_wait(device, sizes).items():
        out(
            f"num_workers {workers}: {share * 100:.1f} % of the step spent waiting; loader alone "
            f"{loader_rate:.1f} batches/s, training consumes {step_rate:.1f} batches/s"
        )
    out(loader_feed(steps3d, sizes["case3d"]["batch"], sizes))
    out()
    r = phi_time(sizes["phi_shape"])
    out(f"## φ of a {'×'.join(map(str, r['shape']))} volume ({r['source']}): {r['seconds']:.2f} s")
    out()
    if args.skip_ddp:
        out("## DDP: skipped (--skip-ddp)")
    else:
        r = ddp_check(device, sizes)
        d = sizes["ddp"]
        out(
            f"## DDP, 2 processes ({r['backend']}, {r['gpus']} GPU(s)), batch {d['batch']} per "
            f"process, {d['size']}², width {d['width']}: step {r['step_2proc_s'] * 1e3:.1f} ms "
            f"vs {r['step_1proc_s'] * 1e3:.1f} ms for 1 process; throughput × "
            f"{r['throughput_ratio']:.2f}"
        )
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        slug = device_line(device).split(",")[0].replace(" ", "-").replace("/", "-")
        path = args.save / f"gpu_check-{stamp[:10]}-{slug}.txt"
        path.write_text("\n".join(lines) + "\n")
        say(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
