"""mTLS between sidecars: what crosses the wire, who is refused, and why (real TLS, loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.testing import capture_logs
from tests.helpers import Backend, Client, raw_exchange

from pymesh.policy.model import Endpoint, MeshSpec, ServicePort, ServiceSpec
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.sidecar import Sidecar
from pymesh.tls.ca import CertificateAuthority
from pymesh.tls.identity import Identity

TD = "test.local"
SECRET = b"the-plaintext-must-never-appear-0123456789"


def sid(sa: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{sa}"


def build_mesh(
    api_endpoint: tuple[str, int], mtls: str = "STRICT", protocol: str = "http", **kw: Any
) -> Mesh:
    return Mesh.build(
        name="t",
        spec=MeshSpec(trust_domain=TD, mtls=mtls, **kw),  # type: ignore[arg-type]
        services={
            "web": ServiceSpec(
                service_account="web", ports=(ServicePort(name="http", port=80, protocol="http"),)
            ),
            "api": ServiceSpec(
                service_account="api",
                ports=(ServicePort(name="http", port=8080, protocol=protocol),),  # type: ignore[arg-type]
                endpoints=(Endpoint(address=api_endpoint[0], port=api_endpoint[1]),),
            ),
        },
    )


@dataclass
class Recorder:
    """A TCP relay that records both directions (what a wiretap between sidecars sees)."""

    target: tuple[str, int]
    up: bytearray = field(default_factory=bytearray)
    down: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _pipe(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, sink: bytearray
    ) -> None:
        try:
            while data := await r.read(65536):
                sink += data
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers |= {w, uw}
        try:
            await asyncio.gather(self._pipe(r, uw, self.up), self._pipe(ur, w, self.down))
        finally:
            self.writers -= {w, uw}

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()  # the pipes see EOF and end before the loop goes away
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.server.wait_closed()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


def ident(ca: CertificateAuthority, sa: str, ttl: float = 3600.0) -> Identity:
    return ca.issue_identity(sid(sa), ttl)


def _sidecar(mesh: Mesh, service: str, identity: Identity | None, **kw: Any) -> Sidecar:
    return Sidecar(
        mesh,
        service,
        inbound=("127.0.0.1", 0),
        outbound=("127.0.0.1", 0),
        admin=("127.0.0.1", 0),
        identity=identity,
        access_log=kw.pop("access_log", False),
        **kw,
    )


@contextlib.asynccontextmanager
async def api_sidecar(
    ca: CertificateAuthority, app: Backend, mtls: str = "STRICT", **kw: Any
) -> AsyncIterator[Sidecar]:
    """The api service's sidecar (its mesh names itself as the endpoint afterwards)."""
    mesh = build_mesh(("127.0.0.1", 1), mtls, **kw)
    sc = _sidecar(mesh, "api", ident(ca, "api"), app=app.address)
    async with sc:
        sc.update(build_mesh(sc.inbound_address, mtls, **kw))
        yield sc


@contextlib.asynccontextmanager
async def web_sidecar(
    ca: CertificateAuthority, target: tuple[str, int], identity: Identity | None = None, **kw: Any
) -> AsyncIterator[Sidecar]:
    mesh = build_mesh(target, kw.pop("mtls", "STRICT"))
    async with _sidecar(mesh, "web", identity or ident(ca, "web"), **kw) as sc:
        yield sc


async def test_sidecars_speak_tls13_and_the_plaintext_never_crosses(
    ca: CertificateAuthority,
) -> None:
    async with (
        Backend() as app,
        api_sidecar(ca, app) as api,
        Recorder(api.inbound_address) as tap,
        web_sidecar(ca, tap.address) as web,
    ):
        client = await Client.connect(web.outbound_address)
        try:
            for _ in range(3):
                reply = await client.request(
                    "POST", "/orders", [("host", "api"), ("x-secret", SECRET.decode())], SECRET
                )
                assert reply.status == 200
        finally:
            await client.close()
        # The app saw plain HTTP with the secret, from the api sidecar.
        assert app.requests and app.requests[0].body == SECRET
        assert app.requests[0].header(b"x-secret") == SECRET
        # On the wire between the sidecars: a TLS 1.3 session, never the plaintext.
        up, down = bytes(tap.up), bytes(tap.down)
        assert up[:1] == b"\x16" and up[1:3] in (b"\x03\x01", b"\x03\x03")  # ClientHello
        assert down[:1] == b"\x16"  # ServerHello
        assert b"\x00\x2b\x00\x02\x03\x04" in down[:512]  # supported_versions = TLS 1.3
        assert SECRET not in up and SECRET not in down
        assert b"POST" not in up and b"HTTP/1.1" not in down
        assert b"outbound_.8080_._.api.default.svc.cluster.local" in up  # SNI names the port
        # The api sidecar knows who called.
        text = api.registry.render().decode()
        assert f'source_principal="{sid("web")}"' in text
        assert 'connection_security_policy="mutual_tls"' in text


