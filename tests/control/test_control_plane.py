"""The control plane in one process on loopback: real TLS, real HTTP/2 streams, real sidecars.

A sidecar joins with nothing but a token and the URL; config edits propagate; a broken edit
is rejected with every error while traffic goes on; the control plane can die and come back;
tokens for another service, expired, revoked or forged are refused; an endpoint whose
sidecar left disappears after its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from tests.helpers import Backend, Client

from pymesh.control.client import ControlPlaneClient, ControlPlaneError, controlled_sidecar
from pymesh.control.server import ControlPlane
from pymesh.control.state import StateDir
from pymesh.control.store import MemoryStore
from pymesh.proxy.sidecar import Sidecar

TD = "cp.local"
MESH = """\
apiVersion: pymesh.io/v1alpha1
kind: Mesh
metadata: {name: cp}
spec: {trustDomain: cp.local, mtls: STRICT, authorization: enforce}
---
apiVersion: pymesh.io/v1alpha1
kind: Service
metadata: {name: web}
spec:
  serviceAccount: web
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: pymesh.io/v1alpha1
kind: Service
metadata: {name: api}
spec:
  serviceAccount: api
  ports: [{name: http, port: 8080, protocol: http}]
"""
DENY_WEB = """\
---
kind: HTTPRouteGroup
apiVersion: specs.smi-spec.io/v1alpha4
metadata: {name: api-routes}
spec:
  matches: [{name: health, pathRegex: /health, methods: [GET]}]
---
kind: TrafficTarget
apiVersion: access.smi-spec.io/v1alpha3
metadata: {name: web-health-only}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: default}
  rules: [{kind: HTTPRouteGroup, name: api-routes}]
  sources: [{kind: ServiceAccount, name: web, namespace: default}]
