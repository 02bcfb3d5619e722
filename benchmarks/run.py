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
import functools
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
from benchmarks.pki import Pki, PkiError
from benchmarks.wrkparse import WrkParseError, WrkResult, fixed_rate_lua, parse_wrk

__all__ = ["ROWS", "Row", "Settings", "main"]

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
RESULTS_DIR = ROOT / "benchmarks" / "results"
PARTIAL_DIR = RESULTS_DIR / "partial"
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
    _pki: Pki | None = None

    def pki(self) -> Pki:
        """The run's CA and identities (made on first use with this tree's `pymesh ca`)."""
        if self._pki is None:
            self._pki = Pki(self.tmp / "pki", python=self.python, env=_tree_env())
        return self._pki


@dataclass(slots=True)
class Target:
    """What the load generator drives for one row: a port on 127.0.0.1, the proxies under
    test (on the proxy core; their CPU is summed: one, or both of a sidecar pair) and the
    row's helpers on the load core (a TLS client; their CPU counts as the load side's)."""

    port: int
    proxies: tuple[peers.Proc, ...] = ()
    helpers: tuple[peers.Proc, ...] = ()

    def processes(self) -> tuple[peers.Proc, ...]:
        """Every process of the row."""
        return (*self.proxies, *self.helpers)


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


def _tree_env() -> dict[str, str]:
    # run the pymesh of this source tree, installed or not
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def _sidecar_missing() -> str | None:
    if not (SRC / "pymesh" / "proxy" / "sidecar.py").is_file():
        return "the sidecar is not built yet (no src/pymesh/proxy/sidecar.py): pymesh rows skipped"
    return None


def _ca_missing() -> str | None:
    if not (SRC / "pymesh" / "tls" / "ca.py").is_file():
        return "the pymesh CA (src/pymesh/tls/ca.py) makes the certificates: not built yet"
    return None


@functools.cache
def _haproxy_ssl_missing() -> str | None:
    try:
        binary = _tool("haproxy")
    except BenchError:
        return None  # missing_tools() reports it
    said = _version_text([binary, "-vv"])
    if "openssl" not in said.lower():
        return "this haproxy is built without OpenSSL (haproxy -vv): TLS rows skipped"
    return None


@dataclass(frozen=True, slots=True)
class Direct:
    """No proxy: wrk → nginx."""

    def tools(self) -> tuple[str, ...]:
        return ()

    def unavailable(self) -> str | None:
        return None

    def start(self, env: Env, name: str) -> Target:
        return Target(env.backend_port)


SERVER_SA = "backend"
"""The service account of the proxy under test in the TLS rows (haproxy's certificate too)."""
CLIENT_SA = "client"
"""The service account of the TLS client in front of the TLS rows (allowed by TrafficTarget)."""


def _start_haproxy(
    env: Env, name: str, cfg_text: str, port: int, *, core: int, http: bool
) -> peers.Proc:
    """Start haproxy with `cfg_text` (listening on `port`), pinned to `core`; returns once it
    answers HTTP (`http`) or accepts connections."""
    cfg = env.tmp / f"{name.replace('/', '-')}.cfg"
    cfg.write_text(cfg_text)
    proc = env.procs.start(name, [_tool("haproxy"), "-db", "-f", str(cfg)], core=core)
    if http:
        peers.wait_http(proc, port, "/", timeout=10.0)
    else:
        peers.wait_port(proc, port, timeout=10.0)
    return proc


@dataclass(frozen=True, slots=True)
class Haproxy:
    """haproxy, one thread, `mode tcp` (L4) or `mode http` (L7), in front of nginx.

    `h2c`: the frontend takes prior-knowledge HTTP/2 (`bind ... proto h2`), nginx still
    gets HTTP/1.1. `tls`: the frontend terminates TLS and requires a client certificate
    verified against the run's CA (`bind ... ssl crt ... ca-file ... verify required`; put a
    `TlsClient` in front). `acl_log`: a path ACL and `option httplog` to its log file.
    """

    mode: str
    h2c: bool = False
    tls: bool = False
    acl_log: bool = False

    def tools(self) -> tuple[str, ...]:
        return ("haproxy",)

    def unavailable(self) -> str | None:
        return (_ca_missing() or _haproxy_ssl_missing()) if self.tls else None

    def start(self, env: Env, name: str) -> Target:
        port = peers.free_port()
        bind_tls = None
        if self.tls:
            ident = env.pki().identity(SERVER_SA)
            bind_tls = peers.HaproxyTls(ident.haproxy_pem, ident.bundle)
        text = peers.haproxy_config(
            mode=self.mode,
            port=port,
            backend_port=env.backend_port,
            h2c=self.h2c,
            bind_tls=bind_tls,
            acl_log=self.acl_log,
        )
        # no HTTP/1.1 in clear text on h2c or TLS ports: wait for the port, and check_target
        # sends the first request (over h2, or through the TLS client)
        plain_h1 = not (self.h2c or self.tls)
        proc = _start_haproxy(env, name, text, port, core=env.settings.proxy_core, http=plain_h1)
        return Target(port, (proc,))


