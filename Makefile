# The README's two commands are `make demo` and `make test`; each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: a bare `torch` requirement pulls several GB of CUDA wheels
# on a machine without a local CPU wheel. Override with e.g. TORCH_SPEC="torch>=2.6".
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup browser demo test lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/herd demo

# The chat page's browser test drives Debian's chromium: installed here when missing and run as root.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: chromium is missing; install it (apt-get install chromium) for tests/test_serve_page.py"

test: setup browser
	$(BIN)/ruff check herd tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check herd tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
