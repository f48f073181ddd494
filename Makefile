# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make sweep   - the default sweep end to end (train, checkpoint, fit, plot) on CPU
#   make test    - the README's own commands on a small sweep, then the whole test suite
# Both run from the repository root with relative paths, exactly as README.md shows them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jscale-installed
CONFIG ?= experiments/configs/lm_default.py
WORKDIR ?= workdir/lm_default
# The user's path as CI runs it: a small sweep into a relative, fresh workdir.
SMOKE_CONFIG := experiments/configs/smoke.py
SMOKE_WORKDIR := workdir/ci-smoke

.PHONY: setup sweep evaluate fit test test-fast lint user-path bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m experiments.fetch_data shakespeare mnist digits
	touch $(STAMP)

setup: $(STAMP)

sweep: $(STAMP)
	$(PY) -m experiments.sweep --config=$(CONFIG) --workdir=$(WORKDIR)

evaluate: $(STAMP)
	$(PY) -m experiments.evaluate --workdir=$(WORKDIR)

fit: $(STAMP)
	$(PY) -m experiments.fit --workdir=$(WORKDIR)

# A missing shared data set or fetched corpus fails the tests instead of skipping them.
test: $(STAMP)
	$(PY) -m ruff check .
	$(MAKE) user-path
	JSCALE_REQUIRE_SHARED_DATA=1 $(PY) -m pytest -q -m 'slow or not slow'

lint: $(STAMP)
	$(PY) -m ruff check .

test-fast: $(STAMP)
	$(PY) -m pytest -q

user-path: $(STAMP)
	rm -rf $(SMOKE_WORKDIR)
	$(MAKE) sweep CONFIG=$(SMOKE_CONFIG) WORKDIR=$(SMOKE_WORKDIR)
	$(MAKE) evaluate WORKDIR=$(SMOKE_WORKDIR)
	$(MAKE) fit WORKDIR=$(SMOKE_WORKDIR)
	test $$(tail -n +2 $(SMOKE_WORKDIR)/results.csv | wc -l) -eq 3
	test -s $(SMOKE_WORKDIR)/fit.json
	ls $(SMOKE_WORKDIR)/plots/*.png
	rm -rf $(SMOKE_WORKDIR)

bench: $(STAMP)
	$(PY) benchmarks/fit_speed.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) workdir
