"""The HTTP/1.1 connection manager (HCM): the asyncio shell around the sans-IO codec.

One `H1Connection` per downstream connection. It feeds bytes to the request parser, turns each
request into a `Request` whose body streams through a bounded `Body`, runs the route's compiled
filter chain in one task per request, and writes the response back with the upstream's framing
preserved. Every proxy-generated reply is rendered here, from a typed `ProxyError`, with its
cause in `x-pymesh-error` (DESIGN.md §2).

Timers: an idle timer while waiting for a request's first byte, a header timer from that first
byte until the head is complete (a 1 byte/s client is answered 408 and closed). Requests on a
connection are answered in order; pipelined requests wait (reading pauses) until the current
response is done. Backpressure both ways through `Body` high-water marks and the transports'
`pause_writing`/`resume_writing`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast, final

import structlog

from pymesh.errors import ProxyError, RemoteProtocolError, RequestTimeout, UpstreamReset
from pymesh.proxy.events import EndOfMessage, RequestHead
from pymesh.proxy.filters.request_id import new_request_id
from pymesh.proxy.flow import WriteFlow
from pymesh.proxy.http1 import (
    Limits,
    encode_chunk,
    encode_last_chunk,
    make_request_parser,
    serialize_response_head,
)
from pymesh.proxy.messages import Body, Headers, Request, RequestContext, Response
from pymesh.proxy.router import Route, may_retry
from pymesh.proxy.tcp import Connection, connect_relay, wire_relay
from pymesh.proxy.tls import PLAINTEXT, security_of

__all__ = ["H1Connection", "HttpObserver", "HttpSettings", "ListenerState", "TcpObserver"]

_log = structlog.get_logger("pymesh.hcm")

# RFC 9110 §7.6.1 connection-specific fields, plus the framing fields we regenerate.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"content-length",
        b"trailer",
        b"expect",
    }
)
HOP_BY_HOP = _HOP_BY_HOP  # shared with the HTTP/2 connection manager
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONNECT_OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
_NO_BODY_STATUS = frozenset({204, 304})
_WRITE_HIGH_WATER = 256 * 1024


class HttpObserver(Protocol):
    """Sees every finished request (metrics, access log). Must not raise or block."""

    def on_request(self, request: Request, status: int, duration_s: float) -> None: ...


class TcpObserver(Protocol):
    """Sees every finished L4 connection (metrics, access log). Must not raise or block."""

    def on_connection(self, conn: Connection, exc: BaseException | None) -> None: ...


class Router(Protocol):
    def route(
        self,
        authority: bytes,
        kind: Literal["http1", "http2", "tcp"] = ...,
        port: int | None = ...,
    ) -> Route: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """What an HTTP listener does, for one config version (swapped whole on change)."""

    listener: str
    router: Router
    codec: Literal["httptools", "h11"] = "httptools"
    limits: Limits = field(default_factory=Limits)
    observers: Sequence[HttpObserver] = ()
    tcp_observers: Sequence[TcpObserver] = ()
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    stream_idle_timeout: float = 300.0  # HTTP/2: a stream with no frame either way (Envoy's)
    connect_timeout: float = 5.0
    allow_connect: bool = False
    max_connections: int = 16384  # beyond this, new connections are closed at accept
    absolute_form: bool = True  # accept absolute-form targets (RFC 9112 §3.2.2: servers MUST)


class ManagedConnection(Protocol):
    """What a listener needs of its connections (HTTP/1.1 or HTTP/2) to drain them."""

    transport: asyncio.Transport | None

    @property
    def busy(self) -> bool: ...

    def close_if_idle(self) -> None: ...


@final
class ListenerState:
    """Live state shared by a listener's connections: settings, connections, draining."""

    __slots__ = ("connections", "draining", "name", "settings")

    def __init__(self, name: str, settings: HttpSettings) -> None:
        self.name = name
        self.settings = settings
        self.connections: set[ManagedConnection] = set()
        self.draining = False

    def drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for c in list(self.connections):
            c.close_if_idle()

    @property
    def busy(self) -> int:
        """Connections with a request in flight."""
        return sum(1 for c in self.connections if c.busy)


