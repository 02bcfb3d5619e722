"""How busy the machine's cores are, from /proc/stat: to wait for quiet before a measurement
and to record how much CPU other programs took from the pinned cores during it.

A benchmark on a shared 2-core machine is only as good as its neighbours are quiet; the
harness cannot stop them, but it can wait a little and say how noisy each run was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CoreTicks",
    "busy_fraction",
    "busy_seconds",
    "parse_proc_stat",
    "read_core_ticks",
    "wait_quiet",
]

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CoreTicks:
    """Cumulative clock ticks of one core: busy (user, nice, system, irq, softirq, steal)
    and total (busy + idle + iowait)."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> dict[int, CoreTicks]:
    """Per-core ticks from the text of /proc/stat (lines `cpuN user nice system idle ...`)."""
    out: dict[int, CoreTicks] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]] + [0] * (8 - len(fields[:8]))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy = user + nice + system + irq + softirq + steal
        out[int(name[3:])] = CoreTicks(busy, busy + idle + iowait)
    return out


def read_core_ticks() -> dict[int, CoreTicks]:
    """Per-core ticks now (empty where /proc/stat is unreadable)."""
    try:
        return parse_proc_stat(Path("/proc/stat").read_text())
    except OSError:
        return {}


def busy_seconds(
    before: Mapping[int, CoreTicks], after: Mapping[int, CoreTicks], core: int
) -> float | None:
    """CPU seconds `core` was busy between two readings (None when unknown)."""
    if core not in before or core not in after:
        return None
    return (after[core].busy - before[core].busy) / _HZ


def busy_fraction(
    before: Mapping[int, CoreTicks], after: Mapping[int, CoreTicks], core: int
) -> float | None:
    """Busy share (0..1) of `core` between two readings (None when unknown)."""
    if core not in before or core not in after:
        return None
    total = after[core].total - before[core].total
    return (after[core].busy - before[core].busy) / total if total > 0 else None


def wait_quiet(
    cores: Iterable[int], *, max_wait_s: float, threshold: float = 0.1, sample_s: float = 0.5
) -> tuple[float, float | None]:
    """Wait (at most `max_wait_s`) until every core of `cores` is under `threshold` busy over
    a `sample_s` window. Returns (seconds waited, busiest core's share in the last window)."""
    wanted = list(cores)
    start = time.monotonic()
    busiest: float | None = None
    while True:
        before = read_core_ticks()
        time.sleep(sample_s)
        after = read_core_ticks()
        shares = [f for c in wanted if (f := busy_fraction(before, after, c)) is not None]
        busiest = max(shares) if shares else None
        waited = time.monotonic() - start
        if busiest is None or busiest < threshold or waited >= max_wait_s:
            return waited, busiest
