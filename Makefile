# The first two commands on a fresh machine: `make demo` and `make test` (each installs what it needs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
MLFLOW_PORT ?= 5000
export PYTHONHASHSEED := 0

.PHONY: install demo test test-slow lint report mlflow-ui docker-check clean

install: $(STAMP)

# Reinstalls only when the dependency list or the setup script changes.
$(STAMP): pyproject.toml scripts/install.sh scripts/setup_assets.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/install.sh $(PY) --editable
	touch $(STAMP)

demo: install
	$(PY) -m scripts.demo --out $(DEMO_DIR)

# The tests marked slow (multi-process DeepSpeed, torch.compile, the GPU check's dry run, train.sh outside Docker,
# the report) run in CI through test-slow; `make test` leaves them out to stay near 10 minutes on 2 cores.
test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

report: install
	$(PY) -m evaluation.report --runs $(DEMO_DIR) --out report $(REPORT_ARGS)

# Builds the image and runs train.sh / infer.sh in it as the organizers do (needs root or a running Docker daemon).
docker-check: install
	$(PY) -m scripts.docker_check $(DOCKER_CHECK_ARGS)

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DEMO_DIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# The prepared GPU check (README "Distributed training and the GPU check"); no network: the packages the GPU machine lacks come from .whl/.
GPU_PY ?= $(shell test -x $(PY) && echo $(PY) || echo python3)
GPU_WHEELS ?= .whl
GPU_SITE ?= /tmp/avdeepfake-site
.PHONY: gpu-check
gpu-check:
	@site=""; imports="import deepspeed, webdataset, thop, av"; \
	if ! $(GPU_PY) -c "$$imports" 2>/dev/null; then \
	  site=$(GPU_SITE); \
	  PYTHONPATH=$$site $(GPU_PY) -c "$$imports" 2>/dev/null || \
	    $(GPU_PY) -m pip install -q --no-index --no-deps --target $$site $(GPU_WHEELS)/*.whl || exit 1; \
	fi; \
	PYTHONPATH=$(CURDIR)$${site:+:$$site} $(GPU_PY) -m scripts.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs .pytest_cache
