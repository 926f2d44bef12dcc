#!/usr/bin/env bash
# Smoke test of the calrec-ingest image (Cloud Build runs it inside the freshly built image):
# what Dataflow starts, Beam's boot entrypoint, and what the ingest step runs, a DirectRunner
# ingest of one category of the bundled sample. Run from the repository root (data/sample);
# the ingested folder goes to OUT (default: a temporary folder), where calrec.sh trains on it.
# SMOKE_SKIP_BOOT=1 skips the boot check only (the test suite, outside the image).
#   bash docker/smoke/calrec-ingest.sh [OUT]
set -euo pipefail
out="${1:-$(mktemp -d)/ingested}"
category=Gift_Cards
boot=/opt/apache/beam/boot

fail() { echo "smoke calrec-ingest: $*" >&2; exit 1; }

python -c "
import importlib
from components.images import IMAGE_COMPONENTS
for module in IMAGE_COMPONENTS['calrec-ingest']:
    importlib.import_module(module)
"

if [ "${SMOKE_SKIP_BOOT:-}" = 1 ]; then
  echo "smoke calrec-ingest: boot check skipped (SMOKE_SKIP_BOOT=1)"
else
  [ -x "$boot" ] || fail "$boot is missing: Dataflow workers could not start"
  # Go's flag package prints the worker flags for --help; boot starts nothing then.
  usage="$("$boot" --help 2>&1 || true)"
  grep -q -- "-provision_endpoint" <<<"$usage" || fail "$boot --help shows no worker flags: $usage"
  echo "smoke calrec-ingest: $boot starts"
fi

roles="$(mktemp)"
printf 'seed: 20240101\ncategories:\n  %s:\n    role: eval\n' "$category" > "$roles"
calrec ingest --data data/sample/amazon2018 --roles "$roles" --output "$out" \
  -- --runner DirectRunner
python - "$out" "$category" <<'PY'
import json, pathlib, sys
out, category = pathlib.Path(sys.argv[1]), sys.argv[2]
stats = json.loads((out / "stats.json").read_text())["categories"]
if list(stats) != [category] or not stats[category].get("users"):
    sys.exit(f"smoke calrec-ingest: expected users of {category} only, got {stats}")
print(f"smoke calrec-ingest: {stats[category]['users']} {category} users ingested into {out}")
PY
