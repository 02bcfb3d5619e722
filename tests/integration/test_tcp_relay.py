"""The L4 relay: half-close both ways, resets, backpressure, and connection churn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.helpers import SidecarProcess, mesh_for, one_service_yaml, sidecar


@contextlib.asynccontextmanager
async def tcp_server(mode: str) -> AsyncIterator[tuple[str, int]]:
    """`echo-after-eof`: read to EOF, answer, close. `server-first`: greet, half-close, then
    read what the client sends and report it on stdout of the test via a future."""
    received: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            if mode == "echo-after-eof":
                data = await r.read()  # until EOF
                w.write(b"got:" + data)
                await w.drain()
            else:
                w.write(b"hello from server")
                await w.drain()
                w.write_eof()  # the server half-closes first
                data = await r.read()
                received.append(data)
        except ConnectionError:
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[:2]
    finally:
        srv.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await srv.wait_closed()


async def test_client_half_closes_first() -> None:
    async with tcp_server("echo-after-eof") as app:
        mesh = mesh_for({"db": ([(5432, "tcp")], [])})
        async with sidecar(mesh, "db", app=app) as sc:
            r, w = await asyncio.open_connection(*sc.inbound_address)
            w.write(b"ping" * 1000)
            w.write_eof()
            async with asyncio.timeout(5):
                data = await r.read()
            w.close()
    assert data == b"got:" + b"ping" * 1000


async def test_server_half_closes_first_and_still_receives() -> None:
    received: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello from server")
        await w.drain()
        w.write_eof()
        received.append(await r.read())
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    app = srv.sockets[0].getsockname()[:2]
    mesh = mesh_for({"smtp": ([(25, "tcp")], [])})
    async with sidecar(mesh, "smtp", app=app) as sc:
        r, w = await asyncio.open_connection(*sc.inbound_address)
        async with asyncio.timeout(5):
            greeting = await r.read()  # until the relayed FIN
            w.write(b"client data after server FIN")
            await w.drain()
            w.write_eof()
            while not received:  # noqa: ASYNC110 - bounded by the timeout above
                await asyncio.sleep(0.01)
        w.close()
    srv.close()
    assert greeting == b"hello from server"
    assert received == [b"client data after server FIN"]


async def test_upstream_down_closes_downstream() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead = srv.sockets[0].getsockname()[:2]
    srv.close()
    await srv.wait_closed()
    mesh = mesh_for({"db": ([(5432, "tcp")], [])})
    async with sidecar(mesh, "db", app=dead) as sc:
        r, w = await asyncio.open_connection(*sc.inbound_address)
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionError):
                assert await r.read() == b""
        w.close()
        text = sc.registry.render().decode()
    assert 'response_flags="upstream_connect_failed"' in text


async def test_large_transfer_with_backpressure() -> None:
    """20 MiB each way through the relay, with a slow upstream reader."""
    total = 20 * 1024 * 1024
    got = 0

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal got
        while chunk := await r.read(65536):
            got += len(chunk)
            if got < 2 * 1024 * 1024:
                await asyncio.sleep(0.001)
        w.write(b"x" * total)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    app = srv.sockets[0].getsockname()[:2]
    mesh = mesh_for({"blob": ([(9000, "tcp")], [])})
    async with sidecar(mesh, "blob", app=app) as sc:
        r, w = await asyncio.open_connection(*sc.inbound_address)
        block = b"y" * 65536
        async with asyncio.timeout(30):
            for _ in range(total // len(block)):
                w.write(block)
                await w.drain()
            w.write_eof()
            n = 0
            while chunk := await r.read(1 << 20):
                n += len(chunk)
        w.close()
    srv.close()
    assert got == total
    assert n == total


# -- churn: a sidecar process per loop, 30 s of connects/half-closes/resets ----------------

CHURN_SECONDS = float(os.environ.get("PYMESH_CHURN_SECONDS", "30"))


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _churn_client(addr: tuple[str, int], deadline: float, stats: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    i = 0
    while loop.time() < deadline:
        i += 1
        try:
            async with asyncio.timeout(5):
                r, w = await asyncio.open_connection(*addr)
                mode = i % 4
                if mode == 3:
                    # abrupt reset from the client side (SO_LINGER 0)
                    sock = w.get_extra_info("socket")
                    w.write(b"boom")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    w.transport.abort()
                    stats["resets"] += 1
                    continue
                payload = b"x" * (16 if mode else 40000)
                w.write(payload)
                w.write_eof()
                data = await r.read()
                w.close()
                if data == b"got:" + payload:
                    stats["ok"] += 1
                else:
                    stats["bad"] += 1
        except (ConnectionError, TimeoutError, OSError):
            stats["errors"] += 1


@pytest.mark.slow
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_churn_on_both_loops_no_crash_no_fd_growth(tmp_path: Path) -> None:
    async with tcp_server("echo-after-eof") as app:
        config = one_service_yaml("echo", 7000, "tcp", app[1])
        procs = {
            loop_name: SidecarProcess(
                tmp_path,
                config,
                "echo",
                app,
                "--loop",
                loop_name,
                "--no-access-log",
                "--log-level",
                "warning",
                name=loop_name,
            )
            for loop_name in ("uvloop", "asyncio")
        }
        try:
            for proc in procs.values():
                await proc.ready()
            fds_before = {name: _fd_count(p.pid) for name, p in procs.items()}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CHURN_SECONDS
            stats = {name: {"ok": 0, "bad": 0, "errors": 0, "resets": 0} for name in procs}
            async with asyncio.TaskGroup() as tg:
                for name, p in procs.items():
                    for _ in range(8):
                        tg.create_task(
                            _churn_client(("127.0.0.1", p.inbound), deadline, stats[name])
                        )
            await asyncio.sleep(1.0)  # let closes settle
            fds_after = {name: _fd_count(p.pid) for name, p in procs.items()}
            for name, p in procs.items():
                assert p.p.poll() is None, (name, p.log.read_text())
        finally:
            codes = {name: await asyncio.to_thread(p.stop) for name, p in procs.items()}
        for name, p in procs.items():
            assert codes[name] == 0, (name, codes[name], p.log.read_text())
    print("churn:", stats)  # the closing note quotes these figures
    for name, s in stats.items():
        assert s["ok"] > 500, (name, s)
        assert s["bad"] == 0, (name, s)
        assert s["errors"] <= s["ok"] // 100, (name, s)
        assert fds_after[name] <= fds_before[name] + 2, (name, fds_before, fds_after)
