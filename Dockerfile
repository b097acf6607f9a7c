# Reproduction image: `docker run ... train.sh` and `docker run ... infer.sh /data/test` (see README).
# Versions come from pyproject.toml through scripts/install.sh; this file pins only the base image and OS packages.
# The torch wheel bundles its CUDA 13 runtime, so the base image needs only the driver hooks (host driver >= 580).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv AVDF_CACHE=/opt/avdf/assets PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /app
# Dependencies first (layer cached while only code changes), then the project itself.
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/setup_assets.py scripts/
COPY shards/ shards/
COPY train/ train/
COPY infer/ infer/
# the face-detector model is fetched (checksum-verified) into $AVDF_CACHE at build time, never at run time
RUN scripts/install.sh /opt/venv/bin/python --models-only

FROM ${CUDA_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 avdf \
    && mkdir -p /work /output \
    && chown avdf:avdf /work /output
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/avdf /opt/avdf
WORKDIR /app
COPY . /app/
# Optional baked weights: put ImageNet-1K backbone files and/or a trained checkpoint under weights/ before
# `docker build`; configs refer to them by path (/app/weights/...). Nothing is downloaded when the container runs.
RUN ln -s /app/docker/train.sh /usr/local/bin/train.sh \
    && ln -s /app/docker/infer.sh /usr/local/bin/infer.sh
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    AVDF_CACHE=/opt/avdf/assets \
    PYTHONUNBUFFERED=1 \
    PYTHONHASHSEED=0 \
    WORK_DIR=/work \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib
LABEL org.opencontainers.image.title="avdeepfake" \
      org.opencontainers.image.description="Audio-visual deepfake detection: pack shards, train, predict submission.csv" \
      avdeepfake.entrypoint.train="train.sh [DATA_DIR=/data] [WORK_DIR=/work]" \
      avdeepfake.entrypoint.infer="infer.sh DATA_DIR [OUT_CSV=/output/submission.csv]"
USER 1000:1000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["infer.sh", "--help"]
