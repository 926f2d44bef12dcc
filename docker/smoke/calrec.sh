#!/usr/bin/env bash
# Smoke test of the calrec (CPU) image (Cloud Build runs it inside the freshly built image):
# one Stage I step of the tiny preset on INGESTED (calrec-ingest.sh's output), then an
# evaluation of the selected model and LIR on three test users.
#   bash docker/smoke/calrec.sh INGESTED
set -euo pipefail
data="${1:?usage: calrec.sh INGESTED (the folder calrec-ingest.sh wrote)}"
category=Gift_Cards
work="$(mktemp -d)"

python -c "
import importlib
from components.images import IMAGE_COMPONENTS
for module in IMAGE_COMPONENTS['calrec']:
    importlib.import_module(module)
"

calrec train --stage 1 --data "$data" --output "$work/run" --preset tiny \
  --set stage1_steps=1 --set eval_every=1 --set checkpoint_every=1 > "$work/train.json"
calrec evaluate --data "$data" --category "$category" --model "$work/run/selected" \
  --methods calrec,lir --preset tiny --max-users 3 --output "$work/eval"
python - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
train = json.loads((work / "run" / "result.json").read_text())
metrics = json.loads((work / "eval" / "metrics.json").read_text())
if train.get("selected_step") != 1:
    sys.exit(f"smoke calrec: expected step 1 selected, got {train.get('selected_step')}")
methods = metrics.get("methods", {})
if sorted(methods) != ["calrec", "lir"] or not all("ndcg@10_pes" in m for m in methods.values()):
    sys.exit(f"smoke calrec: expected calrec and lir metrics, got {methods}")
print(f"smoke calrec: trained 1 step, evaluated {sorted(methods)} in {work}")
PY
