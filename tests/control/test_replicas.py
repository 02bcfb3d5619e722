"""Two control-plane replicas on one etcd serve one mesh (issue 5).

The replicas are real `pymesh control-plane` processes on loopback, each with its own copy
of one state directory (`shutil.copytree`, as an operator would copy it) and its own config
file, both on `--store etcd://` of a private etcd. The sidecars are in-process
`controlled_sidecar`s. Shown: a config change made through either replica reaches sidecars
connected to the other, and so do endpoint registrations; killing (SIGKILL) the replica the
sidecars are connected to moves them to the other without one failed request, even past
the expiry of the leases the dead replica was keeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.control.conftest import EtcdServer, free_port
from tests.helpers import Backend, Client

from pymesh.control.client import controlled_sidecar
from pymesh.control.state import StateDir
from pymesh.control.up import http_get
from pymesh.proxy.sidecar import Sidecar

TD = "replicas.local"
LEASE_TTL_S = 10.0  # ControlPlane's default lease; `pymesh control-plane` has no flag for it
MESH = """\
apiVersion: pymesh.io/v1alpha1
kind: Mesh
metadata: {name: replicas}
spec: {trustDomain: replicas.local, mtls: STRICT, authorization: enforce}
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


def allow_web(*paths: str) -> str:
    """MESH plus a TrafficTarget letting web GET only `paths` of api (all else: 403)."""
    matches = ", ".join(
        f"{{name: m{i}, pathRegex: {p}, methods: [GET]}}" for i, p in enumerate(paths)
    )
    return (
        MESH
        + "---\nkind: HTTPRouteGroup\napiVersion: specs.smi-spec.io/v1alpha4\n"
        + f"metadata: {{name: api-routes}}\nspec:\n  matches: [{matches}]\n"
        + "---\nkind: TrafficTarget\napiVersion: access.smi-spec.io/v1alpha3\n"
        + "metadata: {name: web-to-api}\nspec:\n"
        + "  destination: {kind: ServiceAccount, name: api, namespace: default}\n"
        + "  rules: [{kind: HTTPRouteGroup, name: api-routes}]\n"
        + "  sources: [{kind: ServiceAccount, name: web, namespace: default}]\n"
    )


class Replica:
    """One `pymesh control-plane` process with its own copy of the state directory."""

    def __init__(self, tmp_path: Path, name: str, state: Path, etcd: EtcdServer) -> None:
        self.name = name
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.state = self.dir / "state"
        shutil.copytree(state, self.state)
        self.config = self.dir / "mesh.yaml"
        self.write_config(MESH)
        self.etcd = etcd
        self.port = free_port()
        self.admin = ("127.0.0.1", free_port())
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = self.dir / "control-plane.log"
        self.out = self.dir / "control-plane.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, text: str) -> None:
        """Edit this replica's config file (atomically: never half an edit)."""
        part = self.config.with_suffix(".part")
        part.write_text(text)
        os.replace(part, self.config)

    async def start(self, timeout: float = 20.0) -> None:
        """Start it; return once it printed its ready line."""
        assert self.proc is None
        args = [
            *(sys.executable, "-m", "pymesh", "control-plane"),
            *("--config", str(self.config), "--state-dir", str(self.state)),
            *("--store", self.etcd.url, "--listen", f"127.0.0.1:{self.port}"),
            *("--admin", f"{self.admin[0]}:{self.admin[1]}"),
        ]
        with self.out.open("wb") as out, self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=log, start_new_session=True
            )
        line = f"control-plane listen=127.0.0.1:{self.port} ready"
        async with asyncio.timeout(timeout):
            while line not in self.out.read_text():
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye, its leases are left to expire in etcd."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    async def config_dump(self) -> dict[str, Any]:
        """Its admin /config_dump (version, subscribers, config)."""
        status, body = await http_get(self.admin, "/config_dump")
        assert status == 200, body
        doc = json.loads(body)
        assert isinstance(doc, dict)
        return doc

    async def subscribers(self) -> int:
        """How many sidecars follow its config stream."""
        return int((await self.config_dump())["subscribers"])


@pytest.fixture
def replicas(
    etcd_factory: Callable[[], EtcdServer], tmp_path: Path
) -> tuple[Replica, Replica, StateDir]:
    """Two replicas (not started) of one fresh state directory on a private etcd."""
    state = StateDir.init(tmp_path / "state", TD)
    etcd = etcd_factory()
    return (
        Replica(tmp_path, "r1", state.path, etcd),
        Replica(tmp_path, "r2", state.path, etcd),
        state,
    )


@contextlib.asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[None]:
    """Stop every replica afterwards, whatever happened."""
    try:
        yield
    finally:
        for r in replicas:
            r.stop()


def listeners(**kw: Any) -> dict[str, Any]:
    return {
        "inbound": ("127.0.0.1", 0),
        "outbound": ("127.0.0.1", 0),
        "admin": ("127.0.0.1", 0),
        "access_log": False,
        **kw,
    }


async def get_api(web: Sidecar, path: str) -> tuple[int, bytes | None]:
    """web's application calls api through its sidecar: (status, x-pymesh-error)."""
    client = await Client.connect(web.outbound_address)
    try:
        reply = await client.request("GET", path, [("host", "api")], timeout=5)
    finally:
        await client.close()
    return reply.status, reply.header(b"x-pymesh-error")


