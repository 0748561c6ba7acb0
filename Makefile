# Set-up and checks. `make test` creates .venv (pip + venv) if it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Extra pip options for torch, installed first and exactly: where pip would take PyPI's
# multi-GB CUDA build, TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# takes the CPU build.
TORCH_PIP_ARGS ?=

.PHONY: install test lint format bench clean data-samples smoke reproduce docs

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install --quiet -c constraints.txt -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check regattn tasks tests scripts
	$(VENV)/bin/ruff format --check regattn tasks tests scripts

format: $(STAMP)
	$(VENV)/bin/ruff format regattn tasks tests scripts
	$(VENV)/bin/ruff check --fix regattn tasks tests scripts

# The bundled samples (data/samples) as fairseq binaries, for the smoke and quick profiles.
SAMPLES := data-bin/samples
data-samples: $(STAMP)
	$(PY) scripts/prepare_data.py --task snli --raw data/samples --dest $(SAMPLES)/snli
	$(PY) scripts/prepare_data.py --task nmt --src fr --tgt en --raw data/samples --dest $(SAMPLES)/nmt_fr-en
	$(PY) scripts/prepare_data.py --task summarization --raw data/samples --dest $(SAMPLES)/summarization

# Every mapping on every task (experiment quick_all), then the table and the figures.
smoke reproduce: PROFILE = $(if $(filter smoke,$@),smoke,quick)
smoke reproduce: data-samples
	$(PY) scripts/train.py -m +experiment=quick_all profile=$(PROFILE)
	$(PY) scripts/make_tables.py results/$(PROFILE)
	$(PY) scripts/plot_attention.py results/$(PROFILE)

# The HTML API reference of the package regattn (its public names, from the
# docstrings) in build/docs, by pdoc. pdoc prints nothing when all is well and reports
# problems (a docstring or annotation it cannot handle, an import that fails) as
# warnings without failing, so any output fails the build. tests/test_docs.py builds
# the same pages with the same arguments.
DOCS_STAMP := $(VENV)/.installed-docs
PDOC_OPTIONS := --docformat restructuredtext
PDOC_MODULES := regattn

$(DOCS_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	rm -rf build/docs
	mkdir -p build
	$(PY) -m pdoc $(PDOC_OPTIONS) -o build/docs $(PDOC_MODULES) > build/pdoc.log 2>&1 \
		|| { cat build/pdoc.log; echo "make docs: pdoc failed"; exit 1; }
	@if [ -s build/pdoc.log ]; then \
		cat build/pdoc.log; echo "make docs: pdoc printed the warnings above"; exit 1; fi
	@echo "API reference: build/docs/index.html"

bench: $(STAMP)
	$(PY) scripts/bench_ops.py --threads 1
	$(PY) scripts/bench_ops.py --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
