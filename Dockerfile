# GPU image: CUDA base, the project's `gpu` extra (vllm==0.32.*), non-root, `vreason serve`.
# Build: docker build -t vreason .
# Run:   docker run --rm --gpus all --shm-size=1g -p 8000:8000 -v vreason-cache:/cache \
#          -v /srv/models:/models:ro vreason --model /models/Qwen2.5-VL-7B-Instruct
# --shm-size=1g (or --ipc=host): vLLM's shared-memory buffers need more than the 64 MiB /dev/shm that
# container engines give by default. Never built here (no CUDA base can be made on CI's machines);
# docker/Dockerfile.cpu is the image CI builds and runs.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# libnuma1: vLLM's CPU build links libnuma.so.1; unchecked for the CUDA wheel (this image is never
# built here), and it is tiny.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv make curl libnuma1 \
    && rm -rf /var/lib/apt/lists/*
# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000; the server's user takes that uid.
# /cache exists and belongs to that user before VOLUME, so volumes start out writable.
RUN (userdel --remove ubuntu 2>/dev/null || true) && useradd --create-home --uid 1000 vreason \
    && mkdir /cache && chown vreason:vreason /cache
WORKDIR /app
COPY --chown=vreason pyproject.toml Makefile README.md ./
COPY --chown=vreason requirements requirements
COPY --chown=vreason server server
COPY --chown=vreason kernels kernels
COPY --chown=vreason clients clients
USER vreason
# The same install target CI uses, with the GPU extra; no pip cache in the layer.
RUN PIP_NO_CACHE_DIR=1 make setup GPU=1
ENV PATH=/app/.venv/bin:$PATH VREASON_CACHE=/cache VREASON_HOST=0.0.0.0 VLLM_USE_V2_MODEL_RUNNER=0
VOLUME /cache
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
    CMD curl -fsS "http://127.0.0.1:${VREASON_PORT:-8000}/health" || exit 1
ENTRYPOINT ["vreason", "serve"]
