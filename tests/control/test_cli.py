"""`pymesh control-plane` as a process: the ready line, joining over the network, revoking a
token through the admin endpoint, and refusing to start on a broken config."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.control.test_control_plane import MESH
from tests.helpers import free_port

from pymesh.control.client import ControlPlaneClient, ControlPlaneRefused
from pymesh.control.state import StateDir
from pymesh.control.tokens import read_token
from pymesh.control.up import http_get


def _ready_line(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            pytest.fail(f"no ready line; stderr: {proc.stderr.read() if proc.stderr else b''!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            buf += proc.stdout.read1(4096)  # type: ignore[attr-defined]
    return buf.decode().splitlines()[0]


@pytest.fixture
def cp_process(tmp_path: Path) -> Iterator[tuple[str, tuple[str, int], StateDir]]:
    state = StateDir.init(tmp_path / "state", "cp.local")
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH)
    admin = ("127.0.0.1", free_port())
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pymesh", "control-plane",
            "--config", str(config), "--listen", "127.0.0.1:0",
            "--state-dir", str(state.path), "--admin", f"{admin[0]}:{admin[1]}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        line = _ready_line(proc)
        assert line.startswith("control-plane listen=127.0.0.1:") and line.endswith(" ready")
        url = "https://" + line.split("listen=")[1].split()[0]
        yield url, admin, state
    finally:
        proc.terminate()
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


async def test_join_then_revoke_through_the_admin_endpoint(
    cp_process: tuple[str, tuple[str, int], StateDir],
) -> None:
    url, admin, state = cp_process
    token = state.issue_token("default/web", 600)
    client = ControlPlaneClient([url], token, "web")
    try:
        mesh = await client.join(deadline=10)
    finally:
        client.close()
    assert mesh.service("web") is not None
    assert client.credentials.identity is not None
    info = read_token(token)
    status, _ = await http_get(admin, "/ready")
    assert status == 200
    import asyncio

    reader, writer = await asyncio.open_connection(*admin)
    writer.write(
        f"POST /revoke?token_id={info.token_id}&expires_at={info.expires_at} HTTP/1.1\r\n"
        "Host: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    again = ControlPlaneClient([url], token, "web")
    try:
        with pytest.raises(ControlPlaneRefused, match="revoked"):
            await again.join(deadline=5)
    finally:
        again.close()


def test_a_broken_config_at_start_is_listed_and_exits_1(tmp_path: Path) -> None:
    state = StateDir.init(tmp_path / "state", "cp.local")
    config = tmp_path / "mesh.yaml"
    config.write_text(MESH.replace("port: 8080", "port: 0").replace("serviceAccount: web", "x: 1"))
    proc = subprocess.run(
        [
            sys.executable, "-m", "pymesh", "control-plane", "--config", str(config),
            "--listen", "127.0.0.1:0", "--state-dir", str(state.path), "--admin", "",
        ],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = proc.stderr.decode().strip().splitlines()
    assert any("spec.ports[0].port" in e for e in errors), errors
    assert any("spec.x" in e for e in errors), errors
    assert all(e.startswith(str(config)) for e in errors if ":" in e[:200] and "mesh.yaml" in e)
