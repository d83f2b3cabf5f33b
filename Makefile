# The two commands the README opens with: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
POLICY ?= policies/default.toml
STAMP := $(VENV)/.installed
# Root can make a PID namespace directly; anyone else needs a user namespace for it.
PIDNS := unshare --pid --fork --kill-child --mount-proc
ifneq ($(shell id -u),0)
PIDNS := unshare --user --map-root-user --pid --fork --kill-child --mount-proc
endif

.PHONY: install run test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/codesherpa serve --host 127.0.0.1 --port 8000 --policy $(POLICY)

# Attack tests end with kill(-1) if the sandbox ever regresses, so the whole suite
# runs as init of its own PID namespace: nothing outside it can be signalled.
test: install
	$(PIDNS) $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
