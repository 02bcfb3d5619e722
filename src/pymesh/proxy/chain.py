"""The onion: filter protocols and `compose()`.

HTTP filters are `async def __call__(self, request, call_next) -> Response`; connection (L4)
filters are `async def __call__(self, conn, call_next) -> None` and refuse by not calling
`call_next`. Chains are composed once per route and config version, never per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from pymesh.proxy.messages import Request, Response

if TYPE_CHECKING:
    from pymesh.proxy.tcp import Connection

__all__ = [
    "ConnectionHandler",
    "HttpFilter",
    "HttpService",
    "NetworkFilter",
    "compose",
    "compose_network",
]


class HttpService(Protocol):
    """Something that turns a request into a response (the inner part of the onion)."""

    def __call__(self, request: Request, /) -> Awaitable[Response]: ...


class HttpFilter(Protocol):
    """One layer of the onion.

    Code before `await call_next(request)` runs on the request path, code after it on the
    response path. Return a Response without calling `call_next` to reply locally, or raise a
    `pymesh.errors.ProxyError`. Filters are stateless per request: per-request state belongs in
    `request.context`. `call_next` is called at most once (retries excepted).
    """

    def __call__(self, request: Request, call_next: HttpService, /) -> Awaitable[Response]: ...


class ConnectionHandler(Protocol):
    """Handles a whole L4 connection."""

    def __call__(self, conn: Connection, /) -> Awaitable[None]: ...


class NetworkFilter(Protocol):
    """An L4 filter: refuse a connection by returning without calling `call_next`."""

    def __call__(self, conn: Connection, call_next: ConnectionHandler, /) -> Awaitable[None]: ...


def _bind(f: HttpFilter, nxt: HttpService) -> HttpService:
    def layer(request: Request) -> Awaitable[Response]:
        return f(request, nxt)

    return layer


def compose(filters: Sequence[HttpFilter], terminal: HttpService) -> HttpService:
    """Nest `filters` (outermost first) around `terminal`; no filters means `terminal` itself."""
    service = terminal
    for f in reversed(filters):
        service = _bind(f, service)
    return service


def _bind_network(f: NetworkFilter, nxt: ConnectionHandler) -> ConnectionHandler:
    def layer(conn: Connection) -> Awaitable[None]:
        return f(conn, nxt)

    return layer


def compose_network(
    filters: Sequence[NetworkFilter], terminal: ConnectionHandler
) -> ConnectionHandler:
    """The L4 counterpart of `compose`."""
    handler = terminal
    for f in reversed(filters):
        handler = _bind_network(f, handler)
    return handler


Layer = Callable[[HttpService], HttpService]
