#!/usr/bin/env bash
# The real offline generation runs of issues 5 and 18 (SmolLM2-135M-Instruct + LoRA on GSM8K and DialogSum, CPU,
# chat-template prompts, zero-shot baseline first). Each writes results/offline/<experiment>/ (results.json,
# predictions_*.jsonl, zero_shot.json, train.log, .hydra/). Usage: scripts/offline_generation.sh [experiment ...]
# (default: both); a folder holding another configuration's finished run is refused: move it away first.
set -euo pipefail
cd "$(dirname "$0")/.."
experiments=("$@")
[ ${#experiments[@]} -gt 0 ] || experiments=(dialogsum_smollm2 gsm8k_smollm2)
for exp in "${experiments[@]}"; do
  HF_HUB_OFFLINE=1 .venv/bin/python train.py experiment="$exp" logger.mode=disabled trainer.progress=false \
    trainer.save_adapter=false hydra.run.dir="results/offline/$exp"
done
