"""Certificate rotation under continuous traffic: no failed request, new connections get the
new certificate, connections already open finish on the old one; identity-dir reloads."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

from cryptography import x509
from tests.helpers import Backend, Client
from tests.integration.test_mtls import _client_ctx, build_mesh, sid

from pymesh.proxy.sidecar import Sidecar
from pymesh.tls.ca import CertificateAuthority
from pymesh.tls.credentials import CsrSource, DirSource, Signer

TD = "test.local"


def local_signer(ca: CertificateAuthority, spiffe_id: str, ttl: float) -> Signer:
    async def sign(csr: bytes) -> tuple[bytes, bytes]:
        return ca.sign_csr(csr, spiffe_id, ttl), ca.bundle_pem()

    return sign


async def server_serial(address: tuple[str, int], ctx: ssl.SSLContext) -> int:
    """The serial of the certificate the server presents to a new connection (after a GET)."""
    async with asyncio.timeout(5):
        r, w = await asyncio.open_connection(*address, ssl=ctx, server_hostname="api")
        try:
            w.write(b"GET /direct HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            await w.drain()
            reply = await r.read()
            assert reply.startswith(b"HTTP/1.1 200"), reply
            ssl_obj = w.get_extra_info("ssl_object")
            der = ssl_obj.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der).serial_number
        finally:
            w.close()


async def test_rotation_under_continuous_traffic_fails_no_request() -> None:
    ca = CertificateAuthority.create(TD)
    ttl = 3.0  # renewed at half-life: a new certificate about every 1.5 s
    async with Backend() as app:
        api = Sidecar(
            build_mesh(("127.0.0.1", 1)),
            "api",
            inbound=("127.0.0.1", 0),
            outbound=None,
            admin=None,
            app=app.address,
            access_log=False,
            identity=CsrSource(sid("api"), local_signer(ca, sid("api"), ttl)),
        )
        async with api:
            web = Sidecar(
                build_mesh(api.inbound_address),
                "web",
                inbound=None,
                outbound=("127.0.0.1", 0),
                admin=None,
                access_log=False,
                identity=CsrSource(sid("web"), local_signer(ca, sid("web"), ttl)),
            )
            async with web:
                direct = _client_ctx(ca.issue(sid("probe"), 3600), ca.bundle_pem())
                statuses: list[int] = []
                serials: list[int] = []
                loop = asyncio.get_running_loop()
                end = loop.time() + 4.5
                client = await Client.connect(web.outbound_address)
                try:
                    while loop.time() < end and len(statuses) < 100_000:
                        for _ in range(20):
                            reply = await client.request("GET", "/", [("host", "api")])
                            statuses.append(reply.status)
                        serials.append(await server_serial(api.inbound_address, direct))
                        await asyncio.sleep(0.05)
                finally:
                    await client.close()
                assert web.credentials.generation >= 3
            assert api.credentials.generation >= 3
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    # New connections saw the new certificates, in order, with no gap.
    distinct = list(dict.fromkeys(serials))
    assert len(distinct) >= 3


async def test_identity_dir_is_reloaded_when_the_files_change(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(TD)
    first, second = tmp_path / "first", tmp_path / "second"
    ca.issue_identity(sid("api"), 3600).write_dir(first)
    ca.issue_identity(sid("api"), 3600).write_dir(second)
    live = tmp_path / "live"
    shutil.copytree(first, live)
    async with Backend() as app:
        api = Sidecar(
            build_mesh(("127.0.0.1", 1)),
            "api",
            inbound=("127.0.0.1", 0),
            outbound=None,
            admin=None,
            app=app.address,
            access_log=False,
            identity=DirSource(live, poll_interval=0.05),
        )
        async with api:
            direct = _client_ctx(ca.issue(sid("probe"), 3600), ca.bundle_pem())
            before = await server_serial(api.inbound_address, direct)
            # A broken edit is refused; the last good certificate keeps serving.
            (live / "key.pem").write_bytes(b"not a key")
            await asyncio.sleep(0.3)
            assert await server_serial(api.inbound_address, direct) == before
            for name in ("cert.pem", "key.pem", "bundle.pem"):
                shutil.copy(second / name, live / name)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            after = before
            while after == before and loop.time() < deadline:
                await asyncio.sleep(0.05)
                after = await server_serial(api.inbound_address, direct)
            assert after != before
            assert api.credentials.identity is not None
            assert api.credentials.identity.serial == after


async def test_certs_endpoint_metric_and_expiry_warning() -> None:
    import json
    from datetime import UTC, datetime, timedelta

    from structlog.testing import capture_logs

    from pymesh.control.up import http_get
    from pymesh.tls.identity import Identity

    ca = CertificateAuthority.create(TD)
    # 60 minutes of life, 50 of them gone: under a fifth left, so the sidecar warns.
    chain, key = ca.issue(sid("api"), 3600, not_before=datetime.now(UTC) - timedelta(minutes=50))
    identity = Identity.from_pem(chain, key, ca.bundle_pem())
    with capture_logs() as logs:
        async with Sidecar(
            build_mesh(("127.0.0.1", 1)),
            "api",
            inbound=("127.0.0.1", 0),
            outbound=None,
            admin=("127.0.0.1", 0),
            access_log=False,
            identity=identity,
        ) as api:
            await asyncio.sleep(0.05)  # the identity task's first check
            status, body = await http_get(api.admin_address, "/certs")
            _, metrics = await http_get(api.admin_address, "/metrics")
    assert status == 200
    certs = json.loads(body)
    assert certs["identity"] == sid("api")
    (cert,) = certs["certificates"]
    assert int(cert["serial"], 16) == identity.serial
    assert cert["not_after"].startswith(identity.not_after.strftime("%Y-%m-%dT%H:%M"))
    assert (
        f'pymesh_certificate_expiry_timestamp_seconds{{identity="{sid("api")}",'
        f'serial="{identity.serial:x}"}}'
    ) in metrics.decode()
    warnings = [e for e in logs if e["event"] == "certificate_expiring"]
    assert warnings and warnings[0]["identity"] == sid("api")
    assert 0 < warnings[0]["seconds_left"] <= 600
