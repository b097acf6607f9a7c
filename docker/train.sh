#!/usr/bin/env bash
# Train from raw competition data, inside the image or outside it (same variables):
#   train.sh [DATA_DIR=/data] [WORK_DIR=/work] [-- extra python -m train overrides]
# DATA_DIR is a competition data folder (train/, val/ and their label files; see competition.py). Shards go to
# WORK_DIR/shards (finished shards are skipped on a rerun), the run to WORK_DIR/run (MLflow store
# WORK_DIR/run/mlflow.db), and the best checkpoint to WORK_DIR/run/best, where infer.sh looks first.
# Environment: CONFIG (default configs/base.yaml), USE_DEEPSPEED=1 (ZeRO-2), NUM_GPUS (default: all visible),
# PACK_WORKERS (default: all cores), ACCELERATE_CONFIG (overrides the automatic choice), RESUME=1,
# DRY_RUN=1 (print the training command it would launch and exit).
set -euo pipefail
APP_DIR=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$APP_DIR"
DATA_DIR=${1:-${DATA_DIR:-/data}}
WORK_DIR=${2:-${WORK_DIR:-/work}}
shift $(( $# < 2 ? $# : 2 ))
[[ ${1:-} == "--" ]] && shift
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/base.yaml}
PACK_WORKERS=${PACK_WORKERS:-$(nproc)}

"$PYTHON" -m competition --check-data "$DATA_DIR" --splits train,val >/dev/null  # exits 2 naming what is missing

NUM_GPUS=${NUM_GPUS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}
"$PYTHON" - <<PY
import platform, torch, accelerate, timm, webdataset
print(f"[train.sh] python {platform.python_version()} torch {torch.__version__} cuda {torch.version.cuda} "
      f"accelerate {accelerate.__version__} timm {timm.__version__} webdataset {webdataset.__version__}")
PY
echo "[train.sh] data=$DATA_DIR work=$WORK_DIR config=$CONFIG gpus=$NUM_GPUS"

if [[ -n ${ACCELERATE_CONFIG:-} ]]; then
  LAUNCH=(--config_file "$ACCELERATE_CONFIG")
elif [[ ${USE_DEEPSPEED:-0} == 1 ]]; then  # without a GPU: one process on the CPU (gloo)
  LAUNCH=(--config_file configs/accelerate/deepspeed_zero2.yaml --num_processes "$(( NUM_GPUS > 0 ? NUM_GPUS : 1 ))")
elif (( NUM_GPUS > 1 )); then
  LAUNCH=(--config_file configs/accelerate/multi_gpu.yaml --num_processes "$NUM_GPUS")
elif (( NUM_GPUS == 1 )); then
  LAUNCH=(--config_file configs/accelerate/single_gpu.yaml)
else
  LAUNCH=(--config_file configs/accelerate/cpu.yaml)
fi
RESUME_ARGS=()
[[ ${RESUME:-0} == 1 ]] && RESUME_ARGS=(--resume)
TRAIN_CMD=("$PYTHON" -m accelerate.commands.launch "${LAUNCH[@]}" -m train --config "$CONFIG"
  --train-shards "$WORK_DIR/shards/train" --val-shards "$WORK_DIR/shards/val" --out "$WORK_DIR/run"
  "${RESUME_ARGS[@]}" "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then  # print the launch command and stop (tests fake NUM_GPUS with it)
  echo "[train.sh] dry run: ${TRAIN_CMD[*]}"
  exit 0
fi

# shards are packed with the extraction options of the config (inference reads them from the checkpoint); the
# validation clips hold score.time_views times the windows, the clips inference scores
for split in train val; do
  read -r -a PACK_ARGS < <("$PYTHON" -m train --config "$CONFIG" --pack-args "$split")
  "$PYTHON" -m shards.pack --data "$DATA_DIR" --split "$split" --out "$WORK_DIR/shards/$split" \
    "${PACK_ARGS[@]}" --workers "$PACK_WORKERS"
done

echo "[train.sh] accelerate launch ${LAUNCH[*]}"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK_DIR/run/mlflow.db}
"${TRAIN_CMD[@]}"
echo "[train.sh] best checkpoint: $WORK_DIR/run/best"
