# The README's commands. Each target creates .venv and installs from this repository's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,onnx,stac,serve]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/slidewatch demo

# The import-linter contracts of pyproject.toml, then the whole suite with its slowest tests.
test: $(STAMP)
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m pytest --durations=15

bench: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
