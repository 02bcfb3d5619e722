"""HTTP/2 (prior-knowledge h2c) clients through the sidecar to HTTP/1.1 apps."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
from tests.helpers import Backend, BackendRequest, mesh_for, sidecar


def _curl(proxy: tuple[str, int], mode: str, *urls: str) -> Awaitable[asyncio.subprocess.Process]:
    """curl -i with `mode` (--http2-prior-knowledge / --http2), `orders:8080` sent to `proxy`."""
    return asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-i",
        "--max-time",
        "5",
        mode,
        "--connect-to",
        f"orders:8080:{proxy[0]}:{proxy[1]}",
        *urls,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _h2_requests(
    address: tuple[str, int], requests: list[tuple[str, str, bytes]], authority: str
) -> dict[int, tuple[int, bytes]]:
    """Send all requests concurrently on one HTTP/2 connection; {stream: (status, body)}."""
    r, w = await asyncio.open_connection(*address)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    conn.increment_flow_control_window(1 << 24)
    pending: dict[int, bytes] = {}
    for method, path, body in requests:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)],
            end_stream=not body,
        )
        if body:
            pending[sid] = body
    results: dict[int, tuple[int, bytes]] = {}
    statuses: dict[int, int] = {}
    bodies: dict[int, bytearray] = {}
    async with asyncio.timeout(20):
        while len(results) < len(requests):
            for sid, body in list(pending.items()):
                # as much as the windows allow, as a real client does
                while body and (
                    n := min(
                        len(body),
                        conn.local_flow_control_window(sid),
                        conn.max_outbound_frame_size,
                    )
                ):
                    conn.send_data(sid, body[:n], end_stream=n == len(body))
                    body = body[n:]
                if body:
                    pending[sid] = body
                else:
                    del pending[sid]
            w.write(conn.data_to_send())
            await w.drain()
            data = await r.read(65536)
            assert data, "connection closed early"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    results[ev.stream_id] = (
                        statuses[ev.stream_id],
                        bytes(bodies.get(ev.stream_id, b"")),
                    )
    w.close()
    return results


async def test_100_concurrent_streams_on_one_connection() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            reqs = [("GET", f"/item/{i}", b"") for i in range(100)]
            results = await _h2_requests(sc.outbound_address, reqs, "orders:8080")
    assert len(results) == 100
    by_body = sorted(body for _, body in results.values())
    assert by_body == sorted(f"GET /item/{i} len=0".encode() for i in range(100))
    assert all(status == 200 for status, _ in results.values())


async def test_h2_upload_is_flow_controlled_and_complete() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            body = bytes(range(256)) * 4096  # 1 MiB, many windows' worth
            results = await _h2_requests(sc.outbound_address, [("POST", "/up", body)], "orders")
    assert list(results.values()) == [(200, b"POST /up len=1048576")]
    assert app.requests[0].body == body


async def test_h2_unknown_authority_gets_404_with_cause() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            results = await _h2_requests(sc.outbound_address, [("GET", "/", b"")], "nowhere")
    [(status, body)] = results.values()
    assert status == 404
    assert body.startswith(b"no_route")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_http2_prior_knowledge() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            host, port = sc.outbound_address
            proc = await _curl((host, port), "--http2-prior-knowledge", "http://orders:8080/h2")
            out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/2 200"), out
    assert out.endswith(b"GET /h2 len=0")


async def test_rapid_reset_client_is_cut_off_while_others_are_served() -> None:
    """CVE-2023-44487: a client opening and resetting streams in a loop gets GOAWAY
    (ENHANCE_YOUR_CALM) and is disconnected; a well-behaved client keeps being served."""
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            r, w = await asyncio.open_connection(*sc.outbound_address)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            goaway: h2.events.ConnectionTerminated | None = None
            async with asyncio.timeout(10):
                for _ in range(2000):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(
                        sid,
                        [
                            (":method", "GET"),
                            (":path", "/"),
                            (":scheme", "http"),
                            (":authority", "orders"),
                        ],
                    )
                    conn.reset_stream(sid)
                    try:
                        w.write(conn.data_to_send())
                        await w.drain()
                    except ConnectionError:
                        break
                    if r.at_eof():
                        break
                    try:
                        async with asyncio.timeout(0.001):
                            data = await r.read(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ConnectionTerminated):
                            goaway = ev
                    if goaway is not None:
                        break
                rest = await r.read()  # the server closes after its GOAWAY
                if goaway is None and rest:
                    for ev in conn.receive_data(rest):
                        if isinstance(ev, h2.events.ConnectionTerminated):
                            goaway = ev
            w.close()
            # meanwhile (and after) a polite client is served normally
            results = await _h2_requests(
                sc.outbound_address, [("GET", f"/ok/{i}", b"") for i in range(10)], "orders"
            )
    assert goaway is not None
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sorted(s for s, _ in results.values()) == [200] * 10


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_drain_sends_goaway_and_lets_the_stream_finish() -> None:
    """curl (which handles a graceful GOAWAY as RFC 9113 says; h2's own client does not)."""

    async def slow(req: BackendRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await asyncio.sleep(0.5)
        return 200, [], b"finished"

    async with Backend(handler=slow) as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            host, port = sc.outbound_address
            proc = await _curl((host, port), "--http2-prior-knowledge", "http://orders:8080/slow")
            await asyncio.sleep(0.25)
            state = sc._outbound_state
            assert state is not None
            assert state.busy == 1
            state.drain()  # what SIGTERM and POST /drain do: GOAWAY, streams finish
            out, err = await proc.communicate()
            assert not state.connections  # closed once its last stream ended
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/2 200"), out
    assert out.endswith(b"finished")


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) not installed")
async def test_h2load_through_the_outbound_listener() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            host, port = sc.outbound_address
            proc = await asyncio.create_subprocess_exec(
                "h2load",
                "-n",
                "2000",
                "-c",
                "4",
                "-m",
                "10",
                "-H",
                ":authority: orders:8080",
                f"http://{host}:{port}/load",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, (text, err)
    assert "2000 succeeded, 0 failed, 0 errored" in text, text
    assert "status codes: 2000 2xx" in text, text


async def test_idle_h2_connection_gets_goaway_and_is_closed() -> None:
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address, idle_timeout=0.3) as sc:
            r, w = await asyncio.open_connection(*sc.outbound_address)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            w.write(conn.data_to_send())
            await w.drain()
            events: list[h2.events.Event] = []
            async with asyncio.timeout(5):
                while data := await r.read(65536):
                    events += conn.receive_data(data)
            w.close()
    assert any(isinstance(ev, h2.events.ConnectionTerminated) for ev in events)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_upgrade_h2c() -> None:
    """curl --http2 on plaintext: HTTP/1.1 `Upgrade: h2c`, 101, then HTTP/2 on stream 1."""
    async with Backend() as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address) as sc:
            host, port = sc.outbound_address
            proc = await _curl(
                (host, port), "--http2", "http://orders:8080/up", "http://orders:8080/again"
            )
            out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 101"), out
    assert b"HTTP/2 200" in out, out
    assert b"GET /up len=0" in out
    assert out.endswith(b"GET /again len=0")  # the second request rode the same h2 connection
    assert app.requests[0].header(b"http2-settings") is None


