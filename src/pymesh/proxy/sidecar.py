"""The sidecar: inbound, outbound and admin listeners for one service, and `pymesh proxy`.

```
app ──► outbound listener (http_proxy / Host / CONNECT) ──► router ──► endpoint (a peer's inbound)
peer ─► inbound listener (mTLS, HTTP/1.1, tcp, or detected) ─► authz ─► the local app (--app)
admin: /ready /live /metrics /config_dump /clusters /certs POST /drain POST /shutdown
```

Identity: with mTLS (the Mesh's or this Service's mode is STRICT or PERMISSIVE, or a
destination's is), the sidecar needs an identity source (`identity=`: an `Identity`, or an
`IdentitySource` such as `DirSource` for `--identity-dir`, `CsrSource` for a CA); it keeps the
certificate fresh for as long as it runs.

A `Sidecar` owns its listeners, upstream pools and metrics. `update(mesh)` compiles a new config
snapshot and swaps it in: requests already running finish on the snapshot they started with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, final

import structlog
from cryptography.hazmat.primitives import hashes

from pymesh.errors import ConfigError
from pymesh.observe.admin import (
    AdminRequest,
    AdminResponse,
    AdminServer,
    json_response,
    start_admin_server,
    text_response,
)
from pymesh.observe.log import configure_logging
from pymesh.observe.metrics import CONTENT_TYPE, MetricsRegistry, mesh_metrics
from pymesh.policy.authz import InboundAuthz
from pymesh.policy.model import DEFAULT_NAMESPACE, Resource, ServicePort
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.chain import HttpFilter
from pymesh.proxy.filters.authz import AuthzFilter, AuthzNetworkFilter
from pymesh.proxy.filters.observers import AccessLog, MetricsObserver, Peer
from pymesh.proxy.hcm import (
    HttpObserver,
    HttpSettings,
    ListenerState,
    TcpObserver,
    make_protocol_factory,
)
from pymesh.proxy.http1 import Limits
from pymesh.proxy.listener import (
    Detect,
    InboundTls,
    L4Accept,
    TcpSettings,
    TcpState,
    TlsState,
    bound_address,
    serve,
)
from pymesh.proxy.mtls import TlsOrigin, inbound_mode, make_sni, originates_tls
from pymesh.proxy.pool import PoolManager
from pymesh.proxy.router import InboundRouter, OutboundRouter
from pymesh.runtime import LoopName, install_signal_handlers, run_loop, spawn
from pymesh.tls.credentials import (
    Credentials,
    DirSource,
    IdentitySource,
    StaticSource,
)
from pymesh.tls.identity import Identity, format_time, load_certificates

__all__ = ["Sidecar", "parse_address", "parse_apps", "proxy_main", "run"]

_log = structlog.get_logger("pymesh.sidecar")
Address = tuple[str, int]
Codec = Literal["httptools", "h11"]


def parse_address(text: str) -> Address:
    """`HOST:PORT` (or `[V6]:PORT`) → (host, port); ValueError with a clear message."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def parse_apps(values: Sequence[str]) -> dict[int | None, Address]:
    """`--app` values: `HOST:PORT` (every port) or `SERVICEPORT=HOST:PORT`."""
    apps: dict[int | None, Address] = {}
    for v in values:
        key, eq, addr = v.partition("=")
        if eq:
            if not key.isdigit():
                raise ValueError(f"--app {v!r}: expected SERVICEPORT=HOST:PORT")
            apps[int(key)] = parse_address(addr)
        else:
            apps[None] = parse_address(v)
    return apps


def _split_service(name: str) -> tuple[str, str]:
    ns, _, svc = name.rpartition("/")
    return ns or DEFAULT_NAMESPACE, svc


