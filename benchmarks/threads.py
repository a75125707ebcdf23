"""Training-step time of the Quick start network with 1 and 2 torch threads.

The Quick start's UNet (depth 4, width 16, two input channels) takes steps of
GDL + boundary loss on random batches of 8 slices of the sample case's size
(96×112), with ``torch.set_num_threads(N)`` for each N, each in a fresh
process. With ``--busy K``, K other processes spin on the CPU meanwhile (a busy
machine, as when other jobs share it). Prints the median step time per thread
count; the command line and the demo choose their default from this.

Usage::

    python benchmarks/threads.py [--steps 8] [--busy 0] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time


def spin(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def run_steps(threads: int, steps: int) -> list[float]:
    code = f"""
import time, torch
torch.set_num_threads({threads})
torch.manual_seed(0)
from napari_boundary_seg.core.presets import quick_start_config
from napari_boundary_seg.core.unet import UNet
from napari_boundary_seg.core.losses import combined_loss, one_hot
c = quick_start_config()
model = UNet(2, 2, depth=c.depth, base_channels=c.base_channels)
opt = torch.optim.Adam(model.parameters(), lr=c.lr)
x = torch.rand(8, 2, 96, 112)
y = (torch.rand(8, 96, 112) > 0.99).long()
dist = torch.randn(8, 2, 96, 112)
times = []
for i in range({steps} + 1):
    t = time.perf_counter()
    opt.zero_grad()
    probs = model(x).softmax(1)
    loss = combined_loss(probs, one_hot(y, 2), dist, 0.9, 0.1).total
    loss.backward()
    opt.step()
    if i:
        times.append(time.perf_counter() - t)
print(" ".join(f"{{t:.4f}}" for t in times))
"""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return [float(t) for t in out.stdout.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes (default 0)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="counts to time")
    args = parser.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, busy={args.busy}"
    )
    procs = [
        mp.Process(target=spin, args=(time.time() + 3600,), daemon=True) for _ in range(args.busy)
    ]
    for p in procs:
        p.start()
    try:
        for threads in args.threads:
            times = run_steps(threads, args.steps)
            print(
                f"threads={threads}: median step {statistics.median(times):.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} steps)"
            )
    finally:
        for p in procs:
            p.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
