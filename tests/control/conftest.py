"""A real etcd for the control-plane tests: own ports on 127.0.0.1, own data dir, always stopped.

The binary comes from Debian's `etcd-server` (`/usr/bin/etcd`; `scripts/install-deps.sh test`
installs it). Without it, tests that need etcd skip with that reason.

The test etcd runs with a 25 ms heartbeat and a 250 ms election timeout, so its minimum lease
TTL is 1 s (etcd grants at least ceil(1.5 x election timeout); 2 s with the defaults).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ETCD_SKIP_REASON = (
    "etcd binary not found (Debian package etcd-server installs /usr/bin/etcd; "
    "run scripts/install-deps.sh test)"
)


def find_etcd() -> str | None:
    """The etcd binary on PATH or where Debian puts it."""
    found = shutil.which("etcd")
    if found:
        return found
    return "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One single-member etcd process; `start()` waits until /health says true."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the client URL."""
        return ("127.0.0.1", self.client_port)

    @property
    def url(self) -> str:
        """The store URL for `open_store`."""
        return f"etcd://127.0.0.1:{self.client_port}"

    def _args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name=pymesh-test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pymesh-test={peer}",
            "--initial-cluster-state=new",
            "--heartbeat-interval=25",
            "--election-timeout=250",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]

    def start(self, timeout_s: float = 15.0) -> None:
        """Start etcd (same ports and data dir on a restart) and wait for health."""
        assert self.proc is None, "already running"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,  # no ETCD_* from the caller's environment
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"etcd exited at start:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy within {timeout_s:g}s:\n{self.log_tail()}")

    def healthy(self) -> bool:
        """True if GET /health answers {"health":"true"}."""
        url = f"http://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:  # loopback only
                return b'"true"' in resp.read(4096)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers; always reaps the process."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

    def restart(self) -> None:
        """Stop and start again on the same data dir and ports."""
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The end of etcd's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    """The etcd binary, or skip."""
    binary = find_etcd()
    if binary is None:
        pytest.skip(ETCD_SKIP_REASON)
    return binary


@pytest.fixture(scope="session")
def etcd(etcd_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd shared by the session's tests (isolate with a key prefix per test)."""
    server = EtcdServer(etcd_binary, tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_factory(
    etcd_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], EtcdServer]]:
    """Private etcd servers (for tests that stop or restart theirs); all stopped afterwards."""
    servers: list[EtcdServer] = []

    def make() -> EtcdServer:
        server = EtcdServer(etcd_binary, tmp_path_factory.mktemp("etcd-private"))
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
