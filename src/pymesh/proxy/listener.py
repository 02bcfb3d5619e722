"""Accepting connections: the L4 entry protocol, plaintext protocol detection, servers.

- `L4Accept`: a `tcp` port. Reading is paused at accept, the network filter chain runs, and
  its terminal connects upstream and wires the relay (`pymesh.proxy.tcp`).
- `Detect`: a port whose protocol is not declared, and every inbound port under mTLS. It looks
  at the first bytes: an HTTP/1 request line goes to the HTTP connection manager, anything
  else (or silence until the detection timeout: server-first protocols such as MySQL or SMTP)
  to the L4 relay. The bytes read while detecting are handed on, never lost. Under mTLS
  (`InboundTls`), a TLS ClientHello goes to a `TlsLayer` (the ClientHello bytes are fed into
  its memory BIO) and, once the client's identity is verified, the decrypted stream goes
  where its ALPN, its SNI's service port and that port's protocol say; plaintext is refused on
  a STRICT port and handled as before on a PERMISSIVE one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast, final

import structlog

from pymesh.errors import PeerVerificationError, ProxyError
from pymesh.policy.model import MtlsMode, PortProtocol
from pymesh.proxy.chain import ConnectionHandler, NetworkFilter, compose_network
from pymesh.proxy.detect import DETECT_TIMEOUT_S, Detection, Protocol, detect, detect_final
from pymesh.proxy.hcm import H1Connection, ListenerState, TcpObserver
from pymesh.proxy.hcm2 import H2ServerConnection
from pymesh.proxy.mtls import accept_peer, parse_sni
from pymesh.proxy.tcp import Connection, Holding, connect_relay
from pymesh.proxy.tls import TlsLayer
from pymesh.tls.credentials import Credentials

__all__ = ["Detect", "InboundTls", "L4Accept", "TcpSettings", "TcpState", "TlsState", "serve"]

_log = structlog.get_logger("pymesh.listener")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSettings:
    """What an L4 port does, for one config version."""

    listener: str
    pick: Callable[[], tuple[str, int] | None]  # the upstream endpoint for a new connection
    # Per service port (a connection whose port is known: mTLS SNI), else `pick`.
    picks: Mapping[int, Callable[[], tuple[str, int] | None]] = field(default_factory=dict)
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
            pick = s.picks.get(conn.port, s.pick) if conn.port is not None else s.pick
            await connect_relay(conn, pick(), connect_timeout=s.connect_timeout, on_close=on_close)

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


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundTls:
    """The mTLS policy of an inbound listener, for one config version."""

    credentials: Credentials
    mode: MtlsMode  # STRICT or PERMISSIVE (DISABLE: no InboundTls at all)
    ports: Mapping[int, PortProtocol | None]  # the service's ports and their protocols
    default_port: int | None  # when the SNI names no port of the service (external clients)
    on_refused: Callable[[str, str, str], None] = lambda reason, peer, detail: None


@final
class TlsState:
    """Live mTLS policy of a listener (swapped on config change)."""

    __slots__ = ("settings",)

    def __init__(self, settings: InboundTls) -> None:
        self.settings = settings


@final
class Detect(asyncio.Protocol):
    """Entry protocol of a port with no declared protocol (or under mTLS): sniff, hand over.

    `pymesh.proxy.detect` decides from the first bytes (docs/detection.md); silence until the
    detection timeout (server-first protocols) or EOF decides with what is there. HTTP/1 goes to
    the HTTP/1.1 connection manager, the HTTP/2 preface to the HTTP/2 one; TLS to mTLS when the
    listener has it (`tls`), else — like everything else — to the L4 relay, bytes intact.
    Without an L4 target (the outbound listener) undecidable bytes go to the HTTP/1.1 manager,
    which refuses them properly.
    """

    __slots__ = ("_buf", "_timer", "http", "tcp", "timeout", "tls", "transport")

    def __init__(
        self,
        http: ListenerState | None,
        tcp: TcpState | None,
        timeout: float = DETECT_TIMEOUT_S,
        tls: TlsState | None = None,
    ) -> None:
        self.http = http
        self.tcp = tcp
        self.tls = tls
        self.timeout = timeout
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        if self.http is None and self.tls is None:
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
        if self.tls is not None:
            if found.protocol is Protocol.TLS and not eof:
                self._to_tls(found)
                return
            if self.tls.settings.mode == "STRICT":
                self._refuse_plaintext(found)
                return
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
        assert t is not None
        if self.http is None:
            t.close()
            return
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

    # -- mTLS ---------------------------------------------------------------------------
    def _peer(self) -> str:
        t = self.transport
        peer = t.get_extra_info("peername") if t is not None else None
        return f"{peer[0]}:{peer[1]}" if peer else "-"

    def _refuse_plaintext(self, found: Detection) -> None:
        assert self.tls is not None and self.transport is not None
        peer = self._peer()
        _log.warning(
            "plaintext_refused",
            peer=peer,
            detected=str(found.protocol),
            detail="mTLS mode is STRICT: this port accepts mutual TLS only",
        )
        self.tls.settings.on_refused("plaintext", peer, f"{found.protocol} in STRICT mode")
        self._buf = b""
        self.transport.close()

    def _to_tls(self, found: Detection) -> None:
        t = self.transport
        assert t is not None and self.tls is not None
        settings = self.tls.settings
        server = settings.credentials.server
        if server is None:
            _log.error("tls_no_identity", peer=self._peer())
            t.close()
            return
        layer = TlsLayer(
            server,
            server_side=True,
            sni=found.sni,
            on_ready=lambda layer: self._tls_ready(layer, settings),
            on_fail=lambda layer, exc: self._tls_failed(exc, settings),
        )
        data, self._buf = self._buf, b""
        t.set_protocol(layer)
        layer.connection_made(t)
        layer.feed(data)

    def _tls_failed(self, exc: BaseException, settings: InboundTls) -> None:
        peer = self._peer()
        reason = _handshake_reason(exc)
        _log.warning("mtls_handshake_failed", peer=peer, reason=reason, error=str(exc))
        settings.on_refused(reason, peer, str(exc))

    def _tls_ready(self, layer: TlsLayer, settings: InboundTls) -> None:
        try:
            layer.peer_id = accept_peer(layer, settings.credentials)
        except PeerVerificationError as exc:
            peer = self._peer()
            reason = getattr(exc, "reason", "peer_identity")
            _log.warning("mtls_peer_refused", peer=peer, reason=reason, error=str(exc))
            settings.on_refused(reason, peer, str(exc))
            layer.close()
            return
        named = parse_sni(layer.sni)
        port = named[2] if named is not None and named[2] in settings.ports else None
        layer.port = port if port is not None else settings.default_port
        protocol = settings.ports.get(layer.port) if layer.port is not None else None
        if layer.alpn == "h2" and self.http is not None:
            h2 = H2ServerConnection(self.http)
            layer.set_protocol(h2)
            h2.connection_made(layer)
        elif layer.alpn == "http/1.1" and self.http is not None:
            h1 = H1Connection(self.http)
            layer.set_protocol(h1)
            h1.connection_made(layer)
        elif (protocol == "tcp" or self.http is None) and self.tcp is not None:
            start_l4(self.tcp, layer)
        else:
            inner = Detect(self.http, self.tcp, self.timeout)
            layer.set_protocol(inner)
            inner.connection_made(layer)


def _handshake_reason(exc: BaseException) -> str:
    """A short metric label for a failed handshake."""
    text = str(exc).lower()
    for needle, reason in (
        ("did not return a certificate", "no_client_certificate"),
        ("certificate required", "no_client_certificate"),
        ("certificate has expired", "certificate_expired"),
        ("expired", "certificate_expired"),
        ("unable to get local issuer", "unknown_ca"),
        ("unknown ca", "unknown_ca"),
        ("self-signed", "unknown_ca"),
        ("self signed", "unknown_ca"),
        ("wrong version number", "not_tls"),
        ("http request", "not_tls"),
        ("timed out", "handshake_timeout"),
        ("not done in", "handshake_timeout"),
        ("protocol version", "tls_version"),
    ):
        if needle in text:
            return reason
    return "handshake_failed"


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
