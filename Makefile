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
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m "cuda" -p no:cacheprovider
	$(BIN)/python benchmarks/solver_speed.py --device cuda

bench: $(STAMP)
	$(BIN)/python benchmarks/solver_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
