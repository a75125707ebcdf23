#!/usr/bin/env bash
# The regimes map (README: "When does the boundary loss help?"): GDL + boundary
# loss against GDL along the lesion-load axis, in parts that each fit within
# 60 minutes on the 2-core CPU. Every part is resumable (finished runs are
# skipped, unfinished ones resume from last.pt); run the parts in any order,
# then `map`:
#
#   benchmarks/boundary_regimes.sh load-3        # loads: 3, 0.6, 0.15, 0.03 % of the brain
#   benchmarks/boundary_regimes.sh load-0.6
#   benchmarks/boundary_regimes.sh load-0.15
#   benchmarks/boundary_regimes.sh load-0.03
#   benchmarks/boundary_regimes.sh phi-peer      # φ units, empty slices, MONAI, at 0.6 %
#   benchmarks/boundary_regimes.sh budget-3x     # GDL, GDL+BL (paper α) at 0.6 %, 3x the steps
#   benchmarks/boundary_regimes.sh map           # the map of all loads (report only)
#   benchmarks/boundary_regimes.sh smoke         # minutes: the plumbing, tiny budget
#
# Each load: the wmh preset, 40 cases written once into runs/boundary-regimes/data/
# load_<L> (each case's lesions L % of its brain, within a factor 1.25), split
# patient-wise into 12 training, 4 validation and 24 test cases; the schedule arms
# (GDL; GDL+BL with the paper's α, the reference code's, a warm start, α held at 1
# until out of the empty basin, a constant α = 0.9) x 3 seeds. Budget: 30 epochs x
# <= 20 steps of 8 slices, 128² slices, UNet width 8.
#
# Part lengths, measured (benchmarks/results/boundary_regimes/timing.txt; the 2-core CPU,
# two parts at once, one thread each): a load part 90-110 min of wall time (18 runs of
# 3-6 min, 40 cases written, 24 x 18 test evaluations), phi-peer about 45 min (12 new runs;
# GDL and the paper arm at 0.6 % are the load part's), budget-3x about 58 min, map 30 s:
# 8.2 h of training in all, about 4.1 h two parts at a time. To keep a part under an hour,
# run a load a seed at a time (load-3 --seeds 0, then 1, then 2); map pools every run.
# Extra arguments are appended (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
PART=${1:-}
shift || true
OUT=benchmarks/results/boundary_regimes
RUNS=runs/boundary-regimes
SCHEDULES=(gdl gdl-bl-paper gdl-bl-refcode gdl-bl-warm gdl-bl-hold gdl-bl-const)
PHI_PEER=(gdl gdl-bl-paper gdl-bl-paper-vox gdl-bl-paper-clip gdl-bl-paper-zero gdl-monai-bl)
COMMON=(--synth 40 --synth-seed 0 --synth-preset wmh --small-voxels 10
  --seeds 0 1 2 --epochs 30 --steps-per-epoch 20 --batch-size 8 --lr 1e-3 --lr-patience 20
  --size 128 --depth 4 --base-channels 8 --axis 2
  --test-fraction 0.6 --val-fraction 0.1 --split-seed 0 --device auto)
study() { "$PY" -m napari_boundary_seg.cli -v study "$@"; }
case "$PART" in
  load-3 | load-0.6 | load-0.15 | load-0.03)
    study --data "$RUNS/data" --runs-dir "$RUNS/runs" --out "$OUT" "${COMMON[@]}" \
      --loads "${PART#load-}" --arms "${SCHEDULES[@]}" "$@" ;;
  phi-peer)
    study --data "$RUNS/data" --runs-dir "$RUNS/runs" --out "$OUT/phi_peer" "${COMMON[@]}" \
      --loads 0.6 --arms "${PHI_PEER[@]}" "$@" ;;
  budget-3x)
    study --data "$RUNS/data" --runs-dir "$RUNS/runs-3x" --out "$OUT/budget_3x" "${COMMON[@]}" \
      --loads 0.6 --arms gdl gdl-bl-paper --steps-per-epoch 60 "$@" ;;
  map)
    study --data "$RUNS/data" --runs-dir "$RUNS/runs" --out "$OUT" "${COMMON[@]}" \
      --loads 3 0.6 0.15 0.03 --arms "${SCHEDULES[@]}" --report-only "$@" ;;
  smoke)
    study --data "$RUNS/smoke-data" --runs-dir "$RUNS/smoke-runs" --out "$RUNS/smoke-out" \
      --synth 6 --synth-preset wmh --small-voxels 10 --loads 1 0.1 --seeds 0 1 \
      --arms gdl gdl-bl-warm gdl-bl-hold gdl-monai-bl --epochs 3 --steps-per-epoch 3 \
      --batch-size 4 --size 64 --depth 3 --base-channels 4 --axis 2 \
      --test-fraction 0.34 --val-fraction 0.17 --split-seed 0 --device auto "$@" ;;
  *)
    echo "usage: $0 {load-3|load-0.6|load-0.15|load-0.03|phi-peer|budget-3x|map|smoke} [extra study args]" >&2
    exit 2 ;;
esac
