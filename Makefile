# Two entry points: `make demo` and `make test`. Both bootstrap .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv constraints demo test test-unit lint clean-run

venv: $(STAMP)

# Reinstall only when the project's requirements or their pins change; a second run takes seconds.
# constraints.txt pins every package, the same pins the images install (deploy/Dockerfile*).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
		|| $(BIN)/pip install --quiet -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# Re-pin constraints.txt to what .venv holds (after a change of pyproject.toml's requirements):
# its comment header is kept; the project itself and pip are left out; +cpu-style local labels are
# dropped so the pins match PyPI's wheels as well as the CPU index's torch.
constraints: venv
	{ grep '^#' constraints.txt; $(BIN)/pip list --format=freeze --exclude-editable 2>/dev/null \
		| grep -v '^pip==' | sed -E 's/\+[A-Za-z0-9.]+$$//' | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

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
