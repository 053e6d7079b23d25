# make demo: set up .venv, then run the demo on generated data.  make test: set up, lint (ruff and the import
# contracts of pyproject.toml), run the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alexnet demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks hubconf.py
	$(BIN)/lint-imports

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --timeout 600

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
