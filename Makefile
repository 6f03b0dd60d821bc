# Two entry points: `make demo` (the embedded tiny self-evolution loop) and `make test`.
# Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: demo test test-all install clean

$(VENV)/.base-installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.base-installed setup.py
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.base-installed

demo: $(VENV)/.base-installed
	$(PY) -m rstar_jax.launch --config=demo --workdir=$(WORKDIR)

test: $(VENV)/.test-installed
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(VENV)/.test-installed
	$(PY) -m pytest -q tests

clean:
	rm -rf runs .pytest_cache
