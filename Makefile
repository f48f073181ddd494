# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make sweep   - the default sweep end to end (train, checkpoint, fit, plot) on CPU
#   make test    - the README's own commands on a small sweep, then the whole test suite
#   make tokens  - GPT-2-tokenized Shakespeare for experiments/configs/lm_bpe.py (run by make
#                  setup, and by make sweep for that config)
# All run from the repository root with relative paths, exactly as README.md shows them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jscale-installed
CONFIG ?= experiments/configs/lm_default.py
WORKDIR ?= workdir/lm_default
# The user's path as CI runs it: a small sweep into a relative, fresh workdir.
SMOKE_CONFIG := experiments/configs/smoke.py
SMOKE_WORKDIR := workdir/ci-smoke
# The BPE path: tokenize, then a small sweep and its evaluation on the token folder.
TOKENS_DIR := workdir/tokens/shakespeare-gpt2
BPE_SMOKE_CONFIG := experiments/configs/lm_bpe.py:smoke
BPE_SMOKE_WORKDIR := workdir/ci-smoke-bpe

.PHONY: setup tokens sweep evaluate fit test test-fast lint user-path bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m experiments.fetch_data shakespeare mnist digits gpt2
	touch $(STAMP)

setup: $(STAMP) tokens

# Tokenizing again with the same input and options does nothing.
tokens: $(STAMP)
	$(PY) -m experiments.tokenize --input=corpus:shakespeare --tokenizer=gpt2 \
	    --validation_fraction=0.1 --out=$(TOKENS_DIR)

sweep: $(STAMP) $(if $(findstring lm_bpe,$(CONFIG)),tokens)
	$(PY) -m experiments.sweep --config=$(CONFIG) --workdir=$(WORKDIR)

evaluate: $(STAMP)
	$(PY) -m experiments.evaluate --workdir=$(WORKDIR)

fit: $(STAMP)
	$(PY) -m experiments.fit --workdir=$(WORKDIR)

# Tests run in TEST_WORKERS processes (pytest-xdist), one per core of the 2-core CI box.
TEST_WORKERS ?= 2

# A missing shared data set or fetched corpus fails the tests instead of skipping them.
test: $(STAMP)
	$(PY) -m ruff check .
	$(MAKE) user-path
	JSCALE_REQUIRE_SHARED_DATA=1 $(PY) -m pytest -q -n $(TEST_WORKERS) -m 'slow or not slow'

lint: $(STAMP)
	$(PY) -m ruff check .

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

user-path: $(STAMP)
	rm -rf $(SMOKE_WORKDIR)
	$(MAKE) sweep CONFIG=$(SMOKE_CONFIG) WORKDIR=$(SMOKE_WORKDIR)
	$(MAKE) evaluate WORKDIR=$(SMOKE_WORKDIR)
	$(MAKE) fit WORKDIR=$(SMOKE_WORKDIR)
	test $$(tail -n +2 $(SMOKE_WORKDIR)/results.csv | wc -l) -eq 3
	test -s $(SMOKE_WORKDIR)/fit.json
	ls $(SMOKE_WORKDIR)/plots/*.png
	rm -rf $(SMOKE_WORKDIR)
	rm -rf $(BPE_SMOKE_WORKDIR)
	$(MAKE) sweep CONFIG=$(BPE_SMOKE_CONFIG) WORKDIR=$(BPE_SMOKE_WORKDIR)
	$(MAKE) evaluate WORKDIR=$(BPE_SMOKE_WORKDIR)
	test $$(tail -n +2 $(BPE_SMOKE_WORKDIR)/results.csv | wc -l) -eq 3
	ls $(BPE_SMOKE_WORKDIR)/runs/*/eval.json
	rm -rf $(BPE_SMOKE_WORKDIR)

bench: $(STAMP)
	$(PY) benchmarks/fit_speed.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_throughput.py

clean:
	rm -rf $(VENV) workdir
