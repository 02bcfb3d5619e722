"""Real TLS 1.3 mTLS handshakes over 127.0.0.1 with server_context / client_context."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from pymesh.tls import (
    CertificateAuthority,
    Identity,
    SpiffeId,
    SvidError,
    client_context,
    server_context,
    svid_extensions,
    validate_svid,
)
from pymesh.tls.context import _private_path

TD = "shop.local"
ORDERS = "spiffe://shop.local/ns/default/sa/orders"
WEB = "spiffe://shop.local/ns/default/sa/web"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)  # same trust domain name, different roots


@dataclass
class Side:
    """What one end of a connection saw."""

    error: BaseException | None = None
    version: str | None = None
    alpn: str | None = None
    peer_der: bytes | None = None
    received: bytes = b""
    extra: dict[str, object] = field(default_factory=dict)


def exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[Side, Side]:
    """One connection: the client sends b"ping", the server answers b"pong" (threads)."""
    server, client = Side(), Side()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                raw, _ = listener.accept()
                raw.settimeout(TIMEOUT)
                with server_ctx.wrap_socket(raw, server_side=True) as tls:
                    server.version = tls.version()
                    server.alpn = tls.selected_alpn_protocol()
                    server.peer_der = tls.getpeercert(binary_form=True)
                    server.received = tls.recv(4)
                    tls.sendall(b"pong")
            except (OSError, ssl.SSLError) as exc:
                server.error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                client_ctx.wrap_socket(raw, server_hostname="orders.default") as tls,
            ):
                client.version = tls.version()
                client.alpn = tls.selected_alpn_protocol()
                client.peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ping")
                client.received = tls.recv(4)
        except (OSError, ssl.SSLError) as exc:
            client.error = exc
        thread.join(TIMEOUT)
        assert not thread.is_alive()
    return server, client


def test_mtls_handshake_alpn_and_peer_svids(ca: CertificateAuthority) -> None:
    orders, web = ca.issue_identity(ORDERS, 3600), ca.issue_identity(WEB, 3600)
    server, client = exchange(server_context(orders), client_context(web))
    assert server.error is None and client.error is None
    assert server.version == client.version == "TLSv1.3"
    assert server.alpn == client.alpn == "h2"
    assert (server.received, client.received) == (b"ping", b"pong")
    assert server.peer_der is not None and client.peer_der is not None
    assert validate_svid(server.peer_der, trust_domains={TD}) == SpiffeId.parse(WEB)
    assert validate_svid(client.peer_der, trust_domains={TD}) == SpiffeId.parse(ORDERS)


def test_alpn_falls_back_to_http1(ca: CertificateAuthority) -> None:
    orders, web = ca.issue_identity(ORDERS, 3600), ca.issue_identity(WEB, 3600)
    server, client = exchange(server_context(orders), client_context(web, alpn=["http/1.1"]))
    assert client.error is None
    assert server.alpn == client.alpn == "http/1.1"
    _, client = exchange(server_context(orders, alpn=()), client_context(web, alpn=()))
    assert client.error is None and client.alpn is None


def test_client_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    server_ctx = server_context(ca.issue_identity(ORDERS, 3600))
    # the stranger trusts our server (both roots) but its own cert is from the other CA
    trusting = other_ca.with_roots(ca.bundle_pem())
    stranger = Identity.from_pem(*other_ca.issue(WEB, 3600), trusting.bundle_pem())
    server, client = exchange(server_ctx, client_context(stranger))
    assert isinstance(server.error, ssl.SSLError)
    assert "certificate verify failed" in str(server.error)
    assert server.received == b""
    # TLS 1.3: the client's handshake may complete; it then gets an alert or EOF, never data
    assert client.received == b""


def test_server_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    server_ctx = server_context(other_ca.issue_identity(ORDERS, 3600))
    _server, client = exchange(server_ctx, client_context(ca.issue_identity(WEB, 3600)))
    assert isinstance(client.error, ssl.SSLError)
    assert "certificate verify failed" in str(client.error)
    assert client.peer_der is None


def test_client_without_a_certificate_is_refused(ca: CertificateAuthority) -> None:
    orders = ca.issue_identity(ORDERS, 3600)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=orders.bundle_pem.decode())
    server, client = exchange(server_context(orders), anonymous)
    assert isinstance(server.error, ssl.SSLError)
    assert "certificate" in str(server.error)
    assert client.received == b""


def test_tls12_client_is_refused(ca: CertificateAuthority) -> None:
    old = client_context(ca.issue_identity(WEB, 3600))
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    server, client = exchange(server_context(ca.issue_identity(ORDERS, 3600)), old)
    assert isinstance(server.error, ssl.SSLError)
    assert isinstance(client.error, ssl.SSLError)


def test_root_rotation_bundle_trusts_both_roots(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    both = ca.with_roots(other_ca.bundle_pem())
    chain, key = ca.issue(ORDERS, 3600)
    orders = Identity.from_pem(chain, key, both.bundle_pem())
    server_ctx = server_context(orders)
    for issuer in (ca, other_ca):
        web = Identity.from_pem(*issuer.issue(WEB, 3600), both.bundle_pem())
        server, client = exchange(server_ctx, client_context(web))
        assert server.error is None and client.error is None, (server.error, client.error)
        assert server.peer_der is not None
        assert validate_svid(server.peer_der) == SpiffeId.parse(WEB)


def test_openssl_accepts_a_bad_svid_that_validate_svid_rejects(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Why pymesh validates the leaf itself: two URI SANs pass the TLS handshake."""
    exts = [e for e in svid_extensions(WEB) if not isinstance(e[0], x509.SubjectAlternativeName)]
    uris = (WEB, "spiffe://shop.local/ns/kube-system/sa/admin")
    exts.append(
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), True)
    )
    chain, key = ca.issue_custom(extensions=exts)
    (tmp_path / "c.pem").write_bytes(chain)
    (tmp_path / "k.pem").write_bytes(key)
    sneaky = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    sneaky.check_hostname = False
    sneaky.load_verify_locations(cadata=ca.bundle_pem().decode())
    sneaky.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    server, client = exchange(server_context(ca.issue_identity(ORDERS, 3600)), sneaky)
    assert server.error is None and client.error is None
    assert server.peer_der is not None
    with pytest.raises(SvidError) as info:
        validate_svid(server.peer_der)
    assert info.value.reason == "uri_san_count"


