# The first two commands on a fresh machine: `make demo` and `make test` (each installs what it needs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
MLFLOW_PORT ?= 5000
export PYTHONHASHSEED := 0

.PHONY: install demo test lint report mlflow-ui docker-check clean

install: $(STAMP)

# Reinstalls only when the dependency list or the setup script changes.
$(STAMP): pyproject.toml scripts/install.sh scripts/setup_assets.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	scripts/install.sh $(PY) --editable
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py --out $(DEMO_DIR)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

report: install
	$(PY) scripts/make_report.py --runs $(DEMO_DIR) --out report $(REPORT_ARGS)

# Builds the image and runs train.sh / infer.sh in it as the organizers do (needs root or a running Docker daemon).
docker-check: install
	$(PY) -m scripts.docker_check $(DOCKER_CHECK_ARGS)

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(DEMO_DIR)/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

clean:
	rm -rf runs .pytest_cache