def forward_headers(raw: Headers, client_ip: bytes) -> tuple[Headers, bytes | None, bytes]:
    """A request's headers as they go upstream, for both HTTP/1.1 and HTTP/2 clients.

    Hop-by-hop fields are dropped (and those `Connection` names, and `HTTP2-Settings`);
    the client's address is appended to `x-forwarded-for`; `x-request-id` is kept or added.
    Returns (headers, the Host value or None, the request id).
    """
    connection_opts: frozenset[bytes] = frozenset()
    headers: Headers = []
    host: bytes | None = None
    xff: bytes | None = None
    rid: bytes | None = None
    for k, v in raw:
        lk = k.lower()
        if lk in _HOP_BY_HOP or lk == b"http2-settings":
            if lk == b"connection":
                connection_opts = connection_opts | {o.strip().lower() for o in v.split(b",")}
            continue
        if lk == b"host":
            host = v
        elif lk == b"x-forwarded-for":
            xff = v
            continue
        elif lk == b"x-request-id":
            rid = v
        headers.append((k, v))
    if connection_opts:
        headers = [(k, v) for k, v in headers if k.lower() not in connection_opts]
    headers.append((b"x-forwarded-for", xff + b", " + client_ip if xff else client_ip))
    if rid is None:
        rid = new_request_id()
        headers.append((b"x-request-id", rid))
    return headers, host, rid


def _client_addr(transport: asyncio.BaseTransport) -> tuple[str, str]:
    peer = transport.get_extra_info("peername")
    if not peer:
        return "-", ""
    return f"{peer[0]}:{peer[1]}", str(peer[0])


