#!/usr/bin/env bash
# The two real offline generation runs of issue 5 (SmolLM2-135M-Instruct + LoRA on GSM8K and DialogSum, CPU).
# Each writes results/offline/<experiment>/ (results.json, predictions_*.jsonl, train.log, .hydra/).
set -euo pipefail
cd "$(dirname "$0")/.."
for exp in gsm8k_smollm2 dialogsum_smollm2; do
  HF_HUB_OFFLINE=1 .venv/bin/python train.py experiment=$exp logger.mode=disabled trainer.progress=false \
    trainer.save_adapter=false hydra.run.dir=results/offline/$exp
done
