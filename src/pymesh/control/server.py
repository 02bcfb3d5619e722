"""The control-plane server: config and certificates for sidecars, over HTTP/2 + TLS.

```
sidecar ── TLS (the control plane's SVID; client SVID optional) ── HTTP/2 (or HTTP/1.1) ──►
    GET  /v1/bundle        the trust bundle (public; the sidecar pins it by the fingerprint in
                           its bootstrap token)
    POST /v1/certificate   {"service", "csr"} → {"chain", "bundle"}: the service's SVID
    POST /v1/stream        {"service"} → NDJSON, long-lived: one {"type": "config", ...} per
                           version (the sidecar's view only), {"type": "ping"} in between
    POST /v1/endpoints     {"service", "address"} → NDJSON pings, long-lived: the endpoint is
                           registered (with a lease in the store) while the stream is open,
                           and removed when the lease expires after it closes
```

Every call is authenticated: with a bootstrap token (`Authorization: Bearer pmt1...`, signed
by the state directory's key, bound to one service, not expired, not revoked) or with the
sidecar's own SVID as TLS client certificate (renewals, streams). Either way it only ever
gets that service's identity and view.

The server reuses the proxy's connection managers (`H2ServerConnection`, `H1Connection`) and
TLS layer: one `Route` whose handler is `ControlPlane.handle`. Config comes from files
(watched: a bad edit is logged and the last good version keeps serving) through the store
(`memory://`, or etcd shared by several replicas), into the registry, which validates each
complete set before any sidecar sees it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, final

import structlog

from pymesh.control.state import StateDir
from pymesh.control.store import EndpointLease, Store, StoreEvent
from pymesh.control.tokens import TokenError
from pymesh.errors import (
    ConfigError,
    FieldError,
    PeerVerificationError,
    ProxyError,
    Unauthorized,
)
from pymesh.policy.dump import to_yaml
from pymesh.policy.model import Endpoint, ServicePort
from pymesh.policy.registry import Registry, Snapshot, view_for
from pymesh.proxy.hcm import H1Connection, HttpSettings, ListenerState
from pymesh.proxy.hcm2 import H2ServerConnection
from pymesh.proxy.messages import Body, Request, Response, get_header
from pymesh.proxy.router import Cluster, Route
from pymesh.proxy.tls import TlsLayer
from pymesh.runtime import spawn
from pymesh.tls.context import server_context
from pymesh.tls.svid import validate_svid

__all__ = ["ControlPlane", "config_files"]

_log = structlog.get_logger("pymesh.control")
MAX_REQUEST_BODY: Final = 64 * 1024
STREAM_HIGH_WATER: Final = 1 << 20
ENDPOINT_SETTLE_S: Final = 0.1


def config_files(paths: Sequence[str]) -> list[Path]:
    """The YAML files of `paths` (a directory means every *.yaml in it), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix == ".yaml" and x.is_file()))
        else:
            out.append(p)
    return out


