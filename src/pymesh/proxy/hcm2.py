"""The HTTP/2 connection manager (downstream): the asyncio shell around `pymesh.proxy.http2`.

One `H2ServerConnection` per client connection that spoke the HTTP/2 preface (prior-knowledge
h2c, found by protocol detection). Every stream becomes a `Request` on the same routes and
filter chains as HTTP/1.1, run in one task per stream; responses go back as HTTP/2 with the
windows honoured both ways:

- request bodies: received bytes are acknowledged to the client (reopening its window) only
  while the stream's `Body` is below its high-water mark; past it, acknowledgements wait until
  the consumer drains the body, so a slow upstream slows the client instead of a buffer growing;
- response bodies: `send_data` takes only what the peer's windows allow; the rest waits for a
  WINDOW_UPDATE (or for the transport's write buffer to drain).

Protections (concurrent streams, header list size, CONTINUATION floods, rapid reset) live in the
codec; when it ends the connection (GOAWAY) this shell flushes and closes. Upstreams are reached
over HTTP/1.1 for now (the HTTP/2 upstream pool is a later step).
"""

from __future__ import annotations

import asyncio
import time
from typing import final

import structlog

from pymesh.errors import ProxyError, RemoteProtocolError, RequestTimeout, UpstreamTimeout
from pymesh.proxy.events import RequestHead
from pymesh.proxy.h2shell import FlowStream, H2Shell
from pymesh.proxy.hcm import HOP_BY_HOP, ListenerState, forward_headers
from pymesh.proxy.http2 import (
    ConnectionTerminated,
    H2Connection,
    StreamData,
    StreamEnded,
    StreamHeaders,
    StreamRejected,
    StreamReset,
    StreamTrailers,
    WindowOpened,
    grpc_error_headers,
    grpc_status_for,
    h2_to_h1_request_head,
    is_grpc,
    parse_grpc_timeout,
)
from pymesh.proxy.messages import Body, Headers, Request, RequestContext, Response, get_header
from pymesh.proxy.tls import PLAINTEXT, security_of

__all__ = ["H2ServerConnection"]


_log = structlog.get_logger("pymesh.hcm2")
_NO_BODY_STATUS = frozenset({204, 304})


@final
class _Stream(FlowStream):
    __slots__ = (
        "activity",
        "expired_status",
        "grpc",
        "idle_checks",
        "last_seen",
        "request",
        "responding",
        "task",
    )

    def __init__(self, stream_id: int, request: Request, grpc: bool) -> None:
        super().__init__(stream_id)
        self.request = request
        self.grpc = grpc
        self.task: asyncio.Task[None] | None = None
        self.responding = False  # response headers sent
        # Stream idle timeout, without a clock read per frame: `activity` counts frames both
        # ways; the connection's timer compares it with `last_seen` every half timeout.
        self.activity = 0
        self.last_seen = 0
        self.idle_checks = 0
        self.expired_status = 0  # the status of the local reply a stream timeout sent


