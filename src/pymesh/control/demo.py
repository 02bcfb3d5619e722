"""`pymesh demo`: the bundled shop mesh under traffic, with a live table from the sidecars.

`LocalMesh` (what `pymesh up` runs) starts the shop of `examples/shop/` (web → orders →
inventory, a sidecar process each); `LoadClient` sends `--rate` requests per second to the
first meshed service with a command (`web`) through that service's inbound listener, as an
ingress would; `Dashboard` scrapes every sidecar's admin `/metrics` and shows per service the
requests, rate, errors and p50/p99 latency its inbound sidecar reports (`reporter="destination"`,
so each request is counted once per service it reaches). After `--duration` seconds everything
stops and the command exits 0 — or 1 if no request got through at all.

Errors are responses with a 5xx `response_code` or a `response_flags` other than `-` (a
proxy-generated reply). Latency quantiles are estimated from the
`istio_request_duration_milliseconds` histogram buckets the way Prometheus'
`histogram_quantile` does (linear inside a bucket), so they are as coarse as the buckets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO, final

from pymesh.control.up import (
    HTTP_ERRORS,
    Address,
    LocalMesh,
    ServiceRuntime,
    format_address,
    http_get,
    read_response,
    supervise,
)
from pymesh.observe.log import configure_logging
from pymesh.policy.model import DEFAULT_NAMESPACE
from pymesh.runtime import run_loop

__all__ = [
    "Dashboard",
    "LoadClient",
    "ServiceStats",
    "aggregate",
    "bundled_config",
    "demo_main",
    "histogram_quantile",
    "parse_prometheus",
]

REQUESTS_METRIC: Final = "istio_requests_total"
DURATION_BUCKET_METRIC: Final = "istio_request_duration_milliseconds_bucket"
TTY_REFRESH_S: Final = 1.0
PLAIN_REFRESH_S: Final = 5.0
_BUNDLED: Final = Path("examples", "shop", "mesh.yaml")


def bundled_config() -> Path:
    """`examples/shop/mesh.yaml` of this source tree, else of the working directory."""
    here = Path(__file__).resolve()
    roots = [here.parents[3]] if len(here.parents) > 3 else []
    for root in [*roots, Path.cwd()]:
        if (root / _BUNDLED).is_file():
            return root / _BUNDLED
    raise FileNotFoundError(f"the bundled example {_BUNDLED} is not here; pass --config")


# --- Prometheus text, parsed -----------------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value)


def parse_prometheus(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus text format 0.0.4.

    Comments, blank lines and lines that are not samples are skipped.
    """
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, body, raw = m.groups()
        labels = {k: _unescape(v) for k, v in _LABEL.findall(body or "")}
        try:
            value = float(raw)
        except ValueError:
            continue
        yield name, labels, value


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Quantile `q` from cumulative bucket counts keyed by upper bound (`+Inf` included),
    interpolating linearly inside the bucket, as Prometheus' `histogram_quantile` does.
    None when there are no observations."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # above the highest finite bound: that bound is all we know
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


@dataclass(slots=True)
class ServiceStats:
    """Requests to one destination service, as its sidecars report them."""

    requests: float = 0.0
    errors: float = 0.0
    mtls: float = 0.0  # requests that arrived over mutual TLS
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def quantile(self, q: float) -> float | None:
        """Latency quantile in ms (None without observations)."""
        return histogram_quantile(q, self.buckets)


def aggregate(
    samples: Iterable[tuple[str, dict[str, str], float]], *, reporter: str = "destination"
) -> dict[str, ServiceStats]:
    """Request counts, errors and latency buckets per `destination_service` label."""
    stats: dict[str, ServiceStats] = {}
    for name, labels, value in samples:
        if labels.get("reporter") != reporter or name not in (
            REQUESTS_METRIC,
            DURATION_BUCKET_METRIC,
        ):
            continue
        s = stats.setdefault(labels.get("destination_service", "unknown"), ServiceStats())
        if name == REQUESTS_METRIC:
            s.requests += value
            code, flags = labels.get("response_code", ""), labels.get("response_flags", "-")
            if code.startswith("5") or flags not in ("-", ""):
                s.errors += value
            if labels.get("connection_security_policy") == "mutual_tls":
                s.mtls += value
        else:
            try:
                le = float(labels.get("le", ""))
            except ValueError:
                continue
            s.buckets[le] = s.buckets.get(le, 0.0) + value
    return stats