def _start_sidecar(
    env: Env,
    name: str,
    config: Path,
    *,
    service: str,
    app: int,
    codec: str | None = None,
    loop: str | None = None,
    identity: Path | None = None,
    access_log: bool = False,
    inbound: int | None = None,
) -> tuple[peers.Proc, int, int]:
    """Start `python -m pymesh proxy` on the proxy core (its inbound listener on `inbound`,
    or a free port); (process, inbound, outbound) once its admin endpoint answers /ready
    (bounded, 30 s)."""
    inbound = peers.free_port() if inbound is None else inbound
    outbound, admin = peers.free_port(), peers.free_port()
    argv = peers.pymesh_argv(
        python=env.python,
        config=config,
        inbound=inbound,
        outbound=outbound,
        admin=admin,
        app=app,
        codec=codec,
        loop=loop,
        service=service,
        identity_dir=identity,
        access_log=access_log,
    )
    proc = env.procs.start(name, argv, core=env.settings.proxy_core, env=_tree_env())
    peers.wait_http(proc, admin, "/ready", timeout=30.0)
    return proc, inbound, outbound


@dataclass(frozen=True, slots=True)
class Pymesh:
    """The pymesh sidecar (`python -m pymesh proxy`): inbound listener → --app nginx.

    `listener="outbound"` drives the outbound listener instead, which routes to the Service
    `backend` (whose endpoint is nginx) by Host / `:authority` and detects h2c. `mtls`: the
    Mesh is STRICT and the sidecar gets an identity from the run's CA (`--identity-dir`; put a
    `TlsClient` in front); `allow`: service accounts a TrafficTarget allows (authorization on);
    `access_log`: the access log on (to the process's log file).
    """

    protocol: str  # the Service port's protocol: "tcp" (L4 relay) or "http" (L7)
    codec: str | None = None  # --http1-codec
    loop: str | None = None  # --loop
    listener: str = "inbound"  # "inbound" or "outbound"
    mtls: bool = False
    allow: tuple[str, ...] = ()
    access_log: bool = False

    def tools(self) -> tuple[str, ...]:
        return ()

    def unavailable(self) -> str | None:
        return _sidecar_missing() or (_ca_missing() if self.mtls else None)

    def start(self, env: Env, name: str) -> Target:
        cfg = env.tmp / f"{name}.yaml"
        cfg.write_text(
            peers.pymesh_config(
                protocol=self.protocol,
                backend_port=env.backend_port,
                mtls="STRICT" if self.mtls else "DISABLE",
                allow=self.allow,
            )
        )
        identity = env.pki().identity(SERVER_SA).dir if self.mtls else None
        proc, inbound, outbound = _start_sidecar(
            env,
            name,
            cfg,
            service="backend",
            app=env.backend_port,
            codec=self.codec,
            loop=self.loop,
            identity=identity,
            access_log=self.access_log,
        )
        return Target(outbound if self.listener == "outbound" else inbound, (proc,))


@dataclass(frozen=True, slots=True)
class TlsClient:
    """A TLS client in front of a TLS peer, for wrk (which cannot present a certificate).

    haproxy, one thread, `mode tcp`, on the **load core** (with wrk and nginx): it takes
    wrk's plaintext connections and opens one TLS 1.3 connection per connection to the
    proxy under test, with the `client` identity's certificate and the server's verified
    (`server ... ssl crt ... ca-file ... verify required`, ALPN `alpn`, no SNI). The same
    client drives haproxy and pymesh, so the proxy core sees the same TLS traffic; the
    client's CPU counts as the load side's.
    """

    inner: Peer
    alpn: str | None = "http/1.1"

    def tools(self) -> tuple[str, ...]:
        return ("haproxy", *self.inner.tools())

    def unavailable(self) -> str | None:
        return _ca_missing() or _haproxy_ssl_missing() or self.inner.unavailable()

    def start(self, env: Env, name: str) -> Target:
        target = self.inner.start(env, name)
        ident = env.pki().identity(CLIENT_SA)
        port = peers.free_port()
        text = peers.haproxy_config(
            mode="tcp",
            port=port,
            backend_port=target.port,
            server_tls=peers.HaproxyTls(ident.haproxy_pem, ident.bundle, self.alpn),
            server_name="proxy",
        )
        front = _start_haproxy(
            env, f"{name}/tls-client", text, port, core=env.settings.load_core, http=False
        )
        return Target(port, target.proxies, (*target.helpers, front))


