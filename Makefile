# Two commands on a fresh machine (Python >= 3.11, no conda):
#   make run    simulate the demo and run the whole workflow, then write the report
#   make test   run the test suite
# Both create .venv with the pinned requirements on first use.

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
PYTEST_ARGS ?=

.PHONY: run test lint report bench clean

$(BIN)/.installed: requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/snakemake --report results/report.html
	@echo "Results: results/   Report: results/report.html   Scores: results/demo_scores.json"

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# quality gates: ruff (style, imports, docstrings), snakefmt, snakemake's linter, mypy on the typed modules
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint
	$(BIN)/mypy

report: $(BIN)/.installed
	$(BIN)/snakemake --report results/report.html

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_fourier.py --out benchmarks/results/fourier.json

clean:
	rm -rf results .snakemake/numba_cache
