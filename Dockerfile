# Images of the inference server. Targets:
#
#   serve (default, last stage)  CPU image: python:3.11-slim + `.[serve]` (onnxruntime, no torch) +
#                                app/ + the committed models/.
#       DOCKER_BUILDKIT=1 docker build -t deepserve .
#   gpu                          CUDA image: nvidia/cuda runtime + cuDNN + `.[gpu]` (onnxruntime-gpu).
#       DOCKER_BUILDKIT=1 docker build --target gpu -t deepserve:gpu .
#       docker run --gpus all -p 8000:8000 deepserve:gpu
#   build-models                 rebuilds the model repository from scratch with torch (`.[train]`,
#                                `python -m training build`); only built when asked for.
#       DOCKER_BUILDKIT=1 docker build --target build-models -t deepserve:models .
#       DOCKER_BUILDKIT=1 docker build --build-arg MODELS_FROM=built -t deepserve .   # serve image with rebuilt models
#
# By default (MODELS_FROM=context) the serve and gpu images take models/ from the build context: the
# model repository is committed, so a clean checkout builds without torch. BuildKit (the default
# builder of Docker >= 23 and of `docker compose`; DOCKER_BUILDKIT=1 on older clients) skips the stages
# a target does not need, so the torch stage is never built unless MODELS_FROM=built or --target
# build-models asks for it. The legacy builder would build every stage above the target, torch's too.
# No `# syntax=` line: the builder's own Dockerfile frontend is used, so nothing is pulled to parse this.
#
# Base images are build arguments (PYTHON_IMAGE, CUDA_IMAGE). Where no registry is reachable,
# scripts/make_base_images.sh makes local stand-ins from Debian packages and prints the arguments.
# Layers go from the least to the most often changed: dependencies (pyproject.toml only), user,
# models, then app/, so that a code change rebuilds only the last two layers.
#
# Settings are SERVE_* environment variables (app/settings.py); override them with `docker run -e`.

# context | built: where the images' model repository comes from (see above).
ARG MODELS_FROM=context
ARG PYTHON_IMAGE=python:3.11-slim
# onnxruntime-gpu on PyPI is built against CUDA 13.0 and cuDNN 9 (its capi/build_and_package_info.py);
# CUDA 13 needs an NVIDIA driver >= 580 on the host.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04

# --------------------------------------------------------------------------------------------------
# serve-deps: the `serve` extra in a virtual environment, nothing else.
FROM ${PYTHON_IMAGE} AS serve-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# Only pyproject.toml: this layer is rebuilt when that file changes (any edit of it), never for code.
# setuptools wants the file named by `readme`, so an empty stand-in takes README.md's place here.
COPY pyproject.toml ./
# The dependencies' own test suites (numpy's, 17 MB) are never run in the image: dropped.
RUN python -m venv /opt/venv \
    && touch README.md \
    && /opt/venv/bin/pip install --no-cache-dir ".[serve]" \
    && /opt/venv/bin/pip uninstall --yes deepserve \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# --------------------------------------------------------------------------------------------------
# build-models: torch + the training package; trains and exports the default zoo into /build/models.
FROM ${PYTHON_IMAGE} AS build-models
# torch==2.13.0 from PyPI is the multi-GB CUDA build; the CPU index serves 2.13.0+cpu, which pip prefers
# (a local version sorts above the plain one) and which is all the training here needs.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /build
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
    && touch README.md \
    && /opt/venv/bin/pip install --no-cache-dir ".[train]" \
    && /opt/venv/bin/pip uninstall --yes deepserve
COPY app/ app/
COPY training/ training/
RUN /opt/venv/bin/python -m training build --no-progress --out /build/models --runs /tmp/runs

# --------------------------------------------------------------------------------------------------
# The model repository the images serve: models-context (committed) or models-built (rebuilt above).
FROM scratch AS models-context
COPY models/ /models/

FROM scratch AS models-built
COPY --from=build-models /build/models/ /models/

# DL3006 (tag every image) cannot apply: models-* are stages of this file, not images.
# hadolint ignore=DL3006
FROM models-${MODELS_FROM} AS models

# --------------------------------------------------------------------------------------------------
# gpu: CUDA + cuDNN runtime, Python 3.11 from Ubuntu 22.04, `.[gpu]` (onnxruntime-gpu).
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Ubuntu's archive keeps only the newest build of a package, so exact apt pins break the build as
# soon as a security update lands; the CUDA_IMAGE tag is the pin that matters here. Debian 12 names the
# two packages alike, so the Debian stand-in of scripts/make_base_images.sh runs this stage unchanged.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml ./
RUN python3.11 -m venv /opt/venv \
    && touch README.md \
    && /opt/venv/bin/pip install --no-cache-dir ".[gpu]" \
    && /opt/venv/bin/pip uninstall --yes deepserve \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +
RUN groupadd --system --gid 10001 serve \
    && useradd --system --uid 10001 --gid serve --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin serve
WORKDIR /srv
COPY --from=models /models/ /srv/models/
COPY app/ /srv/app/
RUN /opt/venv/bin/python -m compileall -q /srv/app
ENV PATH=/opt/venv/bin:$PATH \
    SERVE_MODEL_REPOSITORY=/srv/models \
    SERVE_DEVICE=cuda \
    SERVE_SHUTDOWN_GRACE_S=8 \
    SERVE_VERIFY_SHA256=true \
    SERVE_WARMUP=true \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('SERVE_PORT', '8000'), timeout=4).status != 200)"]
CMD ["python", "-m", "app"]

# --------------------------------------------------------------------------------------------------
# serve: the default target. CPU onnxruntime, no torch, runs as an unprivileged user.
FROM ${PYTHON_IMAGE} AS serve
LABEL org.opencontainers.image.title="deepserve" \
      org.opencontainers.image.description="Dynamic-batching ONNX inference server (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 serve \
    && useradd --system --uid 10001 --gid serve --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin serve
COPY --from=serve-deps /opt/venv /opt/venv
WORKDIR /srv
COPY --from=models /models/ /srv/models/
COPY app/ /srv/app/
# Bytecode compiled at build time: the user cannot write __pycache__ next to root-owned sources.
RUN /opt/venv/bin/python -m compileall -q /srv/app
# SERVE_SHUTDOWN_GRACE_S: in-flight requests get 8 s after SIGTERM, inside `docker stop`'s 10 s before
# SIGKILL (the server's own default, 30 s, would be cut short there). Kubernetes sets its own.
ENV PATH=/opt/venv/bin:$PATH \
    SERVE_MODEL_REPOSITORY=/srv/models \
    SERVE_DEVICE=cpu \
    SERVE_SHUTDOWN_GRACE_S=8 \
    SERVE_VERIFY_SHA256=true \
    SERVE_WARMUP=true \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8000
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# /health/ready answers 200 once loading finished and at least one model is ready, 503 before; urlopen
# raises on the 503, which exits non-zero as well. The probe follows SERVE_PORT (host networking, -e).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('SERVE_PORT', '8000'), timeout=4).status != 200)"]
CMD ["python", "-m", "app"]
