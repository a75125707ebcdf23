"""Time one realistic configuration of the regimes map (benchmarks/boundary_regimes.sh).

One run of 2 epochs at the map's budget (<= 20 steps of 8 slices, 128² slices, UNet
width 8, depth 4, the study's intensity recipe) on the first 4 cases of a written
load for training and the 5th for validation; prints the median training step, the
validation time per case and the wall time. The map's part lengths are estimated
from these figures (benchmarks/results/boundary_regimes/timing.txt).

    python benchmarks/regimes_timing.py DATA_DIR LOSS
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from napari_boundary_seg.core import data as data_mod
from napari_boundary_seg.core.progress import run_to_end
from napari_boundary_seg.core.train import EpochEvent, StepEvent, train
from napari_boundary_seg.study.config import STUDY_TRAIN


def main(data: Path, loss: str) -> None:
    cases = run_to_end(data_mod.iter_load_cases(data_mod.find_cases(data)))
    config = STUDY_TRAIN.replace(
        data=str(data),
        out_dir=f"/tmp/regimes_timing_{loss.replace('+', '_')}",
        overwrite=True,
        loss=loss,
        schedule={"kind": "paper", "step": 0.034},
        epochs=2,
        max_steps_per_epoch=20,
        batch_size=8,
        slice_size=128,
        base_channels=8,
        depth=4,
        axis=2,
        device="cpu",
    )
    tic = time.perf_counter()
    steps, epochs = [], []
    for event in train(config, cases[:4], val_cases=cases[4:5]):
        if isinstance(event, StepEvent):
            steps.append(event.seconds)
        elif isinstance(event, EpochEvent):
            epochs.append(event.seconds)
    wall = time.perf_counter() - tic
    step = float(np.median(steps))
    validation = (sum(epochs) - sum(steps)) / len(epochs)
    print(
        f"{loss}: {len(steps)} steps, median step {step:.3f} s, validation of 1 case per "
        f"epoch {validation:.1f} s, wall {wall:.0f} s (data preparation included)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
