"""Warped-sample φ and loader rates of whichever checkout is on PYTHONPATH, for a
comparison of two checkouts run one after the other under the same load.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python benchmarks/warped_ab.py LABEL``;
``LABEL`` ``nonumba`` runs the numpy/edt path even where numba is installed.
"""

import dataclasses
import os
import sys

import napari_boundary_seg
from napari_boundary_seg.bench_loader import _warped_phi_case, loader_rate, rate_dataset
from napari_boundary_seg.core import augment as aug

if sys.argv[1] == "nonumba":
    from napari_boundary_seg.core import kernels

    kernels.NUMBA = False

dataset = rate_dataset((197, 233, 189), (96, 96, 32), 0)
before = os.getloadavg()[0]
warped = loader_rate(dataset, dataclasses.replace(aug.AugmentConfig(), warp=1.0), 16)
plain = loader_rate(dataset, None, 64)
phi = _warped_phi_case(dataset, 16, 0)
print(
    f"{sys.argv[1]} {napari_boundary_seg.__file__} load {before:.1f}->{os.getloadavg()[0]:.1f} "
    f"φ {phi['text']} | whole {phi['whole_volume_path']} | warped rate cpu {warped[0]:.1f} "
    f"wall {warped[1]:.1f} | no-aug rate cpu {plain[0]:.0f}"
)
