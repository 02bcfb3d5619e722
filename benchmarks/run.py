"""`make bench`: pymesh against haproxy, side by side, on loopback (DESIGN.md §5).

    python -m benchmarks.run                       # every default row, 3 runs, 10 s + 10 s each
    python -m benchmarks.run --quick               # 3 s runs
    python -m benchmarks.run --rows pymesh-l7-httptools --runs 5
    python -m benchmarks.run --report-only [FILE]  # README table from the newest (or FILE) JSON

nginx (the backend) and wrk (the load generator) run on one core, the proxy under test
(haproxy or the pymesh sidecar) on the other, each pinned with `taskset -c`. Per row and run:
a saturation run (`wrk -t1 -c50 --latency`: req/s, p50, p99, proxy CPU per request) and a
fixed-rate run (wrk held at 1,000 req/s by a Lua script: proxy CPU µs per request, the
regression figure). Rows are interleaved run by run, so drift hits every row alike; each
figure is the median of the runs. A row is a small declaration in ROWS.

HTTP/2 rows drive h2c with h2load instead (`-c10 -m10`: 10 streams per connection; fixed rate
with `--rps`); their percentiles come from h2load's per-request log.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from benchmarks import machine, peers, report
from benchmarks.h2loadparse import (
    H2loadParseError,
    H2loadResult,
    parse_h2load,
    percentiles_from_log,
)
from benchmarks.wrkparse import WrkParseError, WrkResult, fixed_rate_lua, parse_wrk

__all__ = ["ROWS", "Row", "Settings", "main"]

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
RESULTS_DIR = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"


MAX_ERROR_SHARE = 0.01
"""A row with more failed requests than this share in one run is failed, not reported."""


class BenchError(RuntimeError):
    """A row could not be measured (load generator failed, proxy died, wrong answers)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How long and how hard each row is driven, and where everything is pinned."""

    runs: int = 3
    duration_s: float = 10.0
    rate: float = 1000.0
    rate_duration_s: float = 10.0
    connections: int = 50
    rate_connections: int = 10
    threads: int = 1
    warmup_s: float = 2.0
    load_core: int = 0
    proxy_core: int = 1
    settle_s: float = 5.0  # at most this long, wait for quiet cores before each measurement
    max_interference: float = 0.2  # repeat a measurement where others took more of a core
    retries: int = 2  # at most this many repeats per measurement
    h2_connections: int = 10  # h2load -c at saturation (HTTP/2 rows)
    h2_streams: int = 10  # h2load -m: concurrent streams per connection


@dataclass(slots=True)
class Env:
    """What a peer needs to start: the temp dir, the process set, nginx's port, settings."""

    tmp: Path
    procs: peers.Processes
    backend_port: int
    settings: Settings
    python: str = sys.executable


@dataclass(slots=True)
class Target:
    """What the load generator drives for one row: a port on 127.0.0.1, the proxy process."""

    port: int
    proc: peers.Proc | None