@final
class H1Connection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection (an `asyncio.Protocol`)."""

    __slots__ = (
        "_body",
        "_client_ip",
        "_deadline",
        "_deadline_kind",
        "_eof",
        "_fast",
        "_head_pending",
        "_pending",
        "_read_paused",
        "_request_complete",
        "_response_started",
        "_task",
        "_timer",
        "busy",
        "closed",
        "flow",
        "parser",
        "peer",
        "security",
        "state",
        "transport",
    )

    def __init__(self, state: ListenerState) -> None:
        s = state.settings
        self.state = state
        self.parser = make_request_parser(s.codec, s.limits)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._deadline_kind = 0
        self._head_pending = False  # bytes of a request head have arrived
        self._pending: deque[RequestHead | bytes | EndOfMessage] = deque()
        self._body: Body | None = None  # the request body being received
        self._task: asyncio.Task[None] | None = None
        self.flow = WriteFlow()
        self._read_paused = False
        self._request_complete = True
        self._response_started = False
        self._eof = False  # the client half-closed: answer what is in flight, then close
        self._fast: tuple[Request, bool, HttpSettings] | None = None  # a fast-path exchange
        self.busy = False
        self.closed = False
        self.peer = "-"
        self._client_ip = ""
        self.security = PLAINTEXT

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.flow.transport = transport
        if len(self.state.connections) >= self.state.settings.max_connections:
            _log.warning(
                "connection_limit",
                listener=self.state.name,
                limit=self.state.settings.max_connections,
            )
            self.closed = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.peer, self._client_ip = _client_addr(transport)
        self.security = security_of(transport)
        self.state.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        try:
            events = parser.feed(data)
            if events:
                # The parser returns the events it completed before an error and raises on
                # the next call: ask now, so that nothing of a rejected read goes upstream.
                events.extend(parser.feed(b""))
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        if events:
            self._handle(events)
        elif not self.busy and not self._head_pending:
            self._head_pending = True
            self._arm_header_timer()

    def eof_received(self) -> bool:
        self._eof = True
        try:
            events = self.parser.feed_eof()
        except RemoteProtocolError as exc:
            if self.busy and self._request_complete:
                # A fragment of a next request, then EOF: finish the one in flight and close
                # (nothing of the fragment was forwarded).
                return True
            # The client closed in the middle of a request: its fault (400), not upstream's.
            self._protocol_error(exc)
            return False
        if events:
            self._handle(events)
        body = self._body
        if body is not None:
            body.abort(RemoteProtocolError("client closed the connection mid-body"))
            self._body = None
        if not self.busy:
            self._close()
            return False
        # Half-closed client with a request in flight: answer it, then close.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self._stop_timer()
        body = self._body
        if body is not None:
            body.abort(ConnectionResetError("client connection lost"))
            self._body = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        self.flow.close()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    # -- timers -------------------------------------------------------------------------
    # One timer per connection, re-armed lazily: a request only moves a deadline (no
    # call_later/cancel per request); the timer re-schedules itself when it fires early.
    _NONE, _IDLE, _HEADER = 0, 1, 2

    def _cancel_timer(self) -> None:
        self._deadline_kind = self._NONE

    def _set_deadline(self, kind: int, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._deadline = deadline
        self._deadline_kind = kind
        t = self._timer
        if t is None or t.when() > deadline:
            if t is not None:
                t.cancel()
            self._timer = loop.call_at(deadline, self._on_timer)

    def _arm_idle(self) -> None:
        self._set_deadline(self._IDLE, self.state.settings.idle_timeout)

    def _arm_header_timer(self) -> None:
        self._set_deadline(self._HEADER, self.state.settings.header_timeout)

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind == self._NONE or self.closed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._on_timer)
            return
        self._deadline_kind = self._NONE
        if self.busy:
            return
        if kind == self._IDLE:
            self._close()
            return
        exc = RequestTimeout("request headers not received in time")
        _log.info("request_timeout", listener=self.state.name, peer=self.peer)
        self._reply_and_close(exc)

    def _stop_timer(self) -> None:
        """The connection is gone: drop the timer handle."""
        self._deadline_kind = self._NONE
        t = self._timer
        if t is not None:
            t.cancel()
            self._timer = None

    # -- parsing ------------------------------------------------------------------------
    def _handle(self, events: list[RequestHead | bytes | EndOfMessage]) -> None:
        for i, ev in enumerate(events):
            if self.busy and self._request_complete:
                # A pipelined request: hold it (bounded: we stop reading) until our turn.
                self._pending.extend(events[i:])
                self._pause_reading()
                return
            if type(ev) is bytes:
                body = self._body
                if body is not None:
                    body.feed(ev)
            elif isinstance(ev, RequestHead):
                self._start(ev)
            else:
                assert isinstance(ev, EndOfMessage)
                self._request_complete = True
                body = self._body
                if body is not None:
                    self._body = None
                    body.feed_eof(ev.trailers)

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    def _start(self, head: RequestHead) -> None:
        """A request head arrived: build the Request and run its exchange."""
        self._cancel_timer()
        self._head_pending = False
        self.busy = True
        self._response_started = False
        settings = self.state.settings
        ctx = RequestContext(
            listener=self.state.name, downstream_addr=self.peer, start=time.monotonic()
        )
        sec = self.security
        ctx.source_principal, ctx.connection_security_policy = sec.principal, sec.policy
        method = head.method
        target = head.target
        # Request headers for upstream: drop hop-by-hop (and those Connection names), keep
        # framing aside (re-added by the forwarder), append x-forwarded-for.
        headers, host, rid = forward_headers(head.headers, self._client_ip.encode())
        ctx.request_id = rid.decode("latin-1")
        websocket = (
            head.upgrade is not None and head.upgrade.lower() == b"websocket" and method == b"GET"
        )
        if (
            head.upgrade is not None
            and head.upgrade.lower() == b"h2c"
            and not (head.chunked or head.content_length)
            and method != b"CONNECT"
            and self._upgrade_h2c(head)
        ):
            return
        if websocket:
            # RFC 6455 §4.1: the one Upgrade we pass on; the 101 turns the exchange into a
            # byte relay (`_switch`). Other upgrades (h2c...) are dropped as hop-by-hop.
            headers.append((b"connection", b"Upgrade"))
            headers.append((b"upgrade", head.upgrade or b"websocket"))
        authority = host or b""
        if method == b"CONNECT":
            self._request_complete = True
            self._pause_reading()
            req = Request(
                method, target, target, headers, None, ctx, http_version=head.http_version
            )
            self._task = asyncio.get_running_loop().create_task(self._tunnel(req, settings))
            return
        if target[:1] != b"/" and target != b"*":
            # absolute-form (http_proxy clients): the URL's authority wins over Host
            # (RFC 9112 §3.2.2)
            scheme_end = target.find(b"://")
            if scheme_end < 0 or not settings.absolute_form:
                self._request_complete = True
                self._pause_reading()
                self._task = asyncio.get_running_loop().create_task(
                    self._fail_request(
                        Request(method, target, authority, headers, None, ctx),
                        RemoteProtocolError("absolute-form request-target not accepted here"),
                    )
                )
                return
            rest = target[scheme_end + 3 :]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            headers = [(b"host", authority) if k.lower() == b"host" else (k, v) for k, v in headers]
            host = authority
        if host is None:
            headers.append((b"host", authority))
        body: Body | None = None
        if head.chunked or head.content_length:
            transport = self.transport
            assert transport is not None
            body = Body(pause=self._pause_reading, resume=self._resume_reading)
            if head.expect_continue and head.http_version == b"1.1":
                body.on_first_read = self._send_continue
            self._body = body
            self._request_complete = False
        else:
            self._request_complete = False  # its EndOfMessage follows in the same events
        req = Request(
            method,
            target,
            authority,
            headers,
            body,
            ctx,
            http_version=head.http_version,
            content_length=head.content_length if not head.chunked else None,
            chunked=head.chunked,
        )
        if body is None and not websocket and self._try_fast(req, head.keep_alive, settings):
            return
        self._task = asyncio.get_running_loop().create_task(
            self._exchange(req, head.keep_alive, settings)
        )

    # -- the fast path: no task for a body-less request on a route without filters --------
    #
    # Most mesh traffic is small requests on routes whose only work is routing. For those, the
    # request goes to an idle pooled connection straight from data_received, and the response
    # comes back by callback (`fast_response`) and is written at once: no task, no future, no
    # coroutine chain. Anything else (filters, a body, no idle connection, an error) takes the
    # task path (`_exchange`), which behaves the same, only slower.

    def _try_fast(self, request: Request, keep_alive: bool, settings: HttpSettings) -> bool:
        try:
            route = settings.router.route(request.authority, "http1", self.security.port)
        except ProxyError:
            return False  # the task path renders the error
        fwd = route.fast
        if fwd is None:
            return False
        guard = route.guard
        if guard is not None and not guard(request):
            return False  # the task path runs the filters in full and renders the refusal
        address = fwd.cluster.pick()
        if address is None:
            return False
        conn = fwd.pools.get(address, fwd.tls).take_idle()
        if conn is None:
            return False
        ctx = request.context
        ctx.destination_service = route.host
        ctx.destination_namespace = route.namespace
        ctx.destination_workload = route.workload
        ctx.upstream_addr = f"{address[0]}:{address[1]}"
        self._fast = (request, keep_alive, settings)
        conn.start_fast(request, fwd.head_for(request), self)
        return True

    def fast_response(self, response: Response) -> None:
        """The upstream answered a fast-path request (called from its data_received)."""
        fast = self._fast
        assert fast is not None
        request, keep_alive, settings = fast
        if self.closed:
            request.context.response_flags = "downstream_reset"
            self._fast = None
            if response.release is not None:
                response.release(False)
            self._observe(request, response.status, settings)
            return
        try:
            keep_alive, done, chunked = self._send_now(request, response, keep_alive)
        except Exception:
            _log.exception("fast_response_failed", listener=self.state.name)
            done, keep_alive, chunked = True, False, False
            if response.release is not None:
                response.release(False)
        if done:
            self._fast = None
            self._observe(request, response.status, settings)
            self._finish_exchange(keep_alive)
            return
        self._task = asyncio.get_running_loop().create_task(
            self._fast_tail(request, response, keep_alive, chunked, settings)
        )

    def fast_failed(self, exc: UpstreamReset, retryable: bool) -> None:
        """The upstream failed a fast-path request before answering."""
        fast = self._fast
        assert fast is not None
        self._fast = None
        request, keep_alive, settings = fast
        if self.closed:
            request.context.response_flags = "downstream_reset"
            self._observe(request, 0, settings)
            return
        # The task path retries a request that failed unanswered on a reused idle connection
        # (when the method allows it) and renders any other failure.
        retryable = retryable and may_retry(request)
        if not retryable:
            request.context.response_flags = exc.code
        self._task = asyncio.get_running_loop().create_task(
            self._exchange(request, keep_alive, settings)
            if retryable
            else self._fail_request(request, exc, keep_alive)
        )

    async def _fast_tail(
        self,
        request: Request,
        response: Response,
        keep_alive: bool,
        chunked: bool,
        settings: HttpSettings,
    ) -> None:
        self._fast = None
        try:
            await self._send_rest(request, response, chunked)
        except (asyncio.CancelledError, ConnectionError, ProxyError) as exc:
            flags = request.context.response_flags
            if flags == "-":
                request.context.response_flags = (
                    exc.code if isinstance(exc, ProxyError) else "downstream_reset"
                )
            keep_alive = False
            if response.release is not None:
                response.release(False)
            if isinstance(exc, asyncio.CancelledError) and not self.closed:
                raise
        finally:
            self._observe(request, response.status, settings)
        self._finish_exchange(keep_alive)

    def _switch(self, request: Request, response: Response, settings: HttpSettings) -> bool:
        """The upstream answered 101 to a WebSocket upgrade: send the 101 and relay bytes.

        The connection leaves HTTP for good: from here it is an L4 relay, counted and logged
        by the TCP observers when it closes (the 101 itself is logged as a request).
        """
        up = response.upgrade
        assert up is not None
        t = self.transport
        if t is None or self.closed or t.is_closing() or up.transport.is_closing():
            up.transport.close()
            return False
        out: Headers = [(k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP]
        value = next((v for k, v in response.headers if k.lower() == b"upgrade"), b"websocket")
        out += [(b"connection", b"Upgrade"), (b"upgrade", value)]
        self._response_started = True
        self.flow.write(serialize_response_head(101, response.reason, out))
        self.flow.flush()
        ctx = request.context
        conn = Connection(t, self.state.name, initial=self.parser_leftover())
        conn.destination_service = ctx.destination_service
        conn.upstream_addr = ctx.upstream_addr
        conn.source_principal = ctx.source_principal
        self._stop_timer()
        self.state.connections.discard(self)
        self.busy = False

        def on_close(c: Connection, exc: BaseException | None) -> None:
            for obs in settings.tcp_observers:
                obs.on_connection(c, exc)

        wire_relay(conn, up.transport, up.initial, on_close=on_close)
        return True

    def _observe(self, request: Request, status: int, settings: HttpSettings) -> None:
        ctx = request.context
        duration = time.monotonic() - ctx.start
        if request.body is not None:
            ctx.bytes_received = request.body.received
        for obs in settings.observers:
            obs.on_request(request, status, duration)

    def _upgrade_h2c(self, head: RequestHead) -> bool:
        """`Upgrade: h2c` (RFC 7540 §3.2): answer 101 and continue as HTTP/2, the request
        itself becoming stream 1. False (serve it as HTTP/1.1) if it cannot be honoured."""
        from pymesh.proxy.hcm2 import H2ServerConnection  # hcm2 builds on this module

        value = next((v for k, v in head.headers if k.lower() == b"http2-settings"), None)
        t = self.transport
        if value is None or t is None:
            return False
        try:
            proto = H2ServerConnection(self.state, upgrade_settings=value)
        except RemoteProtocolError:
            return False
        self.flow.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        self.flow.flush()
        leftover = self.parser.upgraded() if self.parser.paused else b""
        self._stop_timer()
        self.state.connections.discard(self)
        self.busy = False
        self._request_complete = True
        t.set_protocol(proto)
        proto.connection_made(t)
        proto.start_upgraded(head)
        if leftover:
            proto.data_received(leftover)
        return True

    def _send_continue(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and not self._response_started:
            self.flow.write(_CONTINUE)

    # -- exchange -----------------------------------------------------------------------
    async def _exchange(self, request: Request, keep_alive: bool, settings: HttpSettings) -> None:
        ctx = request.context
        response: Response | None = None
        status = 0
        switched = False
        try:
            try:
                route = settings.router.route(request.authority, "http1", self.security.port)
                ctx.destination_service = route.host
                ctx.destination_namespace = route.namespace
                ctx.destination_workload = route.workload
                response = await route.handler(request)
            except ProxyError as exc:
                ctx.response_flags = exc.code
                response = Response.from_error(exc)
            except Exception as exc:
                _log.exception("filter_chain_failed", listener=self.state.name, error=repr(exc))
                ctx.response_flags = "internal_error"
                response = Response.from_error(ProxyError(repr(exc)))
            status = response.status
            if response.upgrade is not None:
                switched = self._switch(request, response, settings)
            else:
                keep_alive = await self._send(request, response, keep_alive)
        except asyncio.CancelledError:
            ctx.response_flags = (
                "downstream_reset" if ctx.response_flags == "-" else ctx.response_flags
            )
            keep_alive = False
            if response is not None and response.release is not None:
                response.release(False)
            if not self.closed:
                raise
        except (ConnectionError, ProxyError) as exc:
            # The response could not be completed (client gone, upstream reset mid-body).
            if ctx.response_flags == "-":
                ctx.response_flags = exc.code if isinstance(exc, ProxyError) else "downstream_reset"
            keep_alive = False
            if response is not None and response.release is not None:
                response.release(False)
            self._close()
        finally:
            self._observe(request, status, settings)
        if switched:
            self._task = None
            return
        self._finish_exchange(keep_alive)

    async def _send(self, request: Request, response: Response, keep_alive: bool) -> bool:
        """Write the response; returns whether the connection stays open."""
        keep_alive, done, chunked = self._send_now(request, response, keep_alive)
        if not done:
            await self._send_rest(request, response, chunked)
        return keep_alive

    def _send_now(
        self, request: Request, response: Response, keep_alive: bool
    ) -> tuple[bool, bool, bool]:
        """Write the head and whatever of the body is already here, without waiting.

        Returns (keep_alive, done, chunked); `done` means the whole response is written and
        released. Otherwise `_send_rest` streams the remainder.
        """
        t = self.transport
        if t is None or self.closed:
            if response.release is not None:
                response.release(False)
            return False, True, False
        self._response_started = True
        status = response.status
        http10 = request.http_version == b"1.0"
        if not self._request_complete or self.state.draining or (self._eof and not self._pending):
            keep_alive = False  # the client is still sending a body nobody will read
        head_only = request.method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        out: Headers = []
        length_header: bytes | None = None
        rid = request.context.request_id
        for k, v in response.headers:
            lk = k.lower()
            if lk in _HOP_BY_HOP:
                if lk == b"content-length":
                    length_header = v
                continue
            if lk == b"x-request-id":
                rid = ""  # the upstream answered with its own (usually the same) id
            out.append((k, v))
        body = response.body
        chunked = False
        if head_only:
            if length_header is not None:
                out.append((b"content-length", length_header))
            body = None
        elif response.content_length is not None:
            out.append((b"content-length", str(response.content_length).encode()))
        elif body is None:
            out.append((b"content-length", b"0"))
        elif http10:
            keep_alive = False  # read-until-close framing for an HTTP/1.0 client
        else:
            chunked = True
            out.append((b"transfer-encoding", b"chunked"))
        if rid:
            out.append((b"x-request-id", rid.encode("latin-1")))
        if not keep_alive:
            out.append((b"connection", b"close"))
        elif http10:
            out.append((b"connection", b"keep-alive"))
        head = serialize_response_head(status, response.reason, out)
        if body is None:
            self.flow.write(head)
            request.context.bytes_sent = 0
        else:
            data = body.read_nowait()
            if data is None:
                self.flow.write(head)
                request.context.bytes_sent = 0
                return keep_alive, False, chunked
            request.context.bytes_sent = len(data)
            if body.done:
                # The whole body is here already: one write (the common small response).
                if chunked:
                    self.flow.write(
                        head
                        + (encode_chunk(data) if data else b"")
                        + encode_last_chunk(body.trailers)
                    )
                else:
                    self.flow.write(head + data)
            else:
                self.flow.write(head + (encode_chunk(data) if chunked else data))
                return keep_alive, False, chunked
        if response.release is not None:
            response.release(True)
        return keep_alive, True, chunked

    async def _send_rest(self, request: Request, response: Response, chunked: bool) -> None:
        """Stream the rest of a response body, honouring the client's backpressure."""
        t = self.transport
        body = response.body
        assert t is not None and body is not None
        sent = request.context.bytes_sent
        while True:
            if self.flow.paused:
                await self.flow.drain()
                if self.closed:
                    raise ConnectionResetError("client connection lost")
            data = await body.read()
            if not data:
                break
            sent += len(data)
            request.context.bytes_sent = sent
            self.flow.write(encode_chunk(data) if chunked else data)
        if chunked:
            self.flow.write(encode_last_chunk(body.trailers))
        if response.release is not None:
            response.release(True)

    def _finish_exchange(self, keep_alive: bool) -> None:
        self._task = None
        self.busy = False
        if self.closed:
            return
        if not keep_alive or (self._eof and not self._pending):
            self._close()
            return
        self._arm_idle()
        if self.parser.paused:
            # An Upgrade offer we did not take (Upgrade is hop-by-hop here): parse the bytes
            # held since as HTTP again.
            try:
                self._pending.extend(self.parser.resume())
            except RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
        if self._pending:
            events = list(self._pending)
            self._pending.clear()
            self._handle(events)
        if not self.busy or not self._pending:
            self._resume_reading()

    async def _fail_request(
        self, request: Request, exc: ProxyError, keep_alive: bool = False
    ) -> None:
        """Answer a request with the reply for `exc` (no upstream involved)."""
        request.context.response_flags = exc.code
        try:
            keep_alive = await self._send(request, Response.from_error(exc), keep_alive)
        finally:
            self._observe(request, exc.http_status, self.state.settings)
        self._finish_exchange(keep_alive)

    async def _tunnel(self, request: Request, settings: HttpSettings) -> None:
        """CONNECT host:port → an L4 relay to the service's endpoint."""
        ctx = request.context
        try:
            route = settings.router.route(request.target, "tcp")
            address = route.cluster.pick()
            t = self.transport
            assert t is not None
            conn = Connection(t, self.state.name, initial=self.parser_leftover())
            conn.destination_service = route.host
            ctx.destination_service = route.host

            def on_close(c: Connection, exc: BaseException | None) -> None:
                for obs in settings.tcp_observers:
                    obs.on_connection(c, exc)

            self._cancel_timer()
            self.state.connections.discard(self)
            await connect_relay(
                conn,
                address,
                connect_timeout=settings.connect_timeout,
                on_close=on_close,
                before_relay=self._connect_ok,
                tls=route.tls,
            )
        except ProxyError as exc:
            ctx.response_flags = exc.code
            self.state.connections.add(self)
            await self._send(request, Response.from_error(exc), False)
            for obs in settings.observers:
                obs.on_request(request, exc.http_status, time.monotonic() - ctx.start)
            self._finish_exchange(False)
            return
        # The transport now belongs to the relay; this protocol object is done.
        self._task = None
        self.busy = False

    def _connect_ok(self) -> None:
        """The tunnel is up: answer 200 directly (the transport goes to the relay next)."""
        self.flow.flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_CONNECT_OK)

    def parser_leftover(self) -> bytes:
        """Bytes the client sent after the CONNECT head (already the tunnel's payload)."""
        return self.parser.upgraded() if self.parser.paused else b""

    # -- errors and closing -------------------------------------------------------------
    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        """The client sent something illegal: answer (if we still can) and close."""
        _log.info(
            "bad_request",
            listener=self.state.name,
            peer=self.peer,
            code=exc.code,
            detail=exc.detail,
        )
        body = self._body
        if body is not None:
            self._body = None
            body.abort(exc)
        task = self._task
        if task is not None and not task.done():
            if self._response_started:
                self._close()
                return
            task.cancel()
        self._reply_and_close(exc)

    def _reply_and_close(self, exc: ProxyError) -> None:
        t = self.transport
        self._cancel_timer()
        if t is not None and not t.is_closing() and not self._response_started:
            self._response_started = True
            resp = Response.from_error(exc)
            headers = [
                *resp.headers,
                (b"content-length", str(resp.content_length).encode()),
                (b"connection", b"close"),
            ]
            data = resp.body.read_nowait() if resp.body is not None else b""
            self.flow.write(serialize_response_head(exc.http_status, b"", headers) + (data or b""))
            ctx = RequestContext(
                listener=self.state.name, downstream_addr=self.peer, start=time.monotonic()
            )
            ctx.response_flags = exc.code
            req = Request(b"-", b"-", b"-", [], None, ctx)
            for obs in self.state.settings.observers:
                obs.on_request(req, exc.http_status, 0.0)
        self._close()

    def close_if_idle(self) -> None:
        """Close now if no request is in flight (drain)."""
        if not self.busy:
            self._close()

    def _close(self) -> None:
        self._stop_timer()
        self.flow.flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()


def make_protocol_factory(state: ListenerState) -> Callable[[], H1Connection]:
    """The protocol factory for `loop.create_server`."""

    def factory() -> H1Connection:
        return H1Connection(state)

    return factory
