#!/usr/bin/env bash
# Download, as wheels for the GPU machine's Python (3.12, manylinux x86_64), exactly the packages that
# `make gpu-check` needs and that machine lacks, at the versions installed here (the tested ones):
#   scripts/gpu_wheels.sh [OUT_DIR=.whl]
# The GPU machine already has torch, torchaudio, torchvision, timm, accelerate, transformers (and with them
# numpy, packaging, psutil, pyyaml, safetensors, tqdm), scikit-learn, pandas and OpenCV. It lacks deepspeed
# (+ its requirements below), webdataset (+ braceexpand), thop, and PyAV, which the shard reader imports.
# deepspeed is an sdist on PyPI: it is built here into a pure-Python wheel (its CUDA ops are JIT-built on use).
# There: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# (`make gpu-check` does this itself when the packages are missing). Needs network; run it on the CPU machine.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-.whl}
PY_VERSION=${PY_VERSION:-3.12}
DEEPSPEED_DEPS=(hjson py-cpuinfo ninja msgpack einops pydantic pydantic-core annotated-types typing-inspection
  typing-extensions)
PACKAGES=(webdataset braceexpand thop av "${DEEPSPEED_DEPS[@]}")

pins() {  # NAME==VERSION of each package as installed in $PYTHON's environment
  "$PYTHON" -c 'import sys, importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "$@"
}

rm -rf "$OUT"
mkdir -p "$OUT"
read -r -a PINNED < <(pins "${PACKAGES[@]}")
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" "${PINNED[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$(pins deepspeed)"
ls -l "$OUT"
du -sh "$OUT"
