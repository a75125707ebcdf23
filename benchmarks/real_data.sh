#!/usr/bin/env bash
# Leave one patient out on a folder of real scans (nnU-Net, WMH or ISLES layout):
# GDL against GDL + BL, in 2D on the CPU, with the package's real-scan defaults
# (canonical orientation, robust intensities within the head, crop to the head, slices
# resampled to the training spacing). Resumable: run it again to finish the folds
# a part left (each part starts no fold after --max-minutes, default 55).
#
#   bash benchmarks/real_data.sh DATA_DIR [OUT] [extra real_data.py options]
#
# The committed results (benchmarks/results/real_data/) come from
#   bash benchmarks/real_data.sh ../shared/data/lesjak2017-ms
# and variants with more options (each result folder's COMMAND.md). The best recipe
# measured (README, "Real scans"): GDL from a UNet pretrained on synthetic cases, one
# model per plane as one ensemble:
#   bash benchmarks/real_data.sh DATA_DIR OUT --arms gdl,gdl_coronal,gdl_sagittal \
#       --augment --flips --set 'lr_decay="poly"' --set 'ema=0.99' --pretrain 12 \
#       --ensemble-arms gdl,gdl_coronal,gdl_sagittal
set -euo pipefail
data="${1:?usage: benchmarks/real_data.sh DATA_DIR [OUT] [options]}"
out="${2:-benchmarks/results/real_data}"
shift $(( $# >= 2 ? 2 : 1 ))
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$python" "$here/real_data.py" "$data" --out "$out" --arms gdl,gdl_bl --seeds 0 \
    --epochs 20 --steps 25 "$@"
