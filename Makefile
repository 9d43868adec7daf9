# Set-up and entry points. Everything runs inside a virtual environment that the first
# target creates; override TORCH for a CUDA build, e.g.
#   make test TORCH='torch==2.11.0 --index-url https://download.pytorch.org/whl/cu130'
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
DEMO_DIR ?= demo-data
STAMP := $(VENV)/.installed

.PHONY: install demo test test-dgl bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[dev,pyg]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python tools/demo.py --dir $(DEMO_DIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# DGL 2.1 needs torch 2.2 and numpy<2, so its tests run in their own environment;
# tools/dgl_env.sh builds it once and reuses it while its requirements are unchanged.
DGL_VENV ?= .venv-dgl
test-dgl:
	VENV=$(DGL_VENV) PYTHON=$(PYTHON) bash tools/dgl_env.sh
	$(DGL_VENV)/bin/python -m pytest -q tests/dgl_backend

# The side-by-side loader benchmark (about 10 minutes; bench/README.md explains it).
bench: $(STAMP)
	$(VENV)/bin/python bench/gnn_loaders.py --json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