"""


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir.init(tmp_path / "state", TD)


@contextlib.asynccontextmanager
async def control_plane(
    state: StateDir, config: Path, port: int = 0, **kw: object
) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(
        state,
        MemoryStore(),
        config=[str(config)],
        listen=("127.0.0.1", port),
        poll_interval=0.05,
        **kw,  # type: ignore[arg-type]
    )
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop()


def url(cp: ControlPlane) -> str:
    assert cp.address is not None
    return f"https://{cp.address[0]}:{cp.address[1]}"


def listeners(**kw: Any) -> dict[str, Any]:
    return {
        "inbound": ("127.0.0.1", 0),
        "outbound": ("127.0.0.1", 0),
        "admin": ("127.0.0.1", 0),
        "access_log": False,
        **kw,
    }


async def get_api(web: Sidecar, path: str = "/") -> tuple[int, bytes | None]:
    client = await Client.connect(web.outbound_address)
    try:
        reply = await client.request("GET", path, [("host", "api")])
    finally:
        await client.close()
    return reply.status, reply.header(b"x-pymesh-error")


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail("condition not met in time")


async def test_sidecars_join_talk_mtls_and_follow_config_edits(
    state: StateDir, tmp_path: Path
) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH)
    async with (
        Backend() as app,
        control_plane(state, config) as cp,
        controlled_sidecar(
            [url(cp)],
            state.issue_token("default/api", 600),
            "api",
            **listeners(app=app.address),
        ) as api,
        controlled_sidecar(
            [url(cp)], state.issue_token("default/web", 600), "web", **listeners()
        ) as web,
    ):
        assert api.credentials.identity is not None
        assert str(api.credentials.identity.spiffe_id) == f"spiffe://{TD}/ns/default/sa/api"
        # api's endpoint is its registered inbound listener (none in the config).
        await wait_for(lambda: _ok(web))
        assert app.requests[-1].target == b"/"
        version = web.control_plane.version
        # A policy change reaches both sidecars: web may now only GET /health.
        config.write_text(MESH + DENY_WEB)

        async def denied() -> bool:
            return await get_api(web, "/private") == (403, b"authz_denied")

        await wait_for(denied)
        assert await get_api(web, "/health") == (200, None)
        assert web.control_plane.version > version
        # A broken edit is rejected with all its errors; traffic goes on.
        with capture_logs() as logs:
            config.write_text(MESH.replace("port: 8080", "port: 0").replace("web\n", "w b\n", 1))
            await asyncio.sleep(0.5)
        (rejected,) = [e for e in logs if e["event"] == "config_rejected"]
        assert len(rejected["errors"]) >= 2, rejected
        assert await get_api(web, "/health") == (200, None)
        assert await get_api(web, "/private") == (403, b"authz_denied")
        from pymesh.control.up import http_get

        _, body = await http_get(web.admin_address, "/config_dump")
        assert json.loads(body)["control_plane"]["version"] == web.control_plane.version


async def _ok(web: Sidecar) -> bool:
    return (await get_api(web))[0] == 200


async def test_control_plane_down_traffic_flows_and_sidecars_resync(
    state: StateDir, tmp_path: Path
) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH)
    async with Backend() as app:
        cp = ControlPlane(state, MemoryStore(), config=[str(config)], listen=("127.0.0.1", 0))
        await cp.start()
        assert cp.address is not None
        port = cp.address[1]
        try:
            async with (
                controlled_sidecar(
                    [url(cp)], state.issue_token("api", 600), "api", **listeners(app=app.address)
                ),
                controlled_sidecar(
                    [url(cp)], state.issue_token("web", 600), "web", **listeners()
                ) as web,
            ):
                await wait_for(lambda: _ok(web))
                await cp.stop()  # the control plane dies
                for _ in range(5):
                    assert await get_api(web) == (200, None)  # last good config and cert
                config.write_text(MESH + DENY_WEB)
                async with control_plane(state, config, port=port):

                    async def resynced() -> bool:
                        return await get_api(web, "/x") == (403, b"authz_denied")

                    await wait_for(resynced, timeout=15)
        finally:
            await cp.stop()


@pytest.mark.parametrize("case", ["other_service", "expired", "revoked", "forged"])
async def test_bad_tokens_are_refused(state: StateDir, tmp_path: Path, case: str) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH)
    async with control_plane(state, config) as cp:
        if case == "other_service":
            token = state.issue_token("default/api", 600)
            with pytest.raises(ValueError, match="token is for service default/api"):
                ControlPlaneClient([url(cp)], token, "web")
            # ... and a client that lies about the service is refused by the server.
            client = ControlPlaneClient([url(cp)], token, "api")
            client.service = "default/web"
        else:
            if case == "expired":
                token = state.issue_token("default/web", 60, now=time.time() - 600)
            elif case == "forged":
                token = StateDir.init(tmp_path / "other", TD).issue_token("default/web", 600)
            else:
                token = state.issue_token("default/web", 600)
                from pymesh.control.tokens import read_token

                info = read_token(token)
                await cp.store.revoke_token(info.token_id, info.expires_at)
                await asyncio.sleep(0.1)
            client = ControlPlaneClient([url(cp)], token, "web")
        with pytest.raises(ControlPlaneError) as err:
            await client.join(deadline=1.0)
        client.close()
        expected = {
            "other_service": "wrong_service",
            "expired": "expired",
            "revoked": "revoked",
            "forged": "pin",
        }[case]
        assert expected in str(err.value) or (
            case == "forged" and "bad_signature" in str(err.value)
        ), str(err.value)


async def test_endpoint_disappears_after_its_lease(state: StateDir, tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH)
    async with Backend() as app:
        cp = ControlPlane(
            state, MemoryStore(), config=[str(config)], listen=("127.0.0.1", 0), lease_ttl=1.0
        )
        await cp.start()
        try:
            async with controlled_sidecar(
                [url(cp)], state.issue_token("web", 600), "web", **listeners()
            ) as web:
                async with controlled_sidecar(
                    [url(cp)], state.issue_token("api", 600), "api", **listeners(app=app.address)
                ) as api:
                    host, port = api.inbound_address
                    await wait_for(lambda: _ok(web))
                    assert f"{host}:{port}" in json.dumps(web.clusters_dump())

                async def gone() -> bool:
                    return f"{host}:{port}" not in json.dumps(web.clusters_dump())

                await wait_for(gone, timeout=6)
        finally:
            await cp.stop()