def _label_key(label: str) -> tuple[str, str]:
    """`orders.default.svc.cluster.local` / `orders.default` / `orders` -> (namespace, name)."""
    name, _, rest = label.partition(".")
    return (rest.partition(".")[0] or DEFAULT_NAMESPACE, name)


# --- traffic -----------------------------------------------------------------------------


@final
class LoadClient:
    """Sends `GET path` at a steady `rate` to `addr` over up to `concurrency` keep-alive
    connections. Open loop: a request that finds every connection busy (more than
    `2 * concurrency` waiting) is dropped and counted, never queued without bound."""

    def __init__(
        self,
        addr: Address,
        authority: str,
        path: str = "/",
        *,
        rate: float,
        concurrency: int = 16,
        timeout: float = 2.0,
    ) -> None:
        self.addr = addr
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self._request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        self.sent = 0
        self.statuses: Counter[int] = Counter()
        self.failed = 0  # no response: connect error, reset, timeout
        self.dropped = 0

    @property
    def ok(self) -> int:
        """Responses below 400."""
        return sum(n for status, n in self.statuses.items() if status < 400)

    @property
    def errors(self) -> int:
        """5xx responses."""
        return sum(n for status, n in self.statuses.items() if status >= 500)

    async def run(self, done: asyncio.Event) -> None:
        """Send until `done` is set; in-flight requests are then abandoned."""
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=2 * self.concurrency)
        loop = asyncio.get_running_loop()
        interval, next_at = 1.0 / self.rate, loop.time()
        async with asyncio.TaskGroup() as tg:
            workers = [
                tg.create_task(self._worker(queue), name=f"demo client {i}")
                for i in range(self.concurrency)
            ]
            while not done.is_set():
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), delay)
                    if done.is_set():
                        break
                elif delay < -1.0:  # far behind (a stalled loop): don't catch up in a burst
                    next_at = loop.time()
                try:
                    queue.put_nowait(None)
                except asyncio.QueueFull:
                    self.dropped += 1
            for w in workers:
                w.cancel()

    async def _worker(self, queue: asyncio.Queue[None]) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                await queue.get()
                self.sent += 1
                try:
                    async with asyncio.timeout(self.timeout):
                        if conn is None:
                            conn = await asyncio.open_connection(*self.addr)
                        conn[1].write(self._request)
                        status, headers, _ = await read_response(conn[0])
                except HTTP_ERRORS:
                    self.failed += 1
                    _close(conn)
                    conn = None
                    continue
                self.statuses[status] += 1
                if headers.get("connection", "").lower() == "close":
                    _close(conn)
                    conn = None
        finally:
            _close(conn)


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].close()


# --- the table ---------------------------------------------------------------------------


