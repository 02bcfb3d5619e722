"""User filters in the onion: request/response path, local replies, typed errors, pymesh.run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import Backend, Client, free_port, mesh_for, sidecar

from pymesh.errors import ProxyError
from pymesh.proxy.chain import HttpService
from pymesh.proxy.messages import Request, Response


class Tag:
    """Adds a request header and a response header."""

    async def __call__(self, request: Request, call_next: HttpService, /) -> Response:
        request.headers.append((b"x-tag", b"in"))
        response = await call_next(request)
        response.headers.append((b"x-tag", b"out"))
        return response


class Gate:
    """Answers /blocked locally, raises a typed error for /teapot."""

    async def __call__(self, request: Request, call_next: HttpService, /) -> Response:
        if request.path == b"/blocked":
            return Response.local(451, b"blocked by filter\n")
        if request.path == b"/teapot":
            raise ProxyError("no coffee", code="teapot", http_status=418)
        return await call_next(request)


async def test_filters_run_in_order_and_can_reply_locally() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address, filters=[Tag(), Gate()]) as sc:
            c = await Client.connect(sc.outbound_address)
            ok = await c.request("GET", "/fine", headers=[("host", "orders")])
            blocked = await c.request("GET", "/blocked", headers=[("host", "orders")])
            teapot = await c.request("GET", "/teapot", headers=[("host", "orders")])
            await c.close()
    assert ok.status == 200
    assert ok.header(b"x-tag") == b"out"
    # the endpoint is the app itself: only the outbound listener's chain ran
    assert [v for k, v in app.requests[0].headers if k == b"x-tag"] == [b"in"]
    assert blocked.status == 451
    assert blocked.body == b"blocked by filter\n"
    assert blocked.header(b"x-tag") == b"out"  # outer filter saw the local reply
    assert teapot.status == 418
    assert teapot.header(b"x-pymesh-error") == b"teapot"
    assert len(app.requests) == 1


_RUN_SCRIPT = """
import sys
import pymesh

class Stamp:
    async def __call__(self, request, call_next):
        response = await call_next(request)
        response.headers.append((b"x-stamp", b"from-pymesh-run"))
        return response

mesh = pymesh.Mesh.load(sys.argv[1])
sys.exit(pymesh.run(mesh, "orders", filters=[Stamp()], loop="asyncio",
                    inbound=("127.0.0.1", int(sys.argv[2])), outbound=None,
                    admin=None, app=("127.0.0.1", int(sys.argv[3])), access_log=False))
"""


async def test_pymesh_run_takes_user_filters(tmp_path: Path) -> None:
    async with Backend() as app:
        cfg = tmp_path / "mesh.yaml"
        cfg.write_text(
            textwrap.dedent(f"""\
            apiVersion: pymesh.io/v1alpha1
            kind: Mesh
            metadata: {{name: run}}
            spec: {{mtls: DISABLE}}
            ---
            apiVersion: pymesh.io/v1alpha1
            kind: Service
            metadata: {{name: orders}}
            spec:
              ports: [{{port: 8080, protocol: http}}]
              endpoints: [{{address: 127.0.0.1, port: {app.address[1]}}}]
            """)
        )
        script = tmp_path / "run.py"
        script.write_text(_RUN_SCRIPT)
        inbound = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(script), str(cfg), str(inbound), str(app.address[1])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(15):
                c: Client | None = None
                while c is None:
                    try:
                        c = await Client.connect(("127.0.0.1", inbound))
                    except OSError:
                        assert proc.poll() is None
                        await asyncio.sleep(0.05)
                r = await c.request("GET", "/x", headers=[("host", "orders")])
                await c.close()
            proc.terminate()
            rc = await asyncio.to_thread(proc.wait, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert r.status == 200
    assert r.header(b"x-stamp") == b"from-pymesh-run"
    assert rc == 0
