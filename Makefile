# Tessera: `make run` and `make test` work on a fresh clone with only Python 3.11+ installed.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The first Python 3.11+ on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test typecheck bench install clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,embedded,test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/tessera serve

# mypy cannot follow the editable install's import hook, so it reads the two folders through a
# tree of links named as they are installed (tessera.server, tessera.keys).
TYPECHECK := $(VENV)/typecheck
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK)/tessera
	@ln -sfn $(CURDIR)/server $(TYPECHECK)/tessera/server
	@ln -sfn $(CURDIR)/keys $(TYPECHECK)/tessera/keys
	cd $(TYPECHECK) && $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml -p tessera.server -p tessera.keys

test: typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
