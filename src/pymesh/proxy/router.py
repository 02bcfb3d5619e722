"""Routing tables compiled from a `Mesh` snapshot, clusters, and the forwarding terminal.

Compile once, run many: `OutboundRouter` turns every name a client may use for a service
(`orders`, `orders.default`, `orders.default.svc`, `orders.default.svc.cluster.local`, each
with or without `:port`) into one dict lookup. `route_*` never walks a list of services.

DESIGN.md §3 rules: without a port, a name means the Service's only port or, with several, the
first whose protocol fits the request; an unknown name or port is `NoRoute` (404).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Literal, final

from pymesh.errors import NoHealthyUpstream, NoRoute, RequestTimeout, UpstreamReset
from pymesh.policy.model import Resource, ServicePort
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.chain import HttpFilter, HttpService, compose
from pymesh.proxy.http1 import serialize_request_head
from pymesh.proxy.messages import Request, Response
from pymesh.proxy.pool import PoolManager

if TYPE_CHECKING:
    from pymesh.proxy.mtls import TlsOrigin

__all__ = [
    "Cluster",
    "Forwarder",
    "InboundRouter",
    "OutboundRouter",
    "Route",
    "split_authority",
]

Kind = Literal["http1", "http2", "tcp"]
_H2_PROTOCOLS = frozenset({"http2", "grpc"})
BUFFER_BEFORE_FORWARD = 64 * 1024  # body bytes gathered before a request goes upstream
_FITS: dict[Kind, frozenset[str | None]] = {
    "http1": frozenset({"http", None}),
    "http2": frozenset({"http2", "grpc", None}),
    "tcp": frozenset({"tcp", None}),
}


def split_authority(authority: bytes) -> tuple[bytes, int | None]:
    """`host[:port]` → (lower-case host, port or None); IPv6 literals keep their brackets.

    Raises `NoRoute` for a port that is not a number in 1..65535.
    """
    a = authority.strip().lower()
    if a.startswith(b"["):
        end = a.find(b"]")
        host, rest = (a[: end + 1], a[end + 1 :]) if end >= 0 else (a, b"")
        port_s = rest[1:] if rest.startswith(b":") else b""
    else:
        host, sep, port_s = a.rpartition(b":")
        if not sep:
            host, port_s = a, b""
    if not port_s:
        return host, None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise NoRoute(f"invalid port in authority {authority!r}")
    return host, int(port_s)


@final
class Cluster:
    """The endpoints of one service, picked round robin."""

    __slots__ = ("_i", "endpoints", "name", "namespace", "service")

    def __init__(
        self,
        service: str,
        namespace: str,
        endpoints: Sequence[tuple[str, int]],
        name: str | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.endpoints: tuple[tuple[str, int], ...] = tuple(endpoints)
        self.name = name or f"{service}.{namespace}"
        self._i = 0

    def pick(self) -> tuple[str, int] | None:
        """The next endpoint, or None if the service has none."""
        eps = self.endpoints
        if not eps:
            return None
        i = self._i
        self._i = i + 1 if i + 1 < len(eps) else 0
        return eps[i % len(eps)]


IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def may_retry(request: Request) -> bool:
    """Whether a request may be sent again after a reused connection died unanswered.

    RFC 9110 §9.2.2: idempotent methods only, and only without a body (nothing to replay).
    """
    return request.body is None and request.method in IDEMPOTENT


@final
class Forwarder:
    """The terminal HttpService: send the request to one endpoint of a cluster (HTTP/1.1).

    A request that failed on a *reused* keep-alive connection before any response byte
    arrived (the upstream closed the idle connection as we sent) is retried once on a fresh
    connection when `may_retry` allows it (idempotent, no body).
    """

    __slots__ = ("body_timeout", "cluster", "h2", "pools", "tls")

    def __init__(
        self,
        cluster: Cluster,
        pools: PoolManager,
        body_timeout: float = 60.0,
        h2: bool = False,
        tls: TlsOrigin | None = None,
    ) -> None:
        self.cluster = cluster
        self.pools = pools
        self.body_timeout = body_timeout
        self.h2 = h2  # the port is declared http2/grpc: upstream streams on HTTP/2
        self.tls = tls  # mTLS to the destination's sidecar (None: plaintext)

    @staticmethod
    def head_for(request: Request) -> bytes:
        """The serialised request head, with the request's own framing."""
        headers = request.headers
        if request.chunked:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        elif request.content_length is not None:
            headers = [*headers, (b"content-length", str(request.content_length).encode())]
        return serialize_request_head(request.method, request.target, headers)

    async def __call__(self, request: Request) -> Response:
        body = request.body
        if body is not None and not body.eof:
            # Small bodies are gathered before anything goes upstream (nginx's request
            # buffering, bounded): a request that turns out truncated or malformed never
            # reaches the application, and a slow client holds no upstream connection.
            try:
                async with asyncio.timeout(self.body_timeout):
                    await body.wait_ready(BUFFER_BEFORE_FORWARD)
            except TimeoutError as exc:
                raise RequestTimeout("request body not received in time") from exc
        address = self.cluster.pick()
        if address is None:
            raise NoHealthyUpstream(f"service {self.cluster.name} has no endpoints")
        request.context.upstream_addr = f"{address[0]}:{address[1]}"
        if self.h2:
            return await (await self.pools.get_h2(address, self.tls).acquire()).exchange(request)
        head = self.head_for(request)
        pool = self.pools.get(address, self.tls)
        conn = pool.take_idle() or await pool.acquire()
        reused = conn.requests > 0
        try:
            return await conn.exchange(request, head)
        except UpstreamReset:
            if not (reused and not conn.got_bytes and may_retry(request)):
                raise
        conn = await pool.acquire()
        return await conn.exchange(request, head)


