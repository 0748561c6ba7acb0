# Set-up and checks. `make test` creates .venv (pip + venv) if it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check regattn tests scripts
	$(VENV)/bin/ruff format --check regattn tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format regattn tests scripts
	$(VENV)/bin/ruff check --fix regattn tests scripts

bench: $(STAMP)
	$(PY) scripts/bench_ops.py --threads 1
	$(PY) scripts/bench_ops.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
