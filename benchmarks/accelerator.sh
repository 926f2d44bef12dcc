#!/usr/bin/env bash
# The single-accelerator measurement of benchmarks/results/README.md, as one script that fits
# one 10-minute call: the office2014 experiment planned into 8 minutes (the planner counts
# from the experiment's start; process start-up, the report and the benchmark take the rest),
# then a short training-throughput benchmark (step shapes, compiles apart from steady steps).
# Usage: benchmarks/accelerator.sh INGESTED_DATA_DIR OUTPUT_DIR [PYTHON] [BUDGET_MINUTES]
set -euo pipefail
data=${1:?ingested data folder (calrec experiment --ingest-only)}
out=${2:?output folder}
python=${3:-python3}
budget=${4:-8}
mkdir -p "$out"
"$python" -m calrec_core.cli experiment --config configs/experiment-office2014.yaml \
  --ingested "$data" --output "$out/office2014" --budget-minutes "$budget" \
  2>&1 | tee "$out/experiment.log"
cp "$out/office2014/report.md" "$out/office2014/report.json" "$out/office2014/report.png" \
  "$out/office2014/plan.json" "$out/office2014/timing.json" "$out/"
timeout 75 "$python" benchmarks/bench_train.py --data "$data" --preset paper --steps 10 \
  --set train.batch_size=64 --set train.max_input_len=512 --set train.warmup_steps=20 \
  --variants packed --output "$out/bench_train.json" 2>&1 | tee "$out/bench_train.log" || true
