"""Upstream HTTP/1.1 connections and the per-endpoint keep-alive pool.

An `UpstreamConnection` carries one exchange at a time: it writes the request head and body
(streamed, honouring the transport's write backpressure) and parses the response with the
sans-IO codec, feeding its body into a bounded `Body` whose flow control pauses this socket.
A connection goes back to its `Pool` once the response has been read to the end *and* the
request was written completely; anything else closes it.

Pools are keyed by endpoint address and shared by every client connection of a sidecar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, cast, final

import structlog

from pymesh.errors import RemoteProtocolError, UpstreamConnectError, UpstreamReset
from pymesh.proxy.events import EndOfMessage, ResponseHead
from pymesh.proxy.flow import WriteFlow
from pymesh.proxy.http1 import (
    Limits,
    encode_chunk,
    encode_last_chunk,
    make_response_parser,
)
from pymesh.proxy.messages import Body, Request, Response, Upgrade
from pymesh.proxy.pool2 import H2Pool
from pymesh.proxy.tcp import connect_upstream
from pymesh.runtime import spawn

if TYPE_CHECKING:
    from pymesh.proxy.mtls import TlsOrigin

__all__ = ["Pool", "PoolManager", "ResponseSink", "UpstreamConnection"]

_log = structlog.get_logger("pymesh.pool")
Codec = Literal["httptools", "h11"]
WRITE_HIGH_WATER = 256 * 1024
LAST_CHUNK = b"0\r\n\r\n"


class ResponseSink(Protocol):
    """Receives a response by callback instead of a future (the connection manager's fast
    path for requests without filters or body)."""

    def fast_response(self, response: Response) -> None: ...

    def fast_failed(self, exc: UpstreamReset, retryable: bool) -> None: ...


@final
class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream endpoint (owned by a `Pool`)."""

    __slots__ = (
        "_gen",
        "_head_fut",
        "_pool",
        "_request_done",
        "_response_done",
        "_sink",
        "body",
        "closed",
        "flow",
        "got_bytes",
        "idle_since",
        "keep_alive",
        "parser",
        "requests",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.parser = make_response_parser(pool.codec, pool.limits)
        self.transport: asyncio.Transport | None = None
        self._head_fut: asyncio.Future[Response] | None = None
        self._sink: ResponseSink | None = None
        self.body: Body | None = None
        self.flow = WriteFlow()
        self._request_done = True
        self._response_done = True
        self._gen = 0
        self.closed = False
        self.got_bytes = False
        self.keep_alive = True
        self.requests = 0
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.flow.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self._response_done:
            # Bytes nobody asked for (or after the response ended): the stream is desynced.
            self._fail(UpstreamReset("unexpected bytes from upstream"))
            return
        self.got_bytes = True
        try:
            events = self.parser.feed(data)
        except RemoteProtocolError as exc:
            self._fail(UpstreamReset(f"invalid response: {exc.detail or exc.code}"))
            return
        self._dispatch(events)

    def eof_received(self) -> bool:
        self.keep_alive = False
        if not self._response_done:
            try:
                events = self.parser.feed_eof()
            except RemoteProtocolError as exc:
                self._fail(UpstreamReset(f"upstream closed mid-response: {exc.detail}"))
                return False
            self._dispatch(events)
            if not self._response_done:
                self._fail(UpstreamReset("upstream closed the connection before the response"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self._response_done:
            self._fail(UpstreamReset(f"upstream connection lost: {exc or 'closed'}"))
        self.flow.close()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    # -- exchange -----------------------------------------------------------------------
    def _dispatch(self, events: list[ResponseHead | bytes | EndOfMessage]) -> None:
        ready: Response | None = None
        for ev in events:
            if type(ev) is bytes:
                body = self.body
                if body is not None:
                    body.feed(ev)
            elif isinstance(ev, ResponseHead):
                if ev.status == 101:
                    self._switched(ev)
                    return
                if ev.status < 200:
                    continue  # interim responses are not relayed (we answer 100-continue)
                self.keep_alive = ev.keep_alive
                body = Body(pause=self._pause_reading, resume=self._resume_reading)
                self.body = body
                resp = Response(
                    ev.status,
                    ev.headers,
                    body,
                    reason=ev.reason,
                    content_length=ev.content_length,
                    chunked=ev.chunked,
                )
                resp.release = self._make_release()
                fut = self._head_fut
                self._head_fut = None
                if fut is not None and not fut.done():
                    fut.set_result(resp)
                elif self._sink is not None:
                    ready = resp  # handed over below, once this read's body bytes are in
            elif isinstance(ev, EndOfMessage):
                body = self.body
                if body is not None:
                    body.feed_eof(ev.trailers)
                self._response_done = True
                self._maybe_release()
        if ready is not None:
            sink = self._sink
            self._sink = None
            if sink is not None:
                sink.fast_response(ready)

    def _switched(self, head: ResponseHead) -> None:
        """101 Switching Protocols: the connection leaves the pool and becomes a tunnel."""
        t = self.transport
        assert t is not None
        self._response_done = True
        self.keep_alive = False
        self._pool.forget(self)
        t.pause_reading()  # the relay resumes it
        resp = Response(101, head.headers, None, reason=head.reason)
        resp.upgrade = Upgrade(t, self.parser.upgraded())
        fut = self._head_fut
        self._head_fut = None
        if fut is not None and not fut.done():
            fut.set_result(resp)
        else:
            t.close()  # nobody asked for an upgrade here

    def _pause_reading(self) -> None:
        if not self._response_done and self.transport is not None:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _make_release(self) -> Callable[[bool], None]:
        gen = self._gen

        def release(ok: bool) -> None:
            # The connection manager is done with the response. If it gave up early (client
            # gone, error), the connection's stream position is unknown: close it.
            if not ok and gen == self._gen and not self.closed:
                self.close()

        return release

    def _maybe_release(self) -> None:
        if self._request_done and self._response_done:
            self.body = None
            if self.transport is not None:
                self.transport.resume_reading()
            if self.keep_alive and not self.closed:
                self._pool.release(self)
            else:
                self.close()

    def _fail(self, exc: UpstreamReset) -> None:
        self._response_done = True
        self.keep_alive = False
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.fast_failed(exc, self.requests > 1 and not self.got_bytes)
        fut = self._head_fut
        self._head_fut = None
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        body = self.body
        if body is not None:
            body.abort(exc)
            self.body = None
        self.close()

    def close(self) -> None:
        """Close the connection (it will not be reused)."""
        self.keep_alive = False
        self.flow.flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def start_fast(self, request: Request, head: bytes, sink: ResponseSink) -> None:
        """Send a body-less request; the response goes to `sink` by callback (no future)."""
        t = self.transport
        assert t is not None
        self._gen += 1
        self.requests += 1
        self.got_bytes = False
        self._response_done = False
        self._request_done = True
        self.parser.expect(request.method)
        self._sink = sink
        self.flow.write(head)

    async def exchange(self, request: Request, head: bytes) -> Response:
        """Send `request` (head already serialised) and return the response once its head
        arrives; the body keeps streaming into `response.body`."""
        t = self.transport
        assert t is not None
        self._gen += 1
        self.requests += 1
        self.got_bytes = False
        self._response_done = False
        self.parser.expect(request.method)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._head_fut = fut
        body = request.body
        if body is None:
            self._request_done = True
            self.flow.write(head)
        else:
            self._request_done = False
            chunked = request.chunked
            cb = body.on_first_read
            if cb is not None:  # Expect: 100-continue: tell the client to send the body now
                body.on_first_read = None
                cb()
            data = body.read_nowait()
            if data is not None and body.done:
                # The whole body is already here (the common small POST): one write.
                if chunked:
                    self.flow.write(
                        head
                        + (encode_chunk(data) if data else b"")
                        + encode_last_chunk(body.trailers)
                    )
                else:
                    self.flow.write(head + data)
                self._request_done = True
            else:
                self.flow.write(head)
                if data:
                    self.flow.write(encode_chunk(data) if chunked else data)
                spawn(self._pump(body, chunked, self._gen), name="pymesh.pool.pump")
        return await fut

    async def _pump(self, body: Body, chunked: bool, gen: int) -> None:
        """Stream the rest of a request body upstream, honouring write backpressure."""
        t = self.transport
        assert t is not None
        try:
            while True:
                data = await body.read()
                if self.closed or gen != self._gen:
                    return
                if not data:
                    if chunked:
                        self.flow.write(encode_last_chunk(body.trailers))
                    break
                self.flow.write(encode_chunk(data) if chunked else data)
                if self.flow.paused:
                    await self.flow.drain()
        except Exception as exc:  # the client side failed mid-body: the upstream is unusable
            _log.debug("request_body_aborted", error=repr(exc))
            self._fail(UpstreamReset(f"request body aborted: {exc}"))
            return
        if gen == self._gen:
            self._request_done = True
            self._maybe_release()


@final
class Pool:
    """Keep-alive connections to one endpoint, reused LIFO across client connections."""

    __slots__ = (
        "_all",
        "_idle",
        "_sweeper",
        "address",
        "codec",
        "connect_failures",
        "connect_timeout",
        "idle_timeout",
        "limits",
        "max_idle",
        "tls",
    )

    def __init__(
        self,
        address: tuple[str, int],
        *,
        tls: TlsOrigin | None = None,
        codec: Codec = "httptools",
        limits: Limits | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
        max_idle: int = 256,
    ) -> None:
        self.address = address
        self.tls = tls  # mTLS to a meshed destination (ALPN http/1.1)
        self.codec: Codec = codec
        self.limits = limits or Limits()
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.connect_failures = 0

    @property
    def idle(self) -> int:
        """Idle connections ready for reuse."""
        return len(self._idle)

    @property
    def active(self) -> int:
        """Open connections (idle or busy)."""
        return len(self._all)

    def take_idle(self) -> UpstreamConnection | None:
        """An idle live connection, if there is one (no await: the hot path)."""
        idle = self._idle
        while idle:
            c = idle.pop()
            if not c.closed and c.transport is not None and not c.transport.is_closing():
                return c
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle live connection, or a new one (`UpstreamConnectError` on failure)."""
        c = self.take_idle()
        if c is not None:
            return c
        conn = UpstreamConnection(self)
        try:
            await connect_upstream(conn, self.address, self.connect_timeout, self.tls, "h1")
        except UpstreamConnectError:
            self.connect_failures += 1
            raise
        self._all.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange completed cleanly."""
        if len(self._idle) >= self.max_idle:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection closed: drop it."""
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        for c in [c for c in self._idle if c.idle_since <= deadline]:
            c.close()
        if self._idle:
            self._sweeper = loop.call_later(self.idle_timeout, self._sweep)

    def close(self) -> None:
        """Close every connection of the pool."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for c in list(self._all):
            c.close()
        self._idle.clear()


@final
class PoolManager:
    """All pools of a sidecar, keyed by endpoint address."""

    __slots__ = ("_h2", "_pools", "codec", "connect_timeout", "idle_timeout", "limits")

    def __init__(
        self,
        *,
        codec: Codec = "httptools",
        limits: Limits | None = None,
        connect_timeout: float = 5.0,
        idle_timeout: float = 30.0,
    ) -> None:
        self.codec: Codec = codec
        self.limits = limits or Limits()
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._pools: dict[tuple[tuple[str, int], str | None], Pool] = {}
        self._h2: dict[tuple[tuple[str, int], str | None], H2Pool] = {}

    def get(self, address: tuple[str, int], tls: TlsOrigin | None = None) -> Pool:
        """The pool for `address` (and, under mTLS, the SNI), created on first use."""
        key = (address, tls.sni if tls is not None else None)
        pool = self._pools.get(key)
        if pool is None:
            pool = Pool(
                address,
                tls=tls,
                codec=self.codec,
                limits=self.limits,
                connect_timeout=self.connect_timeout,
                idle_timeout=self.idle_timeout,
            )
            self._pools[key] = pool
        return pool

    def get_h2(self, address: tuple[str, int], tls: TlsOrigin | None = None) -> H2Pool:
        """The HTTP/2 pool for `address` (ports declared http2 or grpc)."""
        key = (address, tls.sni if tls is not None else None)
        pool = self._h2.get(key)
        if pool is None:
            pool = H2Pool(address, connect_timeout=self.connect_timeout, tls=tls)
            self._h2[key] = pool
        return pool

    def pools(self) -> dict[tuple[str, int], Pool]:
        """The HTTP/1.1 pools by address (admin /clusters; mTLS and plaintext pools to one
        address are summed under it by the caller)."""
        out: dict[tuple[str, int], Pool] = {}
        for (address, _), pool in self._pools.items():
            out.setdefault(address, pool)
        return out

    def close(self) -> None:
        """Close every pool."""
        for p in self._pools.values():
            p.close()
        for h in self._h2.values():
            h.close()
