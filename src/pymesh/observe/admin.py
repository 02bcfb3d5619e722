"""The admin endpoint: a small HTTP/1.1 server for ``/ready``, ``/metrics``, ``/config_dump``...

Not on the hot path, so it favours robustness over speed: asyncio streams, h11 for parsing,
and a bound on everything a client controls.

* Routes are exact ``(METHOD, PATH)`` keys; the query string is parsed into
  `AdminRequest.query`. An unknown path gets 404 with a JSON body listing the endpoints, a
  known path with another method gets 405 with ``Allow``; ``HEAD`` is served by the ``GET``
  handler without a body.
* Limits: request head (request line and headers) 64 KiB → 431; body 1 MiB → 413; a whole
  request must arrive within ``read_timeout`` seconds of the server starting to wait for it
  (an idle keep-alive connection is closed then; a partial request gets 408); a response
  must be taken by the client within ``write_timeout``; a handler gets ``handler_timeout``
  (→ 503); at most ``max_connections`` connections (others get 503 and are closed).
* A handler that raises gets a 500 and a log line with the traceback; the server goes on.
* `AdminServer.close` stops accepting, closes idle connections at once and lets requests in
  progress finish (a ``POST /shutdown`` handler may call it) within a grace period.

The server binds whatever ``host`` it is given; the sidecar's default is loopback
(``127.0.0.1:15000``, DESIGN.md §3) because the endpoints can drain and stop the proxy and
dump its configuration. A non-loopback bind is logged as a warning.

Loop affinity: an `AdminServer` belongs to the loop that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, TypeAlias, final
from urllib.parse import parse_qsl, urlsplit

import h11
from structlog.typing import FilteringBoundLogger

from pymesh.observe.log import get_logger

__all__ = [
    "DEFAULT_ADMIN_HOST",
    "DEFAULT_ADMIN_PORT",
    "AdminRequest",
    "AdminResponse",
    "AdminServer",
    "Handler",
    "json_response",
    "start_admin_server",
    "text_response",
]

DEFAULT_ADMIN_HOST: Final = "127.0.0.1"
DEFAULT_ADMIN_PORT: Final = 15000

_READ_CHUNK: Final = 65536


def _log() -> FilteringBoundLogger:
    # A fresh lazy proxy per (rare) use: never a logger cached under an older configuration.
    return get_logger("pymesh.admin")


@final
@dataclass(frozen=True, slots=True)
class AdminRequest:
    """One complete request, as a handler sees it."""

    method: str
    """Upper-case method, e.g. ``GET`` (``HEAD`` requests reach the ``GET`` handler as-is)."""
    path: str
    """The path, without the query string, not percent-decoded."""
    query: dict[str, str]
    """Query parameters; for a repeated name the last value wins."""
    headers: Mapping[str, str]
    """Header names lower-cased; repeated headers joined with ``", "``."""
    body: bytes


@final
@dataclass(frozen=True, slots=True)
class AdminResponse:
    """What a handler returns."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (``content-type`` and ``content-length`` are set for you)."""


Handler: TypeAlias = Callable[[AdminRequest], Awaitable[AdminResponse]]
"""An admin endpoint: an async function from request to response."""


def json_response(obj: object, status: int = 200) -> AdminResponse:
    """A JSON response (pretty-printed, sorted keys, trailing newline)."""
    body = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return AdminResponse(status, body.encode("utf-8"), "application/json")


def text_response(
    text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8"
) -> AdminResponse:
    """A text response encoded as UTF-8."""
    return AdminResponse(status, text.encode("utf-8"), content_type)


