# Quick start: `make demo` and `make test` each set up .venv when needed.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: venv lint test test-all demo gpu-check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The import layering (pyproject.toml, [tool.importlinter]): arrows point down, no circles.
lint: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

demo: $(STAMP)
	$(BIN)/closure pipeline configs/quickstart.yaml -o runs/quickstart
	@echo "report: runs/quickstart/report/report.md"

# On a machine with a CUDA GPU: the CUDA tests and the GPU benchmark tables.
# `make gpu-check GPU_PY=python3` runs them with another interpreter (one whose torch
# has CUDA, the project's dependencies importable) instead of creating .venv.
GPU_PY ?= $(BIN)/python
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PY)),$(STAMP))
	$(GPU_PY) -m pytest -q -m "cuda" -p no:cacheprovider
	$(GPU_PY) benchmarks/solver_speed.py --device cuda
	$(GPU_PY) benchmarks/les_speed.py --device cuda --batches 2 16
	$(GPU_PY) benchmarks/taylor_green.py --device cuda --n 128 --out runs/tgv

bench: $(STAMP)
	$(BIN)/python benchmarks/solver_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
