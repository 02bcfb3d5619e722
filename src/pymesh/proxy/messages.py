"""Request, Response and the streaming Body that filters see.

A `Body` is a bounded, single-consumer stream of byte chunks with flow control: when more than
`high_water` bytes are buffered it calls `pause()` (the producer's transport stops reading);
when the consumer drains it below `high_water // 4` it calls `resume()`. Nothing ever holds a
whole body in memory unless a filter deliberately buffers one (and declares a limit).

Headers are `list[tuple[bytes, bytes]]` as received: the cheapest shape on the hot path.
Names compare case-insensitively; helpers below do that.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import final

from pymesh.errors import ProxyError

__all__ = [
    "Body",
    "Headers",
    "Request",
    "RequestContext",
    "Response",
    "Upgrade",
    "get_header",
    "remove_headers",
]

Headers = list[tuple[bytes, bytes]]

DEFAULT_HIGH_WATER = 256 * 1024


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """First value of header `name` (lower-case bytes), or None."""
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def remove_headers(headers: Headers, names: frozenset[bytes]) -> Headers:
    """A copy of `headers` without the (lower-case) `names`."""
    return [(k, v) for k, v in headers if k.lower() not in names]


def _noop() -> None:
    return None


@final
class Body:
    """A bounded stream of body chunks from one producer to one consumer.

    The producer calls `feed()`, `feed_eof()` or `abort()`; the consumer awaits `read()`,
    which returns b"" once the body is complete. `trailers` holds chunked trailers at the end.
    Loop affinity: the loop of the connection that produces it.
    """

    __slots__ = (
        "_buffer",
        "_buffered",
        "_error",
        "_high",
        "_low",
        "_paused",
        "_waiter",
        "eof",
        "on_first_read",
        "pause",
        "received",
        "resume",
        "trailers",
    )

    def __init__(
        self,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        pause: Callable[[], None] = _noop,
        resume: Callable[[], None] = _noop,
    ) -> None:
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._high = high_water
        self._low = high_water // 4
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.eof = False
        self.received = 0  # bytes fed so far (for metrics)
        self.trailers: Headers = []
        self.pause = pause
        self.resume = resume
        self.on_first_read: Callable[[], None] | None = None

    @classmethod
    def complete(cls, data: bytes = b"") -> Body:
        """A body that is already whole (local replies, tests)."""
        body = cls()
        if data:
            body.feed(data)
        body.feed_eof()
        return body

    # -- producer side ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Append a chunk; pauses the producer past the high-water mark."""
        self._buffer.append(data)
        n = len(data)
        self._buffered += n
        self.received += n
        if self._buffered > self._high and not self._paused and not self.eof:
            self._paused = True
            self.pause()
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def feed_eof(self, trailers: Headers | None = None) -> None:
        """Mark the end of the body."""
        self.eof = True
        if trailers:
            self.trailers = trailers
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def abort(self, exc: BaseException) -> None:
        """The producer failed: the consumer's next read raises `exc`."""
        if self.eof:
            return
        self._error = exc
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    # -- consumer side ------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes buffered and not yet read."""
        return self._buffered

    @property
    def done(self) -> bool:
        """True once every chunk has been read and the body ended."""
        return self.eof and not self._buffer

    def read_nowait(self) -> bytes | None:
        """All buffered bytes (b"" at the end), or None if the consumer must wait."""
        if self._buffer:
            if len(self._buffer) == 1:
                data = self._buffer.popleft()
            else:
                data = b"".join(self._buffer)
                self._buffer.clear()
            self._buffered = 0
            if self._paused:
                self._paused = False
                self.resume()
            return data
        if self._error is not None:
            raise self._error
        if self.eof:
            return b""
        return None

    async def wait_ready(self, limit: int) -> None:
        """Wait until the body is complete or at least `limit` bytes are buffered.

        Raises if the producer failed. `limit` must be below the high-water mark (else the
        producer would be paused while we wait for more).
        """
        cb = self.on_first_read
        if cb is not None:
            self.on_first_read = None
            cb()
        while not self.eof and self._buffered < limit:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if self._error is not None and not self._buffer:
            raise self._error

    async def read(self) -> bytes:
        """The next bytes of the body; b"" at the end. Raises if the producer failed."""
        cb = self.on_first_read
        if cb is not None:
            self.on_first_read = None
            cb()
        while True:
            data = self.read_nowait()
            if data is not None:
                return data
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            await self._waiter

    async def read_all(self, limit: int) -> bytes:
        """Read the whole body, at most `limit` bytes (a filter that buffers must bound it)."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise ProxyError(
                    f"body larger than {limit} bytes", code="body_too_large", http_status=413
                )
            parts.append(chunk)
        return b"".join(parts)


@final
class RequestContext:
    """Per-request state shared by the filters, the router, logs and metrics."""

    __slots__ = (
        "authz",
        "bytes_received",
        "bytes_sent",
        "connection_security_policy",
        "destination_namespace",
        "destination_service",
        "destination_workload",
        "downstream_addr",
        "grpc_status",
        "listener",
        "request_id",
        "response_flags",
        "source_principal",
        "start",
        "upstream_addr",
    )

    def __init__(self, *, listener: str, downstream_addr: str, start: float) -> None:
        self.listener = listener
        self.downstream_addr = downstream_addr
        self.start = start
        self.request_id = ""
        self.response_flags = "-"
        self.grpc_status = "-"  # the grpc-status a gRPC response ended with
        self.destination_service = "unknown"
        self.destination_namespace = "unknown"
        self.destination_workload = "unknown"
        self.source_principal = "unknown"  # the client's SPIFFE ID under mTLS
        self.connection_security_policy = "none"  # mutual_tls | none
        self.authz = ""  # the rule that allowed the request (or why it was denied)
        self.upstream_addr = "-"
        self.bytes_received = 0
        self.bytes_sent = 0


@final
class Request:
    """An HTTP request as the filters see it.

    `target` is the request-target as sent upstream (origin-form: path and query);
    `authority` is the host[:port] it is for. `body` is None when the request has no body.
    """

    __slots__ = (
        "authority",
        "body",
        "chunked",
        "content_length",
        "context",
        "headers",
        "http_version",
        "method",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        authority: bytes,
        headers: Headers,
        body: Body | None,
        context: RequestContext,
        *,
        http_version: bytes = b"1.1",
        content_length: int | None = None,
        chunked: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.authority = authority
        self.headers = headers
        self.body = body
        self.context = context
        self.http_version = http_version
        self.content_length = content_length
        self.chunked = chunked

    @property
    def path(self) -> bytes:
        """The path without the query."""
        t = self.target
        i = t.find(b"?")
        return t if i < 0 else t[:i]

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (name in lower case)."""
        return get_header(self.headers, name)