class _Reject(Exception):
    """Stop reading this connection: answer ``status`` (if possible) and close."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass(slots=True)
class _ConnState:
    """What `AdminServer.close` needs to know about one connection."""

    writer: asyncio.StreamWriter
    busy: bool = False
    """A complete request is being handled or its response written: let it finish."""
    started: bool = False
    """Bytes of the current request have arrived (so a timeout gets a 408, not silence)."""
    fed: int = 0
    """Bytes given to h11 in this request cycle (to measure the request head)."""


@final
class AdminServer:
    """A running admin server. Made by `start_admin_server`; stop it with `close`."""

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        *,
        read_timeout: float,
        write_timeout: float,
        handler_timeout: float,
        max_head: int,
        max_body: int,
        max_connections: int,
    ) -> None:
        self.routes: dict[tuple[str, str], Handler] = {
            (method.upper(), path): handler for (method, path), handler in routes.items()
        }
        self._methods: dict[str, list[str]] = {}
        for method, path in self.routes:
            self._methods.setdefault(path, []).append(method)
        for methods in self._methods.values():
            if "GET" in methods and "HEAD" not in methods:
                methods.append("HEAD")
            methods.sort()
        self._endpoints = sorted(f"{m} {p}" for m, p in self.routes)
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.handler_timeout = handler_timeout
        self.max_head = max_head
        self.max_body = max_body
        self.max_connections = max_connections
        self.host = ""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _ConnState] = {}
        self._closing = False

    async def __aenter__(self) -> AdminServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closing(self) -> bool:
        """`close` has been called."""
        return self._closing

    @property
    def connections(self) -> int:
        """Connections currently open."""
        return len(self._conns)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, close idle connections, give requests in progress ``grace``
        seconds to finish, then cancel the rest. Idempotent; safe to call from a handler."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        me = asyncio.current_task()
        for task, state in list(self._conns.items()):
            if not state.busy and task is not me:
                state.writer.close()  # its pending read sees EOF and the task ends
        others = [t for t in self._conns if t is not me]
        if others:
            _done, pending = await asyncio.wait(others, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._server is not None and me not in self._conns:
            # On 3.12+ wait_closed() waits for every connection, our own included.
            await self._server.wait_closed()

    # --- per connection ---------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._conns) >= self.max_connections:
            writer.write(
                _serialize(
                    h11.Connection(h11.SERVER),
                    _error(503, "unavailable", "too many admin connections"),
                    close=True,
                )
            )
            await self._finish(writer)
            return
        state = _ConnState(writer)
        self._conns[task] = state
        try:
            await self._serve(reader, writer, state)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading; nothing to tell it
        except asyncio.CancelledError:
            # close() after its grace period, or loop shutdown. This task is the top of its
            # own stack (asyncio.start_server made it); ending it normally avoids 3.11's
            # streams logging a cancelled connection task as an error.
            pass
        except Exception:
            _log().exception("admin_connection_failed")
        finally:
            del self._conns[task]
            await self._finish(writer)

    async def _finish(self, writer: asyncio.StreamWriter) -> None:
        """Close, giving buffered output a second to flush; then drop the connection."""
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()  # a client that does not read must not pin the socket
        except Exception:
            pass  # the peer reset: closed anyway

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: _ConnState
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        while not self._closing:
            state.busy = False
            try:
                got = await self._read_request(conn, reader, writer, state)
            except _Reject as reject:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    response = _error(reject.status, _error_code(reject.status), reject.error)
                    await self._write(writer, _serialize(conn, response, close=True))
                    await self._linger(reader)
                return
            if got is None:
                return
            state.busy = True
            request, head_only = got
            response = await self._dispatch(request)
            close = self.closing or conn.their_state is not h11.DONE
            await self._write(writer, _serialize(conn, response, head_only=head_only, close=close))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE: HTTP/1.0, "Connection: close", or we said close
            conn.start_next_cycle()

    async def _linger(self, reader: asyncio.StreamReader) -> None:
        """Discard what the client is still sending (bounded in bytes and time) before
        closing, so that closing with unread data (a TCP RST) does not destroy the error
        response before the client reads it (the "lingering close" of RFC 9112 §9.6)."""
        budget = self.max_head + self.max_body
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(min(1.0, self.read_timeout)):
                while budget > 0:
                    data = await reader.read(_READ_CHUNK)
                    if not data:
                        return
                    budget -= len(data)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()

    async def _read_request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: _ConnState,
    ) -> tuple[AdminRequest, bool] | None:
        """Read one whole request within ``read_timeout``: (request, is HEAD), or None to
        close quietly (EOF, or time ran out before a request began). Raises `_Reject` for a
        request to refuse."""
        state.fed = len(conn.trailing_data[0])  # pipelined bytes already buffered
        state.started = state.fed > 0
        cm = asyncio.timeout(self.read_timeout)
        try:
            async with cm:
                return await self._read_events(conn, reader, writer, state)
        except TimeoutError:
            if not cm.expired():
                raise  # a write timeout (100 Continue): the client is not reading
            if not state.started:
                return None
            raise _Reject(408, "request not received in time") from None

    async def _read_events(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: _ConnState,
    ) -> tuple[AdminRequest, bool] | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not state.started:
                    return None
                raise _Reject(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                if request is not None and conn.they_are_waiting_for_100_continue:
                    go_on = conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    await self._write(writer, go_on or b"")
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return None  # EOF, possibly mid-request: nobody to answer
                state.started = True
                state.fed += len(data)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                # h11 bounds only an *incomplete* head (max_incomplete_event_size); a complete
                # one that arrived in one read is measured here.
                if state.fed - len(conn.trailing_data[0]) > self.max_head:
                    raise _Reject(431, f"request head over {self.max_head} bytes")
                length = _content_length(event)
                if length is not None and length > self.max_body:
                    raise _Reject(413, f"request body over {self.max_body} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise _Reject(413, f"request body over {self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return _to_request(request, bytes(body)), request.method == b"HEAD"
            else:  # ConnectionClosed (or PAUSED, which a complete cycle never reaches)
                return None

    async def _dispatch(self, request: AdminRequest) -> AdminResponse:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self.routes.get((request.method, request.path)) or self.routes.get(
            (method, request.path)
        )
        if handler is None:
            allowed = self._methods.get(request.path)
            if allowed is None:
                return json_response(
                    {"error": "not_found", "path": request.path, "endpoints": self._endpoints},
                    404,
                )
            resp = json_response(
                {"error": "method_not_allowed", "path": request.path, "allow": allowed}, 405
            )
            return AdminResponse(
                resp.status, resp.body, resp.content_type, (("allow", ", ".join(allowed)),)
            )
        cm = asyncio.timeout(self.handler_timeout)
        try:
            async with cm:
                response = await handler(request)
            if not isinstance(response, AdminResponse):
                raise TypeError(f"handler returned {type(response).__name__}, not AdminResponse")
            if not 200 <= response.status <= 599:
                raise ValueError(f"handler returned status {response.status}")
        except Exception as exc:
            if isinstance(exc, TimeoutError) and cm.expired():
                _log().error(
                    "admin_handler_timeout",
                    method=request.method,
                    path=request.path,
                    timeout=self.handler_timeout,
                )
                return _error(503, "handler_timeout", "the endpoint did not answer in time")
            _log().exception("admin_handler_failed", method=request.method, path=request.path)
            return _error(500, "internal_error", "the endpoint failed; see the log")
        _log().debug(
            "admin_request", method=request.method, path=request.path, status=response.status
        )
        return response


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


def _to_request(event: h11.Request, body: bytes) -> AdminRequest:
    target = event.target.decode("ascii", "replace")
    if target.startswith("/"):
        path, _, query = target.partition("?")
    else:  # absolute-form or "*"
        parts = urlsplit(target)
        path, query = parts.path or "/", parts.query
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("ascii")
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return AdminRequest(
        method=event.method.decode("ascii"),
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        body=body,
    )


def _error(status: int, code: str, message: str) -> AdminResponse:
    return json_response({"error": code, "message": message}, status)


# The pymesh error codes (DESIGN.md §2) where one fits; "body_too_large" is the admin's own.
_REJECT_CODES: Final = {
    400: "bad_request",
    408: "request_timeout",
    413: "body_too_large",
    414: "uri_too_long",
    431: "headers_too_large",
}


def _error_code(status: int) -> str:
    return _REJECT_CODES.get(status, "bad_request")


def _serialize(
    conn: h11.Connection, response: AdminResponse, *, head_only: bool = False, close: bool
) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase.encode("ascii")
    except ValueError:
        reason = b""
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", "no-store"),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    assert out is not None
    if not head_only and response.body:
        out += conn.send(h11.Data(data=response.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_admin_server(
    host: str,
    port: int,
    routes: Mapping[tuple[str, str], Handler],
    *,
    read_timeout: float = 10.0,
    write_timeout: float = 10.0,
    handler_timeout: float = 30.0,
    max_head: int = 64 * 1024,
    max_body: int = 1024 * 1024,
    max_connections: int = 64,
) -> AdminServer:
    """Start an admin server on ``host:port`` (port 0: any free port, see `AdminServer.port`).

    Args:
        host: address to bind; use loopback (`DEFAULT_ADMIN_HOST`) unless you mean otherwise.
        port: TCP port.
        routes: ``{(METHOD, PATH): handler}``.
        read_timeout: seconds for a whole request (and for an idle keep-alive connection).
        write_timeout: seconds for the client to take a response.
        handler_timeout: seconds for a handler to answer (then 503).
        max_head: bytes of request line + headers (then 431).
        max_body: bytes of request body (then 413).
        max_connections: concurrent connections (then 503 and close).
    """
    server = AdminServer(
        routes,
        read_timeout=read_timeout,
        write_timeout=write_timeout,
        handler_timeout=handler_timeout,
        max_head=max_head,
        max_body=max_body,
        max_connections=max_connections,
    )
    aserver = await asyncio.start_server(server._on_connect, host, port, limit=_READ_CHUNK)
    server._server = aserver
    server.host = host
    server.port = aserver.sockets[0].getsockname()[1]
    if not _is_loopback(host):
        _log().warning("admin_not_loopback", host=host, port=server.port)
    return server
