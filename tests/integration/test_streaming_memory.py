"""Bodies stream: 1 GiB each way without the sidecar's memory growing; slow readers pause
the writer instead of growing a buffer. The sidecar runs as its own process so its RSS is
its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from tests.helpers import SidecarProcess, one_service_yaml

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class BulkBackend(asyncio.Protocol):
    """Upload: counts the body and answers with the count. Download: GET /dl/N sends N bytes.
    `rate` limits how fast it reads (bytes/s), for the slow-reader test."""

    rate: float | None = None
    open: set[asyncio.Transport]

    def __init__(self) -> None:
        self.buf = b""
        self.remaining = -1
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self._resume: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open.add(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.remaining < 0:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.buf[:end].decode(), self.buf[end + 4 :]
            self.buf = b""
            target = head.split(" ")[1]
            if target.startswith("/dl/"):
                self.remaining = -1
                self._download(int(target[4:]))
                return
            length = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
            self.remaining = length
        self.count += len(data)
        self.remaining -= len(data)
        if self.rate is not None:
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            self._resume = loop.call_later(len(data) / self.rate, self.transport.resume_reading)
        if self.remaining == 0:
            body = str(self.count).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.remaining = -1
            self.count = 0

    def _download(self, n: int) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
        self.left = n
        self.transport.set_write_buffer_limits(high=4 * MIB)
        self.resume_writing()

    def resume_writing(self) -> None:
        t = self.transport
        block = bytes(MIB)
        while (
            t is not None and getattr(self, "left", 0) > 0 and t.get_write_buffer_size() < 4 * MIB
        ):
            n = min(self.left, MIB)
            t.write(block[:n])
            self.left -= n

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.open.discard(self.transport)
        if self._resume is not None:
            self._resume.cancel()


@contextlib.asynccontextmanager
async def bulk_backend(rate: float | None = None) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()

    class Backend(BulkBackend):
        pass

    Backend.rate = rate
    Backend.open = set()
    srv = await loop.create_server(Backend, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        for t in list(Backend.open):
            t.abort()
        await asyncio.sleep(0)


@contextlib.contextmanager
def sidecar_process(tmp_path: Path, app_port: int) -> Iterator[tuple[int, int]]:
    config = one_service_yaml("bulk", 8080, "http", app_port)
    with SidecarProcess(
        tmp_path,
        config,
        "bulk",
        ("127.0.0.1", app_port),
        "--no-access-log",
        "--drain-timeout",
        "2",
        "--log-level",
        "warning",
    ) as proc:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", proc.inbound), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield proc.pid, proc.inbound


async def _upload(port: int, size: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"POST /up HTTP/1.1\r\nHost: bulk\r\nContent-Length: %d\r\n\r\n" % size)
    block = bytes(MIB)
    left = size
    while left:
        n = min(left, MIB)
        w.write(block[:n])
        left -= n
        await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await r.readexactly(length)
    w.close()
    return body


async def _download(port: int, size: int) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
    w.write(b"GET /dl/%d HTTP/1.1\r\nHost: bulk\r\n\r\n" % size)
    await r.readuntil(b"\r\n\r\n")
    got = 0
    while got < size:
        chunk = await r.read(4 * MIB)
        if not chunk:
            break
        got += len(chunk)
    w.close()
    return got


@pytest.mark.slow
@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_1gib_upload_and_download_keep_rss_flat(tmp_path: Path) -> None:
    async with bulk_backend() as app_port:
        with sidecar_process(tmp_path, app_port) as (pid, port):
            async with asyncio.timeout(120):
                assert await _upload(port, MIB) == str(MIB).encode()  # warm up
                assert await _download(port, MIB) == MIB
                base = _status(pid, "VmRSS")
                assert await _upload(port, GIB) == str(GIB).encode()
                after_up = _status(pid, "VmHWM")
                assert await _download(port, GIB) == GIB
                after_down = _status(pid, "VmHWM")
    assert after_up - base < 16 * MIB, (base, after_up)
    assert after_down - base < 16 * MIB, (base, after_down)


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_slow_backend_pauses_the_client(tmp_path: Path) -> None:
    """The backend reads at 100 KB/s: the client is paused, the sidecar does not buffer."""
    rate = 100_000
    async with bulk_backend(rate=rate) as app_port:
        with sidecar_process(tmp_path, app_port) as (pid, port):
            base = _status(pid, "VmRSS")
            _, w = await asyncio.open_connection("127.0.0.1", port)
            size = 256 * MIB
            w.write(b"POST /up HTTP/1.1\r\nHost: bulk\r\nContent-Length: %d\r\n\r\n" % size)
            sent = 0
            block = bytes(64 * 1024)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            paused = False
            while loop.time() < deadline:
                w.write(block)
                sent += len(block)
                try:
                    async with asyncio.timeout(max(0.01, deadline - loop.time())):
                        await w.drain()
                except TimeoutError:
                    paused = True
                    break
            # keep waiting a little: the client must stay stuck
            await asyncio.sleep(1.0)
            rss = _status(pid, "VmRSS")
            w.transport.abort()
    assert paused, f"the client was never paused (sent {sent} bytes)"
    assert sent < 64 * MIB, sent  # kernel socket buffers + the sidecar's high-water mark
    assert rss - base < 4 * MIB, (base, rss)
