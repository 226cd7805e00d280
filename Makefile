# The user's vocabulary: `make demo` (the main job) and `make test` (the suite).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test test-all app bench docs docs-serve lint clean

# The install: a venv; a CPU torch first, so that torch>=2.3 is already satisfied (a bare `torch` pulls a
# several-GB CUDA build); the project with its extras; and Debian's chromium for the explorer's browser test
# (Playwright's own browser download does not work offline), only when it is missing and apt-get is there,
# as root or through password-less sudo.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV)"; $(PY) -m venv $(VENV); }
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "installing torch==2.13.0 (CPU)"; \
	  $(BIN)/python -m pip install -qq torch==2.13.0; }
	@echo "installing vstar_toy and its extras into $(VENV)"
	@$(BIN)/python -m pip install -qq -e ".[dev,app,notebooks,qwen,text,docs,trl]"
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  apt="apt-get"; [ "$$(id -u)" = 0 ] || apt="sudo -n apt-get"; \
	  echo "installing Debian's chromium for tests/test_browser.py: $$apt install -y chromium"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$apt install -y -q chromium >/dev/null 2>&1 \
	    || { $$apt update -q >/dev/null 2>&1 && $$apt install -y -q chromium >/dev/null 2>&1; } \
	    || echo "note: could not install chromium; tests/test_browser.py will skip"; \
	fi
	@touch $(STAMP)
	@echo "installed: make demo, make test, make app"

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vstar-toy demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

test-all: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m ""

# the explorer, on the demo's preset (it reuses the models `make demo` trained); VSTAR_TOY_APP_PRESET=tiny for the small one
app: $(STAMP)
	VSTAR_TOY_APP_PRESET=$${VSTAR_TOY_APP_PRESET:-high_mismatch} $(BIN)/streamlit run apps/explorer.py \
	  --server.address 127.0.0.1 --browser.gatherUsageStats false

bench: $(STAMP)
	$(BIN)/python benchmarks/decoders.py
	$(BIN)/python benchmarks/training.py
	$(BIN)/python benchmarks/steps.py
	$(BIN)/python benchmarks/profile_loop.py

# the documentation site in site/ (strict; the tutorials executed on the cpu_demo preset, renders cached in
# .cache/mkdocs-jupyter); VSTAR_TOY_DOCS_EXECUTE=false builds without running them. Serve: make docs-serve
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs site .pytest_cache