@final
class Upgrade:
    """An upstream connection that switched protocols (101): its transport, paused, and the
    bytes it sent after the 101 head. The connection manager relays it to the client."""

    __slots__ = ("initial", "transport")

    def __init__(self, transport: asyncio.Transport, initial: bytes) -> None:
        self.transport = transport
        self.initial = initial


@final
class Response:
    """An HTTP response as the filters see it.

    `body` is a `Body` stream (from an upstream) or None for no body. `content_length` and
    `chunked` describe the upstream's framing, which the connection manager preserves.
    `release` is called once the connection manager has finished with the response.
    """

    __slots__ = (
        "body",
        "chunked",
        "content_length",
        "headers",
        "reason",
        "release",
        "status",
        "upgrade",
    )

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: Body | None = None,
        *,
        reason: bytes = b"",
        content_length: int | None = None,
        chunked: bool = False,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else []
        self.body = body
        self.content_length = content_length
        self.chunked = chunked
        self.release: Callable[[bool], None] | None = None
        self.upgrade: Upgrade | None = None  # set on a 101: the connection became a tunnel

    @classmethod
    def local(
        cls,
        status: int,
        body: bytes,
        headers: Headers | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> Response:
        """A proxy-generated response with a complete body."""
        h: Headers = [(b"content-type", content_type)]
        if headers:
            h.extend(headers)
        return cls(status, h, Body.complete(body), content_length=len(body))

    @classmethod
    def from_error(cls, exc: ProxyError) -> Response:
        """The local reply for a typed error: status, `x-pymesh-error` and a short body."""
        detail = exc.detail or exc.code
        body = f"{exc.code}: {detail}\n".encode()
        return cls.local(exc.http_status, body, [(b"x-pymesh-error", exc.code.encode())])
