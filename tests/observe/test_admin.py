"""pymesh.observe.admin over real loopback sockets: routing, keep-alive, limits, timeouts,
failing handlers, concurrency, shutdown, and curl / http.client as independent clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from pymesh.observe.admin import (
    DEFAULT_ADMIN_HOST,
    DEFAULT_ADMIN_PORT,
    AdminRequest,
    AdminResponse,
    AdminServer,
    Handler,
    json_response,
    start_admin_server,
    text_response,
)
from pymesh.observe.metrics import CONTENT_TYPE, MetricsRegistry, mesh_metrics

HOST = "127.0.0.1"
STEP = 5.0  # upper bound on any single wait in these tests


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def read_reply(reader: asyncio.StreamReader, *, head_only: bool = False) -> Reply:
    """Read one response (our server always sends Content-Length)."""
    async with asyncio.timeout(STEP):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        status = int(status_line.split(" ")[1])
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        body = await reader.readexactly(length)
    return Reply(status, headers, body)


async def read_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (bounded in time)."""
    async with asyncio.timeout(STEP):
        return await reader.read()


class Client:
    """One raw connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        hdrs = {"host": "admin", **(headers or {})}
        if body or method in ("POST", "PUT"):
            hdrs.setdefault("content-length", str(len(body)))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        return await read_reply(self.reader, head_only=method == "HEAD")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def ready(_: AdminRequest) -> AdminResponse:
    return text_response("ok\n")


async def echo(req: AdminRequest) -> AdminResponse:
    return json_response(
        {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "body": req.body.decode(),
            "x-test": req.headers.get("x-test"),
        }
    )


async def boom(_: AdminRequest) -> AdminResponse:
    raise RuntimeError("handler exploded")


async def slow(req: AdminRequest) -> AdminResponse:
    await asyncio.sleep(float(req.query.get("s", "0.2")))
    return json_response({"slept": True})


async def wrong_type(_: AdminRequest) -> AdminResponse:
    return {"not": "a response"}  # type: ignore[return-value]


ROUTES: dict[tuple[str, str], Handler] = {
    ("GET", "/ready"): ready,
    ("GET", "/echo"): echo,
    ("POST", "/echo"): echo,
    ("GET", "/boom"): boom,
    ("GET", "/slow"): slow,
    ("GET", "/wrong"): wrong_type,
    ("POST", "/drain"): ready,
}


@pytest.fixture
async def server() -> AsyncIterator[AdminServer]:
    srv = await start_admin_server(
        HOST, 0, ROUTES, read_timeout=0.5, handler_timeout=0.5, max_head=4096, max_body=8192
    )
    try:
        yield srv
    finally:
        await srv.close(grace=1.0)


async def test_port_zero_and_basic_routes(server: AdminServer) -> None:
    assert server.port > 0 and server.host == HOST
    assert (DEFAULT_ADMIN_HOST, DEFAULT_ADMIN_PORT) == ("127.0.0.1", 15000)
    c = await Client.connect(server.port)
    r = await c.request("GET", "/ready")
    assert (r.status, r.body) == (200, b"ok\n")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == "3"
    r = await c.request("GET", "/echo?a=1&b=two&a=3&empty=", headers={"X-Test": "yes"})
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "method": "GET",
        "path": "/echo",
        "query": {"a": "3", "b": "two", "empty": ""},
        "body": "",
        "x-test": "yes",
    }
    r = await c.request("POST", "/echo", body=b'{"x": 1}')
    assert r.json() == {
        "method": "POST",
        "path": "/echo",
        "query": {},
        "body": '{"x": 1}',
        "x-test": None,
    }
    await c.close()


async def test_keep_alive_many_requests_one_connection(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    for i in range(20):
        r = await c.request("GET", f"/echo?i={i}")
        assert r.status == 200 and r.json()["query"] == {"i": str(i)}  # type: ignore[index]
        assert "connection" not in r.headers
    assert server.connections == 1
    await c.close()


async def test_pipelined_requests(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    c.writer.write(
        b"GET /echo?n=1 HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /echo?n=2 HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
    )
    first, second, third = [await read_reply(c.reader) for _ in range(3)]
    assert first.json()["query"] == {"n": "1"}  # type: ignore[index]
    assert second.json()["query"] == {"n": "2"}  # type: ignore[index]
    assert third.status == 200 and third.headers["connection"] == "close"
    assert await read_eof(c.reader) == b""
    await c.close()


async def test_head_uses_get_handler_without_body(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    r = await c.request("HEAD", "/ready")
    assert (r.status, r.headers["content-length"], r.body) == (200, "3", b"")
    r = await c.request("GET", "/ready")  # the connection is still in sync
    assert r.body == b"ok\n"
    await c.close()


async def test_404_lists_endpoints_and_405_sets_allow(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    r = await c.request("GET", "/nope")
    assert r.status == 404
    assert r.json() == {
        "error": "not_found",
        "path": "/nope",
        "endpoints": sorted(f"{m} {p}" for m, p in ROUTES),
    }
    r = await c.request("GET", "/drain")
    assert r.status == 405
    assert r.headers["allow"] == "POST"
    assert r.json() == {"error": "method_not_allowed", "path": "/drain", "allow": ["POST"]}
    r = await c.request("DELETE", "/echo")
    assert (r.status, r.headers["allow"]) == (405, "GET, HEAD, POST")
    r = await c.request("GET", "/ready")  # errors do not end the connection
    assert r.status == 200
    await c.close()


async def test_failing_handler_gives_500_and_a_log_line(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    with capture_logs() as logs:
        r = await c.request("GET", "/boom")
        r2 = await c.request("GET", "/wrong")
    assert r.status == 500
    assert r.json() == {"error": "internal_error", "message": "the endpoint failed; see the log"}
    assert r2.status == 500
    failed = [e for e in logs if e["event"] == "admin_handler_failed"]
    assert [e["path"] for e in failed] == ["/boom", "/wrong"]
    assert all(e["log_level"] == "error" and e.get("exc_info") for e in failed)
    assert (await c.request("GET", "/ready")).status == 200  # the server survived
    await c.close()


async def test_handler_timeout_gives_503(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    started = time.monotonic()
    with capture_logs() as logs:
        r = await c.request("GET", "/slow?s=3")
    assert r.status == 503 and r.json()["error"] == "handler_timeout"  # type: ignore[index]
    assert time.monotonic() - started < 2.5
    assert any(e["event"] == "admin_handler_timeout" for e in logs)
    await c.close()


async def test_oversized_head_gets_431(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    c.writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 10_000 + b"\r\n\r\n")
    r = await read_reply(c.reader)
    assert r.status == 431 and r.headers["connection"] == "close"
    assert r.json()["error"] == "headers_too_large"  # type: ignore[index]
    assert await read_eof(c.reader) == b""
    await c.close()


async def test_oversized_body_gets_413_without_reading_it(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    # Announced length over the limit: refused on the head alone, body never sent.
    c.writer.write(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n")
    r = await read_reply(c.reader)
    assert r.status == 413 and r.json()["error"] == "body_too_large"  # type: ignore[index]
    await c.close()


async def test_oversized_chunked_body_gets_413(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    chunk = b"a" * 4000
    c.writer.write(b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(3):
        c.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    r = await read_reply(c.reader)
    assert r.status == 413
    await c.close()


async def test_chunked_body_within_limit(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    c.writer.write(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    r = await read_reply(c.reader)
    assert r.json()["body"] == "abcde"  # type: ignore[index]
    await c.close()


async def test_expect_100_continue(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    c.writer.write(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
    )
    interim = await read_reply(c.reader, head_only=True)
    assert interim.status == 100
    c.writer.write(b"hello")
    r = await read_reply(c.reader)
    assert r.json()["body"] == "hello"  # type: ignore[index]
    await c.close()


async def test_malformed_request_gets_400(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    c.writer.write(b"GET /ready HTTP/1.1\r\nbad header line\r\n\r\n")
    r = await read_reply(c.reader)
    assert r.status == 400 and r.headers["connection"] == "close"
    assert r.json()["error"] == "bad_request"  # type: ignore[index]
    assert await read_eof(c.reader) == b""
    await c.close()


async def test_slow_client_gets_408_and_is_closed(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    started = time.monotonic()
    c.writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\n")  # never finishes the head
    r = await read_reply(c.reader)
    assert r.status == 408 and r.json()["error"] == "request_timeout"  # type: ignore[index]
    assert await read_eof(c.reader) == b""
    assert 0.4 <= time.monotonic() - started < 3.0  # read_timeout=0.5 (+ bounded linger)
    await c.close()


async def test_slowloris_trickle_is_bounded_by_the_whole_request_timeout(
    server: AdminServer,
) -> None:
    c = await Client.connect(server.port)
    data = b"GET /ready HTTP/1.1\r\nhost: a\r\n" + b"x-pad: y\r\n" * 50
    done = asyncio.Event()

    async def trickle() -> None:  # one byte every 20 ms: each read is quick, the request is not
        for i in range(len(data)):
            if done.is_set():
                return
            try:
                c.writer.write(data[i : i + 1])
                await c.writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(0.02)

    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(trickle())
        try:
            r = await read_reply(c.reader)
        finally:
            done.set()
    assert r.status == 408
    assert time.monotonic() - started < 2.0  # read_timeout=0.5; the trickle would take 10 s
    await c.close()


async def test_idle_keep_alive_connection_is_closed_silently(server: AdminServer) -> None:
    c = await Client.connect(server.port)
    assert (await c.request("GET", "/ready")).status == 200
    started = time.monotonic()
    assert await read_eof(c.reader) == b""  # no 408 for a connection with no request
    assert 0.4 <= time.monotonic() - started < 2.0
    await c.close()


async def test_client_that_does_not_read_is_dropped() -> None:
    big = b"x" * (8 * 1024 * 1024)

    async def huge(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, big, "application/octet-stream")

    srv = await start_admin_server(HOST, 0, {("GET", "/huge"): huge}, write_timeout=0.3)
    async with srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, srv.port))
        _reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        writer.write(b"GET /huge HTTP/1.1\r\nhost: a\r\n\r\n")  # then never read
        started = time.monotonic()
        for _ in range(100):  # at most 5 s
            if srv.connections == 0:
                break
            await asyncio.sleep(0.05)
        assert srv.connections == 0
        assert time.monotonic() - started < 3.0  # write_timeout 0.3 s + 1 s to flush, then abort
        writer.close()


async def test_concurrent_requests() -> None:
    srv = await start_admin_server(HOST, 0, ROUTES, max_connections=64)
    try:

        async def one(i: int) -> Reply:
            c = await Client.connect(srv.port)
            try:
                return await c.request("GET", f"/slow?s=0.3&i={i}")
            finally:
                await c.close()

        started = time.monotonic()
        replies = await asyncio.gather(*(one(i) for i in range(30)))
        elapsed = time.monotonic() - started
        assert [r.status for r in replies] == [200] * 30
        assert elapsed < 2.0  # served concurrently: 30 x 0.3 s sequentially would be 9 s
    finally:
        await srv.close()


async def test_connection_limit() -> None:
    srv = await start_admin_server(HOST, 0, ROUTES, max_connections=2, read_timeout=5.0)
    try:
        a, b = await Client.connect(srv.port), await Client.connect(srv.port)
        assert (await a.request("GET", "/ready")).status == 200
        assert (await b.request("GET", "/ready")).status == 200
        extra = await Client.connect(srv.port)
        r = await read_reply(extra.reader)
        assert r.status == 503 and r.headers["connection"] == "close"
        await a.close()
        for _ in range(100):  # the freed slot is reusable
            if srv.connections < 2:
                break
            await asyncio.sleep(0.01)
        again = await Client.connect(srv.port)
        assert (await again.request("GET", "/ready")).status == 200
        for c in (b, extra, again):
            await c.close()
    finally:
        await srv.close()


async def test_close_finishes_requests_in_flight_and_drops_idle() -> None:
    srv = await start_admin_server(HOST, 0, ROUTES, read_timeout=5.0)
    idle = await Client.connect(srv.port)
    assert (await idle.request("GET", "/ready")).status == 200
    busy = await Client.connect(srv.port)
    pending = asyncio.gather(busy.request("GET", "/slow?s=0.3"))
    await asyncio.sleep(0.1)  # the slow request is in its handler
    await asyncio.wait_for(srv.close(grace=2.0), STEP)
    [r] = await pending
    assert r.status == 200 and r.headers["connection"] == "close"
    assert await read_eof(idle.reader) == b""
    assert srv.connections == 0
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, srv.port)
    await srv.close()  # idempotent
    await idle.close()
    await busy.close()


async def test_shutdown_handler_may_close_its_own_server() -> None:
    holder: list[AdminServer] = []

    async def shutdown(_: AdminRequest) -> AdminResponse:
        await holder[0].close(grace=1.0)
        return json_response({"shutting_down": True})

    srv = await start_admin_server(HOST, 0, {("POST", "/shutdown"): shutdown})
    holder.append(srv)
    async with srv:
        c = await Client.connect(srv.port)
        r = await c.request("POST", "/shutdown")
        assert r.status == 200 and r.json() == {"shutting_down": True}
        assert r.headers["connection"] == "close"
        assert await read_eof(c.reader) == b""
        await c.close()


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = await start_admin_server("::1", 0, ROUTES)
    except OSError:
        pytest.skip("::1 not configured")
    async with srv:
        reader, writer = await asyncio.open_connection("::1", srv.port)
        writer.write(b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        assert (await read_reply(reader)).status == 200
        writer.close()


async def test_non_loopback_bind_is_logged() -> None:
    with capture_logs() as logs:
        srv = await start_admin_server("0.0.0.0", 0, ROUTES)  # deliberately
    await srv.close()
    assert [e["event"] for e in logs] == ["admin_not_loopback"]


async def test_http_client_in_a_thread_keep_alive(server: AdminServer) -> None:
    def run() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=STEP)
        out = []
        try:
            for path in ("/ready", "/echo?x=1", "/ready"):
                conn.request("GET", path)
                resp = conn.getresponse()
                out.append((resp.status, resp.read()))
            conn.request("POST", "/echo", body=b"payload")
            resp = conn.getresponse()
            out.append((resp.status, resp.read()))
        finally:
            conn.close()
        return out

    results = await asyncio.to_thread(run)
    assert [s for s, _ in results] == [200, 200, 200, 200]
    assert json.loads(results[3][1])["body"] == "payload"
    assert server.connections <= 1


async def test_metrics_endpoint_with_curl() -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    registry = MetricsRegistry()
    m = mesh_metrics(registry)
    m.config_version_info.set(("7",), 1)
    m.http_protocol_errors.inc(("inbound", "bad_request"), 3)

    async def metrics(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, registry.render(), CONTENT_TYPE)

    srv = await start_admin_server(
        HOST, 0, {("GET", "/metrics"): metrics, ("GET", "/ready"): ready}
    )
    async with srv:
        url = f"http://{HOST}:{srv.port}"
        proc = await asyncio.create_subprocess_exec(
            curl,
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            str(STEP),
            "-w",
            "\\n@@%{http_code}|%{content_type}|%{num_connects}@@\\n",
            f"{url}/metrics",
            f"{url}/ready",
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), STEP * 2)
        assert proc.returncode == 0
        metrics_text, status1, ready_text, status2, rest = re.split(
            r"\n@@(.*?)@@\n", stdout.decode()
        )
        assert status1 == f"200|{CONTENT_TYPE}|1"
        assert (ready_text, status2, rest) == ("ok\n", "200|text/plain; charset=utf-8|0", "")
        families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
        [version] = families["pymesh_config_version_info"].samples
        assert version.labels == {"version": "7"} and version.value == 1
        [errors] = families["pymesh_http_protocol_errors"].samples
        assert errors.value == 3
