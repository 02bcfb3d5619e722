"""`pymesh up`: real sidecar processes for the shop example, the status-line contract,
traffic web → orders → inventory through the sidecars, and a clean stop on SIGINT/SIGTERM.

Tests that start processes are synchronous (the processes do not care which loop the test
runs on) and bounded: every read has a deadline and every process is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymesh.control.up import (
    LocalMesh,
    ServiceRuntime,
    command_argv,
    command_env,
    derive_config,
    format_address,
    read_documents,
)
from pymesh.errors import ConfigError
from pymesh.policy.model import ServicePort, ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop" / "mesh.yaml"
ADDR = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\]):\d{1,5}"
STATUS_LINE = re.compile(
    rf"(?P<service>[a-z0-9][-a-z0-9./]*) app=(?P<app>{ADDR}) inbound=(?P<inbound>{ADDR}) "
    rf"outbound=(?P<outbound>{ADDR}) admin=(?P<admin>{ADDR})"
)
START_TIMEOUT_S = 25.0
STOP_TIMEOUT_S = 10.0


# --- helpers ---------------------------------------------------------------------------------


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Up:
    """A `pymesh up` subprocess whose stdout is read line by line with deadlines."""

    def __init__(self, *args: str, cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pymesh", "up", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""

    def readline(self, deadline: float) -> str | None:
        """The next stdout line, or None at EOF; fails the test at the deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line from pymesh up in time; so far {self._buf!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def lines_until_ready(self) -> list[str]:
        """Every line before `ready`."""
        deadline = time.monotonic() + START_TIMEOUT_S
        lines: list[str] = []
        while (line := self.readline(deadline)) != "ready":
            if line is None:
                pytest.fail(f"pymesh up ended before 'ready': {lines} {self.stderr()}")
            lines.append(line)
        return lines

    def stop(self, sig: signal.Signals = signal.SIGINT) -> tuple[int, str]:
        """Send `sig`; return (exit status, stderr)."""
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"pymesh up did not exit in time: {err.decode()}")
        return self.proc.returncode, err.decode()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def kill(self) -> None:
        """Kill if still running; close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def pymesh_up(*args: str, cwd: Path = ROOT) -> Iterator[Up]:
    up = Up(*args, cwd=cwd)
    try:
        yield up
    finally:
        up.kill()


def children_of(pid: int) -> set[int]:
    """Direct children of `pid`, from /proc."""
    kids: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    """Running, or a zombie nobody has reaped yet, counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_gone(pids: set[int]) -> None:
    deadline = time.monotonic() + 5.0  # orphans are reaped by init asynchronously
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        names = {}
        for p in left:
            try:
                names[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
            except OSError:
                names[p] = b"?"
        pytest.fail(f"still running after pymesh up exited: {names}")


def processes_with_arg(arg: str) -> set[int]:
    """Processes with `arg` as one of their command-line arguments."""
    found: set[int] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if arg.encode() in args:
            found.add(int(cmdline.parent.name))
    return found


def get(addr: tuple[str, int], path: str, host: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=5.0)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_through_shop(inbound: tuple[str, int]) -> dict[str, object]:
    """One request into web's inbound listener; retried past a deliberate inventory 503."""
    for _ in range(10):
        status, headers, body = get(inbound, "/", "web:8080")
        if status == 200:
            doc: dict[str, object] = json.loads(body)
            assert headers["x-shop-path"] == "web,orders,inventory"
            return doc
        assert status == 502, (status, body)  # the injected 2% failure, passed up the chain
    pytest.fail("10 requests in a row failed")


# --- the command ------------------------------------------------------------------------


def test_up_prints_status_lines_carries_traffic_and_stops_on_sigint() -> None:
    with pymesh_up(str(SHOP)) as up:
        lines = up.lines_until_ready()
        matches = [STATUS_LINE.fullmatch(line) for line in lines]
        assert all(matches), lines
        by_name = {m["service"]: m for m in matches if m}
        assert list(by_name) == ["web", "orders", "inventory"]  # config order
        ports = [
            _addr(m[k])[1]
            for m in by_name.values()
            for k in ("app", "inbound", "outbound", "admin")
        ]
        assert len(set(ports)) == len(ports) == 12

        doc = get_through_shop(_addr(by_name["web"]["inbound"]))
        assert doc == {"service": "web", "path": ["web", "orders", "inventory"]}
        # Every hop crossed a sidecar: each inbound sidecar counted its service's requests.
        for name, m in by_name.items():
            status, _, body = get(_addr(m["admin"]), "/metrics", "admin")
            assert status == 200
            assert re.search(
                rf'istio_requests_total\{{[^}}]*reporter="destination"[^}}]*'
                rf'destination_service="{name}[."][^}}]*\}} [1-9]',
                body.decode(),
            ), f"{name}: no destination-side requests in /metrics"
        # Between sidecars every hop is mTLS with the caller's identity (pymesh up's CA).
        for name, caller in (("orders", "web"), ("inventory", "orders")):
            admin = _addr(by_name[name]["admin"])
            metrics = get(admin, "/metrics", "admin")[2].decode()
            assert re.search(
                rf'istio_requests_total\{{[^}}]*source_principal="spiffe://shop.local/ns/'
                rf'default/sa/{caller}"[^}}]*connection_security_policy="mutual_tls"',
                metrics,
            ), f"{name}: no mTLS requests from {caller}"
            status, _, body = get(admin, "/certs", "admin")
            certs = json.loads(body)
            assert status == 200
            assert certs["identity"] == f"spiffe://shop.local/ns/default/sa/{name}"

        kids = children_of(up.proc.pid)
        assert len(kids) == 6  # three sidecars, three apps
        rc, err = up.stop(signal.SIGINT)
        assert rc == 0, err
        assert_gone(kids)


def test_up_json_lines_and_sigterm() -> None:
    with pymesh_up(str(SHOP), "--json") as up:
        docs = [json.loads(line) for line in up.lines_until_ready()]
        assert [d["service"] for d in docs] == ["web", "orders", "inventory"]
        for d in docs:
            assert {"service", "namespace", "app", "inbound", "outbound", "admin", "pid"} <= set(d)
            assert d["namespace"] == "default"
            assert d["meshed"] is True
            for key in ("app", "inbound", "outbound", "admin"):
                assert re.fullmatch(ADDR, d[key]), d
            assert d["apps"] == {"8080": d["app"]}
        pids = {d["pid"] for d in docs} | {d["app_pid"] for d in docs}
        assert pids == children_of(up.proc.pid)

        web = next(d for d in docs if d["service"] == "web")
        assert get_through_shop(_addr(web["inbound"]))["path"] == ["web", "orders", "inventory"]
        rc, err = up.stop(signal.SIGTERM)
        assert rc == 0, err
        assert_gone(pids)


def test_children_die_with_a_killed_up() -> None:
    with pymesh_up(str(SHOP), "--json") as up:
        docs = [json.loads(line) for line in up.lines_until_ready()]
        kids = children_of(up.proc.pid)
        assert len(kids) == 6
        args = Path(f"/proc/{docs[0]['pid']}/cmdline").read_bytes().decode().split("\0")
        workdir = Path(args[args.index("--token-file") + 1]).parent
        up.kill()  # no chance to clean up: the children get SIGTERM from the kernel
    assert_gone(kids)
    assert workdir.name.startswith("pymesh-up-")
    shutil.rmtree(workdir)  # what up would have removed


def test_up_broken_config_lists_errors_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text(
        "apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: m}\nspec: {}\n---\n"
        "apiVersion: pymesh.io/v1alpha1\nkind: Servce\nmetadata: {name: a}\nspec: {}\n"
    )
    with pymesh_up(str(bad)) as up:
        assert up.readline(time.monotonic() + START_TIMEOUT_S) is None  # nothing on stdout
        rc, err = up.wait()
    assert rc == 1
    assert re.search(rf"^{re.escape(str(bad))}:\d+: ", err, re.M), err


def _write_mesh(dirpath: Path, services: str) -> Path:
    config = dirpath / "mesh.yaml"
    config.write_text(
        "apiVersion: pymesh.io/v1alpha1\nkind: Mesh\nmetadata: {name: t}\n"
        "spec: {trustDomain: t.local, mtls: DISABLE, authorization: audit}\n" + services
    )
    return config


_LISTEN = (
    "import os, socket, sys, time; s = socket.socket(); "
    "s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); "
)


def test_up_exits_1_when_a_command_dies_during_start(tmp_path: Path) -> None:
    config = _write_mesh(
        tmp_path,
        "---\napiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {name: crash}\n"
        "spec:\n  serviceAccount: crash\n  ports: [{name: http, port: 80, protocol: http}]\n"
        '  command: ["python", "-c", "import sys; print(\'boom\'); sys.exit(3)"]\n',
    )
    with pymesh_up(str(config)) as up:
        assert up.readline(time.monotonic() + START_TIMEOUT_S) is None
        rc, err = up.wait()
    assert rc == 1
    assert "crash app" in err and "exited with status 3" in err and "boom" in err, err
    assert not processes_with_arg("default/crash")  # its sidecar was stopped too


def test_up_exits_1_when_a_command_dies_after_ready(tmp_path: Path) -> None:
    config = _write_mesh(
        tmp_path,
        "---\napiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {name: brief}\n"
        "spec:\n  serviceAccount: brief\n  ports: [{name: http, port: 80, protocol: http}]\n"
        f'  command: ["python", "-c", "{_LISTEN}time.sleep(1.5); sys.exit(4)"]\n',
    )
    with pymesh_up(str(config)) as up:
        lines = up.lines_until_ready()
        assert len(lines) == 1 and lines[0].startswith("brief app=")
        kids = children_of(up.proc.pid)
        rc, err = up.wait()
    assert rc == 1
    assert "brief app" in err and "exited with status 4" in err, err
    assert_gone(kids)


def test_up_runs_an_unmeshed_command_on_its_endpoint(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _write_mesh(
        tmp_path,
        "---\napiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {name: legacy}\n"
        "spec:\n  serviceAccount: legacy\n  meshed: false\n"
        "  ports: [{name: http, port: 80, protocol: http}]\n"
        f"  endpoints: [{{address: 127.0.0.1, port: {port}}}]\n"
        f'  command: ["python", "-c", "{_LISTEN}time.sleep(60)"]\n',
    )
    with pymesh_up(str(config), "--json") as up:
        (line,) = up.lines_until_ready()
        doc = json.loads(line)
        assert doc["app"] == f"127.0.0.1:{port}" and doc["meshed"] is False
        assert doc["inbound"] is doc["outbound"] is doc["admin"] is doc["pid"] is None
        assert children_of(up.proc.pid) == {doc["app_pid"]}
        rc, err = up.stop()
    assert rc == 0, err
    assert_gone({doc["app_pid"]})


# --- LocalMesh in-process: what a command is given ---------------------------------------------


def test_local_mesh_gives_commands_port_proxy_and_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = "import json; json.dump({**os.environ, 'CWD': os.getcwd()}, open('env.json', 'w')); "
    config = _write_mesh(
        tmp_path,
        "---\napiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {name: two, "
        "namespace: ns1}\nspec:\n  serviceAccount: two\n  ports:\n"
        "  - {name: http, port: 80, protocol: http}\n  - {name: admin-api, port: 81}\n"
        f'  command: ["python", "-c", "{_LISTEN}{dump}time.sleep(60)"]\n'
        "  env: {EXTRA: from-spec}\n",
    )
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")

    async def scenario() -> tuple[ServiceRuntime, dict[str, str], list[object]]:
        async with LocalMesh(config) as mesh:
            (svc,) = mesh.services
            env_file = tmp_path / "env.json"
            for _ in range(100):  # the app writes it right after binding
                if env_file.exists() and env_file.read_text().endswith("}"):
                    break
                await asyncio.sleep(0.02)
            derived = read_documents(mesh.derived_config)
            return svc, json.loads(env_file.read_text()), derived

    svc, env, derived = asyncio.run(scenario())
    assert svc.display_name == "ns1/two"
    assert svc.status_line().startswith("ns1/two app=127.0.0.1:")
    assert svc.outbound is not None and svc.inbound is not None
    assert [port for port, _ in svc.apps] == [80, 81]
    assert env["CWD"] == str(tmp_path)  # commands run in the config's directory
    assert env["PORT"] == str(svc.apps[0][1][1]) == env["PYMESH_PORT_HTTP"]
    assert env["PYMESH_PORT_ADMIN_API"] == str(svc.apps[1][1][1])
    assert env["http_proxy"] == env["HTTP_PROXY"] == f"http://{format_address(svc.outbound)}"
    assert "NO_PROXY" not in env and "no_proxy" not in env
    assert env["PYMESH_SERVICE"] == "two" and env["PYMESH_NAMESPACE"] == "ns1"
    assert env["EXTRA"] == "from-spec"
    service_doc = derived[1]
    assert isinstance(service_doc, dict)
    assert service_doc["spec"]["endpoints"] == [{"address": svc.inbound[0], "port": svc.inbound[1]}]


def test_local_mesh_rejects_unmeshed_command_without_endpoint(tmp_path: Path) -> None:
    config = _write_mesh(
        tmp_path,
        "---\napiVersion: pymesh.io/v1alpha1\nkind: Service\nmetadata: {name: legacy}\n"
        "spec:\n  serviceAccount: legacy\n  meshed: false\n"
        "  ports: [{name: http, port: 80, protocol: http}]\n"
        '  command: ["python", "-c", "pass"]\n',
    )
    with pytest.raises(ConfigError) as info:
        asyncio.run(LocalMesh(config).start())
    (err,) = info.value.errors
    assert err.resource == "Service/default/legacy" and err.path == "spec.endpoints"
    assert str(err).startswith(f"{config}:")


# --- pure pieces ------------------------------------------------------------------------------


def test_derive_config_replaces_only_meshed_endpoints() -> None:
    docs = [
        {"kind": "Mesh", "metadata": {"name": "m"}},
        {"kind": "Service", "metadata": {"name": "a"}, "spec": {"endpoints": [{"x": 1}]}},
        {"kind": "Service", "metadata": {"name": "a", "namespace": "other"}, "spec": {}},
        {"kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": []}},
    ]
    out = derive_config(docs, {("default", "a"): ("127.0.0.1", 7), ("default", "b"): ("::1", 8)})
    assert out[1]["spec"]["endpoints"] == [{"address": "127.0.0.1", "port": 7}]
    assert out[2] == docs[2]
    assert out[3]["spec"] == {"ports": [], "endpoints": [{"address": "::1", "port": 8}]}
    assert docs[1]["spec"] == {"endpoints": [{"x": 1}]}  # the input is not changed


def test_command_argv_and_env_rules() -> None:
    assert command_argv(["python", "app.py"]) == [sys.executable, "app.py"]
    assert command_argv(["python3", "-m", "x"]) == [sys.executable, "-m", "x"]
    assert command_argv(["./run", "python"]) == ["./run", "python"]
    assert format_address(("::1", 80)) == "[::1]:80"
    svc = ServiceRuntime(
        name="s",
        namespace="default",
        meshed=True,
        app=("127.0.0.1", 9),
        apps=((80, ("127.0.0.1", 9)),),
        outbound=("127.0.0.1", 10),
    )
    spec = ServiceSpec(
        service_account="s",
        ports=(ServicePort(name="http", port=80),),
        env=(("PORT", "1234"), ("EXTRA", "x")),
    )
    env = command_env({"no_proxy": "*", "KEEP": "y"}, svc, spec, host="127.0.0.1")
    assert env["PORT"] == "1234"  # spec.env is applied last
    assert env["EXTRA"] == "x" and env["KEEP"] == "y" and "no_proxy" not in env
    assert env["http_proxy"] == env["HTTP_PROXY"] == "http://127.0.0.1:10"
    plain = ServiceRuntime(
        name="p", namespace="default", meshed=False, app=("10.0.0.1", 5), apps=()
    )
    env = command_env({}, plain, ServiceSpec(service_account="p"), host="127.0.0.1")
    assert env["PORT"] == "5" and env["PYMESH_HOST"] == "10.0.0.1" and "http_proxy" not in env
    assert plain.status_line() == "p app=10.0.0.1:5 inbound=- outbound=- admin=-"