def _json_response(status: int, doc: Any) -> Response:
    body = json.dumps(doc).encode() + b"\n"
    return Response.local(status, body, content_type=b"application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json_response(status, {"error": code, "message": message})


class _Router:
    """Every request of the control-plane listener goes to one route."""

    def __init__(self, route: Route) -> None:
        self._route = route

    def route(self, authority: bytes, kind: Any = "http1", port: int | None = None) -> Route:
        return self._route


@final
class ControlPlane:
    """A control-plane replica. `await start()`, then `stop()`."""

    def __init__(
        self,
        state: StateDir,
        store: Store,
        *,
        config: Sequence[str] = (),
        listen: tuple[str, int] = ("0.0.0.0", 15010),
        store_url: str = "memory://",
        lease_ttl: float = 10.0,
        heartbeat: float = 5.0,
        poll_interval: float = 1.0,
        cert_ttl: float | None = None,
    ) -> None:
        self.state = state
        self.store = store
        self.store_url = store_url
        self.config_paths = list(config)
        self.listen = listen
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.cert_ttl = cert_ttl
        self.registry = Registry()
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: set[asyncio.Task[None]] = set()
        self._revoked: frozenset[str] = frozenset()
        self._views: dict[tuple[str, int], bytes] = {}
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._started_at = 0.0
        self._applied_text = ""  # the config text in force (as stored)
        self.subscribers = 0
        self.instance = secrets.token_hex(8)  # this process's run of this replica

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the config (or take the store's), start serving; ConfigError at start-up."""
        await self.store.start()
        # Subscribe before reading: a change made in between is then seen, not lost.
        changes = self.store.subscribe()
        self._revoked = await self.store.revoked()
        if self.config_paths:
            snap = self._apply_files()
            self._stamp = self._files_stamp()
            stored = await self.store.get_config()
            text = to_yaml(snap.mesh.resources)  # before any endpoint registration
            self._applied_text = text
            if stored is None or stored.text != text:
                await self.store.put_config(text)
        else:
            stored = await self.store.get_config()
            if stored is None:
                raise ConfigError(
                    [
                        FieldError(
                            file=self.store_url,
                            line=0,
                            resource="-",
                            path="-",
                            message="the store holds no config yet (expected --config)",
                        )
                    ]
                )
            self.registry.apply_text(stored.text, "<store>")
            self._applied_text = stored.text
        await self._refresh_endpoints()
        identity = self.state.control_plane_identity()
        ctx = server_context(identity, alpn=("h2", "http/1.1"))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # bootstrap callers have no certificate yet
        settings = HttpSettings(
            listener="control-plane",
            router=_Router(
                Route(
                    "control-plane",
                    "pymesh-system",
                    ServicePort(port=0),
                    Cluster("control-plane", "pymesh-system", []),
                    self.handle,
                )
            ),
            idle_timeout=3600.0,
            stream_idle_timeout=max(60.0, self.heartbeat * 6),
        )
        state = ListenerState("control-plane", settings)
        trust_domain = self.state.trust_domain

        def factory() -> asyncio.Protocol:
            return _Accept(ctx, state, trust_domain)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, *self.listen, reuse_address=True)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = (str(host), int(port))
        self._tasks.append(spawn(self._follow_store(changes), name="cp.store"))
        if self.config_paths:
            self._tasks.append(spawn(self._watch_files(), name="cp.files"))
        self._started_at = loop.time()
        current = self.registry.current
        _log.info(
            "control_plane_started",
            listen=f"{self.address[0]}:{self.address[1]}",
            version=current.version if current else None,
            identity=self.state.control_plane_id,
        )

    async def stop(self) -> None:
        """Stop serving and close the store."""
        if self._server is not None:
            self._server.close()
        for t in [*self._tasks, *self._streams]:
            t.cancel()
        for t in [*self._tasks, *self._streams]:
            try:
                await t
            except BaseException:  # cancelled or failed: gone either way
                pass
        self._tasks.clear()
        self.registry.close()
        await self.store.close()
        if self._server is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            except TimeoutError:
                pass

    # -- config and endpoints --------------------------------------------------------------
    def _files_stamp(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for f in config_files(self.config_paths):
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _apply_files(self) -> Snapshot:
        """Load and apply the `--config` files (ConfigError with every problem)."""
        return self.registry.apply_paths([str(p) for p in config_files(self.config_paths)])

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            stamp = self._files_stamp()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                snap = self._apply_files()
            except ConfigError as exc:
                _log.error(
                    "config_rejected",
                    errors=[str(e) for e in exc.errors] or [str(exc)],
                    serving=self.registry.current.version if self.registry.current else None,
                )
                continue
            # The config as applied: registered endpoints are not config (they have leases).
            applied = self.registry.config
            assert applied is not None
            text = to_yaml(applied.resources)
            self._applied_text = text  # the store's echo of this put is then skipped
            await self.store.put_config(text)
            _log.info("config_applied", version=snap.version, mesh_version=snap.mesh.version)

    async def _follow_store(self, changes: AsyncIterator[StoreEvent]) -> None:
        """Changes made by any replica: config, endpoints, revocations."""
        async for event in changes:
            try:
                if event.kind == "config":
                    stored = await self.store.get_config()
                    # Skip our own put coming back (loading a big config twice per change
                    # was 29% of the control plane's time at 1,000 sidecars).
                    if stored is not None and stored.text != self._applied_text:
                        self.registry.apply_text(stored.text, "<store>")
                        self._applied_text = stored.text
                elif event.kind == "endpoints":
                    # Let a burst of registrations (sidecars starting together) settle into
                    # one new version instead of one per sidecar: events arriving meanwhile
                    # are coalesced by the store's subscription.
                    await asyncio.sleep(ENDPOINT_SETTLE_S)
                    await self._refresh_endpoints()
                else:
                    self._revoked = await self.store.revoked()
            except ConfigError as exc:  # another replica stored it, so it was valid there
                _log.error("stored_config_rejected", errors=[str(e) for e in exc.errors])
            except Exception as exc:
                _log.warning("store_event_failed", kind=event.kind, error=repr(exc))

    async def _refresh_endpoints(self) -> None:
        registered = await self.store.endpoints()
        mapping: dict[tuple[str, str], list[Endpoint]] = {}
        for service, addresses in registered.items():
            ns, _, name = service.partition("/")
            eps = []
            for a in addresses:
                host, _, port = a.rpartition(":")
                eps.append(Endpoint(address=host.strip("[]"), port=int(port)))
            mapping[(ns, name)] = eps
        self.registry.set_endpoints(mapping)

    # -- authentication ---------------------------------------------------------------------
    def _service_of(self, request: Request, claimed: str) -> str:
        """The service the caller proved it is (token or SVID); it must be `claimed`."""
        ns, _, name = claimed.rpartition("/")
        claimed = f"{ns or 'default'}/{name}"
        auth = get_header(request.headers, b"authorization")
        snap = self.registry.current
        if auth is not None:
            scheme, _, token = auth.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("Authorization must be a Bearer token")
            try:
                tok = self.state.verify_token(token.strip(), revoked=self._revoked, service=claimed)
            except TokenError as exc:
                _log.warning("token_refused", reason=exc.reason, service=claimed, error=str(exc))
                raise Unauthorized(f"token refused ({exc.reason}): {exc}") from exc
            return tok.service
        peer = request.context.source_principal
        if request.context.connection_security_policy == "mutual_tls" and snap is not None:
            svc = snap.mesh.service(name, ns or "default")
            if svc is not None and snap.mesh.spiffe_id(svc) == peer:
                return claimed
            raise Unauthorized(f"client identity {peer} is not the identity of {claimed}")
        raise Unauthorized("no bootstrap token and no client certificate")

    # -- handlers ---------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        """Dispatch one control-plane call."""
        path = request.target.split(b"?", 1)[0]
        try:
            if path == b"/v1/bundle" and request.method == b"GET":
                return Response.local(
                    200, self.state.ca.bundle_pem(), content_type=b"application/x-pem-file"
                )
            if request.method != b"POST" or path not in _POSTS:
                return _error(404, "not_found", "unknown endpoint")
            # /v1/endpoints streams its request too: the registration, then heartbeats.
            streaming = path == b"/v1/endpoints"
            doc = await (self._first_line(request) if streaming else self._json_body(request))
            service = str(doc.get("service", ""))
            if not service:
                return _error(400, "bad_request", "missing 'service'")
            service = self._service_of(request, service)
            if path == b"/v1/certificate":
                return self._certificate(service, doc)
            if path == b"/v1/stream":
                # A sidecar that has a config from another instance (before a restart, or
                # from another replica) is a returning one.
                resume = bool(doc.get("version")) and doc.get("instance") != self.instance
                return self._config_stream(service, resume=resume)
            return await self._endpoint_stream(service, doc, request)
        except Unauthorized as exc:
            return _error(403, "unauthorized", exc.detail or "refused")
        except ProxyError as exc:
            return _error(exc.http_status, exc.code, exc.detail or exc.code)

    async def _first_line(self, request: Request) -> dict[str, Any]:
        """The first NDJSON line of a streamed request body (bounded, with a deadline)."""
        body = request.body
        buf = b""
        if body is not None:
            async with asyncio.timeout(10.0):
                while b"\n" not in buf and len(buf) <= MAX_REQUEST_BODY:
                    chunk = await body.read()
                    if not chunk:
                        break
                    buf += chunk
        line = buf.partition(b"\n")[0]  # what follows the first line is heartbeats
        return self._parse_json(line)

    def _parse_json(self, data: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(data or b"{}")
        except ValueError as exc:
            raise ProxyError(
                f"body is not JSON: {exc}", code="bad_request", http_status=400
            ) from exc
        if not isinstance(doc, dict):
            raise ProxyError("body must be a JSON object", code="bad_request", http_status=400)
        return doc

    async def _json_body(self, request: Request) -> dict[str, Any]:
        if request.body is None:
            return {}
        return self._parse_json(await request.body.read_all(MAX_REQUEST_BODY))

    def _certificate(self, service: str, doc: dict[str, Any]) -> Response:
        snap = self.registry.current
        ns, _, name = service.partition("/")
        svc = snap.mesh.service(name, ns) if snap is not None else None
        if svc is None or snap is None:
            return _error(404, "unknown_service", f"service {service} is not in the mesh")
        ttl = self.cert_ttl or snap.mesh.spec.certificate_ttl_s
        try:
            chain = self.state.ca.sign_csr(
                str(doc.get("csr", "")).encode(), snap.mesh.spiffe_id(svc), ttl
            )
        except ValueError as exc:
            return _error(400, "bad_csr", str(exc))
        _log.info(
            "certificate_issued", service=service, identity=snap.mesh.spiffe_id(svc), ttl_s=ttl
        )
        return _json_response(
            200, {"chain": chain.decode(), "bundle": self.state.ca.bundle_pem().decode()}
        )

    def _view(self, service: str, snap: Snapshot) -> bytes:
        key = (service, snap.version)
        line = self._views.get(key)
        if line is None:
            view = view_for(snap.mesh, service)
            line = (
                json.dumps(
                    {
                        "type": "config",
                        "version": snap.version,
                        "instance": self.instance,
                        "mesh_version": view.version,
                        "config": to_yaml(view.resources),
                    }
                ).encode()
                + b"\n"
            )
            if len(self._views) > 4096:
                self._views.clear()
            self._views[key] = line
        return line

    def _streaming(self, producer: Callable[[Body, asyncio.Event], Any]) -> Response:
        """A long-lived NDJSON response fed by `producer(body, writable)` until the caller
        goes away; `writable` is clear while the body is over its high-water mark."""
        writable = asyncio.Event()
        writable.set()
        body = Body(high_water=STREAM_HIGH_WATER, pause=writable.clear, resume=writable.set)
        task = spawn(producer(body, writable), name="cp.stream")
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        response = Response(200, [(b"content-type", b"application/x-ndjson")], body)

        def release(ok: bool) -> None:
            task.cancel()

        response.release = release
        return response

    def _config_stream(self, service: str, *, resume: bool) -> Response:
        async def produce(body: Body, writable: asyncio.Event) -> None:
            self.subscribers += 1
            loop = asyncio.get_running_loop()
            hold_until = self._started_at + self.lease_ttl
            if resume and loop.time() < hold_until:
                # Just (re)started: the sidecars' endpoint registrations are coming back
                # (the memory store lost them). A sidecar that already has a config keeps it
                # until they have had one lease period to return, instead of getting a view
                # in which the services it calls have no endpoints.
                _log.info("config_held_after_start", service=service)
                while (left := hold_until - loop.time()) > 0:
                    body.feed(b'{"type":"ping"}\n')
                    await asyncio.sleep(min(self.heartbeat, left))
            sub = self.registry.subscribe()
            it: AsyncIterator[Snapshot] = sub.__aiter__()
            try:
                while True:
                    try:
                        async with asyncio.timeout(self.heartbeat):
                            snap = await it.__anext__()
                    except TimeoutError:
                        body.feed(b'{"type":"ping"}\n')
                        continue
                    except StopAsyncIteration:
                        break
                    # Coalescing: while the client is slow (body over its high-water mark),
                    # only the latest version is sent once it catches up.
                    await writable.wait()
                    body.feed(self._view(service, snap))
            finally:
                self.subscribers -= 1
                sub.close()
                body.feed_eof()

        _log.info("sidecar_subscribed", service=service)
        return self._streaming(produce)

    async def _endpoint_stream(
        self, service: str, doc: dict[str, Any], request: Request
    ) -> Response:
        address = str(doc.get("address", ""))
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
            return _error(400, "bad_request", f"address {address!r} (expected HOST:PORT)")
        lease = await self.store.register_endpoint(service, address, self.lease_ttl)
        _log.info("endpoint_registered", service=service, address=address, ttl_s=lease.ttl_s)
        beats = request.body

        async def produce(body: Body, writable: asyncio.Event) -> None:
            body.feed(json.dumps({"type": "registered", "lease_ttl": lease.ttl_s}).encode() + b"\n")
            await self._keep(lease, body, beats, service, address)

        return self._streaming(produce)

    async def _keep(
        self,
        lease: EndpointLease,
        body: Body,
        beats: Body | None,
        service: str,
        address: str,
    ) -> None:
        """Renew the lease only while the sidecar proves it is alive: each heartbeat line it
        sends (every third of the lease) renews it. A sidecar cut off the network sends
        nothing — even though TCP may take many minutes to notice — so after one lease
        period without a heartbeat the stream ends and the lease runs out."""
        ttl = lease.ttl_s
        try:
            while True:
                try:
                    async with asyncio.timeout(ttl):
                        chunk = await beats.read() if beats is not None else b""
                except (ConnectionError, ProxyError):
                    return  # the sidecar reset the stream or went away
                except TimeoutError:
                    _log.warning(
                        "endpoint_heartbeat_lost", service=service, address=address, after_s=ttl
                    )
                    return
                if not chunk:
                    return  # the sidecar ended the stream
                await lease.keepalive()
                if body.buffered < 4096:
                    body.feed(b'{"type":"ping"}\n')
        finally:
            _log.info("endpoint_stream_closed", service=service, address=address)
            body.feed_eof()


_POSTS: Final = frozenset({b"/v1/certificate", b"/v1/stream", b"/v1/endpoints"})


@final
class _Accept(asyncio.Protocol):
    """TLS (client certificate optional), then HTTP/2 or HTTP/1.1 by ALPN."""

    def __init__(self, ctx: ssl.SSLContext, state: ListenerState, trust_domain: str) -> None:
        self.ctx = ctx
        self.state = state
        self.trust_domain = trust_domain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        layer = TlsLayer(self.ctx, server_side=True, on_ready=self._ready, on_fail=self._failed)
        transport.set_protocol(layer)
        layer.connection_made(transport)

    def _failed(self, layer: TlsLayer, exc: BaseException) -> None:
        _log.info("control_plane_handshake_failed", error=str(exc))

    def _ready(self, layer: TlsLayer) -> None:
        der = layer.peer_cert_der()
        if der is not None:
            try:
                layer.peer_id = str(validate_svid(der, trust_domains=(self.trust_domain,)))
            except PeerVerificationError as exc:
                _log.warning("control_plane_client_refused", error=str(exc))
                layer.close()
                return
        proto: asyncio.Protocol
        proto = H2ServerConnection(self.state) if layer.alpn == "h2" else H1Connection(self.state)
        layer.set_protocol(proto)
        proto.connection_made(layer)
