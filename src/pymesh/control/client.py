"""The sidecar's side of the control plane: join with a token, get an identity, follow config.

Joining needs nothing but the bootstrap token and the control plane's URL(s):

1. The token (not verified here: the sidecar has no key) names the service, the trust domain,
   the fingerprint of the control plane's CA root and the control plane's SPIFFE ID.
2. `GET /v1/bundle` over TLS without verification, then the bundle is kept only if one of its
   roots has the pinned fingerprint. From then on every connection verifies the control
   plane's chain against that bundle and its leaf against the pinned SPIFFE ID (not a host
   name, so any replica behind any address will do).
3. The sidecar makes its own key and sends a CSR with the token (`POST /v1/certificate`); the
   private key never leaves the process. Renewals (at half the lifetime) authenticate with
   the current certificate instead of the token.
4. `POST /v1/stream` (mTLS) delivers this sidecar's view of the config, one version per
   message; each is validated again here and applied with `Sidecar.update()` (in-flight
   requests finish on the old version). A message that does not validate is logged and the
   last good config stays.
5. `POST /v1/endpoints` (mTLS) registers the sidecar's inbound listener for as long as the
   stream lives.

When the control plane is unreachable, traffic keeps flowing on the last good config and
certificate; the client reconnects with exponential backoff and jitter, trying every URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, final
from urllib.parse import urlsplit

import structlog
from cryptography import x509

from pymesh.control.tokens import BootstrapToken, fingerprint, read_token
from pymesh.errors import ConfigError, PymeshError
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.messages import Body, Request, RequestContext, Response
from pymesh.proxy.mtls import ClientCredentials, TlsOrigin
from pymesh.proxy.pool2 import H2Pool
from pymesh.proxy.sidecar import Sidecar
from pymesh.runtime import spawn
from pymesh.tls.context import trust_context
from pymesh.tls.credentials import ALPN_OFFERS, Alpn, Credentials, CsrSource
from pymesh.tls.identity import load_certificates

__all__ = [
    "ControlPlaneClient",
    "ControlPlaneError",
    "ControlPlaneRefused",
    "PinnedTrust",
    "controlled_sidecar",
    "parse_url",
    "run_with_control_plane",
]

_log = structlog.get_logger("pymesh.control.client")
MAX_LINE: Final = 16 * 1024 * 1024  # one config message
MAX_BODY: Final = 1 << 20


class ControlPlaneError(PymeshError):
    """The control plane refused a call or could not be reached."""


class ControlPlaneRefused(ControlPlaneError):
    """The control plane answered and said no (a bad token, an unknown service): retrying
    the same call cannot help."""


def parse_url(url: str) -> tuple[str, int]:
    """`https://HOST:PORT` → (host, port); ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"control plane URL {url!r} (expected https://HOST:PORT)")
    return parts.hostname, parts.port or 15010


@final
class PinnedTrust:
    """Client TLS contexts trusting only a pinned bundle, without a client certificate."""

    def __init__(self, bundle_pem: bytes, trust_domain: str) -> None:
        self.bundle_pem = bundle_pem
        self.trust_domain = trust_domain
        self._contexts: dict[Alpn, ssl.SSLContext] = {}

    def client(self, alpn: Alpn) -> ssl.SSLContext:
        """A TLS 1.3 context verifying the server's chain against the pinned bundle."""
        ctx = self._contexts.get(alpn)
        if ctx is None:
            ctx = self._contexts[alpn] = trust_context(self.bundle_pem, alpn=ALPN_OFFERS[alpn])
        return ctx


