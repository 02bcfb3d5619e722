"""mTLS with clients pymesh did not write: curl, openssl s_client, grpcio and raw TCP.

The certificates come from the real `pymesh ca` CLI; the clients are the real tools (skipped
with a reason where one is missing; `scripts/install-deps.sh` installs them in CI).

curl and SPIFFE certificates: a sidecar's certificate carries its identity only as a URI SAN
(`spiffe://...`), no DNS name or IP address, and curl always checks the server certificate
against the URL's host when it verifies the peer — so `--cacert bundle.pem` alone fails with
"unable to obtain common name from peer certificate" (exit 60, tested below).
curl has no flag that skips only the host check, and no way to match a URI SAN. What works
(and what docs/identity.md should say) is `-k --pinnedpubkey sha256//<base64>`: `-k` turns
off chain and name checks, and the pin — which curl checks even with `-k` (libcurl's
CURLOPT_PINNEDPUBLICKEY: "if you turn off that option then the peer is still verified by
public key") — makes curl accept exactly that server key and nothing else (exit 90 on a
mismatch, also tested). `openssl s_client -CAfile bundle.pem -verify_return_error` verifies
the chain without a host check, so it needs no such trick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs
from tests.helpers import Backend, Client
from tests.integration.test_mtls import SECRET, TD, Recorder, _client_ctx, build_mesh, sid

from pymesh.policy.model import Endpoint
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.sidecar import Sidecar
from pymesh.tls.ca import CertificateAuthority
from pymesh.tls.identity import Identity

TOOL_TIMEOUT = 15.0


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/install-deps.sh installs it)")


async def run_tool(
    *argv: str, stdin: bytes | None = None, timeout: float = TOOL_TIMEOUT
) -> tuple[int, bytes, bytes]:
    """Run a command; (exit status, stdout, stderr). Killed (and the test failed) past
    `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{argv[0]} did not finish in {timeout} s: {' '.join(argv)}")
    assert proc.returncode is not None
    return proc.returncode, out, err


def metric(sidecar: Sidecar, name: str, **labels: str) -> float:
    """The sum of the series of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in sidecar.registry.render().decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def spki_pin(identity: Identity) -> str:
    """curl's `--pinnedpubkey` form of the identity's public key: sha256//BASE64."""
    leaf = x509.load_pem_x509_certificate(identity.chain_pem)
    der = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def client_hello_alpn(data: bytes) -> list[bytes]:
    """The ALPN protocols offered by the TLS ClientHello at the start of `data` (written
    here from RFC 8446 §4.1.2 and RFC 7301, not with pymesh's parser)."""
    assert data[:1] == b"\x16", "not a TLS handshake record"
    body = data[5 : 5 + int.from_bytes(data[3:5], "big")]
    assert body[:1] == b"\x01", "not a ClientHello"
    i = 4 + 2 + 32  # handshake header, legacy_version, random
    i += 1 + body[i]  # legacy_session_id
    i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher_suites
    i += 1 + body[i]  # legacy_compression_methods
    end = i + 2 + int.from_bytes(body[i : i + 2], "big")
    i += 2
    while i < end:
        ext_type = int.from_bytes(body[i : i + 2], "big")
        ext_len = int.from_bytes(body[i + 2 : i + 4], "big")
        ext = body[i + 4 : i + 4 + ext_len]
        i += 4 + ext_len
        if ext_type == 16:  # application_layer_protocol_negotiation
            protos, j = [], 2
            while j < len(ext):
                n = ext[j]
                protos.append(ext[j + 1 : j + 1 + n])
                j += 1 + n
            return protos
    return []


# -- sidecars --------------------------------------------------------------------------------


def new_sidecar(
    mesh: Mesh, service: str, identity: Identity, app: tuple[str, int] | None = None
) -> Sidecar:
    """A sidecar on free loopback ports, with its access log on (see `inbound_requests`)."""
    return Sidecar(
        mesh,
        service,
        inbound=("127.0.0.1", 0),
        outbound=("127.0.0.1", 0),
        admin=("127.0.0.1", 0),
        app=app,
        identity=identity,
        access_log=True,
    )


def inbound_requests(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The inbound access-log lines of HTTP requests among captured structlog events."""
    return [e for e in logs if e["event"] == "http_request" and e["direction"] == "inbound"]


def authz_mesh(
    api_endpoint: tuple[str, int],
    *,
    protocol: str = "http",
    policy: str = "",
    authorization: str = "enforce",
) -> Mesh:
    """web and api (port 8080, `protocol`) in STRICT mTLS, plus SMI `policy` documents."""
    text = f"""\
apiVersion: pymesh.io/v1alpha1
kind: Mesh
metadata: {{name: t}}
spec: {{trustDomain: {TD}, mtls: STRICT, authorization: {authorization}}}
---
apiVersion: pymesh.io/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  serviceAccount: web
  ports: [{{name: http, port: 80, protocol: http}}]
---
apiVersion: pymesh.io/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  serviceAccount: api
  ports: [{{name: main, port: 8080, protocol: {protocol}}}]
---
{policy}"""
    mesh = Mesh.from_yaml(text)
    host, port = api_endpoint
    return mesh.with_endpoints({("default", "api"): [Endpoint(address=host, port=port)]})


def only_from(source: str, *, http_match: str | None = None) -> str:
    """SMI documents: api's allow-list admits `source` (on port 8080; with `http_match`, only
    requests matching HTTPRouteGroup api-routes' match of that name)."""
    rules = "  - {kind: TCPRoute, name: api-port}\n"
    if http_match is not None:
        rules += f"  - {{kind: HTTPRouteGroup, name: api-routes, matches: [{http_match}]}}\n"
    return f"""\
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {{name: api-port}}
spec: {{matches: {{ports: [8080]}}}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {{name: api-routes}}
spec:
  matches:
  - {{name: allowed, pathRegex: /allowed, methods: [GET]}}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {{name: api-allow}}
spec:
  destination: {{kind: ServiceAccount, name: api, namespace: default}}
  rules:
{rules}  sources:
  - {{kind: ServiceAccount, name: {source}, namespace: default}}
"""


@contextlib.asynccontextmanager
async def api_and_web(
    ca: CertificateAuthority,
    app: tuple[str, int],
    *,
    protocol: str = "http",
    policy: str = "",
    authorization: str = "enforce",
) -> AsyncIterator[tuple[Sidecar, Recorder, Sidecar]]:
    """api's sidecar (in front of `app`), a wiretap on its inbound, web's sidecar calling
    api through the wiretap."""
    kw = {"protocol": protocol, "policy": policy, "authorization": authorization}
    api_sc = new_sidecar(
        authz_mesh(("127.0.0.1", 1), **kw), "api", ca.issue_identity(sid("api"), 3600), app=app
    )
    async with api_sc as api, Recorder(api.inbound_address) as tap:
        web_sc = new_sidecar(
            authz_mesh(tap.address, **kw), "web", ca.issue_identity(sid("web"), 3600)
        )
        async with web_sc as web:
            yield api, tap, web


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


# -- 1. curl and openssl s_client against a STRICT inbound, certificates from `pymesh ca` ----


@dataclass(frozen=True)
class CliCa:
    """A CA made by `pymesh ca init`, and curl's identity made by `pymesh ca issue`."""

    ca_dir: Path
    client: Path  # cert.pem, key.pem, bundle.pem

    def arg(self, name: str) -> str:
        return str(self.client / name)


def _pymesh(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pymesh", *args], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def cli_ca(tmp_path_factory: pytest.TempPathFactory) -> CliCa:
    """Run once per module: `pymesh ca init` and `pymesh ca issue` as a user would."""
    tmp = tmp_path_factory.mktemp("cli-ca")
    ca_dir, client = tmp / "ca", tmp / "curl"
    _pymesh("ca", "init", "--dir", str(ca_dir), "--trust-domain", TD)
    _pymesh("ca", "issue", "--dir", str(ca_dir), "--spiffe-id", sid("curl"), "--out", str(client))
    assert sorted(p.name for p in client.iterdir()) == ["bundle.pem", "cert.pem", "key.pem"]
    assert (client / "key.pem").stat().st_mode & 0o777 == 0o600
    return CliCa(ca_dir, client)


@contextlib.asynccontextmanager
async def strict_api(cli_ca: CliCa) -> AsyncIterator[tuple[Backend, Sidecar, Identity]]:
    """An app behind api's STRICT sidecar, whose identity comes from the CLI's CA."""
    identity = CertificateAuthority.load(cli_ca.ca_dir).issue_identity(sid("api"), 3600)
    async with Backend() as app:
        sc = new_sidecar(build_mesh(("127.0.0.1", 1)), "api", identity, app=app.address)
        async with sc as api:
            yield app, api, identity


def _curl(cli_ca: CliCa, *args: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "10", "--cacert", cli_ca.arg("bundle.pem"), *args]


def _with_cert(cli_ca: CliCa) -> list[str]:
    return ["--cert", cli_ca.arg("cert.pem"), "--key", cli_ca.arg("key.pem")]


async def test_curl_with_a_pymesh_ca_client_certificate_gets_the_app(cli_ca: CliCa) -> None:
    _need("curl")
    async with strict_api(cli_ca) as (app, api, identity):
        host, port = api.inbound_address
        url = f"https://{host}:{port}/x?y=1"
        pin = spki_pin(identity)
        write_out = ["-w", "\n%{http_code} %{http_version}"]
        cmd = _curl(cli_ca, *_with_cert(cli_ca), "--http1.1", *write_out)
        rc, out, err = await run_tool(*cmd, "-k", "--pinnedpubkey", pin, url)
        assert rc == 0, err
        assert out.endswith(b"\n200 1.1"), out
        assert out.startswith(b"GET /x?y=1 len=0"), out
        assert [r.target for r in app.requests] == [b"/x?y=1"]
        text = api.registry.render().decode()
        assert f'source_principal="{sid("curl")}"' in text
        assert 'connection_security_policy="mutual_tls"' in text
        # Why -k: the certificate names the server only by its SPIFFE URI, which curl cannot
        # match against a host; the chain itself is fine but curl refuses the name.
        rc, _, err = await run_tool(*cmd, url)
        assert rc == 60, err
        assert b"unable to obtain common name" in err or b"subject name" in err, err
        # ... and -k does not mean "anything goes": the pin is still checked.
        wrong = "sha256//" + base64.b64encode(b"\0" * 32).decode()
        rc, _, err = await run_tool(*cmd, "-k", "--pinnedpubkey", wrong, url)
        assert rc == 90, err  # CURLE_SSL_PINNEDPUBKEYNOTMATCH
        assert len(app.requests) == 1


async def test_curl_without_a_client_certificate_sees_the_tls_alert(cli_ca: CliCa) -> None:
    _need("curl")
    async with strict_api(cli_ca) as (app, api, identity):
        host, port = api.inbound_address
        cmd = _curl(cli_ca, "-k", "--pinnedpubkey", spki_pin(identity))
        for version in ("--http1.1", "--http2"):
            rc, out, err = await run_tool(*cmd, version, f"https://{host}:{port}/nocert")
            assert rc != 0, out
            # The server's alert reached curl (TLS 1.3: alert 116 certificate_required), not
            # a bare reset or an empty reply.
            assert b"alert certificate required" in err, err
        assert not app.requests
        refused = metric(api, "pymesh_tls_refused_total", reason="no_client_certificate")
        assert refused == 2


async def test_curl_http2_negotiates_h2_with_the_inbound_listener(cli_ca: CliCa) -> None:
    _need("curl")
    async with strict_api(cli_ca) as (app, api, identity):
        host, port = api.inbound_address
        cmd = _curl(cli_ca, *_with_cert(cli_ca), "-k", "--pinnedpubkey", spki_pin(identity))
        url = f"https://{host}:{port}"
        with capture_logs() as logs:
            rc, out, err = await run_tool(
                *cmd, "--http2", "-v", "-w", "\n%{http_version}", f"{url}/a", f"{url}/b"
            )
        assert rc == 0, err
        assert b"ALPN: server accepted h2" in err or b"ALPN, server accepted to use h2" in err, err
        assert out.endswith(b"GET /b len=0\n2"), out
        assert b"GET /a len=0\n2" in out, out
        assert [r.target for r in app.requests] == [b"/a", b"/b"]
        # The inbound sidecar spoke HTTP/2 with curl, under mTLS with curl's identity.
        seen = [(e["path"], e["protocol"], e["source_principal"]) for e in inbound_requests(logs)]
        assert seen == [("/a", "HTTP/2", sid("curl")), ("/b", "HTTP/2", sid("curl"))]


def _write_then_read(address: tuple[str, int], ctx: ssl.SSLContext) -> str:
    """What a TLS 1.3 client without a certificate does (curl, `--http2`): its handshake
    completes, it writes its request, a little later writes more, and only then reads.
    Returns the error it ends with. Blocking (run it in a thread); bounded by timeouts."""
    with (
        socket.create_connection(address, timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="api") as tls,
    ):
        time.sleep(0.2)  # the server has read our (empty) Certificate and refused it
        try:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            time.sleep(0.2)  # a RST for those bytes would be back by now
            tls.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            tls.recv(100)
        except (ssl.SSLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"


async def test_the_alert_is_not_overtaken_by_a_reset(cli_ca: CliCa) -> None:
    """The server must not close with the client's bytes unread after its alert: the kernel
    would answer them with a RST, and the client's next send fails with "Connection reset"
    before it reads the alert (1-2 % of `curl --http2` runs did)."""
    async with strict_api(cli_ca) as (app, api, _):
        bundle = (cli_ca.client / "bundle.pem").read_bytes()
        ctx = _client_ctx(None, bundle)
        async with asyncio.timeout(10):
            error = await asyncio.to_thread(_write_then_read, api.inbound_address, ctx)
        assert "CERTIFICATE_REQUIRED" in error, error
        assert not app.requests


def _s_client(cli_ca: CliCa, port: int, *extra: str) -> list[str]:
    return [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        cli_ca.arg("bundle.pem"),
        "-verify_return_error",
        "-quiet",
        *extra,
    ]


REQUEST = b"GET /s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"


async def test_openssl_s_client_with_and_without_a_certificate(cli_ca: CliCa) -> None:
    _need("openssl")
    async with strict_api(cli_ca) as (app, api, _):
        port = api.inbound_address[1]
        # -cert sends only the first certificate of the file (the leaf); the server trusts the
        # roots only, so the chain file must be given too (-cert_chain) for the intermediate.
        cert = ["-cert", cli_ca.arg("cert.pem"), "-key", cli_ca.arg("key.pem")]
        cert += ["-cert_chain", cli_ca.arg("cert.pem")]
        rc, out, err = await run_tool(*_s_client(cli_ca, port, *cert), stdin=REQUEST)
        assert rc == 0, err
        assert out.startswith(b"HTTP/1.1 200"), (out, err)
        assert out.endswith(b"GET /s len=0"), out
        # No ALPN offered: the inbound side detected HTTP/1.1 inside the TLS session.
        assert [r.target for r in app.requests] == [b"/s"]
        rc, out, err = await run_tool(*_s_client(cli_ca, port), stdin=REQUEST)
        assert b"alert certificate required" in err, err
        assert b"HTTP/1.1" not in out
        assert len(app.requests) == 1
        refused = metric(api, "pymesh_tls_refused_total", reason="no_client_certificate")
        assert refused == 1
        # The leaf alone (no -cert_chain) does not lead to a root the server trusts.
        leaf_only = cert[:4]
        rc, out, err = await run_tool(*_s_client(cli_ca, port, *leaf_only), stdin=REQUEST)
        assert b"alert unknown ca" in err, err
        assert len(app.requests) == 1
        assert metric(api, "pymesh_tls_refused_total", reason="unknown_ca") == 1


# -- 2. gRPC between sidecars over mTLS ----------------------------------------------------


def _ident(b: bytes) -> bytes:
    return b


@dataclass
class Greeter:
    """A grpcio server with one unary method that counts its calls."""

    calls: list[bytes] = field(default_factory=list)
    server: grpc.aio.Server | None = None
    port: int = 0

    async def _unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls.append(request)
        return b"hello " + request

    async def __aenter__(self) -> Greeter:
        handler = grpc.method_handlers_generic_handler(
            "demo.Greeter",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(
                    self._unary, request_deserializer=_ident, response_serializer=_ident
                )
            },
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await self.server.stop(0)


async def _grpc_unary(web: Sidecar, payload: bytes) -> bytes:
    host, port = web.outbound_address
    async with grpc.aio.insecure_channel(
        f"{host}:{port}", options=[("grpc.default_authority", "api:8080")]
    ) as ch:
        unary = ch.unary_unary(
            "/demo.Greeter/Unary", request_serializer=_ident, response_deserializer=_ident
        )
        reply: bytes = await unary(payload, timeout=5)
        return reply


@pytest.mark.asyncio(loop_factories=["asyncio"])  # grpc.aio runs on stock asyncio only
async def test_grpc_between_sidecars_is_h2_over_mtls_and_denied_as_a_grpc_status(
    ca: CertificateAuthority,
) -> None:
    async with (
        Greeter() as greeter,
        api_and_web(ca, ("127.0.0.1", greeter.port), protocol="grpc", policy=only_from("web")) as (
            api,
            tap,
            web,
        ),
    ):
        with capture_logs() as logs:
            assert await _grpc_unary(web, SECRET) == b"hello " + SECRET
        up, down = bytes(tap.up), bytes(tap.down)
        assert client_hello_alpn(up) == [b"h2", b"http/1.1"]  # an HTTP/2 pool
        # ... and h2 is what the two sidecars spoke (the server's choice is encrypted in TLS
        # 1.3; api's access log says what its inbound listener ran).
        [line] = inbound_requests(logs)
        assert line["protocol"] == "HTTP/2" and line["path"] == "/demo.Greeter/Unary"
        assert line["connection_security_policy"] == "mutual_tls"
        assert SECRET not in up and SECRET not in down
        assert b"PRI * HTTP/2.0" not in up and b"demo.Greeter" not in up
        assert (
            metric(
                api,
                "istio_requests_total",
                request_protocol="grpc",
                connection_security_policy="mutual_tls",
                source_principal=sid("web"),
                grpc_response_status="0",
            )
            == 1
        )

        # api's allow-list now admits only "other": web's call is refused by api's sidecar
        # with a gRPC status in trailers, and the server never sees it.
        api.update(authz_mesh(("127.0.0.1", 1), protocol="grpc", policy=only_from("other")))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _grpc_unary(web, b"denied")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
        # A gRPC status in trailers, with its cause; grpcio would map a plain HTTP 403 to
        # PERMISSION_DENIED too, but with "Received http2 header with status: 403".
        # (The reason stays in the api sidecar's log: the caller is not told the policy.)
        assert (err.value.details() or "").startswith("access denied"), err.value
        assert ("x-pymesh-error", "authz_denied") in tuple(err.value.trailing_metadata() or ())
        assert greeter.calls == [SECRET]
        assert metric(api, "pymesh_authz_decisions_total", decision="allow", protocol="grpc") == 1
        assert metric(api, "pymesh_authz_decisions_total", decision="deny", protocol="grpc") == 1
        assert metric(api, "istio_requests_total", grpc_response_status="7") == 1


# -- 3. TCP ports: mTLS, half-close, L4 authorization --------------------------------------


@dataclass
class Echo:
    """A TCP server that echoes until EOF, then sends `bye` and closes."""

    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(w)
        try:
            async with asyncio.timeout(10):
                while data := await r.read(65536):
                    self.received += data
                    w.write(data)
                    await w.drain()
                w.write(b"bye")
                await w.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.writers.discard(w)
            w.close()

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.server.wait_closed()


def _shutdown_write(w: asyncio.StreamWriter) -> None:
    """Half-close the client's socket (a dup'd fd: uvloop's transport socket refuses
    shutdown(), and write_eof() is what DESIGN.md §4 warns about)."""
    sock = w.get_extra_info("socket")
    with socket.socket(fileno=os.dup(sock.fileno())) as s:
        s.shutdown(socket.SHUT_WR)


async def _read_exactly(r: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(5):
        return await r.readexactly(n)


async def _connect_tunnel(web: Sidecar) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection(*web.outbound_address)
    w.write(b"CONNECT api:8080 HTTP/1.1\r\nHost: api:8080\r\n\r\n")
    await w.drain()
    async with asyncio.timeout(5):
        head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return r, w


async def test_tcp_port_is_mtls_with_half_close_and_l4_authorization(
    ca: CertificateAuthority,
) -> None:
    async with (
        Echo() as echo,
        api_and_web(ca, echo.address, protocol="tcp", policy=only_from("web")) as (api, tap, web),
    ):
        r, w = await _connect_tunnel(web)
        try:
            w.write(SECRET)
            await w.drain()
            assert await _read_exactly(r, len(SECRET)) == SECRET
            w.write(b"second")
            await w.drain()
            assert await _read_exactly(r, 6) == b"second"
            w.write(b"last words")
            await w.drain()
            _shutdown_write(w)  # the client is done sending; the echo still answers
            async with asyncio.timeout(5):
                rest = await r.read()  # everything up to the echo's close
            assert rest == b"last wordsbye", rest
        finally:
            w.close()
        assert bytes(echo.received) == SECRET + b"second" + b"last words"
        up, down = bytes(tap.up), bytes(tap.down)
        assert up[:1] == b"\x16" and down[:1] == b"\x16"
        assert client_hello_alpn(up) == []  # an L4 tunnel offers no ALPN
        assert b"outbound_.8080_._.api.default.svc.cluster.local" in up
        assert SECRET not in up and SECRET not in down
        assert b"second" not in up and b"bye" not in down

        # api's allow-list admits only "other" on 8080: web's connection is closed before
        # anything reaches the app.
        api.update(authz_mesh(("127.0.0.1", 1), protocol="tcp", policy=only_from("other")))
        before = echo.connections
        r, w = await _connect_tunnel(web)
        try:
            w.write(b"must not arrive")
            with contextlib.suppress(ConnectionError):
                await w.drain()
            async with asyncio.timeout(5):
                try:
                    got = await r.read()
                except ConnectionError:
                    got = b""
            assert got == b""
        finally:
            w.close()
        assert echo.connections == before
        assert b"must not arrive" not in echo.received
        assert metric(api, "pymesh_authz_decisions_total", decision="allow", protocol="tcp") == 1
        assert metric(api, "pymesh_authz_decisions_total", decision="deny", protocol="tcp") == 1


# -- 4. HTTP authorization end to end -------------------------------------------------------


async def _get(web: Sidecar, method: str, path: str) -> tuple[int, bytes | None]:
    client = await Client.connect(web.outbound_address)
    try:
        reply = await client.request(method, path, [("host", "api:8080")])
    finally:
        await client.close()
    return reply.status, reply.header(b"x-pymesh-error")


async def test_http_authorization_enforce_and_audit(ca: CertificateAuthority) -> None:
    policy = only_from("web", http_match="allowed")
    async with Backend() as app, api_and_web(ca, app.address, policy=policy) as (api, _, web):
        assert await _get(web, "GET", "/allowed") == (200, None)
        assert await _get(web, "GET", "/allowed/and/below") == (200, None)
        assert await _get(web, "GET", "/denied") == (403, b"authz_denied")
        assert await _get(web, "POST", "/allowed") == (403, b"authz_denied")
        assert [r.target for r in app.requests] == [b"/allowed", b"/allowed/and/below"]
        assert metric(api, "pymesh_authz_decisions_total", decision="allow", protocol="http") == 2
        assert metric(api, "pymesh_authz_decisions_total", decision="deny", protocol="http") == 2
        assert metric(api, "istio_requests_total", response_code="403") == 2

        api.update(authz_mesh(("127.0.0.1", 1), policy=policy, authorization="audit"))
        assert await _get(web, "GET", "/denied") == (200, None)
        assert app.requests[-1].target == b"/denied"
        audit = metric(api, "pymesh_authz_decisions_total", decision="audit_deny")
        assert audit == 1