class Peer(Protocol):
    """Something wrk can be pointed at: started once per benchmark, measured many times."""

    def tools(self) -> tuple[str, ...]:
        """Programs it needs on PATH (or in /usr/sbin)."""
        ...

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (the row is then skipped), or None."""
        ...

    def start(self, env: Env, name: str) -> Target:
        """Start it (pinned to the proxy core) and return once it is ready."""
        ...


@dataclass(frozen=True, slots=True)
class Direct:
    """No proxy: wrk → nginx."""

    def tools(self) -> tuple[str, ...]:
        return ()

    def unavailable(self) -> str | None:
        return None

    def start(self, env: Env, name: str) -> Target:
        return Target(env.backend_port, None)


@dataclass(frozen=True, slots=True)
class Haproxy:
    """haproxy, one thread, `mode tcp` (L4) or `mode http` (L7), in front of nginx.

    `h2c`: the frontend takes prior-knowledge HTTP/2 (`bind ... proto h2`), nginx still
    gets HTTP/1.1.
    """

    mode: str
    h2c: bool = False

    def tools(self) -> tuple[str, ...]:
        return ("haproxy",)

    def unavailable(self) -> str | None:
        return None

    def start(self, env: Env, name: str) -> Target:
        port = peers.free_port()
        cfg = env.tmp / f"{name}.cfg"
        cfg.write_text(
            peers.haproxy_config(
                mode=self.mode, port=port, backend_port=env.backend_port, h2c=self.h2c
            )
        )
        proc = env.procs.start(
            name, [_tool("haproxy"), "-db", "-f", str(cfg)], core=env.settings.proxy_core
        )
        if self.h2c:  # no HTTP/1.1 on this port; check_target sends an h2 request
            peers.wait_port(proc, port, timeout=10.0)
        else:
            peers.wait_http(proc, port, "/", timeout=10.0)
        return Target(port, proc)


@dataclass(frozen=True, slots=True)
class Pymesh:
    """The pymesh sidecar (`python -m pymesh proxy`): inbound listener → --app nginx.

    `listener="outbound"` drives the outbound listener instead, which routes to the Service
    `backend` (whose endpoint is nginx) by Host / `:authority` and detects h2c.
    """

    protocol: str  # the Service port's protocol: "tcp" (L4 relay) or "http" (L7)
    codec: str | None = None  # --http1-codec
    loop: str | None = None  # --loop
    listener: str = "inbound"  # "inbound" or "outbound"

    def tools(self) -> tuple[str, ...]:
        return ()

    def unavailable(self) -> str | None:
        if not (SRC / "pymesh" / "proxy" / "sidecar.py").is_file():
            return (
                "the sidecar is not built yet (no src/pymesh/proxy/sidecar.py): pymesh rows skipped"
            )
        return None

    def start(self, env: Env, name: str) -> Target:
        inbound, outbound, admin = peers.free_port(), peers.free_port(), peers.free_port()
        cfg = env.tmp / f"{name}.yaml"
        cfg.write_text(peers.pymesh_config(protocol=self.protocol, backend_port=env.backend_port))
        argv = peers.pymesh_argv(
            python=env.python,
            config=cfg,
            inbound=inbound,
            outbound=outbound,
            admin=admin,
            app=env.backend_port,
            codec=self.codec,
            loop=self.loop,
        )
        # the sidecar of this source tree, installed or not
        path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
        proc = env.procs.start(name, argv, core=env.settings.proxy_core, env={"PYTHONPATH": path})
        peers.wait_http(proc, admin, "/ready", timeout=30.0)
        return Target(outbound if self.listener == "outbound" else inbound, proc)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: what is driven, by which load generator, compared with what.

    `group` pairs a row with the `baseline` row of the same group (ratios); `headers` are
    extra request headers; `load` is "wrk" (HTTP/1.1) or "h2load" (h2c, prior knowledge);
    rows with `default=False` run only when named in --rows.
    """

    name: str
    label: str
    group: str
    peer: Peer
    baseline: bool = False
    headers: tuple[str, ...] = ()
    default: bool = True
    load: str = "wrk"


_CLOSE = ("Connection: close",)
_BACKEND_AUTHORITY = (":authority: backend:8080",)  # the bench config's Service and port

ROWS: tuple[Row, ...] = (
    Row("direct", "direct (wrk → nginx)", "direct", Direct()),
    Row("haproxy-l4", "haproxy L4 (mode tcp)", "l4", Haproxy("tcp"), baseline=True),
    Row("haproxy-l7", "haproxy L7 (mode http)", "l7", Haproxy("http"), baseline=True),
    Row("pymesh-l4-uvloop", "pymesh L4 (uvloop)", "l4", Pymesh("tcp", loop="uvloop")),
    Row("pymesh-l4-asyncio", "pymesh L4 (asyncio loop)", "l4", Pymesh("tcp", loop="asyncio")),
    Row("pymesh-l7-httptools", "pymesh L7 httptools", "l7", Pymesh("http", codec="httptools")),
    Row("pymesh-l7-h11", "pymesh L7 h11", "l7", Pymesh("http", codec="h11")),
    # HTTP/2 (h2c, prior knowledge) in, HTTP/1.1 to nginx; h2load, 10 streams per connection
    Row(
        "haproxy-h2",
        "haproxy L7 HTTP/2 (h2c in, h2load)",
        "h2",
        Haproxy("http", h2c=True),
        baseline=True,
        load="h2load",
    ),
    Row(
        "pymesh-h2",
        "pymesh L7 HTTP/2 (h2c outbound, h2load)",
        "h2",
        Pymesh("http", codec="httptools", listener="outbound"),
        headers=_BACKEND_AUTHORITY,
        load="h2load",
    ),
    # a new connection per request (wrk sends Connection: close); not in the default set
    Row(
        "haproxy-l4-close",
        "haproxy L4, conn per request",
        "l4-close",
        Haproxy("tcp"),
        baseline=True,
        headers=_CLOSE,
        default=False,
    ),
    Row(
        "pymesh-l4-close-uvloop",
        "pymesh L4 (uvloop), conn per request",
        "l4-close",
        Pymesh("tcp", loop="uvloop"),
        headers=_CLOSE,
        default=False,
    ),
    Row(
        "pymesh-l4-close-asyncio",
        "pymesh L4 (asyncio), conn per request",
        "l4-close",
        Pymesh("tcp", loop="asyncio"),
        headers=_CLOSE,
        default=False,
    ),
)


