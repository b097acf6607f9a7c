#!/usr/bin/env bash
# Installs the project into the Python given as $1 (a venv's python). Used by the Makefile and the Dockerfile,
# so both install exactly the versions pinned in pyproject.toml.
#   scripts/install.sh PYTHON [--editable] [--models-only]
set -euo pipefail
PY=$1; shift
EDITABLE=0; ASSET_ARGS=()
for arg in "$@"; do
  case $arg in
    --editable) EDITABLE=1 ;;
    --models-only) ASSET_ARGS+=(--models-only) ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$PY" -m pip install -q --upgrade pip
if [[ $EDITABLE == 1 ]]; then
  "$PY" -m pip install -q -e "$ROOT[dev]"
else
  "$PY" -m pip install -q "$ROOT"
fi
# mediapipe's metadata pulls a second OpenCV, matplotlib and sounddevice; its real needs are in pyproject.
"$PY" -m pip install -q --no-deps mediapipe==1.2.2
"$PY" "$ROOT/scripts/setup_assets.py" "${ASSET_ARGS[@]}"
