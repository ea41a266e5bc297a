# GPU image: CUDA base, the project's `gpu` extra (vllm==0.32.*), non-root, `vreason serve`.
# Build: docker build -t vreason .   Run: docker run --gpus all -p 8000:8000 -v ~/.cache:/cache vreason --model /cache/Qwen2.5-VL-7B-Instruct
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv make curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 vreason
WORKDIR /app
COPY --chown=vreason pyproject.toml Makefile README.md ./
COPY --chown=vreason requirements requirements
COPY --chown=vreason server server
COPY --chown=vreason kernels kernels
COPY --chown=vreason clients clients
USER vreason
# The same install target CI uses, with the GPU extra.
RUN make setup GPU=1
ENV PATH=/app/.venv/bin:$PATH VREASON_CACHE=/cache VREASON_HOST=0.0.0.0 VLLM_USE_V2_MODEL_RUNNER=0
VOLUME /cache
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["vreason", "serve"]