@final
class Route:
    """A resolved destination: service, port, cluster and the compiled filter chain."""

    __slots__ = (
        "cluster",
        "fast",
        "guard",
        "handler",
        "host",
        "namespace",
        "port",
        "service",
        "tls",
        "workload",
    )

    def __init__(
        self,
        service: str,
        namespace: str,
        port: ServicePort,
        cluster: Cluster,
        handler: HttpService,
        tls: TlsOrigin | None = None,
        *,
        fast: Forwarder | None = None,
        guard: Callable[[Request], bool] | None = None,
    ) -> None:
        self.service = service
        self.tls = tls  # mTLS origination for L4 tunnels (CONNECT) to this port
        self.namespace = namespace
        self.port = port
        self.cluster = cluster
        self.handler = handler
        self.workload = service
        # The destination service's FQDN (the `destination_service` metric label).
        self.host = f"{service}.{namespace}.svc.cluster.local"
        # A route without filters may skip the task machinery (see H1Connection._try_fast);
        # so may one whose only filters are synchronous checks (`guard`, e.g. authorization):
        # the fast path runs the guard and, when it says no, leaves the request to the task
        # path, where the same filters run in full and render the refusal.
        if fast is None and isinstance(handler, Forwarder):
            fast = handler
        self.fast: Forwarder | None = fast if fast is not None and not fast.h2 else None
        self.guard = guard


def _names(r: Resource, source_namespace: str) -> Iterable[bytes]:
    name, ns = r.name.lower(), r.namespace.lower()
    if r.namespace == source_namespace:
        yield name.encode()
    yield f"{name}.{ns}".encode()
    yield f"{name}.{ns}.svc".encode()
    yield f"{name}.{ns}.svc.cluster.local".encode()


def _all_of(checks: Sequence[Callable[[Request], bool]]) -> Callable[[Request], bool]:
    if len(checks) == 1:
        return checks[0]

    def guard(request: Request) -> bool:
        return all(c(request) for c in checks)

    return guard


