"""Accepting connections: the L4 entry protocol, plaintext protocol detection, servers.

- `L4Accept`: a `tcp` port. Reading is paused at accept, the network filter chain runs, and
  its terminal connects upstream and wires the relay (`pymesh.proxy.tcp`).
- `Detect`: a port whose protocol is not declared. It looks at the first bytes: an HTTP/1
  request line goes to the HTTP connection manager, anything else (or silence until the
  detection timeout: server-first protocols such as MySQL or SMTP) to the L4 relay. The bytes
  read while detecting are handed on, never lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast, final

import structlog

from pymesh.errors import ProxyError
from pymesh.proxy.chain import ConnectionHandler, NetworkFilter, compose_network
from pymesh.proxy.detect import DETECT_TIMEOUT_S, Detection, Protocol, detect, detect_final
from pymesh.proxy.hcm import H1Connection, ListenerState, TcpObserver
from pymesh.proxy.hcm2 import H2ServerConnection
from pymesh.proxy.tcp import Connection, Holding, connect_relay

__all__ = ["Detect", "L4Accept", "TcpSettings", "TcpState", "serve"]

_log = structlog.get_logger("pymesh.listener")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSettings:
    """What an L4 port does, for one config version."""

    listener: str
    pick: Callable[[], tuple[str, int] | None]  # the upstream endpoint for a new connection
    destination_service: str = "unknown"
    filters: Sequence[NetworkFilter] = ()
    observers: Sequence[TcpObserver] = ()
    connect_timeout: float = 5.0
    max_connections: int = 16384


@final
class TcpState:
    """Live state of an L4 port: settings (swapped on config change) and its connections."""

    __slots__ = ("connections", "handler", "name", "settings")

    def __init__(self, name: str, settings: TcpSettings) -> None:
        self.name = name
        self.connections = 0
        self.settings = settings
        self.handler = self._compile(settings)

    def update(self, settings: TcpSettings) -> None:
        """Swap in new settings; connections already relayed keep their upstream."""
        self.settings = settings
        self.handler = self._compile(settings)

    def _compile(self, s: TcpSettings) -> ConnectionHandler:
        def on_close(conn: Connection, exc: BaseException | None) -> None:
            self.connections -= 1
            for obs in s.observers:
                obs.on_connection(conn, exc)

        async def terminal(conn: Connection) -> None:
            conn.destination_service = s.destination_service
            await connect_relay(
                conn, s.pick(), connect_timeout=s.connect_timeout, on_close=on_close
            )

        return compose_network(s.filters, terminal)


async def _run_l4(state: TcpState, conn: Connection) -> None:
    state.connections += 1
    try:
        await state.handler(conn)
    except ProxyError as exc:
        conn.close_reason = exc.code
        _log.info(
            "tcp_refused",
            listener=state.name,
            peer=conn.downstream_addr,
            code=exc.code,
            detail=exc.detail,
        )
        state.connections -= 1
        for obs in state.settings.observers:
            obs.on_connection(conn, exc)
        conn.transport.abort()
        return
    if conn.upstream_addr == "-":
        # A network filter refused the connection (did not call call_next).
        state.connections -= 1
        conn.close_reason = conn.close_reason if conn.close_reason != "-" else "refused"
        for obs in state.settings.observers:
            obs.on_connection(conn, None)
        conn.transport.close()


def start_l4(
    state: TcpState, transport: asyncio.Transport, initial: bytes = b"", *, eof: bool = False
) -> None:
    """Run the L4 chain for an accepted transport (its bytes are held meanwhile)."""
    conn = Connection(transport, state.name, initial=initial)
    conn.eof = eof
    transport.set_protocol(Holding(conn, transport))
    if state.connections >= state.settings.max_connections:
        conn.close_reason = "overflow"
        transport.abort()
        return
    task = asyncio.get_running_loop().create_task(_run_l4(state, conn))
    _TASKS.add(task)  # a strong reference until it ends (Python 3.11 GCs unreferenced tasks)
    task.add_done_callback(_TASKS.discard)


_TASKS: set[asyncio.Task[None]] = set()


@final
class L4Accept(asyncio.Protocol):
    """Entry protocol of a `tcp` port: hands the transport to the L4 chain at once."""

    __slots__ = ("state",)

    def __init__(self, state: TcpState) -> None:
        self.state = state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        start_l4(self.state, transport)


@final
class Detect(asyncio.Protocol):
    """Entry protocol of a port with no declared protocol: sniff, then hand over.

    `pymesh.proxy.detect` decides from the first bytes (docs/detection.md); silence until the
    detection timeout (server-first protocols) or EOF decides with what is there. HTTP/1 goes to
    the HTTP/1.1 connection manager, the HTTP/2 preface to the HTTP/2 one; everything else —
    TLS included, until mTLS has its own path — is relayed at L4, bytes intact. Without an L4
    target (the outbound listener) undecidable bytes go to the HTTP/1.1 manager, which refuses
    them properly.
    """

    __slots__ = ("_buf", "_timer", "http", "tcp", "timeout", "transport")

    def __init__(
        self,
        http: ListenerState | None,
        tcp: TcpState | None,
        timeout: float = DETECT_TIMEOUT_S,
    ) -> None:
        self.http = http
        self.tcp = tcp
        self.timeout = timeout
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        if self.http is None:
            self._to_tcp(eof=False)
            return
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._on_timeout)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        found = detect(self._buf)
        if found is not None:
            self._hand_over(found, eof=False)

    def _on_timeout(self) -> None:
        self._timer = None
        self._hand_over(detect_final(self._buf), eof=False)

    def eof_received(self) -> bool:
        if not self._buf:
            return False  # closed without a byte: nothing to relay
        self._hand_over(detect_final(self._buf), eof=True)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_over(self, found: Detection, eof: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if found.protocol is Protocol.HTTP2 and self.http is not None:
            self._to_h2(eof)
        elif found.protocol is Protocol.HTTP1 or self.tcp is None:
            self._to_http(eof)
        else:
            self._to_tcp(eof)

    def _to_h2(self, eof: bool) -> None:
        t = self.transport
        assert t is not None and self.http is not None
        data, self._buf = self._buf, b""
        proto = H2ServerConnection(self.http, initial=data)
        t.set_protocol(proto)
        proto.connection_made(t)
        if eof:
            proto.eof_received()

    def _to_http(self, eof: bool) -> None:
        t = self.transport
        assert t is not None and self.http is not None
        proto = H1Connection(self.http)
        t.set_protocol(proto)
        proto.connection_made(t)
        if self._buf:
            data, self._buf = self._buf, b""
            proto.data_received(data)
        if eof and not proto.eof_received():
            t.close()

    def _to_tcp(self, eof: bool) -> None:
        t = self.transport
        assert t is not None
        if self.tcp is None:
            t.close()
            return
        data, self._buf = self._buf, b""
        start_l4(self.tcp, t, data, eof=eof)


async def serve(
    host: str, port: int, factory: Callable[[], asyncio.Protocol], *, backlog: int = 1024
) -> asyncio.Server:
    """Listen on host:port (port 0: any free port) with `factory` protocols."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, port, backlog=backlog, reuse_address=True)
    return server


def bound_address(server: asyncio.Server) -> tuple[str, int]:
    """The (host, port) a server actually listens on."""
    sock = server.sockets[0]
    addr = sock.getsockname()
    return str(addr[0]), int(addr[1])


AsyncCallback = Callable[[], Awaitable[None]]
