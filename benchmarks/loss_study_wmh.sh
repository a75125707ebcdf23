#!/usr/bin/env bash
# The loss study on the wmh preset (README: "Loss study on the wmh preset").
#
# One command on a clean clone: writes the wmh preset (28 cases, seed 0, 4
# simulated sites, 7 cases each) into runs/loss-study-wmh/data if it is missing;
# holds the site "sim-1.5t" out entirely (its 7 cases are a second test set);
# splits the other 21 cases patient-wise into 12 training, 4 validation and 5
# test cases; trains 5 losses + the 2D-φ ablation (GDL+BL, paper α, φ per
# slice) x 3 seeds (per-run folders in runs/loss-study-wmh/runs, git-ignored;
# rerunning skips finished runs and resumes unfinished ones); evaluates each
# best checkpoint on the test cases and the held-out site; writes the tables,
# paired statistics (Wilcoxon, bootstrap CI), the calibration figures of GDL,
# validation_curves.png and test_slice.png to benchmarks/results/loss_study_wmh/.
#
# Runtime, measured: 68 min wall (4084 s) on the 2-core CPU, 2026-11-30
# (28 cases written in 1.5 min, 18 runs of 193-236 s, evaluation 70 s);
# benchmarks/results/loss_study_wmh/study.log.
# Extra arguments are appended and replace the ones above (e.g. --report-only,
# --device cuda, or the 3D GPU row of the README: --dims 3 --patch-size ...).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec "$PY" -m napari_boundary_seg.cli -v study \
  --data runs/loss-study-wmh/data --synth 28 --synth-seed 0 --synth-preset wmh \
  --held-out-site sim-1.5t --small-voxels 10 \
  --out benchmarks/results/loss_study_wmh --runs-dir runs/loss-study-wmh/runs \
  --arms gdl gdl-bl-paper gdl-bl-refcode bl ce gdl-bl-paper-2d --seeds 0 1 2 \
  --epochs 40 --steps-per-epoch 30 --batch-size 8 --lr 1e-3 --lr-patience 20 \
  --size 128 --depth 4 --base-channels 8 --axis 2 \
  --test-fraction 0.25 --val-fraction 0.2 --split-seed 0 --device auto \
  "$@"
