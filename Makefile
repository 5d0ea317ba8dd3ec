# One-command entry points (see README). Everything installs into ./.venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first, pinned, so the dependency resolver never fetches CUDA wheels
	$(BIN)/pip install --quiet torch==2.13.0
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
