#!/usr/bin/env bash
# The loss study with the committed settings (README: "Loss study").
#
# One command on a clean clone: writes the built-in benchmark (20 cases, seed 0)
# into runs/loss-study/data if it is missing, trains 5 losses x 2 seeds
# (per-run folders in runs/loss-study/runs, git-ignored; rerunning skips
# finished runs and resumes unfinished ones), evaluates each best checkpoint on
# the 5 held-out test cases and writes benchmarks/results/loss_study/.
#
# About 45-50 min on an idle 2-core CPU at 128x128 slices (80 min measured on a
# shared one; see README "Loss study"); on a GPU,
# pass --size 256 --base-channels 64 (the paper's resolution) and more epochs.
# Extra arguments are appended (e.g. --report-only, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec "$PY" -m napari_boundary_seg.cli -v study \
  --data runs/loss-study/data --synth 20 --synth-seed 0 \
  --out benchmarks/results/loss_study --runs-dir runs/loss-study/runs \
  --arms gdl gdl-bl-paper gdl-bl-refcode bl ce --seeds 0 1 \
  --epochs 40 --steps-per-epoch 30 --batch-size 8 --lr 1e-3 --lr-patience 20 \
  --size 128 --depth 4 --base-channels 8 --axis 2 \
  --test-fraction 0.25 --val-fraction 0.1 --split-seed 0 --device auto \
  "$@"
