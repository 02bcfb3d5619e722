"""`pymesh proxy` as a real process: SIGTERM drain, admin endpoint, /metrics parsing."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import Backend, BackendRequest, Client, SidecarProcess, one_service_yaml


def _config(inbound: int) -> str:
    return one_service_yaml("orders", 8080, "http", inbound)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status), bytes(resp.read())


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_sigterm_lets_the_response_finish_refuses_new_and_exits_0(tmp_path: Path) -> None:
    async def slow(req: BackendRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        await asyncio.sleep(1.0)
        return 200, [], b"finished"

    async with Backend(handler=slow) as app:
        proc = SidecarProcess(tmp_path, _config, "orders", app.address)
        try:
            await proc.ready()
            c = await Client.connect(("127.0.0.1", proc.inbound))
            pending = asyncio.get_running_loop().create_task(c.request("GET", "/slow"))
            await asyncio.sleep(0.3)
            proc.p.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", proc.inbound), timeout=1).close()
            reply = await pending
            await c.close()
            rc = await asyncio.to_thread(proc.p.wait, 10)
        finally:
            proc.stop()
    assert reply.status == 200
    assert reply.body == b"finished"
    assert reply.header(b"connection") == b"close"
    assert rc == 0


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_admin_endpoints_and_metrics_parse(tmp_path: Path) -> None:
    async with Backend() as app:
        proc = SidecarProcess(tmp_path, _config, "orders", app.address, "--no-access-log")
        try:
            await proc.ready()
            c = await Client.connect(("127.0.0.1", proc.outbound))
            for _ in range(5):
                assert (await c.request("GET", "/x", headers=[("host", "orders")])).status == 200
            r = await c.request("GET", "/", headers=[("host", "nope")])
            assert r.status == 404
            await c.close()
            status, _ = await asyncio.to_thread(_get, proc.admin, "/live")
            assert status == 200
            status, metrics = await asyncio.to_thread(_get, proc.admin, "/metrics")
            status, dump = await asyncio.to_thread(_get, proc.admin, "/config_dump")
            config = json.loads(dump)
            status, clusters_raw = await asyncio.to_thread(_get, proc.admin, "/clusters")
            clusters = json.loads(clusters_raw)
            status, _ = await asyncio.to_thread(_get, proc.admin, "/shutdown", "POST")
            assert status == 200
            rc = await asyncio.to_thread(proc.p.wait, 10)
        finally:
            proc.stop()
    assert rc == 0
    assert isinstance(config["version"], str) and config["version"]
    families = {f.name: f for f in text_string_to_metric_families(metrics.decode())}
    total = families["istio_requests"]
    by_code: dict[tuple[str, str, str], float] = {}
    for s in total.samples:
        if s.name == "istio_requests_total":
            key = (s.labels["reporter"], s.labels["response_code"], s.labels["response_flags"])
            by_code[key] = by_code.get(key, 0) + s.value
    # 5 requests seen by the outbound listener and again by the inbound one
    assert by_code[("source", "200", "-")] == 5
    assert by_code[("destination", "200", "-")] == 5
    assert by_code[("source", "404", "no_route")] == 1
    assert "istio_request_duration_milliseconds" in families
    names = {c["name"] for c in clusters["clusters"]}
    assert "outbound|orders.default" in names
    ep = next(c for c in clusters["clusters"] if c["name"] == "outbound|orders.default")
    assert ep["endpoints"][0]["address"] == f"127.0.0.1:{proc.inbound}"
