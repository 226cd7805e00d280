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
	# Debian's chromium for the explorer's browser test (Playwright's own browser download does not work
	# offline); only when it is missing and apt-get is there, as root or through password-less sudo.
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  apt="apt-get"; [ "$$(id -u)" = 0 ] || apt="sudo -n apt-get"; \
	  echo "installing Debian's chromium for tests/test_browser.py: $$apt install -y chromium"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$apt install -y -q chromium >/dev/null 2>&1 \
	    || { $$apt update -q >/dev/null 2>&1 && $$apt install -y -q chromium >/dev/null 2>&1; } \
	    || echo "note: could not install chromium; tests/test_browser.py will skip"; \
	fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vstar-toy demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

test-all: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m ""

app: $(STAMP)
	# the explorer on the cpu_demo preset; `VSTAR_TOY_APP_PRESET=tiny make app` for the small one
	VSTAR_TOY_APP_PRESET=$${VSTAR_TOY_APP_PRESET:-cpu_demo} $(BIN)/streamlit run apps/explorer.py \
	  --server.address 127.0.0.1 --browser.gatherUsageStats false

bench: $(STAMP)
	$(BIN)/python benchmarks/decoders.py
	$(BIN)/python benchmarks/training.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
