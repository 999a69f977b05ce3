# The two commands a new user needs: `make demo` and `make test`. Each installs first when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ppar-installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[test,plots,lint,export,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ppar demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check ppar_core ppar_cli tests bench
	$(BIN)/ruff format --check ppar_core ppar_cli tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