@final
class OutboundRouter:
    """Authority → Route for the outbound listener, compiled from one mesh snapshot."""

    __slots__ = ("_by_name_port", "_default", "clusters", "version")

    def __init__(
        self,
        mesh: Mesh,
        *,
        source_namespace: str,
        pools: PoolManager,
        filters: Callable[[Resource, ServicePort], Sequence[HttpFilter]],
        tls: Callable[[Resource, ServicePort], TlsOrigin | None] = lambda r, p: None,
    ) -> None:
        self.version = mesh.version
        self._by_name_port: dict[tuple[bytes, int], Route] = {}
        self._default: dict[tuple[bytes, Kind], Route] = {}
        self.clusters: dict[tuple[str, str], Cluster] = {}
        for r in mesh.of_kind("Service"):
            spec = r.spec
            cluster = Cluster(r.name, r.namespace, [(e.address, e.port) for e in spec.endpoints])
            self.clusters[(r.namespace, r.name)] = cluster
            routes = []
            for p in spec.ports:
                origin = tls(r, p)
                fwd = Forwarder(cluster, pools, h2=p.protocol in _H2_PROTOCOLS, tls=origin)
                routes.append(
                    Route(r.name, r.namespace, p, cluster, compose(filters(r, p), fwd), origin)
                )
            for host in _names(r, source_namespace):
                for route in routes:
                    self._by_name_port[(host, route.port.port)] = route
                for kind, fits in _FITS.items():
                    chosen = (
                        routes[0]
                        if len(routes) == 1
                        else next((x for x in routes if x.port.protocol in fits), None)
                    )
                    if chosen is not None:
                        self._default[(host, kind)] = chosen

    def route(self, authority: bytes, kind: Kind = "http1", port: int | None = None) -> Route:
        """The route for `authority` (`host[:port]`); `NoRoute` if it is not in the mesh.

        (`port` is the inbound side's hint; outbound, the authority alone decides.)"""
        host, port = split_authority(authority)
        route = (
            self._default.get((host, kind))
            if port is None
            else self._by_name_port.get((host, port))
        )
        if route is None:
            raise NoRoute(f"{authority.decode('latin-1')} is not a service in the mesh")
        return route


@final
class InboundRouter:
    """Service port → Route to the local application, for the inbound listener."""

    __slots__ = ("_by_port", "_default", "service")

    def __init__(
        self,
        mesh: Mesh,
        service: Resource,
        apps: dict[int | None, tuple[str, int]],
        *,
        pools: PoolManager,
        filters: Callable[[Resource, ServicePort], Sequence[HttpFilter]],
    ) -> None:
        self.service = service
        self._by_port: dict[int, Route] = {}
        self._default: dict[Kind, Route] = {}
        ports = service.spec.ports or (ServicePort(port=0),)
        routes = []
        for p in ports:
            app = apps.get(p.port) or apps.get(None)
            cluster = Cluster(
                service.name,
                service.namespace,
                [app] if app else [],
                name=f"inbound|{p.port}|{service.name}.{service.namespace}",
            )
            flist = list(filters(service, p))
            fwd = Forwarder(cluster, pools, h2=p.protocol in _H2_PROTOCOLS)
            checks = [getattr(f, "fast_check", None) for f in flist]
            guarded = bool(flist) and all(c is not None for c in checks)
            route = Route(
                service.name,
                service.namespace,
                p,
                cluster,
                compose(flist, fwd),
                fast=fwd if guarded else None,
                guard=_all_of(checks) if guarded else None,  # type: ignore[arg-type]
            )
            self._by_port[p.port] = route
            routes.append(route)
        for kind, fits in _FITS.items():
            chosen = (
                routes[0]
                if len(routes) == 1
                else next((x for x in routes if x.port.protocol in fits), None)
            )
            if chosen is not None:
                self._default[kind] = chosen

    @property
    def routes(self) -> list[Route]:
        """Every route, one per service port."""
        return list(self._by_port.values())

    def by_port(self, port: int | None) -> Route | None:
        """The route of service port `port` (None if the service has no such port)."""
        return self._by_port.get(port) if port is not None else None

    def route(
        self, authority: bytes | None, kind: Kind = "http1", port: int | None = None
    ) -> Route:
        """The route for a request reaching the inbound listener: the service port the
        connection named (mTLS SNI, `port`), else the authority's port, else the default."""
        if port is not None:
            r = self._by_port.get(port)
            if r is not None:
                return r
        if authority:
            try:
                _, port = split_authority(authority)
            except NoRoute:
                port = None
            if port is not None:
                r = self._by_port.get(port)
                if r is not None:
                    return r
        r = self._default.get(kind)
        if r is None:
            raise NoRoute(f"service {self.service.name} has no {kind} port")
        return r

    def has_kind(self, kind: Kind) -> bool:
        """Whether any port of the service may carry `kind` traffic."""
        return kind in self._default
