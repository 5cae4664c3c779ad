# llm1bit: every result of the project is regenerated from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LLM1BIT := $(BIN)/llm1bit

.PHONY: install test test-fast demo lint topologies bench-sweep clean

install: $(STAMP)

# torch==2.13.0 (pinned in pyproject) is the CPU wheel; see README.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[quant,dev]'
	touch $(STAMP)

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m 'not slow'

demo: install
	$(LLM1BIT) simulate --model opt-6.7b --hw cloud

lint: install
	$(BIN)/ruff check llm1bit tests scripts
	$(BIN)/ruff format --check llm1bit tests scripts

# SCALE-Sim topology CSVs of the built-in models (decode step, l = 2048).
topologies: install
	$(BIN)/python scripts/make_topologies.py --out topologies

bench-sweep: install
	$(BIN)/python scripts/bench_sweep.py

clean:
	rm -rf figures results .pytest_cache

# Figures of the study (llm1bit/figures/): figures/figNN-*.png, .pdf and the .csv of the plotted numbers.
# BACKEND=analytic (default, seconds) or BACKEND=scalesim (the real simulator, cached under ~/.cache/llm1bit).
BACKEND ?= analytic
FIGURE_NAMES := fig04 fig05 fig06 fig07 fig08 fig09 fig10 fig11 fig12 fig13
.PHONY: figures $(FIGURE_NAMES)

figures: install
	$(LLM1BIT) figures --backend $(BACKEND) --out figures

$(FIGURE_NAMES): install
	$(LLM1BIT) figures --only $@ --backend $(BACKEND) --out figures
