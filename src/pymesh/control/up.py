"""`pymesh up`: a whole mesh on one machine, each Service's sidecar in its own process.

`LocalMesh` does the work, so `pymesh demo` and tests can run a mesh in-process; `up_main` is
the command around it (DESIGN.md §3): start, print one line per service and `ready`,
supervise, stop everything on SIGINT/SIGTERM.

`LocalMesh.start()`, in order:

1. load and validate the config (`Mesh.load`; a `ConfigError` lists every problem);
2. pick free ports on the bind host for every meshed Service: inbound, outbound, admin and
   one app port per service port (where the app itself listens);
3. write a derived config into its work directory: the original documents with each meshed
   Service's `spec.endpoints` replaced by its sidecar's inbound listener. Every sidecar reads
   this one file, which is how they find each other;
4. start one sidecar per meshed Service (`python -m pymesh proxy ...`) and each Service's
   `command`, with its working directory set to the config's directory and `PORT`,
   `http_proxy`/`HTTP_PROXY` and the other variables of `command_env` in its environment;
5. wait, bounded, until every sidecar's admin `/ready` answers 200 and every command's app
   port accepts connections.

Children run in sessions of their own (a terminal's Ctrl-C reaches only `pymesh up`, which
then stops them) and, on Linux, receive SIGTERM if `pymesh up` itself dies. Their output goes
to log files in the work directory, so stdout carries only the status lines.

Ports are found by binding port 0 and closing the socket, so another process could take one
before the child binds it; the child then fails to start and `start()` says which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, final

import yaml

from pymesh.control.server import ControlPlane
from pymesh.control.state import StateDir
from pymesh.control.store import MemoryStore
from pymesh.errors import ConfigError, FieldError, PymeshError
from pymesh.observe.log import configure_logging
from pymesh.policy.model import DEFAULT_NAMESPACE, Resource, ServiceSpec
from pymesh.policy.snapshot import Mesh
from pymesh.runtime import LoopName, install_signal_handlers, run_loop
from pymesh.tls.identity import write_file_atomic

__all__ = [
    "HTTP_ERRORS",
    "Address",
    "ChildExit",
    "LocalMesh",
    "MeshStartError",
    "ServiceRuntime",
    "command_argv",
    "command_env",
    "derive_config",
    "format_address",
    "http_get",
    "read_documents",
    "read_response",
    "supervise",
    "up_main",
]

Address = tuple[str, int]

READY_TIMEOUT_S: Final = 20.0
TOKEN_TTL_S: Final = 24 * 3600.0  # a sidecar's bootstrap token (renewals use its certificate)
STOP_TIMEOUT_S: Final = 5.0
_POLL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 2048
_MAX_HEAD_LINES: Final = 200
_PYTHONS: Final = frozenset({"python", "python3"})

HTTP_ERRORS: Final = (OSError, EOFError, ValueError, asyncio.LimitOverrunError)
"""What `read_response`/`http_get` raise when the peer is absent, slow or speaks nonsense
(`TimeoutError` and `asyncio.IncompleteReadError` are among them)."""


class MeshStartError(PymeshError):
    """`LocalMesh.start()` failed: a child exited or did not get ready in time."""


# --- addresses and small HTTP/1.1 client helpers ------------------------------------------


def format_address(addr: Address) -> str:
    """`HOST:PORT`, with brackets around an IPv6 host (`[::1]:8080`)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_host(host: str) -> str:
    """Where to connect to reach a listener bound on `host` (wildcards mean loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


async def read_response(
    reader: asyncio.StreamReader, *, max_body: int = 1 << 20
) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response: (status, lower-cased headers, body). Bounded by `max_body`.

    Raises one of `HTTP_ERRORS` on EOF, oversize or malformed input.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    if len(lines) > _MAX_HEAD_LINES:
        raise ValueError("too many response header lines")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/") or len(rest) < 3:
        raise ValueError(f"bad status line {lines[0]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return status, headers, await _read_chunked(reader, max_body)
    if "content-length" in headers:
        length = int(headers["content-length"])
        if not 0 <= length <= max_body:
            raise ValueError(f"response body of {length} bytes (limit {max_body})")
        return status, headers, await reader.readexactly(length)
    body = bytearray()  # delimited by EOF
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > max_body:
            raise ValueError(f"response body over {max_body} bytes")
    return status, headers, bytes(body)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            for _ in range(_MAX_HEAD_LINES):  # trailers, up to the empty line
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    return bytes(body)
            raise ValueError("too many trailer lines")
        if len(body) + size > max_body:
            raise ValueError(f"response body over {max_body} bytes")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("bad chunk terminator")


async def http_get(
    addr: Address, path: str, *, timeout: float = 2.0, max_body: int = 8 << 20
) -> tuple[int, bytes]:
    """`GET path` on a fresh connection to `addr`: (status, body). Raises one of `HTTP_ERRORS`."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*addr)
        try:
            authority = format_address(addr)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
            )
            status, _, body = await read_response(reader, max_body=max_body)
            return status, body
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _accepts(addr: Address, timeout: float = 1.0) -> bool:
    """Whether something listens on `addr`."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*addr)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports that were free on `host` a moment ago."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# --- the plan: pure functions over config -------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRuntime:
    """What `LocalMesh` runs for one Service and where it listens.

    For a meshed service every address is set (`app` is the first of `apps`; nothing need
    listen there when the service has no `command`). For `meshed: false` only `app` (the
    first endpoint) and `app_pid` may be set.
    """

    name: str
    namespace: str
    meshed: bool
    app: Address | None
    apps: tuple[tuple[int, Address], ...]  # (service port, app address), config order
    inbound: Address | None = None
    outbound: Address | None = None
    admin: Address | None = None
    pid: int | None = None  # the sidecar's
    app_pid: int | None = None  # the command's

    @property
    def display_name(self) -> str:
        """`name`, or `namespace/name` outside the default namespace."""
        if self.namespace == DEFAULT_NAMESPACE:
            return self.name
        return f"{self.namespace}/{self.name}"

    def status_line(self) -> str:
        """`SERVICE app=HOST:PORT inbound=HOST:PORT outbound=HOST:PORT admin=HOST:PORT`.

        A missing address (no sidecar, no app) is written `-`.
        """

        def fmt(a: Address | None) -> str:
            return format_address(a) if a is not None else "-"

        return (
            f"{self.display_name} app={fmt(self.app)} inbound={fmt(self.inbound)} "
            f"outbound={fmt(self.outbound)} admin={fmt(self.admin)}"
        )

    def status_json(self) -> dict[str, Any]:
        """The `--json` form of `status_line` (addresses as `HOST:PORT` strings or null)."""

        def fmt(a: Address | None) -> str | None:
            return format_address(a) if a is not None else None

        return {
            "service": self.name,
            "namespace": self.namespace,
            "app": fmt(self.app),
            "inbound": fmt(self.inbound),
            "outbound": fmt(self.outbound),
            "admin": fmt(self.admin),
            "pid": self.pid,
            "app_pid": self.app_pid,
            "apps": {str(port): format_address(a) for port, a in self.apps},
            "meshed": self.meshed,
        }


def read_documents(config: Path) -> list[Any]:
    """The raw YAML documents of a file, or of every `*.yaml` in a directory (sorted)."""
    files = sorted(config.glob("*.yaml")) if config.is_dir() else [config]
    docs: list[Any] = []
    for f in files:
        with f.open(encoding="utf-8") as fh:
            docs.extend(d for d in yaml.safe_load_all(fh) if d is not None)
    return docs


def derive_config(docs: Sequence[Any], inbound: Mapping[tuple[str, str], Address]) -> list[Any]:
    """Copies of `docs` where each Service keyed `(namespace, name)` in `inbound` has exactly
    one endpoint: that address (its sidecar's inbound listener)."""
    out: list[Any] = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        if isinstance(doc, dict) and doc.get("kind") == "Service":
            meta = doc.get("metadata") or {}
            key = (str(meta.get("namespace") or DEFAULT_NAMESPACE), str(meta.get("name")))
            if key in inbound:
                host, port = inbound[key]
                spec = doc.setdefault("spec", {})
                spec["endpoints"] = [{"address": host, "port": port}]
        out.append(doc)
    return out


def command_argv(command: Sequence[str]) -> list[str]:
    """`command` with a first word `python`/`python3` replaced by this interpreter, so a
    Python command runs in pymesh's own environment (its venv)."""
    argv = list(command)
    if argv and argv[0] in _PYTHONS:
        argv[0] = sys.executable
    return argv


def _env_name(port_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", port_name).upper()


def command_env(
    base: Mapping[str, str], svc: ServiceRuntime, spec: ServiceSpec, *, host: str
) -> dict[str, str]:
    """The environment of a Service's `command`.

    `base`, without `NO_PROXY`/`no_proxy`, plus: `PORT` (the first app port), `PYMESH_HOST`
    (where to listen), `PYMESH_PORT_<NAME>` per named port, `PYMESH_SERVICE`,
    `PYMESH_NAMESPACE`, and for a meshed service `http_proxy` and `HTTP_PROXY` (the
    sidecar's outbound listener). `spec.env` is applied last and wins.
    """
    env = {k: v for k, v in base.items() if k not in ("NO_PROXY", "no_proxy")}
    if svc.app is not None:
        env["PORT"] = str(svc.app[1])
        env["PYMESH_HOST"] = svc.app[0] if not svc.meshed else host
    env["PYMESH_SERVICE"] = svc.name
    env["PYMESH_NAMESPACE"] = svc.namespace
    app_by_port = dict(svc.apps)
    for sp in spec.ports:
        if sp.name and sp.port in app_by_port:
            env[f"PYMESH_PORT_{_env_name(sp.name)}"] = str(app_by_port[sp.port][1])
    if svc.outbound is not None:
        proxy = f"http://{format_address(svc.outbound)}"
        env["http_proxy"] = env["HTTP_PROXY"] = proxy
    env.update(spec.env)
    return env


def _plan(mesh: Mesh, host: str) -> list[ServiceRuntime]:
    """Addresses for every Service; `ConfigError` for what `pymesh up` cannot run."""
    services = mesh.of_kind("Service")
    meshed_ports = {
        (r.namespace, r.name): [p.port for p in r.spec.ports] or [0]
        for r in services
        if r.spec.meshed
    }
    # One call, so no port is handed out twice.
    free = iter(_free_ports(host, sum(3 + len(sp) for sp in meshed_ports.values())))
    chost = _connect_host(host)
    errors: list[FieldError] = []
    plans: list[ServiceRuntime] = []
    for res in services:
        spec: ServiceSpec = res.spec
        if spec.meshed:
            apps = tuple((sp, (chost, next(free))) for sp in meshed_ports[res.namespace, res.name])
            plans.append(
                ServiceRuntime(
                    name=res.name,
                    namespace=res.namespace,
                    meshed=True,
                    app=apps[0][1],
                    apps=apps,
                    inbound=(chost, next(free)),
                    outbound=(chost, next(free)),
                    admin=(chost, next(free)),
                )
            )
            continue
        app = (spec.endpoints[0].address, spec.endpoints[0].port) if spec.endpoints else None
        if spec.command and app is None:
            why = "meshed: false with a command needs an endpoint (where the command listens)"
            errors.append(_field_error(res, "spec.endpoints", why))
        plans.append(
            ServiceRuntime(
                name=res.name,
                namespace=res.namespace,
                meshed=False,
                app=app,
                apps=tuple((p.port, app) for p in spec.ports) if app else (),
            )
        )
    if errors:
        raise ConfigError(errors)
    return plans


def _field_error(res: Resource, path: str, message: str) -> FieldError:
    return FieldError(res.source.file, res.source.line, res.ref, path, message)


# --- processes -----------------------------------------------------------------------------


def _child_setup() -> Callable[[], None] | None:
    """A preexec function: on Linux, have the child get SIGTERM when its parent dies."""
    if sys.platform != "linux":  # pragma: no cover - Linux is the platform we test on
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def setup() -> None:
        prctl(1, sigterm, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os._exit(1)

    return setup


@dataclass(slots=True)
class _Child:
    service: str
    role: str  # "sidecar" | "app"
    process: asyncio.subprocess.Process
    log: Path

    @property
    def label(self) -> str:
        return f"{self.service} {self.role} (pid {self.process.pid})"


@dataclass(frozen=True, slots=True)
class ChildExit:
    """A child that exited while it should have been running."""

    service: str
    role: str  # "sidecar" | "app"
    pid: int
    returncode: int
    log_tail: str

    def __str__(self) -> str:
        text = f"{self.service} {self.role} (pid {self.pid}) exited with status {self.returncode}"
        return f"{text}; last output:\n{self.log_tail}" if self.log_tail else text


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()[-15:]
    return "\n".join(f"  | {line}" for line in lines)


@final
class LocalMesh:
    """A whole mesh on this machine: a sidecar process per meshed Service, plus commands.

    Construct, then `await start()` (or `async with`); `stop()` ends every child and removes
    the work directory. Belongs to the event loop that started it.

    Args:
        config: mesh config file or directory.
        host: address every listener binds (`--host`).
        http1_codec, loop: passed on to every sidecar.
        ready_timeout: how long `start()` waits for every sidecar and app.
        stop_timeout: how long `stop()` waits after SIGTERM before SIGKILL.
        sidecar_command: argv prefix of a sidecar (default `python -m pymesh proxy`).
    """

    def __init__(
        self,
        config: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        http1_codec: str = "httptools",
        loop: LoopName = "uvloop",
        ready_timeout: float = READY_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        sidecar_command: Sequence[str] | None = None,
    ) -> None:
        self.config = Path(config)
        self.host = host
        self.http1_codec = http1_codec
        self.loop: LoopName = loop
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.sidecar_command = list(sidecar_command or [sys.executable, "-m", "pymesh", "proxy"])
        self.mesh: Mesh | None = None
        self.services: tuple[ServiceRuntime, ...] = ()
        self.workdir: Path | None = None
        self._children: list[_Child] = []
        self.control_plane: ControlPlane | None = None  # in-process: CA, config, endpoints

    async def __aenter__(self) -> LocalMesh:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def derived_config(self) -> Path:
        """The config file every sidecar reads (valid after `start()`)."""
        if self.workdir is None:
            raise RuntimeError("LocalMesh not started")
        return self.workdir / "mesh.yaml"

    async def start(self) -> tuple[ServiceRuntime, ...]:
        """Start everything and wait until it is ready; clean up and raise if it cannot.

        Raises:
            ConfigError: the config is invalid (every problem listed).
            MeshStartError: a child exited, or was not ready within `ready_timeout`.
        """
        if self.workdir is not None:
            raise RuntimeError("LocalMesh already started")
        self.mesh = mesh = Mesh.load(self.config)
        plans = _plan(mesh, self.host)
        self.workdir = Path(tempfile.mkdtemp(prefix="pymesh-up-"))
        try:
            inbound = {(p.namespace, p.name): p.inbound for p in plans if p.inbound is not None}
            docs = derive_config(read_documents(self.config), inbound)
            self.derived_config.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            cwd = self.config if self.config.is_dir() else self.config.parent
            # The one-machine mesh works like a distributed one: a control plane (in this
            # process) holds the config, signs each sidecar's CSR and streams it its view;
            # every sidecar joins with its own bootstrap token.
            state = StateDir.init(self.workdir / "state", mesh.spec.trust_domain)
            self.control_plane = ControlPlane(
                state,
                MemoryStore(),
                config=[str(self.derived_config)],
                listen=(_connect_host(self.host), 0),
            )
            await self.control_plane.start()
            started: list[ServiceRuntime] = []
            for svc in plans:
                spec = mesh.service_spec(svc.name, svc.namespace)
                if svc.meshed:
                    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                    write_file_atomic(
                        self.workdir / f"{svc.namespace}.{svc.name}.token",
                        state.issue_token(f"{svc.namespace}/{svc.name}", TOKEN_TTL_S).encode(),
                        mode=0o600,
                    )
                    child = await self._spawn(svc, "sidecar", self._sidecar_argv(svc), env=env)
                    svc = replace(svc, pid=child.process.pid)
                if spec.command:
                    env = command_env(os.environ, svc, spec, host=self.host)
                    child = await self._spawn(
                        svc, "app", command_argv(spec.command), env=env, cwd=cwd
                    )
                    svc = replace(svc, app_pid=child.process.pid)
                started.append(svc)
            self.services = tuple(started)
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self.services

    def _sidecar_argv(self, svc: ServiceRuntime) -> list[str]:
        assert svc.inbound and svc.outbound and svc.admin  # meshed: all set by _plan
        assert self.control_plane is not None and self.control_plane.address is not None
        assert self.workdir is not None
        host, port = self.control_plane.address
        shown = f"[{host}]" if ":" in host else host
        options = {
            "--control-plane": f"https://{shown}:{port}",
            "--token-file": str(self.workdir / f"{svc.namespace}.{svc.name}.token"),
            "--service": f"{svc.namespace}/{svc.name}",
            "--inbound": format_address(svc.inbound),
            "--outbound": format_address(svc.outbound),
            "--admin": format_address(svc.admin),
            "--http1-codec": self.http1_codec,
            "--loop": self.loop,
            "--drain-timeout": str(self.stop_timeout / 2),
        }
        argv = [*self.sidecar_command]
        for option, value in options.items():
            argv += [option, value]
        if len(svc.apps) == 1:
            argv += ["--app", format_address(svc.apps[0][1])]
        else:
            for port, addr in svc.apps:
                argv += ["--app", f"{port}={format_address(addr)}"]
        return argv

    async def _spawn(
        self,
        svc: ServiceRuntime,
        role: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> _Child:
        assert self.workdir is not None
        log = self.workdir / f"{svc.namespace}.{svc.name}.{role}.log"
        with log.open("wb") as out:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_child_setup(),
                )
            except OSError as exc:
                raise MeshStartError(
                    f"{svc.display_name} {role}: cannot run {argv[0]!r}: {exc}"
                ) from exc
        child = _Child(svc.display_name, role, process, log)
        self._children.append(child)
        return child

    def _exited(self) -> Iterator[ChildExit]:
        for c in self._children:
            rc = c.process.returncode
            if rc is not None:
                yield ChildExit(c.service, c.role, c.process.pid, rc, _tail(c.log))

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        pending: dict[str, Callable[[], Awaitable[bool]]] = {}
        for svc in self.services:
            if svc.admin is not None:
                pending[f"{svc.display_name} sidecar"] = _ready_check(svc.admin)
            if svc.app_pid is not None and svc.app is not None:
                pending[f"{svc.display_name} app"] = _accept_check(svc.app)
        while True:
            for what, check in list(pending.items()):
                if await check():
                    del pending[what]
            if not pending:
                return
            for gone in self._exited():
                raise MeshStartError(f"{gone} during start-up")
            if loop.time() >= deadline:
                tails = "".join(
                    f"\n{c.label}:\n{_tail(c.log)}"
                    for c in self._children
                    if f"{c.service} {c.role}" in pending
                )
                raise MeshStartError(
                    f"not ready after {self.ready_timeout:g} s: {', '.join(pending)}{tails}"
                )
            await asyncio.sleep(_POLL_S)

    async def wait_exit(self) -> ChildExit:
        """Wait until any child exits (none should, until `stop()`) and say which."""
        if not self._children:
            await asyncio.Event().wait()  # nothing to watch: wait to be cancelled
        async with asyncio.TaskGroup() as tg:
            waits = [tg.create_task(c.process.wait()) for c in self._children]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        return next(self._exited())

    async def stop(self) -> None:
        """SIGTERM every child (its process group), SIGKILL after `stop_timeout`; clean up.

        Idempotent."""
        children, self._children = self._children, []
        try:
            running = [c for c in children if c.process.returncode is None]
            for c in running:
                _killpg(c.process.pid, signal.SIGTERM)
            waits = [c.process.wait() for c in running]
            if waits:
                try:
                    async with asyncio.timeout(self.stop_timeout):
                        await asyncio.gather(*waits)
                except TimeoutError:
                    for c in running:
                        if c.process.returncode is None:
                            _killpg(c.process.pid, signal.SIGKILL)
                    await asyncio.gather(*(c.process.wait() for c in running))
        finally:
            if self.control_plane is not None:
                await self.control_plane.stop()
                self.control_plane = None
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None


def _killpg(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the child leads its own session and process group
    except ProcessLookupError:
        pass


def _ready_check(admin: Address) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            status, _ = await http_get(admin, "/ready", timeout=1.0)
        except HTTP_ERRORS:
            return False
        return status == 200

    return check


def _accept_check(addr: Address) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _accepts(addr)

    return check


# --- the command ---------------------------------------------------------------------------


async def supervise(
    mesh: LocalMesh,
    main: Callable[[tuple[ServiceRuntime, ...]], Coroutine[Any, Any, int]],
    *,
    prog: str = "pymesh up",
) -> int:
    """Start `mesh`, run `main(services)`, stop `mesh`; return the exit status.

    `main`'s result is the status, unless SIGINT/SIGTERM comes first (0: start-up or `main`
    is cancelled) or a child exits (1, said on stderr). A config error or a failed start is
    1, its errors on stderr. Must run as the loop's main task (it installs signal handlers).
    """
    current = asyncio.current_task()
    assert current is not None
    stopping = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if not stopping:  # a second signal does not interrupt the clean-up
            stopping = True
            current.cancel()

    install_signal_handlers(on_signal)
    try:
        services = await mesh.start()
        async with asyncio.TaskGroup() as tg:
            running = tg.create_task(main(services), name=f"{prog}: main")
            exited = tg.create_task(mesh.wait_exit(), name=f"{prog}: supervise")
            await asyncio.wait({running, exited}, return_when=asyncio.FIRST_COMPLETED)
            (exited if running.done() else running).cancel()
        if running.done() and not running.cancelled():
            return running.result()
        print(f"{prog}: {exited.result()}; stopping everything", file=sys.stderr)
        return 1
    except ConfigError as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return 1
    except MeshStartError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if stopping:
            return 0
        raise
    finally:
        await mesh.stop()


def up_main(args: argparse.Namespace) -> int:
    """`pymesh up FILE_OR_DIR [--json] [--host H] [--http1-codec C] [--loop L]`."""
    # stdout carries the status lines (a contract); the CA's own log lines go to stderr.
    configure_logging("warning")
    mesh = LocalMesh(args.config, host=args.host, http1_codec=args.http1_codec, loop=args.loop)
    json_lines: bool = args.json

    async def announce(services: tuple[ServiceRuntime, ...]) -> int:
        for svc in services:
            print(json.dumps(svc.status_json()) if json_lines else svc.status_line())
        print("ready", flush=True)
        await asyncio.Event().wait()  # until a signal or a child's exit
        return 0

    return run_loop(supervise(mesh, announce), loop="asyncio")