async def fetch_bundle(host: str, port: int, token: BootstrapToken, timeout: float) -> bytes:
    """The control plane's trust bundle, accepted only if a root matches the token's pin."""
    from pymesh.control.up import read_response

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # not trusted yet: the pin below decides
    ctx.set_alpn_protocols(["http/1.1"])
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            head = f"GET /v1/bundle HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode())
            status, _, body = await read_response(reader, max_body=MAX_BODY)
        finally:
            writer.close()
    if status != 200:
        raise ControlPlaneError(f"GET /v1/bundle: {status}")
    roots = [c for c in load_certificates(body, "control plane bundle") if _is_self_signed(c)]
    if not any(fingerprint(c) == token.ca_fingerprint for c in roots):
        raise ControlPlaneRefused(
            f"the control plane at {host}:{port} offered a trust bundle without the root the "
            f"token pins ({token.ca_fingerprint}): refusing to trust it"
        )
    return body


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _request(
    method: bytes,
    path: bytes,
    authority: bytes,
    doc: dict[str, Any] | None,
    token: str | None,
    stream: Body | None = None,
) -> Request:
    """A call; with `stream`, the body is NDJSON that goes on (`doc` is its first line)."""
    headers = [(b"host", authority), (b"accept", b"application/json")]
    body = None
    length = None
    if stream is not None:
        body = stream
        if doc is not None:
            stream.feed(json.dumps(doc).encode() + b"\n")
        headers.append((b"content-type", b"application/x-ndjson"))
    elif doc is not None:
        data = json.dumps(doc).encode()
        body = Body.complete(data)
        length = len(data)
        headers.append((b"content-type", b"application/json"))
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    ctx = RequestContext(
        listener="control-plane-client", downstream_addr="-", start=time.monotonic()
    )
    return Request(method, path, authority, headers, body, ctx, content_length=length)