async def wait_for(what: str, predicate: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Poll until `predicate()`; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        if loop.time() - start > timeout:
            pytest.fail(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.05)
    return loop.time() - start


async def steady_load(
    web: Sidecar, stop: asyncio.Event, results: list[tuple[float, int, str]]
) -> None:
    """GET api /health through web's outbound listener every 50 ms on one keep-alive
    connection until `stop`; (time, status, error) per request, status 0 for no reply."""
    client: Client | None = None
    try:
        while not stop.is_set():
            t = time.monotonic()
            try:
                if client is None:
                    client = await Client.connect(web.outbound_address)
                reply = await client.request("GET", "/health", [("host", "api")], timeout=5)
                err = reply.header(b"x-pymesh-error")
                results.append((t, reply.status, err.decode() if err else "-"))
            except (OSError, TimeoutError, AssertionError) as exc:
                results.append((t, 0, type(exc).__name__))
                if client is not None:
                    await client.close()
                client = None
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
    finally:
        if client is not None:
            await client.close()


async def test_killing_a_replica_moves_its_sidecars_without_failed_requests(
    replicas: tuple[Replica, Replica, StateDir],
) -> None:
    r1, r2, state = replicas
    async with running(r1, r2), Backend() as app:
        await r1.start()
        # Both sidecars know both replicas, but only r1 runs while they join: they are on r1.
        async with (
            controlled_sidecar(
                [r1.url, r2.url],
                state.issue_token("api", 600),
                "api",
                **listeners(app=app.address),
            ) as api,
            controlled_sidecar(
                [r1.url, r2.url], state.issue_token("web", 600), "web", **listeners()
            ) as web,
        ):
            await wait_for("web -> api", lambda: _is(get_api(web, "/"), (200, None)), 15)
            await r2.start()
            assert await r2.subscribers() == 0
            assert await r1.subscribers() >= 2  # one each (2 while the join's stream leaks)

            # A change through r2 reaches the sidecars on r1 (through etcd).
            r2.write_config(allow_web("/health"))
            took = await wait_for(
                "edit via r2 in force", lambda: _is(get_api(web, "/x"), (403, b"authz_denied")), 10
            )
            print(f"\nedit through r2 in force at api's sidecar on r1 after {took:.2f}s")

            stop = asyncio.Event()
            results: list[tuple[float, int, str]] = []
            async with asyncio.TaskGroup() as tg:
                tg.create_task(steady_load(web, stop, results))
                try:
                    await asyncio.sleep(0.5)
                    r1.kill()  # the replica both sidecars are connected to
                    killed = time.monotonic()
                    moved = await wait_for(
                        "both sidecars follow r2",
                        lambda: _subscribers_are(r2, 2),
                        10,
                    )
                    print(f"both sidecars follow r2 {moved:.2f}s after r1 was killed")
                    # ... and r2 serves them: an edit through it is in force.
                    r2.write_config(allow_web("/health", "/public"))
                    await wait_for(
                        "edit via r2 after the failover",
                        lambda: _is(get_api(web, "/public"), (200, None)),
                        10,
                    )
                    # Past the expiry of every lease the dead replica was keeping alive.
                    left = killed + LEASE_TTL_S + 1.5 - time.monotonic()
                    await asyncio.sleep(max(0.0, left))
                finally:
                    stop.set()

            failed = [r for r in results if r[1] != 200]
            after_kill = [r for r in results if r[0] >= killed]
            print(
                f"steady load: {len(results)} requests, {len(after_kill)} after the kill, "
                f"{len(failed)} failed"
            )
            assert not failed, failed[:10]
            assert len(after_kill) >= 100, len(after_kill)  # ~20 req/s for ~11.5 s
            host, port = api.inbound_address
            assert f"{host}:{port}" in json.dumps(web.clusters_dump())
            assert web.control_plane.version == (await r2.config_dump())["version"]


async def test_a_change_through_one_replica_reaches_sidecars_on_the_other(
    replicas: tuple[Replica, Replica, StateDir],
) -> None:
    r1, r2, state = replicas
    async with running(r1, r2), Backend() as app:
        await r1.start()
        await r2.start()
        # Each sidecar knows only one replica: web r1, api r2.
        async with (
            controlled_sidecar(
                [r2.url], state.issue_token("api", 600), "api", **listeners(app=app.address)
            ) as api,
            controlled_sidecar(
                [r1.url], state.issue_token("web", 600), "web", **listeners()
            ) as web,
        ):
            # api's endpoint, registered through r2, is in the view r1 gives web.
            await wait_for("web -> api", lambda: _is(get_api(web, "/x"), (200, None)), 15)
            assert await r1.subscribers() >= 1
            assert await r2.subscribers() >= 1
            before = api.control_plane.version
            r1.write_config(allow_web("/health"))  # the policy of api, edited through r1
            took = await wait_for(
                "edit via r1 at api", lambda: _is(get_api(web, "/x"), (403, b"authz_denied")), 10
            )
            print(f"\nedit through r1 in force at api's sidecar on r2 after {took:.2f}s")
            assert await get_api(web, "/health") == (200, None)
            assert api.control_plane.version > before

            async def api_on_r2_version() -> bool:
                return bool(api.control_plane.version == (await r2.config_dump())["version"])

            await wait_for("api on r2's version", api_on_r2_version, 5)


async def _is(
    reply: Awaitable[tuple[int, bytes | None]], expected: tuple[int, bytes | None]
) -> bool:
    return await reply == expected


async def _subscribers_are(replica: Replica, n: int) -> bool:
    return await replica.subscribers() == n


async def test_a_sidecar_counts_once_among_subscribers(
    replicas: tuple[Replica, Replica, StateDir],
) -> None:
    """The join's first config stream is closed once the first config arrived: a replica's
    `subscribers` (how an operator sees who follows which replica) counts each sidecar once."""
    r1, _, state = replicas
    async with running(r1):
        await r1.start()
        async with controlled_sidecar(
            [r1.url], state.issue_token("web", 600), "web", **listeners()
        ):
            await asyncio.sleep(0.5)  # any stream left behind has long been noticed by now
            assert await r1.subscribers() == 1
