#!/usr/bin/env bash
# The single-accelerator measurement of benchmarks/results/README.md, as one script: the
# office2014 experiment within its 10-minute budget, then the training-throughput benchmark.
# Usage: benchmarks/accelerator.sh INGESTED_DATA_DIR OUTPUT_DIR [PYTHON]
set -euo pipefail
data=${1:?ingested data folder (calrec experiment --ingest-only)}
out=${2:?output folder}
python=${3:-python3}
mkdir -p "$out"
"$python" -m calrec_core.cli experiment --config configs/experiment-office2014.yaml \
  --ingested "$data" --output "$out/office2014" 2>&1 | tee "$out/experiment.log"
"$python" benchmarks/bench_train.py --data "$data" --preset paper --steps 20 \
  --set train.batch_size=64 --set train.max_input_len=512 \
  --output "$out/bench_train.json" 2>&1 | tee "$out/bench_train.log" || true
cp "$out/office2014/report.md" "$out/office2014/report.json" "$out/office2014/report.png" "$out/"
