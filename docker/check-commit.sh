#!/usr/bin/env bash
# Cloud Build's first step: the commit every image tag and the run's commit= label name.
# Trigger builds set COMMIT_SHA; a manual build must pass it (gcloud builds submit
# --substitutions=COMMIT_SHA=$(git rev-parse HEAD)), else nothing would be tagged.
#   bash docker/check-commit.sh "${COMMIT_SHA}"
set -euo pipefail
commit="${1:-}"
if ! [[ "$commit" =~ ^[0-9a-f]{7,40}$ ]]; then
  echo "COMMIT_SHA is '$commit', not a commit: pass --substitutions=COMMIT_SHA=\$(git rev-parse HEAD) to gcloud builds submit" >&2
  exit 1
fi
echo "building commit $commit"