@final
class Sidecar:
    """A sidecar for `service` inside the caller's event loop.

    Use `async with Sidecar(mesh, "orders", app=("127.0.0.1", 9001)) as sc:`. Addresses with
    port 0 pick free ports (read them back from `inbound_address` etc. after start).
    """

    def __init__(
        self,
        mesh: Mesh | str | os.PathLike[str],
        service: str,
        *,
        inbound: Address | None = ("127.0.0.1", 15006),
        outbound: Address | None = ("127.0.0.1", 15001),
        admin: Address | None = ("127.0.0.1", 15000),
        app: Address | Mapping[int | None, Address] | None = None,
        filters: Sequence[HttpFilter] = (),
        http1_codec: Codec = "httptools",
        access_log: bool = True,
        drain_timeout: float = 15.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        stream_idle_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        limits: Limits | None = None,
        identity: Identity | IdentitySource | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self.mesh = mesh if isinstance(mesh, Mesh) else Mesh.load(mesh)
        self.namespace, self.service_name = _split_service(service)
        resource = self.mesh.service(self.service_name, self.namespace)
        if resource is None:
            raise ValueError(
                f"service {self.namespace}/{self.service_name} is not in mesh {self.mesh.name!r}"
            )
        self.resource: Resource = resource
        if app is None:
            apps: dict[int | None, Address] = {
                p.port: ("127.0.0.1", p.port) for p in resource.spec.ports
            }
        elif isinstance(app, tuple):
            apps = {None: app}
        else:
            apps = dict(app)
        self.apps = apps
        self._want = {"inbound": inbound, "outbound": outbound, "admin": admin}
        self.filters = tuple(filters)
        self.codec: Codec = http1_codec
        self.access_log = access_log
        self.drain_timeout = drain_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.connect_timeout = connect_timeout
        self.limits = limits or Limits()
        self.registry = MetricsRegistry()
        self.metrics = mesh_metrics(self.registry)
        self.pools = PoolManager(
            codec=http1_codec, limits=self.limits, connect_timeout=connect_timeout
        )
        self.addresses: dict[str, Address] = {}
        self._servers: list[asyncio.Server] = []
        self._admin: AdminServer | None = None
        self._http_states: list[ListenerState] = []
        self._tcp_state: TcpState | None = None
        self._outbound_state: ListenerState | None = None
        self._inbound_state: ListenerState | None = None
        self._stopping = asyncio.Event()
        self._started_at = 0.0
        self.ready = False
        self.draining = False
        self._stopped = False
        self._inbound_router: InboundRouter | None = None
        self._outbound_router: OutboundRouter | None = None
        self.identity_source: IdentitySource | None = (
            StaticSource(identity) if isinstance(identity, Identity) else identity
        )
        # Shared credentials (the control-plane client renews them), or the sidecar's own.
        self.credentials = credentials if credentials is not None else Credentials()
        self.credentials.on_update(self._identity_updated)
        if self.credentials.identity is not None:
            self._identity_updated(self.credentials.identity)
        self.control_plane: Any = None  # a ControlPlaneClient when config comes from one
        self._tls_state: TlsState | None = None
        self._inbound_tls_settings: InboundTls | None = None
        self._identity_task: asyncio.Task[None] | None = None

    # -- addresses ----------------------------------------------------------------------
    @property
    def inbound_address(self) -> Address:
        """Where the inbound listener listens."""
        return self.addresses["inbound"]

    @property
    def outbound_address(self) -> Address:
        """Where the outbound listener listens."""
        return self.addresses["outbound"]

    @property
    def admin_address(self) -> Address:
        """Where the admin endpoint listens."""
        return self.addresses["admin"]

    # -- config -------------------------------------------------------------------------
    def _route_filters(self, service: Resource, port: ServicePort) -> list[HttpFilter]:
        return list(self.filters)

    def needs_identity(self, mesh: Mesh) -> bool:
        """Whether this sidecar must hold a certificate under `mesh` (mTLS in or out)."""
        own = mesh.service(self.service_name, self.namespace)
        if own is not None and inbound_mode(mesh, own) != "DISABLE":
            return True
        return any(
            originates_tls(mesh, r)
            for r in mesh.of_kind("Service")
            if (r.namespace, r.name) != (self.namespace, self.service_name)
        )

    def _tls_origin(self, mesh: Mesh) -> Any:
        creds = self.credentials

        def origin(r: Resource, p: ServicePort) -> TlsOrigin | None:
            if not originates_tls(mesh, r):
                return None
            return TlsOrigin(creds, make_sni(r.name, r.namespace, p.port), mesh.spiffe_id(r))

        return origin

    def _inbound_tls(self, mesh: Mesh, resource: Resource) -> InboundTls | None:
        mode = inbound_mode(mesh, resource)
        if mode == "DISABLE":
            return None
        ports = {p.port: p.protocol for p in resource.spec.ports}
        refused = self.metrics.tls_refused

        def on_refused(reason: str, peer: str, detail: str) -> None:
            refused.inc(("inbound", reason))

        return InboundTls(
            credentials=self.credentials,
            mode=mode,
            ports=ports,
            default_port=resource.spec.ports[0].port if resource.spec.ports else None,
            on_refused=on_refused,
        )

    def _identity_updated(self, identity: Identity) -> None:
        m = self.metrics
        m.cert_expiry.clear()
        m.cert_expiry.set(
            (str(identity.spiffe_id), f"{identity.serial:x}"), identity.not_after.timestamp()
        )
        m.cert_rotations.inc(())

    def _observers(
        self, reporter: str, direction: str
    ) -> tuple[tuple[HttpObserver, ...], tuple[TcpObserver, ...]]:
        peer = Peer(reporter=reporter, workload=self.service_name, namespace=self.namespace)
        m = MetricsObserver(self.metrics, peer)
        if self.access_log:
            a = AccessLog(direction)
            return (m, a), (m, a)
        return (m,), (m,)

    def _compile(self, mesh: Mesh) -> tuple[HttpSettings, HttpSettings, TcpSettings]:
        resource = mesh.service(self.service_name, self.namespace)
        if resource is None:
            raise ValueError(f"service {self.namespace}/{self.service_name} left the mesh")
        if self.needs_identity(mesh) and not self.credentials.ready:
            raise ValueError(
                f"service {self.namespace}/{self.service_name}: the mesh uses mTLS "
                "(Mesh/Service spec.mtls is STRICT or PERMISSIVE) but this sidecar has no "
                "identity: give it --identity-dir (pymesh ca issue) or run it under pymesh up"
            )
        out_router = OutboundRouter(
            mesh,
            source_namespace=self.namespace,
            pools=self.pools,
            filters=self._route_filters,
            tls=self._tls_origin(mesh),
        )
        authz = InboundAuthz.compile(mesh, resource)
        metrics = self.metrics

        def inbound_filters(service: Resource, port: ServicePort) -> list[HttpFilter]:
            user = self._route_filters(service, port)
            if not authz.active:
                return user
            proto = "grpc" if port.protocol == "grpc" else "http"
            return [AuthzFilter(authz, port.port, metrics, proto), *user]

        in_router = InboundRouter(
            mesh, resource, self.apps, pools=self.pools, filters=inbound_filters
        )
        self._outbound_router, self._inbound_router = out_router, in_router
        out_obs, out_tcp_obs = self._observers("source", "outbound")
        in_obs, in_tcp_obs = self._observers("destination", "inbound")
        common: dict[str, Any] = {
            "codec": self.codec,
            "limits": self.limits,
            "header_timeout": self.header_timeout,
            "idle_timeout": self.idle_timeout,
            "stream_idle_timeout": self.stream_idle_timeout,
            "connect_timeout": self.connect_timeout,
        }
        outbound = HttpSettings(
            listener="outbound",
            router=out_router,
            observers=out_obs,
            tcp_observers=out_tcp_obs,
            allow_connect=True,
            absolute_form=True,
            **common,
        )
        inbound = HttpSettings(
            listener="inbound",
            router=in_router,
            observers=in_obs,
            tcp_observers=in_tcp_obs,
            **common,
        )
        tcp_route = in_router.route(None, "tcp") if in_router.has_kind("tcp") else None
        tcp = TcpSettings(
            listener="inbound",
            pick=tcp_route.cluster.pick if tcp_route else (lambda: None),
            picks={r.port.port: r.cluster.pick for r in in_router.routes},
            destination_service=tcp_route.host if tcp_route else "unknown",
            filters=(
                [AuthzNetworkFilter(authz, tcp_route.port.port if tcp_route else None, metrics)]
                if authz.active
                else []
            ),
            observers=in_tcp_obs,
            connect_timeout=self.connect_timeout,
        )
        self._inbound_tls_settings = self._inbound_tls(mesh, resource)
        self.metrics.config_version_info.set((mesh.version,), 1.0)
        return outbound, inbound, tcp

    def update(self, mesh: Mesh) -> None:
        """Swap in a new config snapshot (in-flight requests finish on the old one)."""
        old = self.mesh.version
        outbound, inbound, tcp = self._compile(mesh)
        if self._outbound_state is not None:
            self._outbound_state.settings = outbound
        if self._inbound_state is not None:
            self._inbound_state.settings = inbound
        if self._tcp_state is not None:
            self._tcp_state.update(tcp)
        if self._tls_state is not None and self._inbound_tls_settings is not None:
            self._tls_state.settings = self._inbound_tls_settings
        if old != mesh.version:
            self.metrics.config_version_info.remove((old,))
        self.mesh = mesh
        _log.info("config_applied", version=mesh.version, previous=old)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the identity, bind every listener; the sidecar is ready when this returns."""
        if self.identity_source is not None:
            await self.identity_source.load(self.credentials)
            self._identity_task = spawn(
                self.identity_source.maintain(self.credentials), name="identity"
            )
        outbound, inbound, tcp = self._compile(self.mesh)
        protocols = {p.protocol for p in self.resource.spec.ports} or {None}
        want_out = self._want["outbound"]
        if want_out is not None:
            self._outbound_state = ListenerState("outbound", outbound)
            self._http_states.append(self._outbound_state)
            ostate = self._outbound_state

            def outbound_factory() -> asyncio.Protocol:
                # HTTP/1.1 (http_proxy, Host routing, CONNECT) or prior-knowledge HTTP/2.
                return Detect(ostate, None)

            srv = await serve(*want_out, outbound_factory)
            self._servers.append(srv)
            self.addresses["outbound"] = bound_address(srv)
        want_in = self._want["inbound"]
        if want_in is not None:
            http_needed = bool(protocols - {"tcp"})
            tcp_needed = "tcp" in protocols or None in protocols
            istate = ListenerState("inbound", inbound) if http_needed else None
            tstate = TcpState("inbound", tcp) if tcp_needed else None
            self._inbound_state, self._tcp_state = istate, tstate
            if istate is not None:
                self._http_states.append(istate)
            factory = self._inbound_factory(istate, tstate, protocols)
            srv = await serve(*want_in, factory)
            self._servers.append(srv)
            self.addresses["inbound"] = bound_address(srv)
        want_admin = self._want["admin"]
        if want_admin is not None:
            self._admin = await start_admin_server(
                want_admin[0], want_admin[1], self._admin_routes()
            )
            self.addresses["admin"] = (want_admin[0], self._admin.port)
        self._started_at = time.time()
        self.ready = True
        _log.info(
            "sidecar_started",
            service=f"{self.namespace}/{self.service_name}",
            version=self.mesh.version,
            **{k: f"{h}:{p}" for k, (h, p) in self.addresses.items()},
        )

    def _inbound_factory(
        self,
        istate: ListenerState | None,
        tstate: TcpState | None,
        protocols: set[str | None],
    ) -> Callable[[], asyncio.Protocol]:
        """The inbound listener's entry protocol: mTLS (with detection), HTTP/1.1 only, L4
        only, or detection."""
        tls_settings = self._inbound_tls_settings
        if tls_settings is not None:
            tls_state = self._tls_state = TlsState(tls_settings)
            return lambda: Detect(istate, tstate, tls=tls_state)
        if istate is not None and tstate is None and protocols == {"http"}:
            return make_protocol_factory(istate)  # HTTP/1.1 only: no sniffing
        if tstate is not None and istate is None:
            ts = tstate
            return lambda: L4Accept(ts)
        return lambda: Detect(istate, tstate)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to the deadline), close all.

        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        timeout = self.drain_timeout if drain_timeout is None else drain_timeout
        self.ready = False
        self.draining = True
        for srv in self._servers:
            srv.close()
        for st in self._http_states:
            st.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(st.busy for st in self._http_states):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polls several listeners; bounded by the deadline
        for st in self._http_states:
            for c in list(st.connections):
                if c.transport is not None:
                    c.transport.abort()
        self.pools.close()
        if self._identity_task is not None:
            self._identity_task.cancel()
            self._identity_task = None
        for srv in self._servers:
            try:
                async with asyncio.timeout(1.0):
                    await srv.wait_closed()
            except TimeoutError:
                pass
        if self._admin is not None:
            await self._admin.close()
        self._stopping.set()
        _log.info("sidecar_stopped", service=f"{self.namespace}/{self.service_name}")

    def request_shutdown(self) -> None:
        """Ask `serve_forever()` to stop (signal handlers, POST /shutdown)."""
        self._stopping.set()

    async def serve_forever(self) -> None:
        """Run until `request_shutdown()`, then drain and stop."""
        self._stopping.clear()
        await self._stopping.wait()
        await self.stop()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain_timeout=min(self.drain_timeout, 2.0))

    # -- admin --------------------------------------------------------------------------
    def _admin_routes(self) -> dict[tuple[str, str], Any]:
        async def ready(_: AdminRequest) -> AdminResponse:
            if self.ready:
                return text_response("ready\n", 200)
            return text_response("draining\n" if self.draining else "not ready\n", 503)

        async def live(_: AdminRequest) -> AdminResponse:
            return text_response("live\n", 200)

        async def metrics(_: AdminRequest) -> AdminResponse:
            return AdminResponse(200, self.registry.render(), CONTENT_TYPE)

        async def config_dump(_: AdminRequest) -> AdminResponse:
            dump = self.mesh.to_dict()
            dump["service"] = f"{self.namespace}/{self.service_name}"
            dump["listeners"] = {k: f"{h}:{p}" for k, (h, p) in self.addresses.items()}
            dump["apps"] = {
                str(k if k is not None else "*"): f"{h}:{p}" for k, (h, p) in self.apps.items()
            }
            cp = self.control_plane
            if cp is not None:
                dump["control_plane"] = {"version": cp.version, "service": cp.service}
            return json_response(dump)

        async def clusters(_: AdminRequest) -> AdminResponse:
            return json_response(self.clusters_dump())

        async def certs(_: AdminRequest) -> AdminResponse:
            return json_response(self.certs_dump())

        async def drain(_: AdminRequest) -> AdminResponse:
            self.draining = True
            self.ready = False
            for st in self._http_states:
                st.drain()
            return json_response({"draining": True})

        async def shutdown(_: AdminRequest) -> AdminResponse:
            asyncio.get_running_loop().call_soon(self.request_shutdown)
            return json_response({"shutting_down": True})

        return {
            ("GET", "/ready"): ready,
            ("GET", "/live"): live,
            ("GET", "/metrics"): metrics,
            ("GET", "/config_dump"): config_dump,
            ("GET", "/clusters"): clusters,
            ("GET", "/certs"): certs,
            ("POST", "/drain"): drain,
            ("POST", "/shutdown"): shutdown,
        }

    def certs_dump(self) -> dict[str, Any]:
        """The workload certificate in use and the trust bundle (`/certs`)."""
        ident = self.credentials.identity
        if ident is None:
            return {"identity": None, "mtls": "DISABLE", "certificates": []}
        return {
            "identity": str(ident.spiffe_id),
            "certificates": [ident.to_dict()],
            "trust_bundle": [
                {
                    "subject": c.subject.rfc4514_string(),
                    "not_after": format_time(c.not_valid_after_utc),
                    "sha256": c.fingerprint(hashes.SHA256()).hex(),
                }
                for c in load_certificates(ident.bundle_pem, "trust bundle")
            ],
            "rotations": self.credentials.generation,
        }

    def clusters_dump(self) -> dict[str, Any]:
        """Services, their endpoints and each endpoint's pool state (`/clusters`)."""
        pools = self.pools.pools()

        def ep(addr: tuple[str, int]) -> dict[str, Any]:
            p = pools.get(addr)
            return {
                "address": f"{addr[0]}:{addr[1]}",
                "health": "healthy",
                "connections_active": p.active if p else 0,
                "connections_idle": p.idle if p else 0,
                "connect_failures": p.connect_failures if p else 0,
            }

        out: list[dict[str, Any]] = []
        if self._outbound_router is not None:
            for (ns, name), c in sorted(self._outbound_router.clusters.items()):
                out.append(
                    {
                        "name": f"outbound|{name}.{ns}",
                        "service": name,
                        "namespace": ns,
                        "direction": "outbound",
                        "endpoints": [ep(a) for a in c.endpoints],
                    }
                )
        if self._inbound_router is not None:
            out.extend(
                {
                    "name": r.cluster.name,
                    "service": r.service,
                    "namespace": r.namespace,
                    "direction": "inbound",
                    "port": r.port.port,
                    "endpoints": [ep(a) for a in r.cluster.endpoints],
                }
                for r in self._inbound_router.routes
            )
        return {"version": self.mesh.version, "clusters": out}


async def _run_sidecar(sidecar: Sidecar) -> int:
    def on_signal(sig: signal.Signals) -> None:
        _log.info("signal", signal=sig.name, action="drain")
        sidecar.request_shutdown()

    await sidecar.start()
    install_signal_handlers(on_signal)
    await sidecar.serve_forever()
    return 0


def run(
    config: Mesh | str | os.PathLike[str],
    service: str,
    *,
    filters: Sequence[HttpFilter] = (),
    loop: LoopName = "uvloop",
    **listeners: Any,
) -> int:
    """Run a sidecar for `service` until SIGTERM/SIGINT (blocking); returns the exit code.

    `listeners` are `Sidecar` keyword arguments: `inbound=`, `outbound=`, `admin=` (HOST, PORT)
    tuples, `app=`, `http1_codec=`, ...
    """
    mesh = config if isinstance(config, Mesh) else Mesh.load(config)
    sidecar_kw = dict(listeners)
    identity_dir = sidecar_kw.pop("identity_dir", None)
    if identity_dir is not None:
        sidecar_kw["identity"] = DirSource(identity_dir)

    async def main() -> int:
        return await _run_sidecar(Sidecar(mesh, service, filters=filters, **sidecar_kw))

    return run_loop(main(), loop=loop)


def proxy_main(args: argparse.Namespace) -> int:
    """`pymesh proxy`: parse the flags, load the config (or join the control plane), run."""
    configure_logging(args.log_level)
    if bool(args.config) == bool(args.control_plane):
        print("pymesh proxy: give either --config or --control-plane (with --token-file)")
        return 2
    try:
        apps = parse_apps(args.app) or None
        kw: dict[str, Any] = {
            "inbound": parse_address(args.inbound),
            "outbound": parse_address(args.outbound),
            "admin": parse_address(args.admin),
        }
    except ValueError as exc:
        print(f"pymesh proxy: {exc}")
        return 2
    common: dict[str, Any] = {
        "app": apps,
        "http1_codec": args.http1_codec,
        "access_log": not args.no_access_log,
        "drain_timeout": args.drain_timeout,
        **kw,
    }
    if args.control_plane:
        return _proxy_with_control_plane(args, common)
    try:
        mesh = Mesh.load(*args.config)
    except ConfigError as exc:
        for e in exc.errors:
            print(e)
        return 1
    ns, name = _split_service(args.service)
    if mesh.service(name, ns) is None:
        print(f"pymesh proxy: service {ns}/{name} is not in the config")
        return 2
    return run(mesh, args.service, loop=args.loop, identity_dir=args.identity_dir, **common)


def _proxy_with_control_plane(args: argparse.Namespace, common: dict[str, Any]) -> int:
    from pymesh.control.client import ControlPlaneError, run_with_control_plane

    if not args.token_file:
        print("pymesh proxy: --control-plane needs --token-file (pymesh control-plane token)")
        return 2
    try:
        with open(args.token_file, encoding="ascii") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"pymesh proxy: cannot read the token file: {exc}")
        return 2

    async def main() -> int:
        try:
            return await run_with_control_plane(args.control_plane, token, args.service, **common)
        except (ControlPlaneError, ValueError) as exc:
            print(f"pymesh proxy: {exc}")
            return 1

    return run_loop(main(), loop=args.loop)
