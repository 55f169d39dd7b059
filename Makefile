# The two commands of the README. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := -c constraints.txt
PRESET ?= digits

.PHONY: run test install install-test clean bench gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet $(CONSTRAINTS) -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed contrib/phasetrain-lion/pyproject.toml contrib/phasetrain-mlflow/pyproject.toml
	$(PIP) install --quiet $(CONSTRAINTS) -e ".[test,sweep]" -e contrib/phasetrain-lion -e contrib/phasetrain-mlflow
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/phasetrain run $(PRESET)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q tests contrib/phasetrain-lion/tests contrib/phasetrain-mlflow/tests

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/overhead.py

# Every GPU path on one NVIDIA GPU (meant to take under 10 minutes); exits 1 if one is broken or there is no GPU.
gpu-check: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache .hypothesis
