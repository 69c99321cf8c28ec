# Two entry points: `make demo` and `make test`. Both bootstrap .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint clean-run

venv: $(STAMP)

# Reinstall only when the project's requirements change; a second run takes seconds.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: venv
	$(BIN)/steel demo

test: venv
	bash scripts/test.sh

test-unit: venv
	$(BIN)/pytest -m "not integration and not faults" -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-run:
	-$(BIN)/steel down
	rm -rf .steel-run
