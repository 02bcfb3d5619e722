"""Control-plane scale: N simulated sidecars subscribed to one control plane (DESIGN.md §5).

    python -m benchmarks.cp_scale --subscribers 1000 --services 100
    python -m benchmarks.cp_scale --subscribers 1000 --services 1000      # every view distinct
    python -m benchmarks.cp_scale --subscribers 1000 --services 100 --profile 3   # py-spy

The control plane runs as its own process (`python -m pymesh control-plane`, this source tree,
pinned to `--cp-core`), so its memory (VmRSS, VmHWM from /proc) and CPU time are its own. The
simulated sidecars live in this process (uvloop, pinned to `--bench-core`): each has its own
TLS connection and HTTP/2 stream (`POST /v1/stream`), made with the sidecar client's own
pieces (`H2Pool`, `TlsOrigin`, the client's request and NDJSON reader), so the control plane
serves exactly what it serves real sidecars. Authentication (`--auth`):

- `mtls` (default, what real sidecars do): one CSR per *service* (`ControlPlaneClient.join`),
  whose certificate every sidecar of that service then presents on its stream;
- `token`: each sidecar sends its own bootstrap token as `Authorization: Bearer` on the
  stream call, without a client certificate (cheaper handshakes).

The generated mesh has `--services` Services (`svc-0000`...) with a static endpoint per sidecar
of the service, and (topology `ring`) for each service an HTTPRouteGroup and a TrafficTarget
allowing its `--callers` predecessors, so each sidecar's view holds a handful of services; with
topology `open` there are no TrafficTargets and every view is the whole mesh. Subscribers are
spread round-robin over the services, so several sidecars share each (service, version) view.

A change is an edit of the Mesh resource (`certificateTTL` 24h ⇄ 23h): every view changes.
It is written at a random moment (after a pause of up to 1 s), as a user's edit would be, so the
wait for the control plane's 1 s file poll is uniform. For each change the harness records,
per sidecar, when the new version arrived, measured from the write of the file and from the
timestamp of the control plane's `config_applied` log line (the registry has published by
then); the result is p50/p99/max and the time until *all* sidecars have it, with the control
plane's CPU time, this process's CPU time and the CPU other programs took meanwhile. Each
change first waits (at most 5 s) for quiet cores, and is repeated (`--retries`) when other
programs took more than `--max-interference` of a core during it; the quietest attempt is
kept, the others are listed under `discarded`.

Not simulated: a real sidecar also validates each view (`Mesh.from_yaml`, on its own host) and
holds a `/v1/endpoints` stream whose registrations are changes too; here the endpoints are
static in the config, and a sidecar only records when each version arrived.

Output: a table on stdout and JSON in `benchmarks/results/partial/cp-scale-<UTC time>.json`
(schema `pymesh-cp-scale/1`). Not part of `make bench`'s README table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchmarks.machine import busy_seconds, read_core_ticks, wait_quiet
from pymesh.control.client import (
    ControlPlaneClient,
    ControlPlaneError,
    PinnedTrust,
    _lines,
    _request,
)
from pymesh.control.state import StateDir
from pymesh.proxy.mtls import ClientCredentials, TlsOrigin
from pymesh.proxy.pool2 import H2Pool

__all__ = [
    "SCHEMA",
    "ControlPlaneProcess",
    "Settings",
    "mesh_yaml",
    "percentile",
    "run_scale",
    "summarize_profile",
]

SCHEMA: Final = "pymesh-cp-scale/1"
GOAL_S: Final = 2.0
TRUST_DOMAIN: Final = "scale.local"
ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = ROOT / "benchmarks" / "results" / "partial"
TTLS: Final = ("24h", "23h")

Memory = dict[str, int | None]  # rss_kib, hwm_kib


@dataclass(frozen=True, slots=True)
class Settings:
    """One run's parameters (see `--help`)."""

    subscribers: int = 1000
    services: int = 100
    auth: str = "mtls"  # mtls | token
    topology: str = "ring"  # ring | open
    callers: int = 3
    concurrency: int = 50
    changes: int = 3
    cp_core: int | None = 1
    bench_core: int | None = 0
    settle_s: float = 2.0
    quiet_s: float = 5.0
    max_interference: float = 0.2  # of a core, by other programs, during a change
    retries: int = 2  # repeats of a change measured with more interference than that
    join_timeout_s: float = 600.0
    change_timeout_s: float = 60.0
    profile_changes: int = 0  # more changes, under py-spy (not in the summary)
    profile_rate: int = 500
    profile_native: bool = False


