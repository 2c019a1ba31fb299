# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch==2.13.0 is the CPU wheel on this machine's disk; a looser pin pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: run test test-fast bench clean venv lint

venv: $(STAMP)

# --no-compile: pip byte-compiles every installed module (~20,000 files, 45 of 75 s of this build on a
# 2-core machine); Python compiles the few hundred a run imports on first use and caches them.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile $(TORCH)
	$(PY) -m pip install -q --no-compile -e ".[all,nncf,litert,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/quantbench run

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not realdata"

bench: $(STAMP)
	$(PY) benchmarks/engines.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build dist .pytest_cache src/*.egg-info
