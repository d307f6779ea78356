#!/usr/bin/env bash
# The offline-scale paper-table runs committed under results/ (CPU, all-MiniLM-L6-v2 stand-in):
# LoRA-Mini Table 1 on MRPC and STS-B, and Table 7's (r, a, b) grid on MRPC. Resumable: re-running trains only
# the runs whose results.json is missing or unfinished, then re-renders results/tables/lora_mini/.
set -euo pipefail
cd "$(dirname "$0")/.."
make table1 COLUMNS=mrpc,stsb
make table7
