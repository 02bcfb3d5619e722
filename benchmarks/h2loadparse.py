"""Parse h2load's output and its per-request log (pure, no processes).

h2load (nghttp2) prints a summary (`finished in 10.00s, 52000.10 req/s, ...`, request and
status-code counts) and a latency table with min, max, mean and sd only; the percentiles the
table needs (p50, p99) come from its `--log-file` (one line per completed request: start time
in µs since the epoch, status code or -1 for a failed stream, µs until the end of the
response). Every latency here is in microseconds. h2load exits 0 even when every request
failed, so failures are counted from its summary and kept next to the figures.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from benchmarks.wrkparse import WrkParseError, parse_time_us

__all__ = ["H2loadParseError", "H2loadResult", "parse_h2load", "percentiles_from_log"]

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_TIME = _NUM + r"(us|ms|s|m|h)"
_RE_FINISHED = re.compile(r"^finished in " + _TIME + r", " + _NUM + r" req/s")
_RE_REQUESTS = re.compile(
    r"^requests: ([0-9]+) total, ([0-9]+) started, ([0-9]+) done, ([0-9]+) succeeded, "
    r"([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout"
)
_RE_STATUS = re.compile(r"^status codes: ([0-9]+) 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx")
_RE_DATA = re.compile(r"^traffic: .*, [0-9.]+[KMG]?B \(([0-9]+)\) data\s*$")
_RE_REQUEST_TIME = re.compile(
    r"^time for request:\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME
)

PERCENTILES = (50.0, 75.0, 90.0, 99.0)


class H2loadParseError(ValueError):
    """h2load's output or log lacks what the harness needs (h2load failed, or changed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class H2loadResult:
    """One h2load run: totals, rate, latency (µs) and failure counts.

    `requests` counts the requests done in the measured duration; the latency fields and
    `percentiles_us` have the names of wrk's (the result schema is the same for both).
    """

    requests: int
    duration_s: float
    rps: float
    latency_avg_us: float
    latency_max_us: float
    latency_min_us: float
    latency_sd_us: float
    percentiles_us: dict[str, float] = field(default_factory=dict)
    requests_total: int = 0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    data_bytes: int = 0

    @property
    def errors(self) -> int:
        """Requests that did not succeed: 4xx/5xx, stream errors, timeouts, never done
        (h2load's `failed` already counts errored and timed-out requests)."""
        return max(self.failed, self.requests_total - self.succeeded)

    @property
    def p50_us(self) -> float:
        """Median latency in µs (from the per-request log)."""
        return self.percentiles_us["50"]

    @property
    def p99_us(self) -> float:
        """99th percentile latency in µs (from the per-request log)."""
        return self.percentiles_us["99"]


def _time_us(value: str, unit: str) -> float:
    try:
        return parse_time_us(value, unit)
    except WrkParseError as exc:
        raise H2loadParseError(str(exc)) from None


def _pct_key(p: float) -> str:
    return str(int(p)) if p.is_integer() else str(p)


def percentiles_from_log(
    lines: Iterable[str], percentiles: Iterable[float] = PERCENTILES
) -> dict[str, float]:
    """Nearest-rank percentiles (µs) of the completed requests in an h2load --log-file.

    Lines whose status is -1 (failed streams) are left out; raises H2loadParseError when no
    line is a completed request or a line is malformed.
    """
    times: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            status, took = int(cols[1]), int(cols[2])
        except (IndexError, ValueError):
            raise H2loadParseError(
                f"h2load log line {number} is not 'start\\tstatus\\tus'"
            ) from None
        if status >= 0:
            times.append(took)
    if not times:
        raise H2loadParseError("h2load log holds no completed request")
    times.sort()
    out: dict[str, float] = {}
    for p in percentiles:
        rank = max(1, math.ceil(p / 100.0 * len(times)))
        out[_pct_key(float(p))] = float(times[rank - 1])
    return out


def parse_h2load(text: str, percentiles: dict[str, float] | None = None) -> H2loadResult:
    """Parse the stdout of `h2load -D ...` (nghttp2 1.4x-1.5x format).

    `percentiles` (from `percentiles_from_log`) are attached as they are; without them the
    result has none (the harness always passes them).
    """
    finished: tuple[float, float] | None = None
    counts: tuple[int, ...] | None = None
    status = (0, 0, 0, 0)
    data = 0
    latency: tuple[float, float, float, float] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _RE_FINISHED.match(line):
            finished = (_time_us(m.group(1), m.group(2)) / 1e6, float(m.group(3)))
        elif m := _RE_REQUESTS.match(line):
            counts = tuple(int(g) for g in m.groups())
        elif m := _RE_STATUS.match(line):
            status = (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)))
        elif m := _RE_DATA.match(line):
            data = int(m.group(1))
        elif m := _RE_REQUEST_TIME.match(line):
            g = m.groups()
            latency = (
                _time_us(g[0], g[1]),
                _time_us(g[2], g[3]),
                _time_us(g[4], g[5]),
                _time_us(g[6], g[7]),
            )
    missing = [
        name
        for name, value in (
            ("'finished in T, N req/s'", finished),
            ("'requests: ...'", counts),
            ("'time for request' latency", latency),
        )
        if value is None
    ]
    if missing or finished is None or counts is None or latency is None:
        raise H2loadParseError("h2load output lacks " + ", ".join(missing))
    total, _started, done, succeeded, failed, errored, timeout = counts
    return H2loadResult(
        requests=done,
        duration_s=finished[0],
        rps=finished[1],
        latency_min_us=latency[0],
        latency_max_us=latency[1],
        latency_avg_us=latency[2],
        latency_sd_us=latency[3],
        percentiles_us=dict(percentiles or {}),
        requests_total=total,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=status[0],
        status_3xx=status[1],
        status_4xx=status[2],
        status_5xx=status[3],
        data_bytes=data,
    )