def select_rows(spec: str | None, rows: Sequence[Row] = ROWS) -> tuple[list[Row], list[str]]:
    """Rows named in `spec` ('a,b', 'all' or None = defaults) plus their groups' baselines.

    Returns the rows in declaration order and notes on what was added; raises ValueError on
    an unknown name.
    """
    by_name = {row.name: row for row in rows}
    if spec is None:
        wanted = {row.name for row in rows if row.default}
    elif spec.strip() == "all":
        wanted = set(by_name)
    else:
        wanted = {name.strip() for name in spec.split(",") if name.strip()}
        unknown = sorted(wanted - set(by_name))
        if unknown:
            raise ValueError(
                f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(by_name)}, all"
            )
    notes: list[str] = []
    for row in rows:
        if row.name in wanted and not row.baseline:
            for base in rows:
                if base.baseline and base.group == row.group and base.name not in wanted:
                    wanted.add(base.name)
                    notes.append(f"added baseline row {base.name} (for {row.name}'s ratios)")
    return [row for row in rows if row.name in wanted], notes


def _tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if found is None:
        raise BenchError(f"{name} not found")
    return found


def missing_tools(rows: Sequence[Row]) -> list[str]:
    """Programs the selected rows need that are not installed."""
    needed = ["taskset", "wrk", "nginx", *(t for row in rows for t in row.peer.tools())]
    needed += [row.load for row in rows]
    out: list[str] = []
    for name in dict.fromkeys(needed):
        try:
            _tool(name)
        except BenchError:
            out.append(name)
    return out


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _pymesh_version() -> str:
    try:
        text = (SRC / "pymesh" / "_version.py").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return found.group(1) if found else "unknown"


def tool_versions() -> dict[str, str]:
    """First line of `haproxy -v`, `nginx -v`, `wrk -v`, `h2load --version`; pymesh's
    version in this tree."""
    out: dict[str, str] = {"pymesh": _pymesh_version()}
    for name, flag in (("haproxy", "-v"), ("nginx", "-v"), ("wrk", "-v"), ("h2load", "--version")):
        try:
            out[name] = _version([_tool(name), flag])
        except BenchError:
            out[name] = "not installed"
    return out


