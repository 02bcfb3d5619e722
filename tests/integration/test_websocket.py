"""WebSocket through the mesh: Upgrade, 101, then a counted and logged byte relay.

Client and server are the `websockets` package (not pymesh code).
"""

from __future__ import annotations

import asyncio
import os
import socket

from tests.helpers import mesh_for, sidecar
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(b"echo:" + (message if isinstance(message, bytes) else message.encode()))


async def test_websocket_echo_through_outbound_and_inbound_sidecars() -> None:
    async with serve(_echo, "127.0.0.1", 0) as server:
        app = server.sockets[0].getsockname()[:2]
        mesh0 = mesh_for({"chat": ([(8080, "http")], [])})
        async with sidecar(mesh0, "chat", app=app) as inbound_sc:
            mesh = mesh_for({"chat": ([(8080, "http")], [inbound_sc.inbound_address])})
            async with sidecar(mesh, "chat") as outbound_sc:
                sock = socket.create_connection(outbound_sc.outbound_address)
                async with asyncio.timeout(10):
                    # the URI's authority is the mesh name; the socket goes to the sidecar
                    async with connect("ws://chat:8080/room", sock=sock) as ws:
                        replies = []
                        for i in range(50):
                            await ws.send(f"hello {i}")
                            replies.append(await ws.recv())
                        big = os.urandom(512 * 1024)  # incompressible (permessage-deflate)
                        await ws.send(big)
                        echoed = await ws.recv()
                await asyncio.sleep(0.1)  # let both relays see the close
                outbound_metrics = outbound_sc.registry.render().decode()
            inbound_metrics = inbound_sc.registry.render().decode()
    assert replies == [f"echo:hello {i}".encode() for i in range(50)]
    assert echoed == b"echo:" + big
    for text in (outbound_metrics, inbound_metrics):
        assert 'response_code="101"' in text  # the upgrade request is counted as a request
        assert "istio_tcp_connections_closed_total{" in text  # and the relay as a connection
        sent = [
            line for line in text.splitlines() if line.startswith("istio_tcp_sent_bytes_total{")
        ]
        assert sent and float(sent[0].rsplit(" ", 1)[1]) > len(big)


async def test_declined_upgrade_stays_http() -> None:
    """An upstream that answers a WebSocket upgrade with 403 keeps the connection HTTP."""
    from tests.helpers import Backend, BackendRequest, Client

    async def no(req: BackendRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 403, [], b"no websockets here"

    async with Backend(handler=no) as app:
        mesh = mesh_for({"chat": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "chat", app=app.address) as sc:
            c = await Client.connect(sc.outbound_address)
            r = await c.request(
                "GET",
                "/ws",
                headers=[
                    ("host", "chat"),
                    ("connection", "Upgrade"),
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
            )
            assert r.status == 403
            r2 = await c.request("GET", "/after", headers=[("host", "chat")])
            await c.close()
    assert r2.status == 403  # the same handler, but parsed as a fresh HTTP request
    assert app.requests[0].header(b"upgrade") == b"websocket"
    assert app.requests[1].target == b"/after"