PAIR_CLIENT = "web"
"""The client-side service of the sidecar-pair rows (wrk sends `Host: api` to it)."""
PAIR_SERVER = "api"
"""The server-side service of the sidecar-pair rows (its app is nginx)."""


@dataclass(frozen=True, slots=True)
class HaproxyPair:
    """Two haproxies (one thread each, both on the proxy core), `mode http`: A takes plaintext
    and originates TLS with the `web` certificate (`server ... ssl crt ... ca-file ...
    verify required`), B terminates it, requiring and verifying the client certificate
    (`bind ... ssl crt ... ca-file ... verify required`), then plaintext to nginx. No ACL,
    no logging; A reuses its connections to B (`http-reuse always`)."""

    def tools(self) -> tuple[str, ...]:
        return ("haproxy",)

    def unavailable(self) -> str | None:
        return _ca_missing() or _haproxy_ssl_missing()

    def start(self, env: Env, name: str) -> Target:
        pki = env.pki()
        client, server = pki.identity(PAIR_CLIENT), pki.identity(PAIR_SERVER)
        a_port, b_port = peers.free_port(), peers.free_port()
        core = env.settings.proxy_core
        b_text = peers.haproxy_config(
            mode="http",
            port=b_port,
            backend_port=env.backend_port,
            bind_tls=peers.HaproxyTls(server.haproxy_pem, server.bundle),
        )
        b = _start_haproxy(env, f"{name}/b", b_text, b_port, core=core, http=False)
        a_text = peers.haproxy_config(
            mode="http",
            port=a_port,
            backend_port=b_port,
            server_tls=peers.HaproxyTls(client.haproxy_pem, client.bundle),
            server_name="b",
        )
        a = _start_haproxy(env, f"{name}/a", a_text, a_port, core=core, http=True)
        return Target(a_port, (a, b))


