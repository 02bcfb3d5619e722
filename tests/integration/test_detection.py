"""Protocol detection on a port with no declared protocol (inbound listener)."""

from __future__ import annotations

import asyncio
import ssl

from tests.helpers import Backend, Client, mesh_for, sidecar


async def test_http_on_an_undeclared_port_goes_through_the_http_path() -> None:
    async with Backend() as app:
        mesh = mesh_for({"svc": ([(8080, None)], [])})
        async with sidecar(mesh, "svc", app=app.address) as sc:
            c = await Client.connect(sc.inbound_address)
            r = await c.request("GET", "/detected", headers=[("host", "svc")])
            await c.close()
    assert r.status == 200
    assert app.requests[0].header(b"x-request-id")  # only the HTTP path adds it


async def test_server_first_protocol_falls_back_to_tcp_after_the_timeout() -> None:
    """An SMTP-like server speaks first; the client waits. Detection must not hang."""

    async def smtp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 mail.example ESMTP ready\r\n")
        await w.drain()
        line = await r.readline()
        w.write(b"250 hello " + line)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(smtp, "127.0.0.1", 0)
    app = srv.sockets[0].getsockname()[:2]
    mesh = mesh_for({"mail": ([(25, None)], [])})
    async with sidecar(mesh, "mail", app=app) as sc:
        r, w = await asyncio.open_connection(*sc.inbound_address)
        async with asyncio.timeout(5):
            greeting = await r.readline()
            w.write(b"EHLO client\r\n")
            await w.drain()
            reply = await r.readline()
        w.close()
    srv.close()
    assert greeting == b"220 mail.example ESMTP ready\r\n"
    assert reply == b"250 hello EHLO client\r\n"


async def test_tls_on_an_undeclared_port_is_relayed_intact() -> None:
    """A TLS ClientHello is not HTTP/1: it is relayed at L4, so a TLS app still handshakes
    (here the app refuses it with an alert, which must reach the client unchanged)."""
    got: list[bytes] = []

    async def tls_app(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.read(5))  # the TLS record header of the ClientHello
        w.write(b"\x15\x03\x03\x00\x02\x02\x28")  # alert: handshake_failure
        await w.drain()
        w.close()

    srv = await asyncio.start_server(tls_app, "127.0.0.1", 0)
    app = srv.sockets[0].getsockname()[:2]
    mesh = mesh_for({"secure": ([(443, None)], [])})
    async with sidecar(mesh, "secure", app=app) as sc:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        async with asyncio.timeout(5):
            try:
                await asyncio.open_connection(
                    *sc.inbound_address, ssl=ctx, server_hostname="secure.default"
                )
                handshake = "ok"
            except ssl.SSLError as exc:
                handshake = exc.reason or str(exc)
            except ConnectionError as exc:
                handshake = repr(exc)
    srv.close()
    assert got and got[0][:1] == b"\x16"  # the ClientHello reached the app
    assert "HANDSHAKE_FAILURE" in handshake.upper() or "ALERT" in handshake.upper(), handshake
