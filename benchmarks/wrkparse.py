"""Parse wrk's `--latency` output and write the fixed-rate Lua script (pure, no processes).

wrk prints times with a unit suffix (`us`, `ms`, `s`, `m`, `h`); every latency here is
converted to microseconds. A run is trusted only with its error counts next to it: a proxy that
answers fast with 503s must not look fast, so socket errors and non-2xx/3xx responses are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["WrkParseError", "WrkResult", "fixed_rate_lua", "parse_time_us", "parse_wrk"]

_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}

_TIME = r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)"
_RE_PERCENTILE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)%\s+" + _TIME + r"\s*$")
_RE_TOTAL = re.compile(r"^\s*([0-9]+) requests in " + _TIME + r",")
_RE_RPS = re.compile(r"^Requests/sec:\s+([0-9]+(?:\.[0-9]+)?)\s*$")
_RE_LATENCY_STATS = re.compile(r"^\s*Latency\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME)
_RE_SOCKET_ERRORS = re.compile(
    r"^\s*Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)"
)
_RE_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: ([0-9]+)")


class WrkParseError(ValueError):
    """wrk's output lacks a line the harness needs (wrk failed, or its format changed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    """One wrk run: totals, rate, latency (µs) and error counts."""

    requests: int
    duration_s: float
    rps: float
    latency_avg_us: float
    latency_max_us: float
    percentiles_us: dict[str, float] = field(default_factory=dict)
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        """Socket errors plus non-2xx/3xx responses."""
        return (
            self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_timeout
            + self.non_2xx_3xx
        )

    @property
    def p50_us(self) -> float:
        """Median latency in µs."""
        return self.percentiles_us["50"]

    @property
    def p99_us(self) -> float:
        """99th percentile latency in µs."""
        return self.percentiles_us["99"]


def parse_time_us(value: str, unit: str) -> float:
    """wrk's `490.00` + `us` → 490.0 (µs); raises WrkParseError on an unknown unit."""
    try:
        return float(value) * _TIME_UNITS_US[unit]
    except KeyError:
        raise WrkParseError(f"unknown wrk time unit {unit!r}") from None


def _pct_key(raw: str) -> str:
    number = float(raw)
    return str(int(number)) if number.is_integer() else str(number)


def parse_wrk(text: str) -> WrkResult:
    """Parse the stdout of `wrk --latency ...` (wrk 4.x format)."""
    requests: int | None = None
    duration_s: float | None = None
    rps: float | None = None
    avg_us = max_us = 0.0
    seen_stats = False
    percentiles: dict[str, float] = {}
    errors = (0, 0, 0, 0)
    non_2xx = 0
    in_distribution = False
    for line in text.splitlines():
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        if in_distribution:
            m = _RE_PERCENTILE.match(line)
            if m:
                percentiles[_pct_key(m.group(1))] = parse_time_us(m.group(2), m.group(3))
                continue
            in_distribution = False
        if (m := _RE_LATENCY_STATS.match(line)) and not seen_stats:
            avg_us = parse_time_us(m.group(1), m.group(2))
            max_us = parse_time_us(m.group(5), m.group(6))
            seen_stats = True
        elif m := _RE_TOTAL.match(line):
            requests = int(m.group(1))
            duration_s = parse_time_us(m.group(2), m.group(3)) / 1e6
        elif m := _RE_RPS.match(line):
            rps = float(m.group(1))
        elif m := _RE_SOCKET_ERRORS.match(line):
            errors = (int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)))
        elif m := _RE_NON_2XX.match(line):
            non_2xx = int(m.group(1))
    missing = [
        name
        for name, value in (
            ("'N requests in T'", requests),
            ("'Requests/sec'", rps),
            ("'Latency' thread stats", seen_stats or None),
            ("50% percentile (run wrk with --latency)", percentiles.get("50")),
            ("99% percentile (run wrk with --latency)", percentiles.get("99")),
        )
        if value is None
    ]
    if missing or requests is None or duration_s is None or rps is None:
        raise WrkParseError("wrk output lacks " + ", ".join(missing))
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=rps,
        latency_avg_us=avg_us,
        latency_max_us=max_us,
        percentiles_us=percentiles,
        errors_connect=errors[0],
        errors_read=errors[1],
        errors_write=errors[2],
        errors_timeout=errors[3],
        non_2xx_3xx=non_2xx,
    )


_FIXED_RATE_LUA = """\
-- pymesh bench: hold wrk (one thread) at a fixed total request rate.
-- wrk calls delay() before every request; requests take slots RATE per second on a shared
-- schedule (wall clock through LuaJIT's ffi), so the total rate does not depend on latency
-- or on the number of connections. A backlog older than 100 ms is dropped, never burst.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } pymesh_timespec;
int clock_gettime(int clk_id, pymesh_timespec *tp);
]]
local ts = ffi.new("pymesh_timespec")
local CLOCK_MONOTONIC = 1
local interval_ms = 1000.0 / %(rate)s
local next_ms = nil

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000.0 + tonumber(ts.tv_nsec) / 1e6
end

function delay()
  local now = now_ms()
  if next_ms == nil or next_ms < now - 100.0 then
    next_ms = now
  else
    next_ms = next_ms + interval_ms
  end
  local wait = next_ms - now
  if wait <= 0 then
    return 0
  end
  return math.ceil(wait)
end
"""


def fixed_rate_lua(rate: float) -> str:
    """A wrk Lua script holding one wrk thread at `rate` requests per second in total."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, not {rate!r}")
    return _FIXED_RATE_LUA % {"rate": repr(float(rate))}