async def _lines(response: Response, idle: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """NDJSON messages of a streamed response (each line bounded). With `idle`, silence for
    that long is an error: the control plane sends a ping at least every few seconds, so a
    silent stream means a peer cut off the network (TCP alone may take minutes to notice)."""
    body = response.body
    if body is None:
        return
    buf = b""
    while True:
        if idle is None:
            chunk = await body.read()
        else:
            try:
                async with asyncio.timeout(idle):
                    chunk = await body.read()
            except TimeoutError:
                raise ControlPlaneError(
                    f"no message from the control plane for {idle:g} s"
                ) from None
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE and b"\n" not in buf:
            raise ControlPlaneError(f"a control-plane message over {MAX_LINE} bytes")
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                doc = json.loads(line)
                if isinstance(doc, dict):
                    yield doc


@final
class ControlPlaneClient:
    """One sidecar's connection to the control plane (any of several replicas)."""

    def __init__(
        self,
        urls: Sequence[str],
        token: str,
        service: str,
        *,
        connect_timeout: float = 5.0,
        idle_timeout: float = 20.0,
        backoff_min: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one control plane URL is needed")
        self.addresses = [parse_url(u) for u in urls]
        self.token = token.strip()
        self.info = read_token(self.token)
        ns, _, name = service.rpartition("/")
        self.service = f"{ns or 'default'}/{name}"
        if self.info.service != self.service:
            raise ValueError(f"the token is for service {self.info.service}, not {self.service}")
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.credentials = Credentials()
        self.trust: PinnedTrust | None = None
        self.version: int | None = None  # the control plane's version in force
        self.instance = ""  # which control-plane run that version came from
        self._next = random.randrange(len(self.addresses))
        self._pools: dict[tuple[tuple[str, int], bool], H2Pool] = {}
        self._identity: CsrSource | None = None

    # -- connections --------------------------------------------------------------------
    def _address(self) -> tuple[str, int]:
        return self.addresses[self._next % len(self.addresses)]

    def _rotate(self) -> None:
        self._next += 1
        for p in self._pools.values():
            p.close()
        self._pools.clear()

    def _pool(self, address: tuple[str, int], mtls: bool) -> H2Pool:
        key = (address, mtls)
        pool = self._pools.get(key)
        if pool is None:
            assert self.trust is not None
            creds: ClientCredentials = self.credentials if mtls else self.trust
            origin = TlsOrigin(creds, address[0], self.info.control_plane_id)
            pool = H2Pool(address, connect_timeout=self.connect_timeout, tls=origin)
            self._pools[key] = pool
        return pool

    async def _call(
        self, path: bytes, doc: dict[str, Any], *, mtls: bool, stream: Body | None = None
    ) -> Response:
        address = self._address()
        if self.trust is None:
            self.trust = PinnedTrust(
                await fetch_bundle(*address, self.info, self.connect_timeout),
                self.info.trust_domain,
            )
        conn = await self._pool(address, mtls).acquire()
        authority = f"{address[0]}:{address[1]}".encode()
        token = None if mtls else self.token
        return await conn.exchange(_request(b"POST", path, authority, doc, token, stream))

    async def _unary(self, path: bytes, doc: dict[str, Any], *, mtls: bool) -> dict[str, Any]:
        async with asyncio.timeout(self.connect_timeout * 2):
            response = await self._call(path, doc, mtls=mtls)
            data = await response.body.read_all(MAX_BODY) if response.body else b""
        answer = json.loads(data or b"{}")
        if 400 <= response.status < 500:
            raise ControlPlaneRefused(
                f"{path.decode()}: {response.status} {answer.get('error')}: {answer.get('message')}"
            )
        if response.status != 200:
            raise ControlPlaneError(
                f"{path.decode()}: {response.status} {answer.get('error')}: {answer.get('message')}"
            )
        if not isinstance(answer, dict):
            raise ControlPlaneError(f"{path.decode()}: not a JSON object")
        return answer

    # -- identity -------------------------------------------------------------------------
    async def _sign(self, csr: bytes) -> tuple[bytes, bytes]:
        doc = {"service": self.service, "csr": csr.decode()}
        try:
            answer = await self._unary(b"/v1/certificate", doc, mtls=self.credentials.ready)
        except ControlPlaneRefused:
            raise
        except (PymeshError, OSError, ValueError, KeyError, TimeoutError) as exc:
            self._rotate()
            raise RuntimeError(f"certificate from the control plane: {exc}") from exc
        return answer["chain"].encode(), answer["bundle"].encode()

    # -- joining ----------------------------------------------------------------------------
    async def join(self, deadline: float = 60.0) -> Mesh:
        """Get the bundle, an identity and the first config (retrying until `deadline`)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        delay = self.backoff_min
        while True:
            try:
                if self._identity is None:
                    self._identity = CsrSource(self._spiffe_id(), self._sign)
                if not self.credentials.ready:
                    await self._identity.load(self.credentials)
                mesh = await self._first_config()
                return mesh
            except ControlPlaneRefused as exc:
                raise ControlPlaneRefused(f"cannot join the control plane: {exc}") from exc
            except (PymeshError, OSError, RuntimeError, ValueError, TimeoutError) as exc:
                if loop.time() + delay > end:
                    raise ControlPlaneError(f"could not join the control plane: {exc}") from exc
                _log.warning("control_plane_join_failed", error=str(exc), retry_in=round(delay, 2))
                self._rotate()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max) * random.uniform(0.8, 1.2)

    def _spiffe_id(self) -> str:
        # The control plane decides the identity (from the service's serviceAccount); the CSR
        # asks for a placeholder in the right trust domain, which the CA replaces.
        ns, _, name = self.service.partition("/")
        return f"spiffe://{self.info.trust_domain}/ns/{ns}/sa/{name}"

    async def _first_config(self) -> Mesh:
        async with asyncio.timeout(self.connect_timeout * 2):
            response = await self._call(b"/v1/stream", {"service": self.service}, mtls=True)
            if response.status != 200:
                raise ControlPlaneError(f"/v1/stream: {response.status}")
            async for msg in _lines(response):
                if msg.get("type") == "config":
                    mesh = self._parse(msg)
                    if mesh is not None:
                        if response.release is not None:
                            response.release(False)
                        return mesh
        raise ControlPlaneError("the config stream ended before a config arrived")

    def _parse(self, msg: dict[str, Any]) -> Mesh | None:
        try:
            mesh = Mesh.from_yaml(str(msg.get("config", "")), "<control-plane>")
        except ConfigError as exc:
            _log.error(
                "control_plane_config_invalid",
                version=msg.get("version"),
                errors=[str(e) for e in exc.errors],
            )
            return None
        self.version = int(msg.get("version", 0))
        self.instance = str(msg.get("instance", ""))
        return mesh

    # -- following ----------------------------------------------------------------------------
    async def run(self, sidecar: Sidecar) -> None:
        """Follow config versions and keep the endpoint registered, forever (reconnecting)."""
        assert self._identity is not None
        renew = spawn(self._identity.maintain(self.credentials), name="cp.renew")
        delay = self.backoff_min
        try:
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    await self._follow(sidecar)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from exc  # being stopped: stop
                    _log.warning(
                        "control_plane_disconnected",
                        error=repr(exc),
                        serving_version=self.version,
                        retry_in=round(delay, 2),
                    )
                if asyncio.get_running_loop().time() - started > 30:
                    delay = self.backoff_min  # it had been working: start the backoff over
                self._rotate()
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff_max)
        finally:
            renew.cancel()
            self._rotate()

    async def _follow(self, sidecar: Sidecar) -> None:
        """Both streams until either ends (then the caller reconnects)."""
        host, port = sidecar.inbound_address
        loop = asyncio.get_running_loop()
        # (referenced here until both end; their failures are re-raised below, not logged
        # as crashed tasks: a disconnection is ordinary)
        config = loop.create_task(self._config_loop(sidecar), name="cp.config")
        endpoint = loop.create_task(self._endpoint_loop(f"{host}:{port}"), name="cp.endpoint")
        try:
            done, _ = await asyncio.wait({config, endpoint}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # (plain tasks, not a TaskGroup: on 3.11 a TaskGroup whose body raises while the
            # parent is being cancelled can swallow the cancellation — a sidecar that then
            # never stops on SIGTERM)
            for t in (config, endpoint):
                t.cancel()
            await asyncio.gather(config, endpoint, return_exceptions=True)
        for t in done:
            if not t.cancelled() and (exc := t.exception()) is not None:
                raise exc
        raise ControlPlaneError("a control-plane stream ended")

    async def _config_loop(self, sidecar: Sidecar) -> None:
        # `version`: we have a config already (a control plane that just restarted holds
        # its first message back until the sidecars have re-registered their endpoints).
        doc = {"service": self.service, "version": self.version, "instance": self.instance}
        response = await self._call(b"/v1/stream", doc, mtls=True)
        if response.status != 200:
            raise ControlPlaneError(f"/v1/stream: {response.status}")
        host, port = self._address()
        _log.info("control_plane_connected", address=f"{host}:{port}")
        try:
            async for msg in _lines(response, idle=self.idle_timeout):
                if msg.get("type") != "config":
                    continue
                mesh = self._parse(msg)
                if mesh is not None and mesh.version != sidecar.mesh.version:
                    sidecar.update(mesh)
        finally:
            if response.release is not None:
                response.release(False)

    async def _endpoint_loop(self, address: str) -> None:
        """Register `address`; heartbeats on the request stream keep the lease alive (the
        control plane renews it only while they arrive)."""
        doc = {"service": self.service, "address": address}
        beats = Body(high_water=4096)
        response = await self._call(b"/v1/endpoints", doc, mtls=True, stream=beats)
        if response.status != 200:
            raise ControlPlaneError(f"/v1/endpoints: {response.status}")
        period = 3.0
        try:
            async for msg in _lines(response, idle=self.idle_timeout):
                if msg.get("type") == "registered":
                    period = max(0.2, float(msg.get("lease_ttl", 10.0)) / 3)
                    break
            heart = asyncio.get_running_loop().create_task(self._heartbeat(beats, period))
            try:
                async for _ in _lines(response, idle=max(self.idle_timeout, period * 4)):
                    pass
            finally:
                heart.cancel()
        finally:
            beats.feed_eof()
            if response.release is not None:
                response.release(False)

    @staticmethod
    async def _heartbeat(beats: Body, period: float) -> None:
        while True:
            if beats.buffered < 1024:
                beats.feed(b'{"type":"heartbeat"}\n')
            await asyncio.sleep(period)

    def close(self) -> None:
        """Close every connection."""
        self._rotate()


@contextlib.asynccontextmanager
async def controlled_sidecar(
    urls: Sequence[str], token: str, service: str, *, join_deadline: float = 60.0, **kw: Any
) -> AsyncIterator[Sidecar]:
    """A sidecar whose identity and config come from the control plane at `urls`.

    Joins (bundle, certificate, first config), starts the sidecar with `kw` (Sidecar
    arguments), follows config versions and registers its inbound listener until the block
    ends; then stops the sidecar.
    """
    client = ControlPlaneClient(urls, token, service)
    try:
        mesh = await client.join(join_deadline)
        sidecar = Sidecar(mesh, service, credentials=client.credentials, **kw)
        sidecar.control_plane = client
        await sidecar.start()
        follow = spawn(client.run(sidecar), name="cp.follow")
        try:
            yield sidecar
        finally:
            follow.cancel()
            with contextlib.suppress(BaseException):
                await follow
            await sidecar.stop()
    finally:
        client.close()


async def run_with_control_plane(
    urls: Sequence[str], token: str, service: str, **sidecar_kw: Any
) -> int:
    """`pymesh proxy --control-plane URL --token-file F`: join, serve until a signal."""
    import signal

    from pymesh.runtime import install_signal_handlers

    async with controlled_sidecar(urls, token, service, **sidecar_kw) as sidecar:

        def on_signal(sig: signal.Signals) -> None:
            _log.info("signal", signal=sig.name, action="drain")
            sidecar.request_shutdown()

        install_signal_handlers(on_signal)
        await sidecar.serve_forever()
    return 0
