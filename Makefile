# Two entry points: `make demo` and `make test`; both go through `make setup`, which (re)builds
# .venv/ only when pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.widenet-setup

.PHONY: setup demo test lint bench clean docs

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/widenet demo --out runs/demo

# ruff first so that pytest's summary is the last line CI prints. One pytest worker per core
# (pytest-xdist); a test file's tests stay on one worker so module fixtures run once.
test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m pytest -q -n auto --dist loadfile

# The documentation site (MkDocs + Material + mkdocstrings), built offline into site/.
DOCS_STAMP := $(VENV)/.widenet-docs

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	@echo "Docs: $(CURDIR)/site/index.html"

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
