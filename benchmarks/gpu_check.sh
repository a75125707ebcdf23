#!/usr/bin/env bash
# The GPU check of issue 12 (README: "Train on a GPU"): one prepared script,
# under 5 minutes on one GPU. Prints step times at batch 8 x 256^2 (2D, width
# 64) and batch 2 x 128^3 (3D) in precision 32 / bf16 / 16-mixed with the peak
# GPU memory, the ratio engine step / bare model step (bar <= 1.05), the share
# of the step spent waiting for data, the time of phi of a 197x233x189 volume,
# and a 2-process DDP run (2 GPUs with NCCL, or 2 processes on 1 GPU with gloo).
#
#   benchmarks/gpu_check.sh                # on a GPU machine; writes
#                                          # benchmarks/results/gpu/gpu_check-DATE-DEVICE.txt
#   benchmarks/gpu_check.sh --cpu-smoke    # tiny sizes on the CPU (tested; writes nothing)
#
# Extra arguments go to benchmarks/gpu_check.py (--device cuda:1, --skip-ddp).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
save=(--save benchmarks/results/gpu)
for arg in "$@"; do
  if [ "$arg" = "--cpu-smoke" ]; then save=(); fi
done
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PY" benchmarks/gpu_check.py "${save[@]}" "$@"
