"""Test kit: real loopback backends (written with h11, not with pymesh's codecs) and clients.

Everything binds 127.0.0.1 on port 0 and is stopped by its context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from pymesh.policy.model import Endpoint, MeshSpec, ServicePort, ServiceSpec
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.messages import get_header
from pymesh.proxy.sidecar import Sidecar

Handler = Callable[["BackendRequest"], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]]


@dataclass
class BackendRequest:
    """What the backend saw."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return get_header(self.headers, name)


async def echo_handler(req: BackendRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """200 with a body describing the request."""
    body = b"%s %s len=%d" % (req.method, req.target, len(req.body))
    return 200, [(b"content-type", b"text/plain")], body


@dataclass
class Backend:
    """An HTTP/1.1 server on h11 that counts accepted connections and records requests."""

    handler: Handler = echo_handler
    connections: int = 0
    requests: list[BackendRequest] = field(default_factory=list)
    raw_bytes: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    self.raw_bytes += len(data)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    body = bytearray()
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await reader.read(65536)
                            self.raw_bytes += len(data)
                            if not data:
                                return
                            conn.receive_data(data)
                            continue
                        if isinstance(ev, h11.Data):
                            body += ev.data
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                    req = BackendRequest(
                        event.method, event.target, [(k, v) for k, v in event.headers], bytes(body)
                    )
                    self.requests.append(req)
                    status, headers, rbody = await self.handler(req)
                    headers = [*headers, (b"content-length", str(len(rbody)).encode())]
                    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                    writer.write(conn.send(h11.Data(data=rbody)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return
        except asyncio.CancelledError:
            # Stopped at teardown: end normally, or asyncio's start_server callback logs the
            # cancellation as "Exception in callback".
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()  # handlers see EOF and return before the loop goes away
        for t in list(self.tasks):
            t.cancel()  # a handler still in the app's `handler` (e.g. a slow one)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.server.wait_closed()


def mesh_for(
    services: dict[str, tuple[list[tuple[int, str | None]], list[tuple[str, int]]]], **mesh_kw: Any
) -> Mesh:
    """A mesh of services: name → ([(port, protocol)], [endpoint addresses])."""
    specs = {
        name: ServiceSpec(
            service_account=name,
            ports=tuple(
                ServicePort(name=f"p{p}", port=p, protocol=proto)  # type: ignore[arg-type]
                for p, proto in ports
            ),
            endpoints=tuple(Endpoint(address=h, port=pt) for h, pt in eps),
        )
        for name, (ports, eps) in services.items()
    }
    return Mesh.build(name="test", spec=MeshSpec(mtls="DISABLE", **mesh_kw), services=specs)


@contextlib.asynccontextmanager
async def sidecar(
    mesh: Mesh, service: str, app: tuple[str, int] | None = None, **kw: Any
) -> AsyncIterator[Sidecar]:
    """A sidecar on free loopback ports."""
    sc = Sidecar(
        mesh,
        service,
        inbound=("127.0.0.1", 0),
        outbound=("127.0.0.1", 0),
        admin=("127.0.0.1", 0),
        app=app,
        access_log=kw.pop("access_log", False),
        **kw,
    )
    async with sc:
        yield sc


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return get_header(self.headers, name)


class Client:
    """A keep-alive HTTP/1.1 client on h11 over one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> Client:
        r, w = await asyncio.open_connection(*address)
        return cls(r, w)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        timeout: float = 10.0,
    ) -> Reply:
        async with asyncio.timeout(timeout):
            if self.conn.our_state is h11.DONE:
                self.conn.start_next_cycle()
            hs = list(headers or [])
            if not any(k.lower() == "host" for k, _ in hs):
                hs.append(("host", "localhost"))
            if body:
                hs.append(("content-length", str(len(body))))
            self.writer.write(self.conn.send(h11.Request(method=method, target=target, headers=hs)))
            if body:
                self.writer.write(self.conn.send(h11.Data(data=body)))
            self.writer.write(self.conn.send(h11.EndOfMessage()))
            await self.writer.drain()
            resp: h11.Response | None = None
            data = bytearray()
            while True:
                ev = self.conn.next_event()
                if ev is h11.NEED_DATA:
                    chunk = await self.reader.read(65536)
                    self.conn.receive_data(chunk)
                    continue
                if isinstance(ev, h11.Response):
                    resp = ev
                elif isinstance(ev, h11.Data):
                    data += ev.data
                elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            assert resp is not None
            return Reply(resp.status_code, list(resp.headers), bytes(data))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def raw_exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything read until the server closes (or timeout)."""
    r, w = await asyncio.open_connection(*address)
    try:
        w.write(data)
        await w.drain()
        out = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await r.read(65536):
                out += chunk
        return bytes(out)
    finally:
        w.close()


# -- sidecars as real processes -------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_service_yaml(service: str, port: int, protocol: str, endpoint_port: int) -> str:
    """A mesh (mTLS off) with one Service whose only endpoint is 127.0.0.1:endpoint_port."""
    return (
        "apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: test}\n"
        "spec: {trustDomain: test.local, mtls: DISABLE}\n---\n"
        "apiVersion: pymesh.io/v1alpha1\nkind: Service\n"
        f"metadata: {{name: {service}}}\nspec:\n  serviceAccount: {service}\n"
        f"  ports: [{{name: p, port: {port}, protocol: {protocol}}}]\n"
        f"  endpoints: [{{address: 127.0.0.1, port: {endpoint_port}}}]\n"
    )


class SidecarProcess:
    """`python -m pymesh proxy` for the one service of `config_text`, on free ports.

    The inbound port is chosen first, so a config may name it as the service's endpoint:
    pass `config_text` as a function of the inbound port.
    """

    def __init__(
        self,
        tmp_path: Path,
        config: str | Callable[[int], str],
        service: str,
        app: tuple[str, int],
        *extra: str,
        name: str = "sidecar",
    ) -> None:
        self.inbound, self.outbound, self.admin = free_port(), free_port(), free_port()
        self.log = tmp_path / f"{name}.log"
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(config(self.inbound) if callable(config) else config)
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pymesh",
                    "proxy",
                    "--config",
                    str(cfg),
                    "--service",
                    service,
                    "--inbound",
                    f"127.0.0.1:{self.inbound}",
                    "--outbound",
                    f"127.0.0.1:{self.outbound}",
                    "--admin",
                    f"127.0.0.1:{self.admin}",
                    "--app",
                    f"{app[0]}:{app[1]}",
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        return self.p.pid

    async def ready(self, timeout: float = 15.0) -> None:
        """Wait for `GET /ready` to answer 200."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", self.admin)
                    w.write(b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    data = await r.read()
                    w.close()
                    if data.startswith(b"HTTP/1.1 200"):
                        return
                except OSError:
                    pass
                assert self.p.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
