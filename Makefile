# The README's two commands: `make demo` and `make test`. Both set up a virtual
# environment (.venv) on first use and install the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := $(shell find domain storage projections ckpt -name '*.py') pyproject.toml

.PHONY: demo test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A strict editable install: mypy and the tests see the `ckpt` namespace exactly
# as a wheel would lay it out; it is redone when a source file is added.
$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ckpt-demo

lint: $(VENV)/.installed
	$(BIN)/ruff format --check domain storage projections ckpt tests
	$(BIN)/ruff check domain storage projections ckpt tests
	# mypy runs outside the repo root so that `ckpt` resolves to the installed
	# namespace (with ckpt.domain, ...), not to the bare ckpt/ folder.
	cd $(VENV) && bin/mypy --config-file ../pyproject.toml -p ckpt

# The backend suites need PostgreSQL and S3: tests/servers.py starts throwaway
# ones on loopback (unless CKPT_TEST_POSTGRES_URL / CKPT_TEST_S3_URL name
# running ones), and those suites skip, saying why, when a server cannot start.
test: lint
	$(BIN)/python tests/servers.py run -- $(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info
