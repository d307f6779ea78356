#!/usr/bin/env bash
# CUDA / bf16 check of the training path on one GPU: roberta-base (architecture, random weights: no
# pretrained weights offline) on real GLUE RTE, one epoch each, bf16 autocast vs fp32, LoRA-Mini / LoRA / FFT / Tied-LoRA / VeRA.
# Usage: scripts/gpu_check.sh GLUE_DIR ROBERTA_TOKENIZER_DIR OUT_DIR ["method precision [overrides]" ...]
set -euo pipefail
glue=$1 tok=$2 out=$3
common=(model=roberta-base model.weights=random "model.tokenizer=$tok" task=glue/rte "task.data_dir=$glue"
        task.source=local trainer.epochs=1 trainer.batch_size=32 trainer.progress=false logger.mode=disabled)
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
specs=("lora_mini bf16 method.targets=D+A" "lora_mini fp32 method.targets=D+A" "lora bf16 method.targets=D+A"
       "full_ft bf16 trainer.lr=2e-5" "tied_lora bf16 method.variant=tl6" "vera bf16 method.r=256")
if [ $# -gt 3 ]; then specs=("${@:4}"); fi  # optional: run only the given specs
for spec in "${specs[@]}"; do
  read -r method prec extra <<< "$spec"
  name="$method-$prec"
  python3 train.py "${common[@]}" "method=$method" "trainer.precision=$prec" $extra "hydra.run.dir=$out/$name" \
    > "$out/$name.log" 2>&1 || { echo "FAILED $name"; tail -20 "$out/$name.log"; continue; }
  python3 - "$out/$name/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e = r["metrics"]["epochs"][-1]
print(f'{r["method"]:10s} {r["mixed_precision"]:4s} device={r["device"]} steps={e["step"]} wall={r["wall_time_s"]:.1f}s train={e["train_time_s"]:.1f}s '
      f'peak={r["peak_memory_bytes"] / 2**30:.2f}GiB loss={e["train_loss"]:.4f} acc={e["accuracy"]:.4f} '
      f'trainable={r["params"]["trainable_params"]}')
PY
done