async def test_idle_streams_time_out_with_the_right_status() -> None:
    """A stream with no frame either way for `stream_idle_timeout`: 504 while its answer is
    awaited, 408 while its request body is; the connection and other streams go on."""

    async def slow(req: BackendRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await asyncio.sleep(2.0 if req.target == b"/slow" else 0)
        return 200, [], b"ok"

    async with Backend(handler=slow) as app:
        mesh = mesh_for({"orders": ([(8080, "http")], [app.address])})
        async with sidecar(mesh, "orders", app=app.address, stream_idle_timeout=0.4) as sc:
            r, w = await asyncio.open_connection(*sc.outbound_address)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            head = [(":scheme", "http"), (":authority", "orders:8080")]
            conn.send_headers(1, [(":method", "GET"), (":path", "/slow"), *head], end_stream=True)
            conn.send_headers(3, [(":method", "POST"), (":path", "/upload"), *head])  # no body
            w.write(conn.data_to_send())
            await w.drain()
            statuses: dict[int, tuple[int, bytes]] = {}
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(5):
                while len(statuses) < 2:
                    data = await r.read(65536)
                    assert data
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            h = dict(ev.headers)
                            statuses[ev.stream_id] = (
                                int(h[b":status"]),
                                h.get(b"x-pymesh-error", b""),
                            )
                    w.write(conn.data_to_send())
            elapsed = asyncio.get_running_loop().time() - started
            # The connection is still usable.
            conn.send_headers(5, [(":method", "GET"), (":path", "/fast"), *head], end_stream=True)
            w.write(conn.data_to_send())
            await w.drain()
            fast = None
            async with asyncio.timeout(5):
                while fast is None:
                    for ev in conn.receive_data(await r.read(65536)):
                        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 5:
                            fast = int(dict(ev.headers)[b":status"])
            w.close()
    assert statuses == {1: (504, b"upstream_timeout"), 3: (408, b"request_timeout")}
    assert 0.4 <= elapsed < 1.9
    assert fast == 200