@final
class Dashboard:
    """Scrapes every sidecar's `/metrics` and renders the per-service table.

    Rows are the mesh's meshed services in config order, then any other
    `destination_service` the sidecars report.
    """

    def __init__(
        self,
        services: Iterable[ServiceRuntime],
        client: LoadClient,
        *,
        target: str,
        duration: float,
        out: TextIO,
        tty: bool,
    ) -> None:
        self.services = [s for s in services if s.meshed]
        self.client = client
        self.target = target
        self.duration = duration
        self.out = out
        self.tty = tty
        self._last_text: dict[Address, str] = {}
        self._prev: tuple[float, dict[str, float]] | None = None
        self._drawn = 0

    async def scrape(self) -> dict[str, ServiceStats]:
        """Current stats per destination_service; a sidecar that does not answer this time
        counts with its last scrape."""
        admins = [s.admin for s in self.services if s.admin is not None]
        results = await asyncio.gather(
            *(http_get(a, "/metrics", timeout=1.0) for a in admins), return_exceptions=True
        )
        for admin, result in zip(admins, results, strict=True):
            if isinstance(result, tuple) and result[0] == 200:
                self._last_text[admin] = result[1].decode("utf-8", "replace")
            elif isinstance(result, BaseException) and not isinstance(result, HTTP_ERRORS):
                raise result
        samples = (s for text in self._last_text.values() for s in parse_prometheus(text))
        return aggregate(samples)

    def render(self, stats: Mapping[str, ServiceStats], elapsed: float, now: float) -> list[str]:
        """The table's lines: title, header, one row per service, the client's line."""
        by_key = {_label_key(label): (label, s) for label, s in stats.items()}
        rows: list[tuple[str, ServiceStats]] = []
        for svc in self.services:
            _, s = by_key.pop((svc.namespace, svc.name), ("", ServiceStats()))
            rows.append((svc.display_name, s))
        rows += sorted((label, s) for label, s in by_key.values())
        prev_at, prev_requests = self._prev or (now, {})
        self._prev = (now, {name: s.requests for name, s in rows})
        span = now - prev_at
        c = self.client
        lines = [
            f"pymesh demo: {c.rate:g} req/s to {self.target}, "
            f"{min(elapsed, self.duration):.0f}/{self.duration:g} s",
            f"{'SERVICE':<24} {'REQUESTS':>9} {'RPS':>7} {'ERRORS':>7} {'ERR%':>6} "
            f"{'P50 ms':>8} {'P99 ms':>8} {'MTLS%':>6}",
        ]
        for name, s in rows:
            rps = (s.requests - prev_requests.get(name, 0.0)) / span if span > 0 else 0.0
            err = 100.0 * s.errors / s.requests if s.requests else 0.0
            mtls = 100.0 * s.mtls / s.requests if s.requests else 0.0
            lines.append(
                f"{name:<24} {s.requests:>9.0f} {rps:>7.1f} {s.errors:>7.0f} {err:>5.1f}% "
                f"{_ms(s.quantile(0.5)):>8} {_ms(s.quantile(0.99)):>8} {mtls:>5.0f}%"
            )
        lines.append(
            f"client -> {self.target}: {c.sent} sent, {c.ok} ok, {c.errors} 5xx, "
            f"{c.failed} no response, {c.dropped} dropped"
        )
        return lines

    def show(self, lines: list[str]) -> None:
        """Print the table; on a terminal, over the previous one."""
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the old table, clear below
        elif not self.tty:
            self.out.write("\n")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    async def run(self, done: asyncio.Event, started_at: float) -> None:
        """Refresh until `done` is set, then draw the final table."""
        loop = asyncio.get_running_loop()
        period = TTY_REFRESH_S if self.tty else PLAIN_REFRESH_S
        self._prev = (started_at, {})
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), period)
            now = loop.time()
            self.show(self.render(await self.scrape(), now - started_at, now))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- the command ---------------------------------------------------------------------------


def _target(services: Iterable[ServiceRuntime]) -> ServiceRuntime | None:
    """Where the traffic goes: the first meshed service that runs a command."""
    return next((s for s in services if s.meshed and s.app_pid is not None), None)


async def _demo(services: tuple[ServiceRuntime, ...], *, duration: float, rate: float) -> int:
    target = _target(services)
    if target is None or target.inbound is None:
        print("pymesh demo: no meshed service with a command to send traffic to", file=sys.stderr)
        return 1
    for svc in services:
        print(svc.status_line())
    authority = f"{target.name}.{target.namespace}"  # Host: names the service, as a client would
    if target.apps[0][0]:
        authority += f":{target.apps[0][0]}"
    client = LoadClient(target.inbound, authority, rate=rate)
    dashboard = Dashboard(
        services,
        client,
        target=target.display_name,
        duration=duration,
        out=sys.stdout,
        tty=sys.stdout.isatty(),
    )
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    done = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(client.run(done), name="demo client")
        tg.create_task(dashboard.run(done, started_at), name="demo table")
        await asyncio.sleep(duration)
        done.set()  # the client stops; the table is drawn once more
    ok = client.ok
    print(
        f"done: {client.sent} requests to {target.display_name} "
        f"(via {format_address(target.inbound)}), {ok} ok, in {loop.time() - started_at:.1f} s"
    )
    if ok == 0:
        print("pymesh demo: no request got through the mesh (see the table)", file=sys.stderr)
        return 1
    return 0


def demo_main(args: argparse.Namespace) -> int:
    """`pymesh demo [--duration S] [--rate RPS] [--config FILE_OR_DIR]`."""
    duration: float = args.duration
    rate: float = args.rate
    if not (duration > 0 and rate > 0 and math.isfinite(duration) and math.isfinite(rate)):
        print("pymesh demo: --duration and --rate must be positive numbers", file=sys.stderr)
        return 2
    try:
        config = Path(args.config) if args.config else bundled_config()
    except FileNotFoundError as exc:
        print(f"pymesh demo: {exc}", file=sys.stderr)
        return 1
    configure_logging("warning")  # the table is the output; the control plane's log is not
    mesh = LocalMesh(config)

    async def main(services: tuple[ServiceRuntime, ...]) -> int:
        return await _demo(services, duration=duration, rate=rate)

    return run_loop(supervise(mesh, main, prog="pymesh demo"), loop="asyncio")
