#!/usr/bin/env bash
# Installs the project into the Python given as $1 (a venv's python). Used by the Makefile and the Dockerfile,
# so both install exactly the versions pinned in pyproject.toml.
#   scripts/install.sh PYTHON [--editable] [--deps-only] [--models-only]
#     --editable     the project in editable mode, with the dev tools (make install)
#     --deps-only    pyproject's dependencies but not the project itself (the Docker image's cached layer;
#                    the code is added later, so a code change does not reinstall the stack)
#     --models-only  of the assets, only the face-detector model (no media for the synthetic dataset)
set -euo pipefail
PY=$1; shift
MODE=regular; ASSET_ARGS=()
for arg in "$@"; do
  case $arg in
    --editable) MODE=editable ;;
    --deps-only) MODE=deps ;;
    --models-only) ASSET_ARGS+=(--models-only) ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$PY" -m pip install -q --upgrade pip
case $MODE in
  editable) "$PY" -m pip install -q -e "$ROOT[dev]" ;;
  regular) "$PY" -m pip install -q "$ROOT" ;;
  deps)
    REQUIREMENTS=$(mktemp)
    "$PY" - "$ROOT/pyproject.toml" >"$REQUIREMENTS" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
PY
    "$PY" -m pip install -q -r "$REQUIREMENTS"
    rm -f "$REQUIREMENTS" ;;
esac
(cd "$ROOT" && "$PY" -m scripts.setup_assets "${ASSET_ARGS[@]}")
