# syntax=docker/dockerfile:1
# fitgate's image: the same install and start scripts as the README, on a CUDA runtime base.
#   GPU (default): docker build -t fitgate:gpu .
#   CPU only:      docker build --build-arg DEVICE=cpu -t fitgate:cpu .
# One image runs both roles: inference pods set FITGATE_TRAINING_ENABLED=false (docs/DEPLOY.md).
# Nothing secret or stateful is baked in: tokens come from the environment or a mounted file,
# models and jobs live on the /data volume.

ARG DEVICE=gpu

# --- bases: a CUDA runtime for the GPU image, slim Debian for the CPU one ---------------------------
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
ENV TORCH_INDEX_URL=""
FROM debian:bookworm-slim AS base-cpu
ENV TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu"

# hadolint ignore=DL3006
FROM base-${DEVICE} AS base
ARG DEVICE
# fonts-wqy-microhei (5 MB): the plots draw Chinese, Japanese and Korean class names instead of numbering them
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/*
# a self-contained CPython 3.11 (python-build-standalone), the same on both bases
COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    PYTHON=/usr/local/bin/python3.11 \
    FITGATE_DEVICE=${DEVICE} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# uv's pinned version fixes the 3.11 patch release it installs
RUN uv python install 3.11 \
    && ln -s "$(uv python find 3.11)" /usr/local/bin/python3.11 \
    && python3.11 --version

# --- build: scripts/install, exactly as the README runs it ------------------------------------------
FROM base AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY fitgate/ fitgate/
COPY training/ training/
COPY models/ models/
COPY batch/ batch/
COPY service/ service/
COPY cli/ cli/
RUN scripts/install

# --- runtime: the installed tree, a non-root user, state on a volume --------------------------------
FROM base AS runtime
RUN groupadd --system --gid 10001 fitgate \
    && useradd --system --uid 10001 --gid fitgate --home-dir /app --shell /usr/sbin/nologin fitgate \
    && mkdir -p /data \
    && chown fitgate:fitgate /data
WORKDIR /app
COPY --from=build --chown=root:root /app /app
ENV FITGATE_DATA_DIR=/data \
    FITGATE_HOST=0.0.0.0 \
    FITGATE_PORT=3000 \
    BENTOML_HOME=/tmp/bentoml \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 3000
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]
CMD ["scripts/serve"]