@final
class H2ServerConnection(H2Shell):
    """One downstream HTTP/2 connection."""

    def __init__(
        self, state: ListenerState, initial: bytes = b"", upgrade_settings: bytes | None = None
    ) -> None:
        """`upgrade_settings`: the HTTP2-Settings value of an HTTP/1.1 `Upgrade: h2c` request
        (then call `start_upgraded()` with that request); RemoteProtocolError if invalid."""
        super().__init__("server", H2Connection("server", upgrade_settings=upgrade_settings))
        self.state = state
        self.streams: dict[int, _Stream] = {}
        self.peer = "-"
        self._client_ip = b""
        self.security = PLAINTEXT
        self._initial = initial
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- the ListenerState contract (drain, busy) -----------------------------------------
    @property
    def busy(self) -> bool:
        """Streams in flight."""
        return bool(self.streams)

    def close_if_idle(self) -> None:
        """Drain: GOAWAY now (in-flight streams finish), close once none is left."""
        if not self.streams:
            self.close()
            return
        if not self.codec.draining:
            self.codec.start_graceful_shutdown()
            self.send()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = self._attach(transport)
        self.security = security_of(t)
        peer = t.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
            self._client_ip = str(peer[0]).encode()
        self.state.connections.add(self)
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        settings = self.state.settings
        self._idle_timer = loop.call_later(
            min(settings.idle_timeout, settings.stream_idle_timeout / 2), self._check_idle
        )
        self.send()  # our SETTINGS
        if self._initial:
            data, self._initial = self._initial, b""
            self.data_received(data)

    def _check_idle(self) -> None:
        """Idle timeout: no stream for `idle_timeout` → GOAWAY and close (re-armed lazily)."""
        self._idle_timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        settings = self.state.settings
        timeout = settings.idle_timeout
        now = loop.time()
        due = self._last_active + timeout
        if self.streams:
            self._check_streams()
        if self.streams or now < due:
            # busy, or active since: look again later (no timer work per request)
            # (at least every half stream timeout: a stream may start at any moment)
            step = now + min(timeout, settings.stream_idle_timeout / 2)
            self._idle_timer = loop.call_at(
                step if self.streams else min(due, step), self._check_idle
            )
            return
        self.codec.close()
        self.send()
        self.close()

    def _check_streams(self) -> None:
        """Stream idle timeout: a stream with no frame either way for two checks in a row
        (`stream_idle_timeout`, checked every half of it) is ended: 408 if the request is
        still coming, 504 if its answer is, a reset if the answer has started."""
        for s in list(self.streams.values()):
            if s.activity != s.last_seen:
                s.last_seen, s.idle_checks = s.activity, 0
                continue
            s.idle_checks += 1
            if s.idle_checks >= 2:
                self._expire(s)

    def _expire(self, s: _Stream) -> None:
        ctx = s.request.context
        timeout = self.state.settings.stream_idle_timeout
        self.streams.pop(s.id, None)
        _log.info("h2_stream_idle_timeout", peer=self.peer, stream=s.id, timeout_s=timeout)
        if s.responding:
            ctx.response_flags = "stream_idle_timeout"
            self.codec.reset_stream(s.id)
            self.send()
        else:
            waiting_for_request = s.body is not None and not s.body.eof
            exc: ProxyError = (
                RequestTimeout(f"no request data for {timeout:g} s")
                if waiting_for_request
                else UpstreamTimeout(f"no response for {timeout:g} s")
            )
            ctx.response_flags = exc.code
            s.expired_status = 200 if s.grpc else exc.http_status
            if s.grpc:
                ctx.grpc_status = str(grpc_status_for(exc.code))
            self._local_reply(s.id, exc, s.grpc)
        if s.body is not None:
            s.body.abort(TimeoutError("stream idle timeout"))
        if s.task is not None and not s.task.done():
            s.task.cancel()

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self._last_active = now
        events = self.codec.receive_data(data, now)
        for ev in events:
            if isinstance(ev, StreamData):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.activity += 1
                self.receive_body(st, ev)
            elif isinstance(ev, StreamHeaders):
                self._on_headers(ev)
            elif isinstance(ev, StreamEnded):
                s = self.streams.get(ev.stream_id)
                if s is not None and s.body is not None:
                    s.body.feed_eof(s.trailers)
            elif isinstance(ev, StreamTrailers):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.trailers = ev.headers
            elif isinstance(ev, WindowOpened):
                self.wake_window()
            elif isinstance(ev, StreamReset):
                self._on_reset(ev.stream_id)
            elif isinstance(ev, StreamRejected):
                self._reject(ev.stream_id)
            elif isinstance(ev, ConnectionTerminated):
                self.send()
                if not ev.remote or ev.error_code != 0 or not self.streams:
                    if ev.error_code:
                        _log.info("h2_goaway", peer=self.peer, code=ev.error_code, remote=ev.remote)
                    self.close()
                    return
        self.send()

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for s in list(self.streams.values()):
            if s.body is not None:
                s.body.abort(ConnectionResetError("client connection lost"))
            if s.task is not None and not s.task.done():
                s.task.cancel()
        self._detach()

    # -- streams --------------------------------------------------------------------------
    def start_upgraded(self, head: RequestHead) -> None:
        """Serve the HTTP/1.1 request that asked for `Upgrade: h2c` as stream 1 (RFC 9113
        §3.2 of RFC 7540: the client has half-closed it; a body was not allowed)."""
        self._start_stream(1, head, False, has_body=False)
        self.send()

    def _on_headers(self, ev: StreamHeaders) -> None:
        sid = ev.stream_id
        if sid in self.streams:
            return  # only trailers follow a request head; the codec reports those apart
        grpc = is_grpc(ev.headers)
        try:
            head = h2_to_h1_request_head(ev.headers, ev.end_stream)
        except RemoteProtocolError as exc:
            self._local_reply(sid, exc, grpc)
            return
        self._start_stream(sid, head, grpc, has_body=not ev.end_stream)

    def _start_stream(self, sid: int, head: RequestHead, grpc: bool, has_body: bool) -> None:
        ctx = RequestContext(
            listener=self.state.name, downstream_addr=self.peer, start=time.monotonic()
        )
        sec = self.security
        ctx.source_principal, ctx.connection_security_policy = sec.principal, sec.policy
        headers, host, rid = forward_headers(head.headers, self._client_ip)
        authority = host or b""
        ctx.request_id = rid.decode("latin-1")
        body: Body | None = None
        if has_body:
            body = Body()
        request = Request(
            head.method,
            head.target,
            authority,
            headers,
            body,
            ctx,
            http_version=b"2",
            content_length=head.content_length,
            chunked=head.chunked and body is not None,
        )
        stream = _Stream(sid, request, grpc)
        if body is not None:
            self.give_body(stream, body)
        self.streams[sid] = stream
        stream.task = asyncio.get_running_loop().create_task(self._run(stream))

    def _on_reset(self, sid: int) -> None:
        s = self.streams.pop(sid, None)
        if s is None:
            return
        if s.body is not None:
            s.body.abort(ConnectionResetError("stream reset by the client"))
        if s.task is not None and not s.task.done():
            s.task.cancel()

    def _reject(self, sid: int) -> None:
        err = ProxyError("more headers than allowed", code="headers_too_large", http_status=431)
        self._local_reply(sid, err, False)

    def _local_reply(self, sid: int, exc: ProxyError, grpc: bool) -> None:
        """Answer a stream that never became a request (malformed head)."""
        if grpc:
            self.codec.send_headers(
                sid, grpc_error_headers(exc.code, exc.detail or exc.code), end_stream=True
            )
        else:
            resp = Response.from_error(exc)
            body = f"{exc.code}: {exc.detail or exc.code}\n".encode()
            self.codec.send_headers(sid, self._h2_headers(resp, None, ""), end_stream=False)
            self.codec.send_data(sid, body, end_stream=True)
        self.send()

    @staticmethod
    def _h2_headers(response: Response, length: int | None, rid: str) -> Headers:
        out: Headers = [(b":status", str(response.status).encode())]
        for k, v in response.headers:
            lk = k.lower()
            if lk in HOP_BY_HOP:
                continue
            if lk == b"x-request-id":
                rid = ""
            out.append((lk, v))
        if length is not None:
            out.append((b"content-length", str(length).encode()))
        if rid:
            out.append((b"x-request-id", rid.encode("latin-1")))
        return out

    async def _run(self, stream: _Stream) -> None:
        settings = self.state.settings
        request = stream.request
        ctx = request.context
        response: Response | None = None
        status = 0
        try:
            try:
                route = settings.router.route(request.authority, "http2", self.security.port)
                ctx.destination_service = route.host
                ctx.destination_namespace = route.namespace
                ctx.destination_workload = route.workload
                deadline = (
                    parse_grpc_timeout(get_header(request.headers, b"grpc-timeout") or b"")
                    if stream.grpc
                    else None
                )
                if deadline is None:
                    response = await route.handler(request)
                else:
                    # gRPC deadlines are the proxy's too: past `grpc-timeout` without an
                    # answer, the client gets DEADLINE_EXCEEDED from us (and the upstream
                    # stream is cancelled).
                    try:
                        async with asyncio.timeout(deadline):
                            response = await route.handler(request)
                    except TimeoutError:
                        raise UpstreamTimeout(f"grpc-timeout of {deadline:g}s passed") from None
            except ProxyError as exc:
                ctx.response_flags = exc.code
                if stream.grpc:
                    status = 200
                    ctx.grpc_status = str(grpc_status_for(exc.code))
                    self.codec.send_headers(
                        stream.id,
                        grpc_error_headers(exc.code, exc.detail or exc.code),
                        end_stream=True,
                    )
                    self.send()
                    return
                response = Response.from_error(exc)
            status = response.status
            await self._respond(stream, response)
        except asyncio.CancelledError:
            status = status or stream.expired_status
            if ctx.response_flags == "-":
                ctx.response_flags = "downstream_reset"
            if response is not None and response.release is not None:
                response.release(False)
            if not self.closed and stream.id in self.streams:
                raise
        except (ConnectionError, ProxyError) as exc:
            if ctx.response_flags == "-":
                ctx.response_flags = exc.code if isinstance(exc, ProxyError) else "downstream_reset"
            if response is not None and response.release is not None:
                response.release(False)
            self.codec.reset_stream(stream.id)
            self.send()
        except Exception as exc:  # a bug: keep the connection, reset the stream
            _log.exception("h2_stream_failed", peer=self.peer, error=repr(exc))
            self.codec.reset_stream(stream.id)
            self.send()
        finally:
            self.streams.pop(stream.id, None)
            duration = time.monotonic() - ctx.start
            if request.body is not None:
                ctx.bytes_received = request.body.received
            for obs in settings.observers:
                obs.on_request(request, status, duration)
            if self.codec.draining and not self.streams:
                self.close()

    async def _respond(self, stream: _Stream, response: Response) -> None:
        request = stream.request
        sid = stream.id
        body = response.body
        head_only = request.method == b"HEAD" or response.status in _NO_BODY_STATUS
        if head_only:
            body = None
        headers = self._h2_headers(response, response.content_length, request.context.request_id)
        codec = self.codec
        if stream.grpc:
            trailers_only = get_header(response.headers, b"grpc-status")
            if trailers_only is not None:
                request.context.grpc_status = trailers_only.decode("latin-1")
        if body is None:
            codec.send_headers(sid, headers, end_stream=True)
            self.send()
            if response.release is not None:
                response.release(True)
            return
        codec.send_headers(sid, headers)
        stream.responding = True
        self.send()
        sent = 0
        while True:
            data = await body.read()
            if not data:
                break
            stream.activity += 1
            sent += len(data)
            while data:
                n = codec.send_data(sid, data)
                self.send()
                data = data[n:]
                if self.flow.paused:
                    await self.flow.drain()  # the socket's buffer is full: wait for it
                elif data and n == 0:
                    if self.closed:
                        raise ConnectionResetError("client connection lost")
                    await self.wait_window()  # the peer's window is closed: wait for it
                else:
                    continue
                if self.closed or sid not in self.streams:
                    raise ConnectionResetError("stream or connection gone")
        request.context.bytes_sent = sent
        if stream.grpc:
            final = get_header(body.trailers, b"grpc-status")
            if final is not None:
                request.context.grpc_status = final.decode("latin-1")
        if body.trailers:
            codec.send_trailers(sid, [(k.lower(), v) for k, v in body.trailers])
        else:
            codec.end_stream(sid)
        self.send()
        if response.release is not None:
            response.release(True)
