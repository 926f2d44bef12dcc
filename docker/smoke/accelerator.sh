#!/usr/bin/env bash
# Smoke test of the calrec-cuda and calrec-tpu images (Cloud Build runs it inside the freshly
# built image, on a machine without the device): the image's JAX plugin (CUDA) or libtpu
# imports, and JAX lists its backends, falling back to the CPU where no device is attached.
#   bash docker/smoke/accelerator.sh cuda|tpu
set -euo pipefail
flavour="${1:?usage: accelerator.sh cuda|tpu}"
image="calrec-$flavour"

python - "$flavour" "$image" <<'PY'
import importlib
import importlib.util
import os
import sys

flavour, image = sys.argv[1:]
modules = {"cuda": ("jax_cuda12_plugin", "jax_plugins.xla_cuda12"), "tpu": ("libtpu",)}
if flavour not in modules:
    sys.exit(f"smoke {image}: unknown flavour {flavour!r} (cuda or tpu)")


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


missing = [name for name in modules[flavour] if not installed(name)]
if missing:
    sys.exit(f"smoke {image}: {', '.join(missing)} not installed")
for name in modules[flavour]:
    importlib.import_module(name)
if flavour == "tpu":
    import libtpu

    path = libtpu.get_library_path()
    if not os.path.isfile(path):
        sys.exit(f"smoke {image}: libtpu's library {path} is missing")
from components.images import IMAGE_COMPONENTS

for name in IMAGE_COMPONENTS[image]:
    importlib.import_module(name)

import jax
from jax.extend import backend

# Without the device JAX logs the plugin's start-up failure and keeps the CPU backend.
platforms = sorted(backend.backends())
print(f"smoke {image}: jax {jax.__version__}, backends {platforms}, devices {jax.devices()}")
if not platforms:
    sys.exit(f"smoke {image}: JAX lists no backend")
PY