def git_commit() -> tuple[str, str]:
    """(full commit with '-dirty' if tracked or new files differ from HEAD, short hash)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=20, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return head + ("-dirty" if status else ""), head[:7]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loop_info() -> dict[str, str]:
    info = {"default": "uvloop"}
    try:
        info["uvloop"] = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        info["uvloop"] = "not installed"
    return info


# ---------------------------------------------------------------------------------------------
# measuring


def run_wrk(
    port: int,
    *,
    settings: Settings,
    duration_s: float,
    connections: int,
    headers: Sequence[str] = (),
    script: Path | None = None,
) -> WrkResult:
    """One wrk run on the load core against 127.0.0.1:port (bounded: duration + 30 s)."""
    argv = [
        "taskset",
        "-c",
        str(settings.load_core),
        _tool("wrk"),
        f"-t{settings.threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--latency",
    ]
    for header in headers:
        argv += ["-H", header]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}/")
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration_s + 30:.0f}s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()}")
    try:
        return parse_wrk(done.stdout)
    except WrkParseError as exc:
        raise BenchError(f"{exc}; wrk said: {(done.stdout + done.stderr).strip()[-400:]}") from exc


def h2load_argv(
    port: int,
    *,
    settings: Settings,
    duration_s: float | None,
    connections: int,
    headers: Sequence[str] = (),
    rate: float | None = None,
    log: Path | None = None,
    requests: int = 1,
) -> list[str]:
    """h2load on the load core against http://127.0.0.1:port/ (h2c, prior knowledge).

    `duration_s`: a timed run (`-D`, whole milliseconds), else `requests` requests (`-n`);
    `rate`: total requests per second, spread over the connections (`--rps` per client);
    `log`: h2load's per-request log (the source of the percentiles).
    """
    argv = [
        "taskset",
        "-c",
        str(settings.load_core),
        _tool("h2load"),
        f"-t{settings.threads}",
        f"-c{connections}",
        f"-m{settings.h2_streams}",
    ]
    if duration_s is not None:
        argv.append(f"-D{max(1, round(duration_s * 1000))}ms")
    else:
        argv.append(f"-n{requests}")
    if rate is not None:
        argv.append(f"--rps={rate / connections:g}")
    for header in headers:
        argv += ["-H", header]
    if log is not None:
        argv.append(f"--log-file={log}")
    argv.append(f"http://127.0.0.1:{port}/")
    return argv


def run_h2load(
    port: int,
    *,
    settings: Settings,
    duration_s: float | None,
    connections: int,
    headers: Sequence[str] = (),
    rate: float | None = None,
    log: Path | None = None,
    requests: int = 1,
) -> H2loadResult:
    """One h2load run (bounded: duration + 30 s); percentiles from `log` when given."""
    argv = h2load_argv(
        port,
        settings=settings,
        duration_s=duration_s,
        connections=connections,
        headers=headers,
        rate=rate,
        log=log,
        requests=requests,
    )
    limit = (duration_s or 0.0) + 30
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"h2load did not finish within {limit:.0f}s") from exc
    said = (done.stdout + done.stderr).strip()[-400:]
    if done.returncode != 0:
        raise BenchError(f"h2load exited {done.returncode}: {said}")
    try:
        pct: dict[str, float] | None = None
        if log is not None:
            with log.open() as lines:
                pct = percentiles_from_log(lines)
        return parse_h2load(done.stdout, pct)
    except (H2loadParseError, OSError) as exc:
        raise BenchError(f"{exc}; h2load said: {said}") from exc
    finally:
        if log is not None:
            log.unlink(missing_ok=True)


LoadResult = WrkResult | H2loadResult


def _measurement(result: LoadResult, cpu_s: float | None) -> dict[str, Any]:
    m = asdict(result)
    m["errors"] = result.errors
    m["proxy_cpu_s"] = cpu_s
    m["cpu_us_per_req"] = (
        cpu_s * 1e6 / result.requests if cpu_s is not None and result.requests else None
    )
    return m


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _foreign(busy: float | None, ours: float, wall: float) -> float | None:
    return None if busy is None or wall <= 0 else max(0.0, busy - ours) / wall


def measure_once(
    target: Target,
    *,
    settings: Settings,
    backend: peers.Proc,
    drive: Callable[[], LoadResult],
) -> dict[str, Any]:
    """One load-generator run (`drive`) with the proxy's CPU time read before and after.

    First waits (bounded by settings.settle_s) for both cores to be quiet; records in
    "interference" how much CPU other programs took from each core during the run (in
    cores: 0.05 = 5 % of one core).
    """
    waited, idle_share = (
        machine.wait_quiet((settings.load_core, settings.proxy_core), max_wait_s=settings.settle_s)
        if settings.settle_s > 0
        else (0.0, None)
    )
    proc = target.proc
    ticks0 = machine.read_core_ticks()
    own0, kids0 = time.process_time(), _children_cpu_s()
    backend0 = peers.process_cpu_seconds(backend.pid)
    wall0 = time.monotonic()
    before = peers.process_cpu_seconds(proc.pid) if proc is not None else None
    try:
        result = drive()
    finally:
        if proc is not None and not proc.alive():
            raise BenchError("proxy crashed under load: " + proc.describe_exit())
    cpu = (
        peers.process_cpu_seconds(proc.pid) - before
        if proc is not None and before is not None
        else None
    )
    wall = time.monotonic() - wall0
    ticks1 = machine.read_core_ticks()
    load_ours = (
        (time.process_time() - own0)
        + (_children_cpu_s() - kids0)
        + (peers.process_cpu_seconds(backend.pid) - backend0)
    )
    m = _measurement(result, cpu)
    shared = settings.load_core == settings.proxy_core
    m["interference"] = {
        "settle_wait_s": round(waited, 3),
        "busy_before": idle_share,
        "load_core_foreign": None
        if shared
        else _foreign(machine.busy_seconds(ticks0, ticks1, settings.load_core), load_ours, wall),
        "proxy_core_foreign": None
        if shared
        else _foreign(machine.busy_seconds(ticks0, ticks1, settings.proxy_core), cpu or 0.0, wall),
    }
    return m


def _check_h2(target: Target, row: Row, settings: Settings) -> str | None:
    try:
        r = run_h2load(
            target.port, settings=settings, duration_s=None, connections=1, headers=row.headers
        )
    except BenchError as exc:
        return f"h2 GET / through the proxy failed: {exc}"
    if r.succeeded != 1 or r.status_2xx != 1 or r.data_bytes != len(peers.BODY):
        return (
            f"h2 GET / through the proxy: {r.succeeded} succeeded, {r.status_2xx} 2xx, "
            f"{r.status_4xx} 4xx, {r.status_5xx} 5xx, {r.errored} errored, "
            f"{r.data_bytes} body bytes (want 1 2xx and {len(peers.BODY)} bytes)"
        )
    return None


def check_target(target: Target, row: Row | None = None, settings: Settings | None = None) -> None:
    """One GET through the target must return nginx's 200 and 100-byte body (over h2c
    with h2load for an h2load row)."""
    problem: str | None = None
    if row is not None and row.load == "h2load":
        problem = _check_h2(target, row, settings or Settings())
        if problem is not None:
            time.sleep(0.2)
            tail = target.proc.tail() if target.proc is not None else ""
            raise BenchError(problem + (f"; proxy log tail:\n{tail}" if tail else ""))
        return
    try:
        reply = peers.http_get(target.port, "/", timeout=5.0)
    except (OSError, http.client.HTTPException) as exc:
        problem = f"GET / through the proxy failed: {type(exc).__name__}: {exc}"
    else:
        if reply.status != 200 or reply.body != peers.BODY.encode():
            cause = reply.headers.get("x-pymesh-error", "")
            problem = (
                f"GET / through the proxy: status {reply.status}"
                + (f" (x-pymesh-error: {cause})" if cause else "")
                + f", body {reply.body[:80]!r}"
            )
    if problem is not None:
        time.sleep(0.2)  # let the proxy's last words reach its log
        tail = target.proc.tail() if target.proc is not None else ""
        raise BenchError(problem + (f"; proxy log tail:\n{tail}" if tail else ""))


def _peer_doc(peer: Peer) -> dict[str, Any]:
    names: dict[str, Any] = getattr(peer, "__dataclass_fields__", {})
    return {"kind": type(peer).__name__.lower(), **{n: getattr(peer, n) for n in names}}


def _row_doc(row: Row) -> dict[str, Any]:
    return {
        "name": row.name,
        "label": row.label,
        "group": row.group,
        "baseline": row.baseline,
        "peer": _peer_doc(row.peer),
        "headers": list(row.headers),
        "load": row.load,
        "status": "ok",
        "note": "",
        "runs": [],
        "median": None,
        "ratios": None,
    }


def _fmt_run(m: dict[str, Any]) -> str:
    cpu = m["cpu_us_per_req"]
    return (
        f"{m['rps']:>10,.0f} req/s  p50 {report.fmt_latency(m['percentiles_us']['50']):>9}  "
        f"p99 {report.fmt_latency(m['percentiles_us']['99']):>9}"
        + (f"  {cpu:6.1f} µs/req" if cpu is not None else "")
        + (f"  ⚠ {m['errors']} errors" if m["errors"] else "")
        + _fmt_interference(m.get("interference") or {})
    )


def _fmt_interference(info: dict[str, Any]) -> str:
    parts = [
        f"{name} core {share:.0%}"
        for name, key in (("proxy", "proxy_core_foreign"), ("load", "load_core_foreign"))
        if (share := info.get(key)) is not None and share > 0.05
    ]
    waited = info.get("settle_wait_s") or 0.0
    if waited > 1.0:
        parts.append(f"waited {waited:.0f}s for quiet")
    return f"  (other programs: {', '.join(parts)})" if parts else ""


def _say(text: str) -> None:
    print(text, flush=True)


def run_benchmark(rows: Sequence[Row], settings: Settings) -> dict[str, Any]:
    """Start nginx and every row's peer, measure all rows run by run, stop everything."""
    docs = {row.name: _row_doc(row) for row in rows}
    notes: list[str] = []
    load_before = os.getloadavg()
    commit, _ = git_commit()  # the code the peers are started from
    started: dict[str, Target] = {}
    with (
        tempfile.TemporaryDirectory(prefix="pymesh-bench-") as tmp_name,
        peers.Processes(Path(tmp_name)) as procs,
    ):
        tmp = Path(tmp_name)
        backend_port = peers.free_port()
        (tmp / "nginx.conf").write_text(peers.nginx_config(port=backend_port, tmp=tmp))
        nginx = procs.start(
            "nginx",
            [
                _tool("nginx"),
                "-p",
                str(tmp),
                "-e",
                str(tmp / "nginx-error.log"),
                "-c",
                str(tmp / "nginx.conf"),
            ],
            core=settings.load_core,
        )
        peers.wait_http(nginx, backend_port, "/", timeout=10.0)
        env = Env(tmp, procs, backend_port, settings)
        script = tmp / "fixed-rate.lua"
        script.write_text(fixed_rate_lua(settings.rate))

        for row in rows:
            doc = docs[row.name]
            reason = row.peer.unavailable()
            if reason is not None:
                doc["status"], doc["note"] = "skipped", reason
                _say(f"skip  {row.name}: {reason}")
                continue
            try:
                target = row.peer.start(env, row.name)
                check_target(target, row, settings)
            except (peers.StartError, BenchError, OSError) as exc:
                doc["status"], doc["note"] = "failed", f"did not start: {exc}"
                _say(f"FAIL  {row.name}: {doc['note']}")
                procs.stop_named(row.name)
                continue
            started[row.name] = target
            pid = f" pid {target.proc.pid}" if target.proc else ""
            _say(f"ready {row.name}: 127.0.0.1:{target.port}{pid}")

        def drive(row: Row, target: Target, *, fixed: bool, warmup: bool = False) -> LoadResult:
            # one run of the row's load generator: saturation, fixed rate or warm-up
            duration = (
                settings.warmup_s
                if warmup
                else settings.rate_duration_s
                if fixed
                else settings.duration_s
            )
            if row.load == "h2load":
                return run_h2load(
                    target.port,
                    settings=settings,
                    duration_s=duration,
                    connections=settings.rate_connections if fixed else settings.h2_connections,
                    headers=row.headers,
                    rate=settings.rate if fixed else None,
                    log=None if warmup else tmp / f"h2load-{row.name}.log",
                )
            return run_wrk(
                target.port,
                settings=settings,
                duration_s=duration,
                connections=settings.rate_connections if fixed else settings.connections,
                headers=row.headers,
                script=script if fixed else None,
            )

        def measure_clean(
            row: Row, target: Target, label: str, kind: str, discarded: list[dict[str, Any]]
        ) -> dict[str, Any]:
            # repeat (at most settings.retries times) a measurement during which other
            # programs took more than settings.max_interference of a core in use; keep the
            # quietest attempt
            fixed = kind == "fixed_rate"
            shown = "fixed rate" if fixed else "saturation"
            best: dict[str, Any] | None = None
            attempts = 0
            for attempt in range(settings.retries + 1):
                attempts = attempt + 1
                m = measure_once(
                    target,
                    settings=settings,
                    backend=nginx,
                    drive=lambda: drive(row, target, fixed=fixed),
                )
                noise = report.interference_of(m, proxy=target.proc is not None)
                if best is not None and noise >= report.interference_of(
                    best, proxy=target.proc is not None
                ):
                    discarded.append({"kind": kind, **m})
                else:
                    if best is not None:
                        discarded.append({"kind": kind, **best})
                    best = m
                if noise <= settings.max_interference:
                    break
                if attempt < settings.retries:
                    _say(f"{label} {row.name:<24} {shown} {_fmt_run(m)}  → noisy, repeating")
            assert best is not None
            quietest = f"  (quietest of {attempts})" if attempts > 1 else ""
            _say(f"{label} {row.name:<24} {shown} {_fmt_run(best)}{quietest}")
            return best

        def measure_row(row: Row, target: Target, label: str) -> None:
            doc = docs[row.name]
            try:
                discarded: list[dict[str, Any]] = []
                sat = measure_clean(row, target, label, "saturation", discarded)
                fixed = measure_clean(row, target, label, "fixed_rate", discarded)
                doc["runs"].append({"saturation": sat, "fixed_rate": fixed, "discarded": discarded})
                for kind, m in (("saturation", sat), ("fixed rate", fixed)):
                    if m["errors"] > MAX_ERROR_SHARE * max(1, m["requests"]):
                        raise BenchError(
                            f"{m['errors']} errors (socket errors or non-2xx/3xx) in "
                            f"{m['requests']} requests, {kind} run {len(doc['runs'])}"
                        )
            except BenchError as exc:
                doc["status"], doc["note"] = "failed", str(exc)
                _say(f"FAIL  {row.name}: {exc}")
                del started[row.name]
                procs.stop_named(row.name)

        if settings.warmup_s > 0:
            for row in rows:
                if (warm := started.get(row.name)) is not None:
                    try:
                        drive(row, warm, fixed=False, warmup=True)
                    except BenchError as exc:
                        _say(f"warm-up of {row.name} failed: {exc}")
        for i in range(settings.runs):
            for row in rows:
                if (live := started.get(row.name)) is not None:
                    measure_row(row, live, f"[{i + 1}/{settings.runs}]")
            if not nginx.alive():
                raise BenchError("nginx died: " + nginx.describe_exit())

    load_after = os.getloadavg()
    rows_out = [docs[row.name] for row in rows]
    report.summarize_rows(rows_out)
    notes += report.interference_notes(rows_out, settings.max_interference)
    return {
        "schema": report.SCHEMA,
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "loop": _loop_info(),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "kernel": platform.release(),
            "loadavg_start": list(load_before),
            "loadavg_end": list(load_after),
        },
        "pinning": {
            "load_core": settings.load_core,
            "backend_core": settings.load_core,
            "proxy_core": settings.proxy_core,
            "how": "taskset -c",
        },
        "settings": {
            **asdict(settings),
            "body_bytes": len(peers.BODY),
            "fixed_rate": "wrk + Lua delay()",
        },
        "tools": tool_versions(),
        "notes": notes,
        "rows": rows_out,
    }