# -- the mesh -------------------------------------------------------------------------------------


def service_name(i: int) -> str:
    """The name of service number `i`."""
    return f"svc-{i:04d}"


def mesh_yaml(
    services: int, endpoints: Sequence[int], *, topology: str, callers: int, ttl: str
) -> str:
    """The generated mesh: `services` Services, `endpoints[i]` static endpoints for service i;
    topology `ring` adds per service a route group and a TrafficTarget naming `callers`
    predecessors as sources (`open`: no TrafficTargets, so every service may call every one)."""
    docs = [
        "apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: scale}\n"
        f"spec: {{trustDomain: {TRUST_DOMAIN}, mtls: STRICT, authorization: enforce, "
        f"certificateTTL: {ttl}}}\n"
    ]
    for i in range(services):
        s = service_name(i)
        eps = ", ".join(
            f"{{address: 10.{i // 250}.{i % 250 + 1}.{j % 250 + 1}, port: {15006 + j // 250}}}"
            for j in range(max(1, endpoints[i]))
        )
        docs.append(
            "apiVersion: pymesh.io/v1alpha1\nkind: Service\n"
            f"metadata: {{name: {s}}}\nspec:\n  serviceAccount: {s}\n"
            "  ports: [{name: http, port: 8080, protocol: http}]\n"
            f"  endpoints: [{eps}]\n"
        )
        if topology != "ring":
            continue
        docs.append(
            "kind: HTTPRouteGroup\napiVersion: specs.smi-spec.io/v1alpha4\n"
            f"metadata: {{name: {s}-routes}}\nspec:\n  matches:\n"
            "  - {name: read, pathRegex: /api/.*, methods: [GET, HEAD]}\n"
            "  - {name: write, pathRegex: /api/orders, methods: [POST, PUT]}\n"
        )
        sources = sorted({(i - k) % services for k in range(1, callers + 1)} - {i})
        srcs = ", ".join(
            f"{{kind: ServiceAccount, name: {service_name(k)}, namespace: default}}"
            for k in sources
        )
        docs.append(
            "kind: TrafficTarget\napiVersion: access.smi-spec.io/v1alpha3\n"
            f"metadata: {{name: {s}-callers}}\nspec:\n"
            f"  destination: {{kind: ServiceAccount, name: {s}, namespace: default}}\n"
            f"  rules: [{{kind: HTTPRouteGroup, name: {s}-routes, matches: [read, write]}}]\n"
            f"  sources: [{srcs}]\n"
        )
    return "---\n".join(docs)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one rename (the watcher never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the control plane process ---------------------------------------------------------------------


def _child_setup(core: int | None) -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    with contextlib.suppress(Exception):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if core is not None:
        with contextlib.suppress(Exception):
            os.sched_setaffinity(0, {core})


def _proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kib(value: str | None) -> int | None:
    return int(value.split()[0]) if value else None


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process `pid` so far, in seconds."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, SCHED)
    except OSError:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_log_time(stamp: str) -> float:
    """Unix seconds of a pymesh log `timestamp` (`2026-01-02T03:04:05.123456Z`)."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class ControlPlaneProcess:
    """`python -m pymesh control-plane` from this tree: start, read its logs, measure, stop."""

    def __init__(self, workdir: Path, config: Path, state_dir: Path, core: int | None) -> None:
        self.stdout_path = workdir / "cp.stdout"
        self.stderr_path = workdir / "cp.stderr"
        argv = [
            sys.executable,
            "-m",
            "pymesh",
            "control-plane",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state_dir),
            "--admin",
            "",
            "--log-level",
            "info",
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
        )
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=env,
                start_new_session=True,
                preexec_fn=lambda: _child_setup(core),  # before this process has threads
            )
        self._log_offset = 0
        self._events: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        """The control plane's pid."""
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        """The last lines of its stderr (JSON logs)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def ready(self, timeout: float = 30.0) -> tuple[str, int]:
        """Wait for `control-plane listen=HOST:PORT ready`; its address."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            for line in self.stdout_path.read_text().splitlines():
                if line.startswith("control-plane listen=") and line.endswith(" ready"):
                    host, _, port = line.split()[1].removeprefix("listen=").rpartition(":")
                    return host, int(port)
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"the control plane exited with status {self.popen.returncode}:\n" + self.tail()
                )
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the control plane was not ready within {timeout} s:\n{self.tail()}")

    def memory_kib(self) -> Memory:
        """VmRSS and VmHWM (peak RSS) in KiB."""
        st = _proc_status(self.pid)
        return {"rss_kib": _kib(st.get("VmRSS")), "hwm_kib": _kib(st.get("VmHWM"))}

    def open_files_limit(self) -> int | None:
        """Its soft RLIMIT_NOFILE (from /proc/PID/limits)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        return None

    def cpu_s(self) -> float:
        """Its CPU time so far."""
        return process_cpu_seconds(self.pid)

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (read incrementally)."""
        with self.stderr_path.open("rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._log_offset += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    self._events.append(doc)
        return self._events

    async def applied_at(self, version: int, timeout: float = 5.0) -> float | None:
        """Unix time of the `config_applied` line for `version` (None if not logged in time)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for e in self.events():
                if e.get("event") == "config_applied" and e.get("version") == version:
                    return parse_log_time(str(e["timestamp"]))
            if loop.time() >= end:
                return None
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; the exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.popen.wait, timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                await asyncio.to_thread(self.popen.wait, timeout)
        return self.popen.returncode


# -- the simulated sidecars -----------------------------------------------------------------------


class Tracker:
    """Per sidecar: the versions it has and when the first one newer than `base` arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.version = [0] * n
        self.mesh_version = [""] * n
        self.config_bytes = [0] * n
        self.arrived: list[float | None] = [None] * n
        self.base = 0
        self.count = 0
        self.errors: list[str] = []
        self.pings = 0
        self._all = asyncio.Event()

    def start(self, base: int) -> None:
        """Track the first version newer than `base` from now on."""
        self.base = base
        self.arrived = [None] * self.n
        self.count = sum(1 for v in self.version if v > base)
        self._all = asyncio.Event()
        if self.count >= self.n:
            self._all.set()

    def record(self, i: int, msg: dict[str, Any], now: float) -> None:
        """Sidecar `i` got a config message at `now`."""
        version = int(msg.get("version", 0))
        self.version[i] = version
        self.mesh_version[i] = str(msg.get("mesh_version", ""))
        self.config_bytes[i] = len(str(msg.get("config", "")))
        if version > self.base and self.arrived[i] is None:
            self.arrived[i] = now
            self.count += 1
            if self.count >= self.n:
                self._all.set()

    async def wait_all(self, timeout: float) -> bool:
        """True once every sidecar has a version newer than `base` (False after `timeout`)."""
        try:
            async with asyncio.timeout(timeout):
                await self._all.wait()
        except TimeoutError:
            return False
        return True


@dataclass(slots=True)
class Sidecar:
    """One simulated sidecar: its service, credentials and (once connected) its pool."""

    index: int
    service: str
    credentials: ClientCredentials
    token: str | None
    pool: H2Pool | None = None


async def follow(
    sc: Sidecar,
    address: tuple[str, int],
    control_plane_id: str,
    tracker: Tracker,
    gate: asyncio.Semaphore,
) -> None:
    """Open the sidecar's own TLS + HTTP/2 connection, `POST /v1/stream`, record every config
    until cancelled (errors are recorded, not raised)."""
    try:
        async with gate:
            origin = TlsOrigin(sc.credentials, address[0], control_plane_id)
            sc.pool = H2Pool(address, connect_timeout=30.0, max_connections=1, tls=origin)
            conn = await sc.pool.acquire()
            authority = f"{address[0]}:{address[1]}".encode()
            request = _request(b"POST", b"/v1/stream", authority, {"service": sc.service}, sc.token)
            response = await conn.exchange(request)
            if response.status != 200:
                body = await response.body.read_all(65536) if response.body else b""
                raise ControlPlaneError(f"/v1/stream: {response.status} {body[:200]!r}")
            lines = _lines(response)
            async for msg in lines:  # the connection slot is held until the first config
                if msg.get("type") == "config":
                    tracker.record(sc.index, msg, time.time())
                    break
        async for msg in lines:
            if msg.get("type") == "config":
                tracker.record(sc.index, msg, time.time())
            else:
                tracker.pings += 1
        tracker.errors.append(f"{sc.service}#{sc.index}: the stream ended")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        tracker.errors.append(f"{sc.service}#{sc.index}: {exc!r}")


async def credentials_for(
    settings: Settings,
    state: StateDir,
    address: tuple[str, int],
    trust: PinnedTrust,
    services: Sequence[str],
) -> dict[str, ClientCredentials]:
    """Per service, what its sidecars present: a certificate from one CSR each (`mtls`) or
    just the pinned trust (`token`)."""
    if settings.auth == "token":
        return dict.fromkeys(services, trust)
    url = f"https://{address[0]}:{address[1]}"
    out: dict[str, ClientCredentials] = {}
    gate = asyncio.Semaphore(settings.concurrency)

    async def join(service: str) -> None:
        async with gate:
            client = ControlPlaneClient([url], state.issue_token(service, 3600), service)
            client.trust = trust  # the bundle as GET /v1/bundle gives it (pinned): skip a call
            try:
                await client.join(deadline=60.0)
            finally:
                client.close()
            out[service] = client.credentials

    async with asyncio.TaskGroup() as tg:
        for s in services:
            tg.create_task(join(s))
    return out


# -- figures --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def latency_stats(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50, p99, max (= all reached) in ms."""
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def summarize_profile(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Top functions of a py-spy `--format raw` profile (collapsed stacks `f;g;h COUNT`):
    by own samples (the leaf) and by inclusive samples (anywhere on the stack)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n

    def share(c: Counter[str], k: int = top) -> list[dict[str, Any]]:
        return [
            {"frame": f, "samples": n, "share": round(n / total, 4)} for f, n in c.most_common(k)
        ]

    ours: Counter[str] = Counter(
        {f: n for f, n in inclusive.items() if "pymesh/" in f and "__main__" not in f}
    )
    return {
        "samples": total,
        "own": share(own),
        "inclusive": share(inclusive),
        "pymesh": share(ours, top * 2),
    }


@dataclass(slots=True)
class Window:
    """CPU used by the control plane, this process and everything else over a time window."""

    cp_pid: int
    started: float = field(default_factory=time.monotonic)
    cp0: float = 0.0
    me0: float = 0.0
    ticks0: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cp0 = process_cpu_seconds(self.cp_pid)
        self.me0 = time.process_time()
        self.ticks0 = read_core_ticks()

    def close(self) -> dict[str, float | None]:
        """Seconds of wall time, CPU of the control plane, of this process, of the others."""
        cp = process_cpu_seconds(self.cp_pid) - self.cp0
        me = time.process_time() - self.me0
        ticks = read_core_ticks()
        busy = [busy_seconds(self.ticks0, ticks, c) for c in ticks]
        known = [b for b in busy if b is not None]
        other = sum(known) - cp - me if known else None
        return {
            "wall_s": round(time.monotonic() - self.started, 3),
            "cp_cpu_s": round(cp, 3),
            "bench_cpu_s": round(me, 3),
            "other_cpu_s": None if other is None else round(max(0.0, other), 3),
        }


# -- the run --------------------------------------------------------------------------------------


async def _start_profiler(settings: Settings, pid: int, out: Path) -> asyncio.subprocess.Process:
    """`py-spy record` attached to `pid`, writing collapsed stacks to `out` when stopped."""
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid)]
    argv += ["-r", str(settings.profile_rate), "-f", "raw", "-o", str(out)]
    if settings.profile_native:
        argv.append("--native")
    spy = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    await asyncio.sleep(1.5)  # py-spy attaches
    return spy


