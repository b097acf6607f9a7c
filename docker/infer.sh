#!/usr/bin/env bash
# Predict every .mp4 in DATA_DIR, inside the image or outside it (same variables):
#   infer.sh DATA_DIR [OUT_CSV] [-- extra `python -m infer` options, e.g. --template t.csv --tta]
# Checkpoint: $CHECKPOINT if set, else WORK_DIR/run/best (left there by train.sh), else the checkpoint baked
# into the image at /app/weights/checkpoint. OUT_CSV default: /output/submission.csv when /output is writable
# (mount it with -v), else WORK_DIR/submission.csv. Failures report and details land next to the CSV.
set -euo pipefail
APP_DIR=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$APP_DIR"
if [[ ${1:-} == "-h" || ${1:-} == "--help" || $# -lt 1 ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi
DATA_DIR=$1; shift
WORK_DIR=${WORK_DIR:-/work}
if [[ $# -gt 0 && $1 != "--" ]]; then OUT_CSV=$1; shift; fi
[[ ${1:-} == "--" ]] && shift
if [[ -z ${OUT_CSV:-} ]]; then
  if [[ -d /output && -w /output ]]; then OUT_CSV=/output/submission.csv; else OUT_CSV=$WORK_DIR/submission.csv; fi
fi
PYTHON=${PYTHON:-python}
if [[ -z ${CHECKPOINT:-} ]]; then
  for candidate in "$WORK_DIR/run/best" "$APP_DIR/weights/checkpoint"; do
    if [[ -e $candidate ]]; then CHECKPOINT=$candidate; break; fi
  done
fi
if [[ -z ${CHECKPOINT:-} ]]; then
  echo "infer.sh: no checkpoint: set CHECKPOINT, run train.sh with the same WORK_DIR, or bake weights/checkpoint into the image" >&2
  exit 3
fi
"$PYTHON" - <<PY
import platform, torch
print(f"[infer.sh] python {platform.python_version()} torch {torch.__version__} gpus {torch.cuda.device_count()}")
PY
echo "[infer.sh] data=$DATA_DIR checkpoint=$CHECKPOINT out=$OUT_CSV"
"$PYTHON" -m infer --videos "$DATA_DIR" --checkpoint "$CHECKPOINT" --out "$OUT_CSV" "$@"
