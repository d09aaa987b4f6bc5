"""Shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import subprocess
import time


def command_wall(cmd: list[str], repeats: int) -> float:
    """Run `cmd` once to warm caches, then `repeats` times; the median wall time in seconds."""
    subprocess.run(cmd, check=True, capture_output=True)
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median wall time of `repeat` calls of fn() and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
