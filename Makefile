# The user's vocabulary: `make demo` (the main job) and `make test` (the suite).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-all app bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A CPU torch first, so that torch>=2.3 is already satisfied (a bare `torch` pulls a CUDA build).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,app,notebooks,qwen]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vstar-toy demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m ""

app: $(STAMP)
	$(BIN)/streamlit run apps/explorer.py --server.address 127.0.0.1 --browser.gatherUsageStats false

bench: $(STAMP)
	$(BIN)/python benchmarks/decoders.py
	$(BIN)/python benchmarks/training.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