# ---------------------------------------------------------------------------------------------
# files and the README


def result_path(doc: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """benchmarks/results/<UTC timestamp>-<short commit>.json."""
    stamp = doc["date"].replace("-", "").replace(":", "")
    short = doc["commit"][:7] or "unknown"
    return directory / f"{stamp}-{short}.json"


def newest_result(directory: Path = RESULTS_DIR) -> Path | None:
    """The newest result file (names start with a UTC timestamp)."""
    files = sorted(directory.glob("*.json"))
    return files[-1] if files else None


def load_result(path: Path) -> dict[str, Any]:
    """Read and validate a result file; raises ValueError listing every schema problem."""
    doc = json.loads(path.read_text())
    problems = report.validate_result(doc)
    if problems:
        raise ValueError(f"{path}: not a pymesh-bench result:\n  " + "\n  ".join(problems))
    assert isinstance(doc, dict)
    return doc


def update_readme(doc: dict[str, Any], source: Path, readme: Path = README) -> None:
    """Regenerate the README's results block from `doc`."""
    try:
        shown = source.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(source)
    block = report.render_report(doc, shown)
    readme.write_text(report.replace_between_markers(readme.read_text(), block))


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The harness's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark pymesh against haproxy on loopback (wrk, nginx backend, "
        "load generator and proxy pinned to different cores).",
        epilog="rows: " + ", ".join(r.name + ("" if r.default else " (optional)") for r in ROWS),
    )
    p.add_argument("--rows", metavar="A,B", help="rows to run (default: the default rows; 'all')")
    p.add_argument("--runs", type=int, default=3, help="runs per row, median reported (default 3)")
    p.add_argument("--duration", type=float, metavar="S", help="saturation run seconds (10)")
    p.add_argument("--rate-duration", type=float, metavar="S", help="fixed-rate run seconds (10)")
    p.add_argument("--rate", type=float, default=1000.0, help="fixed rate, req/s (1000)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c at saturation (50)")
    p.add_argument("--rate-connections", type=int, default=10, help="wrk -c at fixed rate (10)")
    p.add_argument("--h2-connections", type=int, default=10, help="h2load -c at saturation (10)")
    p.add_argument(
        "--h2-streams", type=int, default=10, help="h2load -m, streams per connection (10)"
    )
    p.add_argument("--warmup", type=float, metavar="S", help="warm-up seconds per row (2)")
    p.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    p.add_argument("--load-core", type=int, default=0, help="core of wrk and nginx (0)")
    p.add_argument("--proxy-core", type=int, default=1, help="core of the proxy under test (1)")
    p.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="S",
        help="before each measurement wait up to S s for both cores to be quiet (5; 0: never)",
    )
    p.add_argument(
        "--max-interference",
        type=float,
        default=0.2,
        metavar="F",
        help="repeat a measurement during which other programs took more than F of a pinned "
        "core (0.2 = 20%%; default 0.2)",
    )
    p.add_argument(
        "--retries", type=int, default=2, help="repeats per noisy measurement (default 2)"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    readme = p.add_mutually_exclusive_group()
    readme.add_argument(
        "--readme",
        action="store_true",
        help="update benchmarks/README.md even after a partial or --quick run",
    )
    readme.add_argument("--no-readme", action="store_true", help="never update the README")
    p.add_argument(
        "--report-only",
        nargs="?",
        const="newest",
        metavar="FILE",
        help="no run: regenerate the README table from FILE (default: the newest result)",
    )
    return p


def _settings(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    duration = args.duration if args.duration is not None else (3.0 if quick else 10.0)
    rate_duration = (
        args.rate_duration if args.rate_duration is not None else (3.0 if quick else 10.0)
    )
    warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    if args.runs < 1 or duration <= 0 or rate_duration <= 0 or args.rate <= 0:
        raise ValueError("--runs, --duration, --rate-duration and --rate must be positive")
    return Settings(
        runs=args.runs,
        duration_s=duration,
        rate=args.rate,
        rate_duration_s=rate_duration,
        connections=args.connections,
        rate_connections=args.rate_connections,
        h2_connections=args.h2_connections,
        h2_streams=args.h2_streams,
        warmup_s=warmup,
        load_core=args.load_core,
        proxy_core=args.proxy_core,
        settle_s=max(0.0, args.settle),
        max_interference=args.max_interference,
        retries=max(0, args.retries),
    )


def _report_only(spec: str, no_readme: bool) -> int:
    path = newest_result() if spec == "newest" else Path(spec)
    if path is None:
        print(f"no result files in {RESULTS_DIR}", file=sys.stderr)
        return 1
    try:
        doc = load_result(path)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.render_report(doc, path.name))
    if not no_readme:
        update_readme(doc, path)
        print(f"\nupdated {README.relative_to(ROOT)} from {path}")
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `with`: all peers are stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or only the report); 0 when every selected row ran or was skipped."""
    args = build_parser().parse_args(argv)
    if args.report_only is not None:
        return _report_only(args.report_only, args.no_readme)
    try:
        settings = _settings(args)
        rows, notes = select_rows(args.rows)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    missing = missing_tools(rows)
    if missing:
        print(
            f"error: missing {', '.join(missing)}; install them with "
            "`bash scripts/install-deps.sh bench` (Debian: haproxy nginx wrk util-linux)",
            file=sys.stderr,
        )
        return 2
    cores = os.sched_getaffinity(0)
    if {settings.load_core, settings.proxy_core} - cores:
        print(
            f"error: cores {settings.load_core} and {settings.proxy_core} are not both "
            f"available (this process may use {sorted(cores)}); pass --load-core/--proxy-core",
            file=sys.stderr,
        )
        return 2
    if settings.load_core == settings.proxy_core:
        notes.append("load generator and proxy share one core: figures are not comparable")
    os.sched_setaffinity(0, {settings.load_core})  # keep the harness off the proxy's core
    signal.signal(signal.SIGTERM, _on_sigterm)
    for note in notes:
        _say(note)
    started = time.monotonic()
    try:
        doc = run_benchmark(rows, settings)
    except KeyboardInterrupt:
        print("interrupted: every process stopped, nothing written", file=sys.stderr)
        return 130
    except (BenchError, peers.StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc["notes"] = notes + doc["notes"]
    problems = report.validate_result(doc)
    if problems:  # a harness bug: say so, but keep the data
        print("warning: result does not match its schema:\n  " + "\n  ".join(problems))
    args.out.mkdir(parents=True, exist_ok=True)
    path = result_path(doc, args.out)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    _say(f"\nwrote {path} ({time.monotonic() - started:.0f} s)\n")
    _say(report.render_report(doc, path.name))
    full = args.rows is None and not args.quick and settings.runs >= 3
    if args.readme or (full and not args.no_readme):
        update_readme(doc, path)
        _say(f"\nupdated {README.relative_to(ROOT)}")
    elif not args.no_readme:
        _say(
            "\nREADME not updated (partial or quick run); "
            f"`python -m benchmarks.run --report-only {path}` would"
        )
    return 1 if any(row["status"] == "failed" for row in doc["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
