# `make demo` and `make test` set up .venv on first use (CPU torch 2.13.0 pinned for dev/CI).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2   # two workers (pytest-xdist): CI has 2 cores

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

clean:
	rm -rf $(VENV) demo-out .pytest_cache

bench: $(STAMP)
	$(BIN)/python benchmarks/large.py
