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

.PHONY: install run test lint bench clean lock audit

install: $(STAMP)

# Every dependency from the lock file, each checked against its hashes; then the project
# itself, which brings nothing the lock did not.
$(STAMP): pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# After a change to the dependencies in pyproject.toml: pin them again, with hashes.
COMPILE := $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links
lock: install
	$(COMPILE) --extra dev -o requirements/dev.lock pyproject.toml
	$(COMPILE) -o requirements/runtime.lock pyproject.toml
	# The image's lock: the runtime's pins (kept, as the starting file) and the toolbox.
	cp requirements/runtime.lock requirements/toolbox.lock
	$(COMPILE) --extra toolbox -o requirements/toolbox.lock pyproject.toml

run: install
	$(BIN)/codesherpa serve --host 127.0.0.1 --port 8000 --policy $(POLICY)

# Attack tests end with kill(-1) if the sandbox ever regresses, so the whole suite
# runs as init of its own PID namespace: nothing outside it can be signalled.
test: install
	$(PIDNS) $(BIN)/python -m pytest -q

# CodeSherpa beside an empty FastAPI endpoint and a Jupyter kernel, in one run; prints
# the table of targets and writes bench/results/ (latest.json, scaling.png, profiles).
# Needs root, like the service.  BENCH_ARGS=--quick for a short run that checks it works.
BENCH_ARGS ?= --profile 10
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(PIDNS) $(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/deptry .

# Known vulnerabilities in the pinned runtime dependencies, from PyPI's advisory data.
# Needs that data: a machine whose package index is a mirror without it cannot audit
# (pip-audit then says each package was "not found on PyPI"), so CI does not run it.
audit: install
	$(BIN)/pip install --quiet -e '.[audit]'
	$(BIN)/pip-audit --strict --disable-pip --no-deps -r requirements/runtime.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
