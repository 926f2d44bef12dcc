"""Peak RSS of loading the Gemma 3 weights onto the CPU device, against the parameters alone.

Each measurement is a fresh process (its own peak RSS), interleaved pair by pair:
- baseline: ``np.load`` of every cached float32 parameter, kept in memory, in a process that
  has imported the JAX runtime like any model load must (``--bare-baseline`` also shows the
  same without JAX);
- cached: ``load_pretrained()`` from the converted cache (the evaluation and training path);
- cold (``--cold``): ``load_pretrained()`` into an empty cache, converting the packaged GGUF
  first (in a child process; about 1.5 minutes a run on 2 cores).

A path's peak is the larger of the measured process's own and that of its largest child (the
conversion), as the machine must hold either. Prints each pair and the median ratio of each
path to the baseline, with the machine's load.

    .venv/bin/python benchmarks/bench_load.py [--pairs 3] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_PEAK = ("import json, resource\n"
         "def report(param_bytes):\n"
         "    print(json.dumps({"
         "'self_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
         "'child_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
         "'param_mb': param_bytes / 2**20}))\n")
_BASELINE = _PEAK + """
import pathlib, sys
import numpy as np
if sys.argv[2] == "jax":
    import jax; jax.devices()
arrays = [np.load(path) for path in sorted(pathlib.Path(sys.argv[1]).glob("*.npy"))]
report(sum(array.nbytes for array in arrays))
"""
_OURS = _PEAK + """
import sys
import jax
from flax import nnx
from calrec_core.model import load_pretrained
model, tokenizer = load_pretrained(cache_dir=sys.argv[1] if sys.argv[1] != "-" else None)
report(sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(model))))
"""


def _run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved measurements of each")
    parser.add_argument("--cold", action="store_true",
                        help="also load into an empty cache (converts the GGUF each time)")
    parser.add_argument("--bare-baseline", action="store_true",
                        help="also measure the np.load baseline without the JAX runtime")
    args = parser.parse_args()

    from calrec_core.model.loading import ensure_cache

    cache = ensure_cache(None, None)  # converted once, outside the measurements
    paths = ["baseline", "cached", *(["cold"] if args.cold else []),
             *(["bare"] if args.bare_baseline else [])]
    peaks: dict[str, list[float]] = {path: [] for path in paths}
    loads = []
    for pair in range(args.pairs):
        loads.append(os.getloadavg()[0])
        for path in paths:
            if path == "baseline":
                result = _run(_BASELINE, str(cache), "jax")
            elif path == "bare":
                result = _run(_BASELINE, str(cache), "numpy")
            elif path == "cached":
                result = _run(_OURS, "-")
            else:
                with tempfile.TemporaryDirectory() as empty:
                    result = _run(_OURS, empty)
            peaks[path].append(max(result["self_mb"], result["child_mb"]))
            print(f"pair {pair + 1} {path:8s} peak {peaks[path][-1]:7.0f} MB (process "
                  f"{result['self_mb']:.0f} MB, largest child {result['child_mb']:.0f} MB; "
                  f"parameters {result['param_mb']:.0f} MB)", flush=True)
    baseline = statistics.median(peaks["baseline"])
    print(f"\nmedian baseline peak {baseline:.0f} MB; load average "
          f"{statistics.median(loads):.2f} (1 min, at each pair's start) on {os.cpu_count()} CPUs")
    for path in paths[1:]:
        ratios = [ours / base for ours, base in zip(peaks[path], peaks["baseline"], strict=True)]
        print(f"{path:8s} median peak {statistics.median(peaks[path]):7.0f} MB, "
              f"ratio to baseline {statistics.median(ratios):.3f} (pairs: "
              + ", ".join(f"{ratio:.3f}" for ratio in ratios) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
