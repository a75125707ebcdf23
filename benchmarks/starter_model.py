"""Build the starter model shipped with the plugin: a small 2D UNet trained on the
wmh preset of the synthetic benchmark, exported as a bioimage.io model package.

    python benchmarks/starter_model.py [--out napari_boundary_seg/models/starter_model.zip]

Shipped, not built on first use: the package is about 1 MB (a UNet of width 8, depth 3,
TorchScript + ONNX + its checkpoint), Predict works on the first click without a
minute of training on the user's machine, and reading it needs only torch (not the
``export`` extra that writing it needs). Deterministic (seed 0, CPU, one thread);
takes about 7 minutes on 2 CPU cores (3 of them writing the 10 synthetic cases).
The sample case's Image layers name it in their metadata.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from napari_boundary_seg.cli import main

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "napari_boundary_seg" / "models" / "starter_model.zip"
)
TRAIN = [
    "--epochs", "24", "--depth", "3", "--base-channels", "8", "--batch-size", "8",
    "--slice-size", "128", "--val-fraction", "0.2", "--device", "cpu", "--seed", "0",
    "--max-steps-per-epoch", "40",
]  # fmt: skip


def build(out: Path, cases: int = 10) -> Path:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="starter-") as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "run"
        start = time.perf_counter()
        assert main(["synth", "--preset", "wmh", "--out", str(data), "--cases", str(cases)]) == 0
        assert main(["train", "--data", str(data), "--out", str(run), *TRAIN]) == 0
        code = main([
            "export", str(run / "best.pt"), "--out", str(out), "--overwrite",
            "--name", "napari-boundary-seg starter model (synthetic WMH-like data)",
        ])  # fmt: skip
        assert code == 0
        print(f"built {out} in {time.perf_counter() - start:.0f} s")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cases", type=int, default=10)
    args = parser.parse_args()
    build(args.out, args.cases)
