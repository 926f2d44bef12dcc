#!/usr/bin/env bash
# Cloud Build (docker builder): IMAGE's entrypoint is exactly ENTRYPOINT and it runs as USER.
#   bash docker/smoke/entrypoint.sh IMAGE ENTRYPOINT USER
set -euo pipefail
image="${1:?usage: entrypoint.sh IMAGE ENTRYPOINT USER}"
expected="[\"${2:?}\"]"
user="${3:?}"
actual="$(docker inspect --format '{{json .Config.Entrypoint}}' "$image")"
[ "$actual" = "$expected" ] || { echo "smoke: $image's entrypoint is $actual, not $expected" >&2; exit 1; }
actual_user="$(docker inspect --format '{{.Config.User}}' "$image")"
[ "$actual_user" = "$user" ] || { echo "smoke: $image runs as '$actual_user', not $user" >&2; exit 1; }
echo "smoke: $image starts $expected as $user"
