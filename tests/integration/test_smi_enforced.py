"""The SMI traffic-access v1alpha3 L7 example, enforced by real sidecars over mTLS.

prometheus may GET /metrics but not /api; website-service (and payments-service) may call
/api; anyone else — another meshed service, or a plaintext client — is denied. Run against the
spec's own YAML in ../shared (skipped with a reason where it is absent) and against the
byte-identical copy in tests/fixtures, so a clone without ../shared covers the same case.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.helpers import Backend, Client, raw_exchange

from pymesh.policy.model import Endpoint
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.sidecar import Sidecar
from pymesh.tls.ca import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "config"
SHARED = ROOT.parent / "shared" / "smi-examples"
EXAMPLE = "01-traffic-access-v1alpha3-l7-example.yaml"
TD = "smi.example"


@pytest.fixture(params=["shared", "fixture"])
def example(request: pytest.FixtureRequest) -> Path:
    if request.param == "shared":
        if not (SHARED / EXAMPLE).is_file():
            pytest.skip(f"{SHARED / EXAMPLE} does not exist (no ../shared beside this clone)")
        return SHARED / EXAMPLE
    return FIXTURES / "smi" / EXAMPLE


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


def _sidecar(mesh: Mesh, service: str, ca: CertificateAuthority, **kw: object) -> Sidecar:
    return Sidecar(
        mesh,
        service,
        inbound=("127.0.0.1", 0),
        outbound=("127.0.0.1", 0),
        admin=None,
        access_log=False,
        identity=ca.issue_identity(f"spiffe://{TD}/ns/default/sa/{service}", 3600),
        **kw,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def smi_mesh(
    example: Path, ca: CertificateAuthority, app: Backend
) -> AsyncIterator[tuple[Sidecar, dict[str, Sidecar]]]:
    base = Mesh.load(FIXTURES / "authz" / "mesh.yaml", example)
    async with _sidecar(base, "api-service", ca, app=app.address) as api:
        host, port = api.inbound_address
        mesh = base.with_endpoints(
            {("default", "api-service"): [Endpoint(address=host, port=port)]}
        )
        api.update(mesh)
        async with contextlib.AsyncExitStack() as stack:
            callers = {
                name: await stack.enter_async_context(_sidecar(mesh, name, ca))
                for name in ("prometheus", "website-service", "payments-service", "ledger")
            }
            yield api, callers


async def call(sidecar: Sidecar, method: str, path: str) -> tuple[int, bytes | None]:
    client = await Client.connect(sidecar.outbound_address)
    try:
        reply = await client.request(method, path, [("host", "api-service:8080")])
    finally:
        await client.close()
    return reply.status, reply.header(b"x-pymesh-error")


async def test_smi_l7_example_is_enforced(example: Path, ca: CertificateAuthority) -> None:
    async with Backend() as app, smi_mesh(example, ca, app) as (api, callers):
        allowed = [
            ("prometheus", "GET", "/metrics"),
            ("website-service", "GET", "/api/orders"),
            ("website-service", "POST", "/api/orders"),
            ("payments-service", "DELETE", "/api/x"),
            ("website-service", "GET", "/api/./orders//"),  # normalised: the app sees it so
        ]
        denied = [
            ("prometheus", "GET", "/api/orders"),  # prometheus: only the 'metrics' match
            ("prometheus", "POST", "/metrics"),  # ... and only GET
            ("website-service", "GET", "/metrics"),  # website: only the 'api' match
            ("ledger", "GET", "/api/orders"),  # not a source of any TrafficTarget
            ("ledger", "GET", "/metrics"),
            # The policy sees the normalised path: no way around a match with dot segments.
            ("website-service", "GET", "/api/../metrics"),
            ("prometheus", "GET", "/metrics/%2e%2e/api/x"),
        ]
        for who, method, path in allowed:
            assert await call(callers[who], method, path) == (200, None), (who, method, path)
        seen = len(app.requests)
        for who, method, path in denied:
            assert await call(callers[who], method, path) == (403, b"authz_denied"), (who, path)
        assert len(app.requests) == seen  # no denied request reached the app
        targets = [b"/metrics", b"/api/orders", b"/api/orders", b"/api/x", b"/api/orders/"]
        assert [r.target for r in app.requests] == targets
        # Plaintext straight to the STRICT inbound port: refused before any HTTP.
        out = await raw_exchange(api.inbound_address, b"GET /api HTTP/1.1\r\nHost: a\r\n\r\n")
        assert out == b""
        # The allow-list runs as a synchronous guard, so allowed requests keep the fast path.
        inbound = api._inbound_router
        assert inbound is not None
        route = inbound.by_port(8080)
        assert route is not None and route.fast is not None and route.guard is not None
        metrics = api.registry.render().decode()
        assert 'pymesh_authz_decisions_total{decision="allow",protocol="http"} 5' in metrics
        assert 'pymesh_authz_decisions_total{decision="deny",protocol="http"} 7' in metrics
