"""Upstream HTTP/2 connections, multiplexed, and their per-endpoint pool.

For service ports declared `http2` or `grpc`: requests from either codec (HTTP/1.1 or HTTP/2
clients) go upstream as streams of a shared HTTP/2 connection; the pool opens another
connection when every open one is at the peer's SETTINGS_MAX_CONCURRENT_STREAMS. Windows are
honoured both ways: request bodies wait for the upstream's WINDOW_UPDATEs; response bytes are
acknowledged (reopening the upstream's window) only while the client side keeps up.
Trailers (gRPC's `grpc-status`, `grpc-message`) come back on `Body.trailers`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, final

import structlog

from pymesh.errors import Overflow, RemoteProtocolError, UpstreamConnectError, UpstreamReset
from pymesh.proxy.events import RequestHead
from pymesh.proxy.h2shell import FlowStream, H2Shell
from pymesh.proxy.http2 import (
    ConnectionTerminated,
    StreamData,
    StreamEnded,
    StreamHeaders,
    StreamReset,
    StreamTrailers,
    WindowOpened,
    h1_to_h2_request_headers,
    h2_to_h1_response_head,
)
from pymesh.proxy.messages import Body, Request, Response
from pymesh.proxy.tcp import connect_upstream
from pymesh.runtime import spawn

if TYPE_CHECKING:
    from pymesh.proxy.mtls import TlsOrigin

__all__ = ["H2Pool", "H2UpstreamConnection"]

_log = structlog.get_logger("pymesh.pool2")


@final
class _UpStream(FlowStream):
    __slots__ = ("method", "response")

    def __init__(self, stream_id: int, method: bytes) -> None:
        super().__init__(stream_id)
        self.method = method
        self.response: asyncio.Future[Response] = asyncio.get_running_loop().create_future()


@final
class H2UpstreamConnection(H2Shell):
    """One HTTP/2 connection to an upstream endpoint, carrying many streams."""

    def __init__(self, pool: H2Pool) -> None:
        super().__init__("client")
        self.pool = pool
        self.streams: dict[int, _UpStream] = {}

    @property
    def usable(self) -> bool:
        """Open, not draining, and below the peer's stream limit."""
        return not self.closed and not self.codec.closed and self.codec.can_open_stream()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)
        self.send()  # the connection preface

    def data_received(self, data: bytes) -> None:
        for ev in self.codec.receive_data(data, asyncio.get_running_loop().time()):
            if isinstance(ev, StreamData):
                self.receive_body(self.streams.get(ev.stream_id), ev)
            elif isinstance(ev, StreamHeaders):
                self._on_headers(ev)
            elif isinstance(ev, StreamTrailers):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.trailers = ev.headers
            elif isinstance(ev, StreamEnded):
                s = self.streams.pop(ev.stream_id, None)
                if s is not None and s.body is not None:
                    s.body.feed_eof(s.trailers)
            elif isinstance(ev, StreamReset):
                self._fail_stream(
                    ev.stream_id,
                    UpstreamReset(f"upstream reset the stream (error {ev.error_code})"),
                )
            elif isinstance(ev, WindowOpened):
                self.wake_window()
            elif isinstance(ev, ConnectionTerminated):
                self.send()
                if ev.error_code or not ev.remote:
                    self._fail_all(
                        UpstreamReset(f"upstream ended the connection (error {ev.error_code})")
                    )
                    self.close()
                elif not self.streams:
                    self.close()
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        self._fail_all(UpstreamReset(f"upstream connection lost: {exc or 'closed'}"))
        self._detach()

    # -- helpers --------------------------------------------------------------------------

    def _on_headers(self, ev: StreamHeaders) -> None:
        s = self.streams.get(ev.stream_id)
        if s is None or s.response.done():
            return
        try:
            head = h2_to_h1_response_head(ev.headers, ev.end_stream, s.method)
        except RemoteProtocolError as exc:
            self.codec.reset_stream(ev.stream_id)
            self._fail_stream(ev.stream_id, UpstreamReset(f"invalid response: {exc.detail}"))
            return
        if head.status < 200:
            return  # interim responses are not relayed
        body: Body | None = None
        if not ev.end_stream:
            body = Body()
            self.give_body(s, body)
        elif ev.end_stream:
            self.streams.pop(ev.stream_id, None)
        resp = Response(
            head.status,
            head.headers,
            body,
            reason=head.reason,
            content_length=head.content_length,
            chunked=body is not None and head.content_length is None,
        )
        if body is not None:
            sid = ev.stream_id

            def release(ok: bool) -> None:
                # The consumer is done with the response; if the stream is still open (it
                # stopped reading early: a client gone, a stream abandoned), reset it so the
                # upstream stops sending and the stream's state is freed.
                if self.streams.pop(sid, None) is not None and not self.closed:
                    self.codec.reset_stream(sid)
                    self.send()

            resp.release = release
        s.response.set_result(resp)

    def _fail_stream(self, sid: int, exc: UpstreamReset) -> None:
        s = self.streams.pop(sid, None)
        if s is None:
            return
        if not s.response.done():
            s.response.set_exception(exc)
        elif s.body is not None:
            s.body.abort(exc)

    def _fail_all(self, exc: UpstreamReset) -> None:
        for sid in list(self.streams):
            self._fail_stream(sid, exc)

    # -- exchange -----------------------------------------------------------------------
    async def exchange(self, request: Request) -> Response:
        """Send `request` as a new stream; the response once its head arrives."""
        head = RequestHead(
            method=request.method,
            target=request.target,
            http_version=b"1.1",
            headers=request.headers,
        )
        headers = h1_to_h2_request_headers(head)
        content_type = request.header(b"content-type")
        if content_type is not None and content_type.startswith(b"application/grpc"):
            headers.append((b"te", b"trailers"))  # gRPC servers require it
        body = request.body
        sid = self.codec.send_headers(None, headers, end_stream=body is None)
        stream = _UpStream(sid, request.method)
        self.streams[sid] = stream
        self.send()
        if body is not None:
            spawn(self._pump(stream, body), name="pymesh.pool2.pump")
        try:
            return await stream.response
        except asyncio.CancelledError:
            # the client went away or its deadline passed: cancel the upstream stream too
            if self.streams.pop(sid, None) is not None:
                self.codec.reset_stream(sid)
                self.send()
            raise

    async def _pump(self, stream: _UpStream, body: Body) -> None:
        sid = stream.id
        codec = self.codec
        try:
            while True:
                data = await body.read()
                if not data:
                    break
                while data:
                    if sid not in self.streams and stream.response.done():
                        return
                    n = codec.send_data(sid, data)
                    self.send()
                    data = data[n:]
                    if self.flow.paused:
                        await self.flow.drain()
                    elif data and n == 0:
                        if self.closed:
                            raise UpstreamReset("upstream connection lost")
                        await self.wait_window()
            if body.trailers:
                codec.send_trailers(sid, [(k.lower(), v) for k, v in body.trailers])
            else:
                codec.end_stream(sid)
            self.send()
        except Exception as exc:  # the client side failed mid-body
            _log.debug("h2_request_body_aborted", error=repr(exc))
            codec.reset_stream(sid)
            self.send()
            self._fail_stream(sid, UpstreamReset(f"request body aborted: {exc}"))


@final
class H2Pool:
    """HTTP/2 connections to one endpoint; a new one when all are at their stream limit."""

    def __init__(
        self,
        address: tuple[str, int],
        connect_timeout: float = 5.0,
        max_connections: int = 16,
        tls: TlsOrigin | None = None,
    ) -> None:
        self.address = address
        self.tls = tls  # mTLS to a meshed destination (ALPN h2)
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.conns: list[H2UpstreamConnection] = []
        self.connect_failures = 0

    def forget(self, conn: H2UpstreamConnection) -> None:
        """The connection closed: drop it."""
        if conn in self.conns:
            self.conns.remove(conn)

    async def acquire(self) -> H2UpstreamConnection:
        """A connection that can take one more stream."""
        for c in self.conns:
            if c.usable:
                return c
        if len(self.conns) >= self.max_connections:
            raise Overflow(f"{self.address[0]}:{self.address[1]}: HTTP/2 connections full")
        conn = H2UpstreamConnection(self)
        try:
            await connect_upstream(conn, self.address, self.connect_timeout, self.tls, "h2")
        except UpstreamConnectError:
            self.connect_failures += 1
            raise
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection."""
        for c in list(self.conns):
            c.close()
