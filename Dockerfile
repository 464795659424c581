# wsi-atm: atypical vs normal mitosis classification for whole-slide images, CUDA-capable.
#
#   docker build -t wsi-atm:latest .
#   docker run --rm --gpus all --shm-size 8g -v /path/slides:/data:ro -v /path/out:/out \
#       wsi-atm:latest batch /data --out-dir /out
#
# The host needs an NVIDIA driver for CUDA 13.0 (>= 580) and the NVIDIA container toolkit.
# Base: NVIDIA's official CUDA image for Ubuntu 24.04. The `-base-` flavour is enough because
# torch's CUDA wheels bundle their own CUDA runtime, cuDNN and cuBLAS; a `-cudnn-runtime-` base
# works as well but ships those libraries twice (about 3 GB more). Both stages use the same base
# so the virtual environment's interpreter is the same file in both. See docker/README.md.
ARG CUDA_BASE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---- build stage: a virtual environment with torch (CUDA wheel index) and wsi-atm ----------
FROM ${CUDA_BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12=3.12.* python3.12-venv=3.12.* \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY wsi_atm ./wsi_atm
# A regular (non-editable) install: the model cards and bundled weights live in site-packages.
# Check the installed package (not /src: -P keeps the working folder off sys.path).
RUN pip install --no-cache-dir . \
 && python -P -c "import wsi_atm.batch, wsi_atm.cli; from wsi_atm.models.registry import list_cards; \
assert list_cards(), 'no bundled model cards'"

# ---- final stage: Python, the venv and nothing else; a non-root user -------------------------
FROM ${CUDA_BASE}
LABEL org.opencontainers.image.title="wsi-atm" \
      org.opencontainers.image.description="Atypical vs normal mitosis classification for whole-slide images" \
      org.opencontainers.image.licenses="MIT"
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12=3.12.* ca-certificates=2* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --user-group wsi \
 && mkdir -p /data /out /cache \
 && chown wsi:wsi /out \
 && chmod 1777 /cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# /data: slides and detection files (mount read-only); /out: results (writable by the user:
# uid 10001, or run with --user "$(id -u):$(id -g)"); /cache: model and hub caches (optional).
VOLUME ["/data", "/out", "/cache"]
WORKDIR /out
# A batch command runs to completion and exits: there is no long-running service to probe.
HEALTHCHECK NONE
ENTRYPOINT ["wsi-atm"]
CMD ["--help"]
