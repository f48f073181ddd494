# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make sweep   - the default sweep end to end (train, checkpoint, fit, plot) on CPU
#   make test    - the whole test suite (unit and slow end-to-end tests)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jscale-installed
WORKDIR ?= workdir/lm_default

.PHONY: setup sweep test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m jscale.data.fetch shakespeare mnist digits
	touch $(STAMP)

setup: $(STAMP)

sweep: $(STAMP)
	$(PY) -m experiments.sweep --config=experiments/configs/lm_default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -m 'slow or not slow'

test-fast: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/fit_speed.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) workdir