def test_context_settings(ca: CertificateAuthority) -> None:
    identity = ca.issue_identity(ORDERS, 3600)
    for ctx in (server_context(identity), client_context(identity)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        assert len(ctx.get_ca_certs()) == 1  # the bundle only, never the system store
    assert server_context(identity).num_tickets == 0
    assert server_context(identity, session_tickets=2).num_tickets == 2


def test_private_path_uses_memfd(tmp_path: Path) -> None:
    with _private_path(b"secret", "key") as path:
        assert path.startswith("/proc/self/fd/")
        assert Path(path).read_bytes() == b"secret"
        fd = int(path.rsplit("/", 1)[1])
        assert os.readlink(path).startswith("/memfd:pymesh-key")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed on exit


def test_private_path_fallback_deletes_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with _private_path(b"secret", "key") as path:
        assert Path(path).parent == tmp_path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert Path(path).read_bytes() == b"secret"
    assert list(tmp_path.iterdir()) == []


def test_contexts_build_without_memfd(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    orders, web = ca.issue_identity(ORDERS, 3600), ca.issue_identity(WEB, 3600)
    server, client = exchange(server_context(orders), client_context(web))
    assert server.error is None and client.received == b"pong"


async def test_asyncio_streams_handshake(ca: CertificateAuthority) -> None:
    orders, web = ca.issue_identity(ORDERS, 3600), ca.issue_identity(WEB, 3600)
    seen: list[SpiffeId] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.append(validate_svid(ssl_object.getpeercert(binary_form=True)))
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(orders))
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context(web), server_hostname="orders"
            ),
            TIMEOUT,
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "h2"
        assert validate_svid(ssl_object.getpeercert(binary_form=True)) == SpiffeId.parse(ORDERS)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"ping"
        writer.close()
        await writer.wait_closed()
    assert seen == [SpiffeId.parse(WEB)]
