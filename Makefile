# Two commands on a fresh machine:  make demo  (install + run the main job)  ·  make test  (install + tests)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: demo test install install-dev node postgres odbc chromium aml-v1 lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Azure ML SDK v1 pins numpy/pyarrow/azure-identity below ours: it gets its own venv (docs/AZURE.md)
V1VENV := .venv-aml-v1
$(V1VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(V1VENV) && $(V1VENV)/bin/python -m pip install -q --upgrade pip
	$(V1VENV)/bin/pip install -q -e ".[aml-v1]"
	touch $@

aml-v1: $(V1VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

node_modules/.bin/azurite-blob: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node: node_modules/.bin/azurite-blob

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; echo "PostgreSQL did not start"; exit 1

# pyodbc (the mssql extra) links libodbc.so.2 (unixODBC); the engine tests build mssql+pyodbc engines
odbc:
	@ldconfig -p | grep -q 'libodbc\.so\.2 ' || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends libodbc2; }

chromium:
	@test -x /usr/bin/chromium || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

demo: install
	$(BIN)/fleetscore demo $(DEMO_ARGS)

test: install-dev odbc node postgres chromium aml-v1
	FLEETSCORE_REQUIRE_AML_V1=1 $(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev postgres
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/scoring.py --models 10000 --windows 12
	$(BIN)/python benchmarks/run.py --models 10000 --windows 12

clean:
	rm -rf .fleetscore .pytest_cache .ruff_cache .hypothesis .venv-aml-v1
