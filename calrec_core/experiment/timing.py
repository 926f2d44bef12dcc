"""Wall-clock bookkeeping of an experiment and model FLOPs utilisation (MFU).

MFU = achieved model FLOPs / the device's peak. Training FLOPs per real token are taken as
6 x the non-embedding parameters (forward 2N, backward 4N; PaLM's convention). The embedding
lookup costs nothing and the tied vocabulary projection runs only at target positions, so both
are left out: MFU is, if anything, understated.
"""

from __future__ import annotations

import json
import pathlib
import time
from contextlib import contextmanager
from typing import Any

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets (no sparsity).
PEAK_FLOPS = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "l4": 121e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def peak_flops(device_kind: str, override_tflops: float | None = None) -> float | None:
    """Peak bf16 FLOP/s of a jax ``device_kind`` ("NVIDIA H100 80GB HBM3", "TPU v4"), or
    ``override_tflops`` when given; None for a CPU or an unknown device (no MFU then)."""
    if override_tflops:
        return override_tflops * 1e12
    kind = device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def mfu(tokens_per_second: float, params: int, device_kind: str, devices: int) -> float | None:
    peak = peak_flops(device_kind)
    if peak is None or not tokens_per_second:
        return None
    return 6.0 * params * tokens_per_second / (peak * devices)


class TimingLog:
    """Phases of an experiment and their measurements, kept in ``timing.json`` across resumes:
    a phase measured once keeps its first measurement (a resumed run would time only the
    leftover work)."""

    def __init__(self, path) -> None:
        self.path = pathlib.Path(path)
        self.phases: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.phases = json.loads(self.path.read_text(encoding="utf-8"))

    def __contains__(self, phase: str) -> bool:
        return phase in self.phases

    @contextmanager
    def phase(self, name: str, **values: Any):
        """Times the body; ``record`` (yielded) takes extra values measured inside, and a
        "users" count there also gives "users_per_s"."""
        record: dict[str, Any] = dict(values)
        began = time.perf_counter()
        yield record
        record["seconds"] = time.perf_counter() - began
        if "users" in record:
            record["users_per_s"] = record["users"] / max(record["seconds"], 1e-9)
        if name not in self.phases:
            self.record(name, **record)

    def record(self, name: str, **values: Any) -> None:
        self.phases[name] = values
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.phases, indent=2, sort_keys=True), encoding="utf-8")
        temporary.replace(self.path)

    def total_seconds(self) -> float:
        return sum(p.get("seconds", 0.0) for p in self.phases.values())
