# One-command entry points (see README). Everything installs into ./.venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch is installed first, pinned, so that the resolver never picks another build. Which build
# comes is the package index's choice: this machine's pip configuration serves the CPU one; on
# Linux, PyPI serves the CUDA one (several GB). A CPU-only machine elsewhere can ask for the CPU
# build: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mskdex demo --out demo_run

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 Testing

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" Testing

clean:
	rm -rf $(VENV) demo_run