async def _stop_profiler(spy: asyncio.subprocess.Process, out: Path) -> dict[str, Any]:
    """Stop py-spy (SIGINT makes it write its output); the profile's summary."""
    spy.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(30.0):
            _, err = await spy.communicate()
    except TimeoutError:
        spy.kill()
        _, err = await spy.communicate()
    text = await asyncio.to_thread(
        lambda: out.read_text(errors="replace") if out.exists() else None
    )
    if text is None:
        return {"error": (err or b"").decode(errors="replace")[-2000:]}
    return {**summarize_profile(text), "file": str(out)}


async def _change(
    settings: Settings,
    k: int,
    cp: ControlPlaneProcess,
    tracker: Tracker,
    config: Path,
    endpoints: Sequence[int],
    *,
    profiled: bool = False,
) -> dict[str, Any]:
    """Make change number `k` and measure its propagation to every sidecar."""
    quiet_cores = [c for c in (settings.cp_core, settings.bench_core) if c is not None] or [0]
    waited, busiest = await asyncio.to_thread(wait_quiet, quiet_cores, max_wait_s=settings.quiet_s)
    base = max(tracker.version)
    old_views = Counter(tracker.mesh_version)
    tracker.start(base)
    ttl = TTLS[k % 2]
    text = mesh_yaml(
        settings.services,
        endpoints,
        topology=settings.topology,
        callers=settings.callers,
        ttl=ttl,
    )
    # A user's edit falls anywhere in the control plane's 1 s file poll: so does ours (without
    # this pause, the harness's own rhythm would lock the writes to one phase of the poll).
    await asyncio.sleep(random.uniform(0.0, 1.0))
    window = Window(cp.pid)
    written = time.time()
    write_atomic(config, text)
    complete = await tracker.wait_all(settings.change_timeout_s)
    cpu = window.close()
    new_version = max(tracker.version)
    applied = await cp.applied_at(new_version)
    arrived = [t for t in tracker.arrived if t is not None]
    all_at = max(arrived, default=written)  # when the last sidecar had it
    from_write = [t - written for t in arrived]
    from_applied = [t - applied for t in arrived] if applied is not None else []
    changed_views = sum(
        1 for i, v in enumerate(tracker.mesh_version) if tracker.arrived[i] and old_views[v] == 0
    )
    return {
        "change": k,
        "certificate_ttl": ttl,
        "version": new_version,
        "complete": complete,
        "received": len(arrived),
        "views_changed": changed_views,
        "applied_after_write_s": None if applied is None else round(applied - written, 4),
        "from_write": {
            **latency_stats(from_write),
            "all_s": round(all_at - written, 4) if complete else None,
        },
        "from_applied": {
            **latency_stats(from_applied),
            "all_s": round(all_at - applied, 4) if complete and applied is not None else None,
        },
        "cpu": cpu,
        "quiet_wait_s": round(waited, 2),
        "busiest_core_before": None if busiest is None else round(busiest, 3),
        "latencies_from_write_ms": sorted(round(x * 1000, 2) for x in from_write),
        "profiled": profiled,
        "discarded": [],
    }


