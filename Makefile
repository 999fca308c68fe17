# Tessera: `make run` and `make test` work on a fresh clone with only Python 3.11+ installed.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The first Python 3.11+ on PATH.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: run test typecheck bench install lock clean

# Every dependency from the lock (requirements/dev.txt: the extras server, embedded and test, pinned
# with their hashes), then the project itself without dependencies; `pip check` fails the install
# when pyproject.toml asks for something the lock lacks (then run `make lock`).
$(STAMP): pyproject.toml requirements/dev.txt
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; echo "make: requirements/dev.txt does not match pyproject.toml: run make lock" >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

# The lock files, from pyproject.toml (its lower bounds stay there) and requirements/*.in:
#   requirements/image.txt      the token server's image: the extra `server` (no pgserver)
#   requirements/verifier.txt   the resource server's image: the base install
#   requirements/dev.txt        `make install` and CI: the extras server, embedded and test
# Versions already pinned are kept where they still fit; `make lock UPGRADE=--upgrade` takes the
# newest of everything. uv comes from the dev lock itself, hash-checked, without the rest.
LOCK = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(UPGRADE)
lock:
	@test -n "$(PYTHON)" || { echo "make: Python 3.11 or newer is required" >&2; exit 1; }
	@test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	  awk '/^uv==/ {keep = 1; print; next} keep && /^ / {print; next} {keep = 0}' requirements/dev.txt > $(VENV)/uv-lock.txt; \
	  $(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(VENV)/uv-lock.txt; }
	$(LOCK) pyproject.toml requirements/build.in --extra server -o requirements/image.txt
	$(LOCK) pyproject.toml requirements/build.in -o requirements/verifier.txt
	$(LOCK) pyproject.toml requirements/dev.in --extra server --extra embedded --extra test -o requirements/dev.txt

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
