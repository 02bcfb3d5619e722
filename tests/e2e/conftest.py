"""Network-namespace "hosts" for end-to-end tests, always torn down.

A `NetnsLab` is a little network of its own: one namespace per host (`pm-<pid>-<k>-cp`,
`pm-<pid>-<k>-a`, ...), each with loopback up and an `eth0` on the private subnet
`10.213.<k>.0/24`, all joined by veth pairs to a bridge in one more namespace (the switch).
Every interface is created directly inside a namespace of the lab, so nothing is added to
the caller's own network namespace, and deleting the lab's namespaces deletes every veth.

Processes run in a host with `ip netns exec` (which execs the command, so the process id is
the program's own). The lab's finalizer kills every process it started (SIGTERM, then
SIGKILL), then any process left inside its namespaces, then deletes the namespaces — also
when the test failed.

Needs Linux, root and the `ip` command (iproute2); otherwise the `lab` fixture skips with
the reason. Tests reach a host's loopback-only listeners (admin endpoints, apps) by running
`curl` inside it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

IP = "ip"
_labs = itertools.count(1)


def _ip(*args: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout, check=check)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the e2e tests as root"
    if shutil.which(IP) is None:
        return "the ip command (iproute2) is not installed"
    if shutil.which("curl") is None:
        return "curl is not installed (the tests call loopback listeners inside namespaces)"
    probe = f"pm-{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip() or made.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run ip netns add: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _ip("netns", "del", probe, check=False)
    return None


class Host:
    """One namespace of a lab: a name, its address on the lab's subnet, its processes."""

    def __init__(self, lab: NetnsLab, role: str, address: str, port_name: str) -> None:
        self.lab = lab
        self.role = role
        self.netns = f"{lab.prefix}-{role}"
        self.address = address
        self.port_name = port_name  # its veth peer in the switch namespace

    def exec_args(self, args: Sequence[str]) -> list[str]:
        """`args` run inside this host."""
        return [IP, "netns", "exec", self.netns, *args]

    def spawn(
        self, name: str, args: Sequence[str], *, stdout: int | IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `args` in this host; stderr (and stdout unless given) to `<name>.log`."""
        log_path = self.lab.log_dir / f"{name}.log"
        with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                self.exec_args(args),
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                start_new_session=True,
            )
        self.lab.procs.append((name, proc))
        return proc

    def run(self, args: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run `args` in this host to completion (bounded by `timeout`)."""
        return subprocess.run(
            self.exec_args(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def http(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 5.0,
    ) -> tuple[int, dict[str, str], str]:
        """GET `url` from inside this host with curl: (status, headers, body); status 0 if
        nothing answered."""
        args = ["curl", "-sS", "-i", "-m", f"{timeout:g}", "--noproxy", "*"]
        for k, v in headers:
            args += ["-H", f"{k}: {v}"]
        try:
            done = subprocess.run(
                self.exec_args([*args, url]), capture_output=True, timeout=timeout + 5, check=False
            )
        except subprocess.TimeoutExpired:
            return 0, {}, ""
        out = done.stdout.decode("utf-8", "replace")  # bytes: keep the CRLFs
        if done.returncode != 0 or not out.startswith("HTTP/"):
            return 0, {}, done.stderr.decode("utf-8", "replace")
        head, _, body = out.partition("\r\n\r\n")
        status_line, *lines = head.split("\r\n")
        fields = {}
        for line in lines:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
        return int(status_line.split()[1]), fields, body

    def __repr__(self) -> str:
        return f"Host({self.netns!r}, {self.address})"


class NetnsLab:
    """Hosts on one bridged subnet; `close()` (the fixture's finalizer) removes everything."""

    def __init__(self, log_dir: Path) -> None:
        self.index = next(_labs)
        self.prefix = f"pm-{os.getpid()}-{self.index}"
        self.subnet = f"10.213.{self.index % 250}"
        self.switch = f"{self.prefix}-sw"
        self.log_dir = log_dir
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self) -> None:
        """Make the switch: a namespace holding the bridge every host is plugged into."""
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _add_netns(self, name: str) -> None:
        self.namespaces.append(name)  # first: a failure below still deletes it
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str) -> Host:
        """A new namespace `role` with eth0 = 10.213.<k>.<n>/24 on the lab's bridge."""
        n = len(self.hosts) + 1
        host = Host(self, role, f"{self.subnet}.{n}", f"p{n}")
        self._add_netns(host.netns)
        # Both ends are created inside the lab's namespaces: nothing in the caller's.
        _ip(
            *("link", "add", "eth0", "netns", host.netns, "type", "veth"),
            *("peer", "name", host.port_name, "netns", self.switch),
        )
        _ip("-n", self.switch, "link", "set", host.port_name, "master", "br0")
        _ip("-n", self.switch, "link", "set", host.port_name, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[role] = host
        return host

    def unplug(self, host: Host) -> None:
        """Cut `host` off the network without telling anyone: delete its veth pair."""
        _ip("-n", self.switch, "link", "del", host.port_name)

    def block_route(self, host: Host, address: str) -> None:
        """Drop everything `host` sends to `address` (a blackhole route in `host`); the rest
        of its network, and what `address` sends to it, is untouched."""
        _ip("-n", host.netns, "route", "add", "blackhole", f"{address}/32")

    def log_tails(self, lines: int = 25) -> str:
        """The end of every process log, for failure messages."""
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def close(self) -> None:
        """Kill every process (ours, then any left in our namespaces); delete the namespaces."""
        for _, proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        for ns in self.namespaces:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                left = _ip("netns", "pids", ns, check=False).stdout.split()
                for pid in left:  # only processes inside this lab's own namespaces
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        errors = []
        for ns in reversed(self.namespaces):
            try:
                done = _ip("netns", "del", ns, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{ns}: {exc}")
                continue
            if done.returncode != 0 and "No such file" not in done.stderr:
                errors.append(f"{ns}: {done.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise RuntimeError("could not delete network namespaces: " + "; ".join(errors))


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip (with the reason) where network namespaces cannot be made."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab(netns_available: None, tmp_path: Path) -> Iterator[NetnsLab]:
    """A fresh lab (no hosts yet); everything in it is removed afterwards."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    made = NetnsLab(log_dir)
    try:
        made.start()
        yield made
    finally:
        made.close()
