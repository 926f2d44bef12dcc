"""Timings that cannot flatter: baseline and ours interleaved, the median ratio, the load.

On a shared machine one run of each side measures the neighbours as much as the code (torch
slows more than JAX under load, so a lone pair flatters us). Every benchmark here times the
two sides in alternating pairs, the side that goes first alternating too, and reports the
median of the per-pair ratios with the machine's load average before and after.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def machine_load() -> dict:
    """os.getloadavg() (1, 5 and 15 minutes) and the CPU count."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2), "load_15m": round(fifteen, 2),
            "cpus": os.cpu_count()}


def interleaved(baseline: Callable[[int], object], ours: Callable[[int], object],
                pairs: int = 3) -> dict:
    """Calls baseline(pair) and ours(pair) ``pairs`` times each, alternating which goes first
    (each call must finish its work, device work included, before it returns). Returns the
    seconds of every call, ratio = baseline seconds / ours seconds per pair (above 1: ours
    is faster), their median, and the load before and after."""
    if pairs < 3:
        raise ValueError("interleave at least 3 pairs: a median of fewer is one noisy pair")
    before = machine_load()
    seconds: dict[str, list[float]] = {"baseline": [], "ours": []}
    for pair in range(pairs):
        sides = [("baseline", baseline), ("ours", ours)]
        for name, run in sides[::-1] if pair % 2 else sides:
            start = time.perf_counter()
            run(pair)
            seconds[name].append(time.perf_counter() - start)
    ratios = [b / o for b, o in zip(seconds["baseline"], seconds["ours"], strict=True)]
    return {"pairs": pairs, "baseline_s": seconds["baseline"], "ours_s": seconds["ours"],
            "ratios": ratios, "median_ratio": statistics.median(ratios),
            "load_before": before, "load_after": machine_load()}
