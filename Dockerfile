# Reproduction image: `docker run ... train.sh` and `docker run ... infer.sh /data/test` (see README).
# Versions come from pyproject.toml through scripts/install.sh; this file pins only the base image and OS packages.
# Base: Debian 12 (bookworm), whose Python 3.11 is the one the project is developed and tested on, pinned by date
# tag and by the digest of its amd64 image (debuerreotype's published checksums for debian:bookworm-20251229).
# The torch wheel bundles its CUDA 13 runtime, so no CUDA base image is needed: with the NVIDIA container toolkit
# (`docker run --gpus all`) the host driver (>= 580) is mounted in. `make docker-check` builds this file as is,
# with a local stand-in of the same release where no registry is reachable (python -m scripts.docker_check).
ARG BASE_IMAGE=debian:bookworm-20251229@sha256:4216e8fe27fdd803d2822d08ed9de39825a41a47e34c32b71a23ac074f91eaf4

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV AVDF_CACHE=/opt/avdf/assets PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /build
# Only what the dependency install reads: this layer is rebuilt when pyproject.toml changes, not the code.
COPY pyproject.toml ./
COPY scripts/__init__.py scripts/install.sh scripts/setup_assets.py scripts/
COPY shards/__init__.py shards/assets.py shards/
# the face-detector model is fetched (checksum-verified) into $AVDF_CACHE at build time, never at run time
RUN scripts/install.sh /opt/venv/bin/python --deps-only --models-only

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The face detector (LiteRT) needs only the C++ runtime that python3 brings; python -m infer and shards.pack check
# at start-up that it finds a face (else they stop with exit 5).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 avdf \
    && mkdir -p /work /output \
    && chown avdf:avdf /work /output
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/avdf /opt/avdf
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    AVDF_CACHE=/opt/avdf/assets \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORK_DIR=/work \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
WORKDIR /app
# The code last: a code-only change rebuilds from here (seconds), not the Python stack.
# Optional baked weights: put ImageNet-1K backbone files and/or a trained checkpoint under weights/ before
# `docker build`; configs refer to them by path (/app/weights/...). Nothing is downloaded when the container runs.
COPY . /app/
RUN pip install -q --no-cache-dir --no-deps --no-build-isolation --no-index -e /app \
    && ln -s /app/docker/train.sh /usr/local/bin/train.sh \
    && ln -s /app/docker/infer.sh /usr/local/bin/infer.sh
LABEL org.opencontainers.image.title="avdeepfake" \
      org.opencontainers.image.description="Audio-visual deepfake detection: pack shards, train, predict submission.csv" \
      avdeepfake.entrypoint.train="train.sh [DATA_DIR=/data] [WORK_DIR=/work]" \
      avdeepfake.entrypoint.infer="infer.sh DATA_DIR [OUT_CSV=/output/submission.csv]"
USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["infer.sh", "--help"]
