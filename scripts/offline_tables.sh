#!/usr/bin/env bash
# The offline-scale paper-table runs committed under results/ (CPU, all-MiniLM-L6-v2 stand-in; the schedule is each
# spec's offline profile): LoRA-Mini Table 1 on STS-B and MRPC, the (r, a, b) grids of Table 8 (STS-B) and Table 7
# (MRPC), and Figure 2 drawn from those grids' D+A runs. Resumable: re-running trains only the runs whose
# results.json is missing, unfinished or stale (trained from other overrides), then re-renders
# results/tables/lora_mini/. On 2 cores, two of these with OMP_NUM_THREADS=1 side by side (e.g. COLUMNS=D and
# COLUMNS=D+A) finish sooner than one after another.
set -euo pipefail
cd "$(dirname "$0")/.."
make table1 COLUMNS=stsb,mrpc
make table8
make table7
make lora-mini-fig2