async def test_plaintext_to_a_strict_port_is_refused(
    ca: CertificateAuthority, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Backend() as app, api_sidecar(ca, app) as api:
        with capture_logs() as logs:
            out = await raw_exchange(api.inbound_address, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        assert out == b""  # closed, nothing forwarded
        (line,) = [e for e in logs if e["event"] == "plaintext_refused"]
        assert "STRICT" in line["detail"] and line["detected"] == "http1"
        assert not app.requests
        assert 'reason="plaintext"' in api.registry.render().decode()


def _client_ctx(cert: tuple[bytes, bytes] | None, bundle: bytes) -> ssl.SSLContext:
    """A client context like any TLS client's (not pymesh's), optionally with a certificate."""
    import os
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=bundle.decode())
    if cert is not None:
        with tempfile.TemporaryDirectory() as d:
            cpath, kpath = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
            with open(cpath, "wb") as f:
                f.write(cert[0])
            with open(kpath, "wb") as f:
                f.write(cert[1])
            ctx.load_cert_chain(cpath, kpath)
    return ctx


async def _tls_get(address: tuple[str, int], ctx: ssl.SSLContext) -> bytes:
    """GET / over TLS; whatever comes back (b"" on a close), or the error text."""
    try:
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection(*address, ssl=ctx, server_hostname="api")
            w.write(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            await w.drain()
            out = await r.read()
            w.close()
            return out
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc).encode()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no_certificate", "no_client_certificate"),
        ("other_ca", "unknown_ca"),
        ("expired", "certificate_expired"),
    ],
)
async def test_bad_client_certificates_get_a_tls_alert(
    ca: CertificateAuthority, case: str, reason: str
) -> None:
    from datetime import UTC, datetime, timedelta

    async with Backend() as app, api_sidecar(ca, app) as api:
        cert: tuple[bytes, bytes] | None
        if case == "no_certificate":
            cert = None
        elif case == "other_ca":
            cert = CertificateAuthority.create(TD).issue(sid("web"), 3600)
        else:
            cert = ca.issue(sid("web"), 60, not_before=datetime.now(UTC) - timedelta(hours=2))
        with capture_logs() as logs:
            out = await _tls_get(api.inbound_address, _client_ctx(cert, ca.bundle_pem()))
        (line,) = [e for e in logs if e["event"] == "mtls_handshake_failed"]
        assert line["reason"] == reason and line["peer"].startswith("127.0.0.1:")
        # The client learns why: the server's TLS alert, not a bare reset.
        assert b"ALERT" in out.upper() or b"alert" in out, out
        assert not app.requests
        assert f'reason="{reason}"' in api.registry.render().decode()


async def test_a_client_with_a_mesh_certificate_reaches_a_strict_port(
    ca: CertificateAuthority,
) -> None:
    async with Backend() as app, api_sidecar(ca, app) as api:
        out = await _tls_get(
            api.inbound_address, _client_ctx(ca.issue(sid("curl"), 3600), ca.bundle_pem())
        )
        assert out.startswith(b"HTTP/1.1 200"), out
        assert app.requests[0].target == b"/"


async def test_the_outbound_side_refuses_a_server_with_the_wrong_identity(
    ca: CertificateAuthority,
) -> None:
    # "api"'s endpoint is really a sidecar holding the identity of "impostor".
    async with Backend() as app:
        mesh = build_mesh(("127.0.0.1", 1))
        impostor = _sidecar(mesh, "api", ident(ca, "impostor"), app=app.address)
        async with impostor as fake, web_sidecar(ca, fake.inbound_address) as web:
            client = await Client.connect(web.outbound_address)
            try:
                with capture_logs() as logs:
                    reply = await client.request("GET", "/", [("host", "api")])
            finally:
                await client.close()
        (line,) = [e for e in logs if e["event"] == "tls_upstream_refused"]
        assert (
            f"server identity {sid('impostor')} is not the expected {sid('api')}" in line["error"]
        )
        assert reply.status == 502
        assert reply.header(b"x-pymesh-error") == b"upstream_connect_failed"
        assert not app.requests


async def test_permissive_accepts_plaintext_and_mtls_on_one_port(
    ca: CertificateAuthority,
) -> None:
    async with Backend() as app, api_sidecar(ca, app, mtls="PERMISSIVE") as api:
        out = await raw_exchange(
            api.inbound_address, b"GET /plain HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 200")
        async with web_sidecar(ca, api.inbound_address, mtls="PERMISSIVE") as web:
            client = await Client.connect(web.outbound_address)
            try:
                reply = await client.request("GET", "/tls", [("host", "api")])
            finally:
                await client.close()
        assert reply.status == 200
        assert [r.target for r in app.requests] == [b"/plain", b"/tls"]
        text = api.registry.render().decode()
        assert 'connection_security_policy="mutual_tls"' in text
        assert 'connection_security_policy="none"' in text


async def test_a_strict_mesh_without_an_identity_does_not_start(
    ca: CertificateAuthority,
) -> None:
    with pytest.raises(ValueError, match="no identity"):
        async with _sidecar(build_mesh(("127.0.0.1", 1)), "web", None):
            pass


async def test_a_certificate_breaking_svid_rules_is_closed_after_the_handshake(
    ca: CertificateAuthority,
) -> None:
    """OpenSSL accepts a leaf with two URI SANs (it chains to the bundle); pymesh does not."""
    from cryptography import x509

    from pymesh.tls.ca import svid_extensions

    exts = [
        (
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(sid(n)) for n in ("a", "b")]
            ),
            c,
        )
        if isinstance(e, x509.SubjectAlternativeName)
        else (e, c)
        for e, c in svid_extensions(sid("a"))
    ]
    cert = ca.issue_custom(extensions=exts)
    async with Backend() as app, api_sidecar(ca, app) as api:
        with capture_logs() as logs:
            out = await _tls_get(api.inbound_address, _client_ctx(cert, ca.bundle_pem()))
        assert not out.startswith(b"HTTP")
        assert not app.requests
        (line,) = [e for e in logs if e["event"] == "mtls_peer_refused"]
        assert line["reason"] == "uri_san_count"
        assert 'reason="uri_san_count"' in api.registry.render().decode()
