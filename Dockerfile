# wsi-atm: CUDA-capable image (torch's PyPI wheels bundle the CUDA runtime; the host needs the
# NVIDIA driver and container toolkit: `docker run --gpus all ...`). See docker/README.md.
#
#   docker build -t wsi-atm:latest .
#   docker run --rm --gpus all --shm-size 8g -v /slides:/data:ro -v /results:/out \
#       wsi-atm:latest batch /data --out-dir /out

# ---- build stage: a virtual environment with wsi-atm and its dependencies --------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wsi_atm ./wsi_atm
COPY models ./models
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" \
 && pip install --no-cache-dir .

# ---- final stage: the venv only, no compilers or build files, a non-root user -----------------
FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="wsi-atm" \
      org.opencontainers.image.description="Atypical vs normal mitosis classification for whole-slide images"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 1000 wsi \
 && mkdir -p /data /out /cache \
 && chown wsi:wsi /out /cache
USER 1000:1000
# /data: slides and detections (mount read-only); /out: results; /cache: hub cache (optional).
VOLUME ["/data", "/out", "/cache"]
WORKDIR /out
# A batch command runs to completion and exits: there is no service to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["wsi-atm"]
CMD ["--help"]