def _interference(change: dict[str, Any]) -> float:
    """Share of a core other programs took during a change (0 when unknown)."""
    cpu = change["cpu"]
    if cpu["other_cpu_s"] is None or not cpu["wall_s"]:
        return 0.0
    return float(cpu["other_cpu_s"]) / float(cpu["wall_s"])


async def run_scale(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Run the benchmark in `workdir` (state, mesh, logs); the result document."""
    if settings.auth not in ("mtls", "token") or settings.topology not in ("ring", "open"):
        raise ValueError(f"auth {settings.auth!r}, topology {settings.topology!r}")
    n, m = settings.subscribers, settings.services
    if n < 1 or m < 1:
        raise ValueError("at least one subscriber and one service")
    services = [service_name(i) for i in range(m)]
    per_service = [sum(1 for j in range(n) if j % m == i) for i in range(m)]
    state = StateDir.init(workdir / "state", TRUST_DOMAIN)
    config_dir = workdir / "mesh"
    config_dir.mkdir()
    config = config_dir / "mesh.yaml"
    write_atomic(
        config,
        mesh_yaml(m, per_service, topology=settings.topology, callers=settings.callers, ttl="24h"),
    )
    cp = ControlPlaneProcess(workdir, config, state.path, settings.cp_core)
    tracker = Tracker(n)
    unknown: Memory = {"rss_kib": None, "hwm_kib": None}
    mem_idle = mem_subscribed = mem_after = unknown
    changes: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "settings": asdict(settings),
        "config_bytes": config.stat().st_size,
    }
    try:
        address = await cp.ready()
        await asyncio.sleep(settings.settle_s)
        result["cp_open_files_limit"] = cp.open_files_limit()
        mem_idle = cp.memory_kib()
        trust = PinnedTrust(state.ca.bundle_pem(), state.trust_domain)
        window = Window(cp.pid)
        started = time.monotonic()
        creds = await credentials_for(settings, state, address, trust, services)
        identities = window.close()
        sidecars = [
            Sidecar(
                j,
                f"default/{services[j % m]}",
                creds[services[j % m]],
                state.issue_token(services[j % m], 3600) if settings.auth == "token" else None,
            )
            for j in range(n)
        ]
        gate = asyncio.Semaphore(settings.concurrency)
        tracker.start(0)
        window = Window(cp.pid)
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(
                    follow(sc, address, state.control_plane_id, tracker, gate),
                    name=f"sidecar-{sc.index}",
                )
                for sc in sidecars
            ]
            try:
                joined = await tracker.wait_all(settings.join_timeout_s)
                join = window.close()
                join["streams_per_s"] = round(n / join["wall_s"], 1) if join["wall_s"] else None
                result["join"] = {
                    "complete": joined,
                    "subscribed": tracker.count,
                    "identities": identities,
                    "streams": join,
                    "total_s": round(time.monotonic() - started, 3),
                    "errors": tracker.errors[:20],
                }
                if not joined:
                    raise RuntimeError(
                        f"only {tracker.count} of {n} sidecars subscribed in "
                        f"{settings.join_timeout_s} s; errors: {tracker.errors[:5]}"
                    )
                views = defaultdict(list)
                for i in range(n):
                    views[sidecars[i].service].append(tracker.config_bytes[i])
                result["view_bytes"] = {
                    "mean": round(statistics.fmean(tracker.config_bytes)),
                    "max": max(tracker.config_bytes),
                    "distinct_views": len(views),
                }
                await asyncio.sleep(settings.settle_s)
                mem_subscribed = cp.memory_kib()
                counter = 0
                for _ in range(settings.changes):
                    attempts: list[dict[str, Any]] = []
                    for _ in range(settings.retries + 1):
                        counter += 1
                        attempts.append(
                            await _change(settings, counter, cp, tracker, config, per_service)
                        )
                        if _interference(attempts[-1]) <= settings.max_interference:
                            break
                    kept = min(attempts, key=_interference)
                    kept["discarded"] = [
                        {k: v for k, v in a.items() if k != "latencies_from_write_ms"}
                        for a in attempts
                        if a is not kept
                    ]
                    changes.append(kept)
                if settings.profile_changes > 0:
                    spy = await _start_profiler(settings, cp.pid, workdir / "profile.txt")
                    first = counter + 1
                    changes.extend(
                        [
                            await _change(
                                settings, k, cp, tracker, config, per_service, profiled=True
                            )
                            for k in range(first, first + settings.profile_changes)
                        ]
                    )
                    await asyncio.sleep(0.2)
                    result["profile"] = await _stop_profiler(spy, workdir / "profile.txt")
                mem_after = cp.memory_kib()
                result["stream_errors"] = tracker.errors[:20]
                result["pings"] = tracker.pings
            finally:
                for t in tasks:
                    t.cancel()
        for sc in sidecars:
            if sc.pool is not None:
                sc.pool.close()
    finally:
        status = await cp.stop()
        result["cp_exit_status"] = status
        result["cp_log_tail"] = cp.tail(5)
    result["memory"] = _memory(mem_idle, mem_subscribed, mem_after, n)
    result["changes"] = changes
    measured = [c for c in changes if not c["profiled"]]
    result["summary"] = _summary(measured, n)
    return result


def _memory(idle: Memory, subscribed: Memory, after: Memory, n: int) -> dict[str, Any]:
    def mb(kib: int | None) -> float | None:
        return None if kib is None else round(kib / 1024, 1)

    per = None
    if idle["rss_kib"] is not None and subscribed["rss_kib"] is not None:
        per = round((subscribed["rss_kib"] - idle["rss_kib"]) / n, 1)
    return {
        "idle_rss_mb": mb(idle["rss_kib"]),
        "subscribed_rss_mb": mb(subscribed["rss_kib"]),
        "after_changes_rss_mb": mb(after["rss_kib"]),
        "peak_rss_mb": mb(after["hwm_kib"]),
        "per_subscriber_kib": per,
    }


def _summary(changes: Sequence[dict[str, Any]], n: int) -> dict[str, Any]:
    def med(path: tuple[str, str]) -> float | None:
        vals = [c[path[0]][path[1]] for c in changes if c[path[0]][path[1]] is not None]
        return round(statistics.median(vals), 4) if vals else None

    all_write = med(("from_write", "all_s"))
    return {
        "changes": len(changes),
        "all_complete": all(c["complete"] for c in changes),
        "median_all_from_write_s": all_write,
        "median_all_from_applied_s": med(("from_applied", "all_s")),
        "median_p50_from_applied_ms": med(("from_applied", "p50_ms")),
        "median_p99_from_applied_ms": med(("from_applied", "p99_ms")),
        "median_cp_cpu_s": med(("cpu", "cp_cpu_s")),
        "goal": f"a change reaches {n:,} subscribed sidecars in ≤ {GOAL_S:g} s (from the write)",
        "goal_met": all_write is not None and all_write <= GOAL_S and len(changes) > 0,
    }


# -- report ---------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms" if v < 10 else f"{v:.0f} ms"


def _s(v: float | None) -> str:
    return "—" if v is None else _ms(v * 1000)


def render(result: dict[str, Any]) -> str:
    """The result as a short text report with one table row per change."""
    s = result["settings"]
    mem = result["memory"]
    join = result.get("join", {})
    streams = join.get("streams", {})
    lines = [
        f"control plane scale: {s['subscribers']:,} sidecars, {s['services']:,} services "
        f"({s['topology']}), auth {s['auth']}, control plane on core {s['cp_core']}, "
        f"sidecars on core {s['bench_core']}",
        f"config {result['config_bytes']:,} bytes; view per sidecar "
        f"{result.get('view_bytes', {}).get('mean', 0):,} bytes (mean); "
        f"{result.get('view_bytes', {}).get('distinct_views', 0):,} distinct views",
        f"join: {join.get('subscribed', 0):,} streams in {_s(streams.get('wall_s'))} "
        f"({streams.get('streams_per_s')}/s, control plane CPU {_s(streams.get('cp_cpu_s'))}); "
        f"identities {_s(join.get('identities', {}).get('wall_s'))}",
        f"control plane RSS: idle {mem['idle_rss_mb']} MB, with {s['subscribers']:,} "
        f"subscribers {mem['subscribed_rss_mb']} MB ({mem['per_subscriber_kib']} KiB each), "
        f"after the changes {mem['after_changes_rss_mb']} MB, peak {mem['peak_rss_mb']} MB",
        "",
        "| change | applied after write | p50 | p99 | max | all (from applied) "
        "| all (from write) | CP CPU | sidecars' CPU | other CPU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in result["changes"]:
        fa, fw, cpu = c["from_applied"], c["from_write"], c["cpu"]
        label = f"{c['change']}" + (" (py-spy)" if c["profiled"] else "")
        if _interference(c) > s["max_interference"]:
            label += " (noisy)"
        if c["discarded"]:
            label += f" ({len(c['discarded'])} noisier repeated)"
        lines.append(
            f"| {label} | {_s(c['applied_after_write_s'])} | {_ms(fa['p50_ms'])} "
            f"| {_ms(fa['p99_ms'])} | {_ms(fa['max_ms'])} | {_s(fa['all_s'])} "
            f"| {_s(fw['all_s'])} | {_s(cpu['cp_cpu_s'])} | {_s(cpu['bench_cpu_s'])} "
            f"| {_s(cpu['other_cpu_s'])} |"
        )
    sm = result["summary"]
    verdict = "met" if sm["goal_met"] else "NOT met"
    lines += [
        "",
        f"goal: {sm['goal']}: {verdict} (median over {sm['changes']} changes: all reached "
        f"{_s(sm['median_all_from_write_s'])} after the write, "
        f"{_s(sm['median_all_from_applied_s'])} after config_applied)",
    ]
    prof = result.get("profile")
    if prof and "own" in prof:
        n = sum(1 for c in result["changes"] if c["profiled"])
        lines.append(f"\npy-spy over the last {n} changes: {prof['samples']} samples; top own:")
        lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in prof["own"][:12]]
        lines.append("top inclusive (pymesh frames):")
        lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in prof["pymesh"][:25]]
    elif prof:
        lines.append(f"\npy-spy failed: {prof.get('error')}")
    errors = result.get("stream_errors") or []
    if errors:
        lines.append(f"\nstream errors ({len(errors)} shown): " + "; ".join(errors[:5]))
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        return ""

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        uv = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uv = ""
    return {
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "uvloop": uv,
        "cores": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "loadavg_before": list(os.getloadavg()),
    }


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; error if below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(
            f"the open-files limit is {soft}, {needed} are needed: raise it (ulimit -Hn)"
        )
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.cp_scale`: run, print the table, write the JSON."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cp_scale",
        description="Subscribe N simulated sidecars to one control plane (its own process) and "
        "measure how fast a config change reaches all of them, and the control plane's memory.",
    )
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--services", type=int, default=100)
    p.add_argument("--auth", choices=("mtls", "token"), default="mtls")
    p.add_argument("--topology", choices=("ring", "open"), default="ring")
    p.add_argument("--callers", type=int, default=3, help="sources per TrafficTarget (ring)")
    p.add_argument("--concurrency", type=int, default=50, help="connections opened at a time")
    p.add_argument("--changes", type=int, default=3, help="measured changes (median reported)")
    p.add_argument("--cp-core", type=int, default=1)
    p.add_argument("--bench-core", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="pin neither process")
    p.add_argument(
        "--max-interference",
        type=float,
        default=0.2,
        metavar="F",
        help="repeat a change during which other programs took more than F of a core",
    )
    p.add_argument("--retries", type=int, default=2, help="repeats of a noisy change")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="N more changes with py-spy attached to the control plane (reported apart)",
    )
    p.add_argument("--profile-rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON")
    args = p.parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    settings = Settings(
        subscribers=args.subscribers,
        services=args.services,
        auth=args.auth,
        topology=args.topology,
        callers=args.callers,
        concurrency=args.concurrency,
        changes=args.changes,
        cp_core=args.cp_core if pin else None,
        bench_core=args.bench_core if pin else None,
        max_interference=args.max_interference,
        retries=args.retries,
        profile_changes=args.profile,
        profile_rate=args.profile_rate,
        profile_native=args.native,
    )
    try:
        limit = raise_fd_limit(args.subscribers + 256)
    except RuntimeError as exc:
        print(f"cp_scale: {exc}", file=sys.stderr)
        return 2
    if settings.bench_core is not None:
        os.sched_setaffinity(0, {settings.bench_core})
    machine = _machine()
    from pymesh.observe.log import configure_logging
    from pymesh.runtime import run_loop

    configure_logging("warning")  # the simulated sidecars' own logs: warnings only

    with tempfile.TemporaryDirectory(prefix="pymesh-cp-scale-") as tmp:
        try:
            result = run_loop(run_scale(settings, Path(tmp)), loop="uvloop")
        except (RuntimeError, OSError, ValueError, ExceptionGroup) as exc:
            print(f"cp_scale: the run failed: {exc!r}", file=sys.stderr)
            return 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        args.out.mkdir(parents=True, exist_ok=True)
        prof = result.get("profile")
        if prof and prof.get("file"):
            # keep the collapsed stacks next to the JSON (the temp dir goes away)
            raw = args.out / f"cp-scale-{stamp}.pyspy.txt"
            raw.write_bytes(Path(prof["file"]).read_bytes())
            prof["file"] = str(raw.relative_to(ROOT)) if raw.is_relative_to(ROOT) else str(raw)
    machine["loadavg_after"] = list(os.getloadavg())
    result["machine"] = machine
    result["bench_open_files_limit"] = limit
    print(render(result))
    path = args.out / f"cp-scale-{stamp}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nJSON: {path}")
    return 0 if result["summary"]["all_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