@dataclass(frozen=True, slots=True)
class PymeshPair:
    """Two `pymesh proxy` processes (both on the proxy core) sharing one STRICT mesh config:
    `web`'s sidecar, whose outbound listener wrk drives (`Host: api`, as an application
    using it as its HTTP proxy would), originates mTLS to `api`'s sidecar, whose inbound
    listener checks the TrafficTarget allowing `web` and forwards to nginx (`--app`). Each
    has its identity from `pymesh ca issue` (`--identity-dir`); metrics on, access log off."""

    codec: str | None = None

    def tools(self) -> tuple[str, ...]:
        return ()

    def unavailable(self) -> str | None:
        return _sidecar_missing() or _ca_missing()

    def start(self, env: Env, name: str) -> Target:
        pki = env.pki()
        client, server = pki.identity(PAIR_CLIENT), pki.identity(PAIR_SERVER)
        cfg = env.tmp / f"{name}.yaml"
        # the api sidecar's inbound port goes into the config (its Service's endpoint), so
        # pick it first and start that sidecar on it
        api_inbound = peers.free_port()
        cfg.write_text(peers.pymesh_pair_config(server_inbound=api_inbound))
        api, _, _ = _start_sidecar(
            env,
            f"{name}/{PAIR_SERVER}",
            cfg,
            service=PAIR_SERVER,
            app=env.backend_port,
            codec=self.codec,
            identity=server.dir,
            inbound=api_inbound,
        )
        # web's own inbound listener gets no traffic; its --app is a port nothing listens on
        web, _, web_outbound = _start_sidecar(
            env,
            f"{name}/{PAIR_CLIENT}",
            cfg,
            service=PAIR_CLIENT,
            app=peers.free_port(),
            codec=self.codec,
            identity=client.dir,
        )
        return Target(web_outbound, (web, api))


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: what is driven, by which load generator, compared with what.

    `group` pairs a row with the `baseline` row of the same group (ratios); `headers` are
    extra request headers; `load` is "wrk" (HTTP/1.1) or "h2load" (h2c, prior knowledge);
    rows with `default=False` run only when named in --rows; `reference` names the row whose
    fixed-rate latency this row's is compared with ("added" latency: the sidecar pairs).
    """

    name: str
    label: str
    group: str
    peer: Peer
    baseline: bool = False
    headers: tuple[str, ...] = ()
    default: bool = True
    load: str = "wrk"
    reference: str | None = None


_CLOSE = ("Connection: close",)
_BACKEND_AUTHORITY = (":authority: backend:8080",)  # the bench config's Service and port
_PAIR_HOST = (f"Host: {PAIR_SERVER}",)  # the pair's server Service, its only port

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
    # TLS in, from a TLS client with a certificate (haproxy, mode tcp, on the load core)
    Row(
        "haproxy-l7-tls",
        "haproxy L7 TLS + ACL + log",
        "l7-tls",
        TlsClient(Haproxy("http", tls=True, acl_log=True)),
        baseline=True,
    ),
    Row(
        "pymesh-l7-mtls",
        "pymesh L7 mTLS + authz + metrics + access log",
        "l7-tls",
        TlsClient(
            Pymesh("http", codec="httptools", mtls=True, allow=(CLIENT_SA,), access_log=True)
        ),
    ),
    # a sidecar pair: wrk → A (plaintext in, TLS out) → B (TLS in, plaintext out) → nginx
    Row(
        "pair-haproxy",
        "haproxy pair (TLS between)",
        "pair",
        HaproxyPair(),
        baseline=True,
        headers=_PAIR_HOST,
        reference="direct",
    ),
    Row(
        "pair-pymesh-mtls",
        "pymesh sidecar pair (mTLS, authz, metrics)",
        "pair",
        PymeshPair(codec="httptools"),
        headers=_PAIR_HOST,
        reference="direct",
    ),
    # TLS keep-alive without filters (DESIGN.md §5 "TLS keep-alive"); not in the default set
    Row(
        "haproxy-l7-tls-bare",
        "haproxy L7 TLS (client cert verified)",
        "l7-tls-bare",
        TlsClient(Haproxy("http", tls=True)),
        baseline=True,
        default=False,
    ),
    Row(
        "pymesh-l7-mtls-bare",
        "pymesh L7 mTLS (no authz, no access log)",
        "l7-tls-bare",
        TlsClient(Pymesh("http", codec="httptools", mtls=True)),
        default=False,
    ),
    Row(
        "haproxy-l4-tls",
        "haproxy L4 TLS (mode tcp)",
        "l4-tls",
        TlsClient(Haproxy("tcp", tls=True), alpn=None),
        baseline=True,
        default=False,
    ),
    Row(
        "pymesh-l4-mtls",
        "pymesh L4 mTLS (tcp port, uvloop)",
        "l4-tls",
        TlsClient(Pymesh("tcp", loop="uvloop", mtls=True), alpn=None),
        default=False,
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
    """Rows named in `spec` ('a,b', 'all' or None = defaults; a group's name, such as
    'pair' or 'l7-tls', selects every row of that group) plus their groups' baselines and
    the rows they are compared with (`reference`).

    Returns the rows in declaration order and notes on what was added; raises ValueError on
    an unknown name.
    """
    by_name = {row.name: row for row in rows}
    groups = {row.group for row in rows}
    if spec is None:
        wanted = {row.name for row in rows if row.default}
    elif spec.strip() == "all":
        wanted = set(by_name)
    else:
        tokens = {name.strip() for name in spec.split(",") if name.strip()}
        unknown = sorted(tokens - set(by_name) - groups)
        if unknown:
            raise ValueError(
                f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(by_name)}, all; "
                f"groups: {', '.join(sorted(groups))}"
            )
        wanted = {row.name for row in rows if row.name in tokens or row.group in tokens}
    notes: list[str] = []
    for row in rows:
        if row.name in wanted and not row.baseline:
            for base in rows:
                if base.baseline and base.group == row.group and base.name not in wanted:
                    wanted.add(base.name)
                    notes.append(f"added baseline row {base.name} (for {row.name}'s ratios)")
    for row in rows:
        ref = row.reference
        if row.name in wanted and ref is not None and ref not in wanted:
            if ref not in by_name:
                raise ValueError(f"row {row.name}: reference row {ref!r} does not exist")
            wanted.add(ref)
            notes.append(f"added reference row {ref} (for {row.name}'s added latency)")
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


def _version_text(argv: list[str]) -> str:
    """What `argv` prints (stdout and stderr; bounded, 10 s), or 'unknown (why)'."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return done.stdout + done.stderr


def _version(argv: list[str]) -> str:
    lines = _version_text(argv).strip().splitlines()
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
    ticks0 = machine.read_core_ticks()
    own0, kids0 = time.process_time(), _children_cpu_s()
    backend0 = peers.process_cpu_seconds(backend.pid)
    wall0 = time.monotonic()
    helpers0 = _cpu_by_process(target.helpers)
    before = _cpu_by_process(target.proxies)
    try:
        result = drive()
    finally:
        for proc in target.processes():
            if not proc.alive():
                raise BenchError(f"{proc.name} crashed under load: " + proc.describe_exit())
    after = _cpu_by_process(target.proxies)
    helpers = {k: v - helpers0[k] for k, v in _cpu_by_process(target.helpers).items()}
    by_process = {k: v - before[k] for k, v in after.items()}
    cpu = sum(by_process.values()) if by_process else None
    wall = time.monotonic() - wall0
    ticks1 = machine.read_core_ticks()
    load_ours = (
        (time.process_time() - own0)
        + (_children_cpu_s() - kids0)
        + (peers.process_cpu_seconds(backend.pid) - backend0)
        + sum(helpers.values())
    )
    m = _measurement(result, cpu)
    if len(by_process) > 1:
        m["proxy_cpu_s_by_process"] = by_process
    if helpers:
        m["load_helpers_cpu_s"] = helpers
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


def _cpu_by_process(procs: Sequence[peers.Proc]) -> dict[str, float]:
    return {p.name: peers.process_cpu_seconds(p.pid) for p in procs}


def _tails(target: Target) -> str:
    parts = [
        f"[{p.name}]\n{tail}" if len(target.processes()) > 1 else tail
        for p in target.processes()
        if (tail := p.tail())
    ]
    return "\n".join(parts)


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
            tail = _tails(target)
            raise BenchError(problem + (f"; proxy log tail:\n{tail}" if tail else ""))
        return
    try:
        reply = peers.http_get(
            target.port, "/", timeout=5.0, headers=row.headers if row is not None else ()
        )
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
        tail = _tails(target)
        raise BenchError(problem + (f"; proxy log tail:\n{tail}" if tail else ""))


def _peer_doc(peer: object) -> dict[str, Any]:
    """{"kind": class name in lower case, field: value...}; a peer inside (a TLS client's)
    nests the same way."""
    names: dict[str, Any] = getattr(peer, "__dataclass_fields__", {})
    out: dict[str, Any] = {"kind": type(peer).__name__.lower()}
    for n in names:
        value = getattr(peer, n)
        if hasattr(value, "__dataclass_fields__"):
            value = _peer_doc(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[n] = value
    return out


def _row_doc(row: Row) -> dict[str, Any]:
    return {
        "name": row.name,
        "label": row.label,
        "group": row.group,
        "baseline": row.baseline,
        "peer": _peer_doc(row.peer),
        "headers": list(row.headers),
        "load": row.load,
        "reference": row.reference,
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
            except (peers.StartError, BenchError, PkiError, OSError) as exc:
                doc["status"], doc["note"] = "failed", f"did not start: {exc}"
                _say(f"FAIL  {row.name}: {doc['note']}")
                procs.stop_named(row.name)
                continue
            started[row.name] = target
            pids = ", ".join(f"{p.name} {p.pid}" for p in target.processes())
            pid = f" ({pids})" if pids else ""
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
                proxy = bool(target.proxies)
                noise = report.interference_of(m, proxy=proxy)
                if best is not None and noise >= report.interference_of(best, proxy=proxy):
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


def is_full_run(rows: str | None, *, quick: bool, runs: int) -> bool:
    """Whether a run is the full one the README shows: the default rows, not --quick, ≥ 3
    runs."""
    return rows is None and not quick and runs >= 3


def output_dir(out: Path | None, *, full: bool) -> Path:
    """Where a run's JSON goes: `--out`, else benchmarks/results for a full run and
    benchmarks/results/partial for any other (so the newest file in benchmarks/results is
    always the full run the README table shows)."""
    if out is not None:
        return out
    return RESULTS_DIR if full else PARTIAL_DIR


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
    p.add_argument(
        "--out",
        type=Path,
        help="where the JSON goes (default: benchmarks/results for a full run, "
        "benchmarks/results/partial for --rows, --quick or fewer than 3 runs)",
    )
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
    full = is_full_run(args.rows, quick=bool(args.quick), runs=settings.runs)
    out = output_dir(args.out, full=full)
    out.mkdir(parents=True, exist_ok=True)
    path = result_path(doc, out)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    _say(f"\nwrote {path} ({time.monotonic() - started:.0f} s)\n")
    _say(report.render_report(doc, path.name))
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
