"""CSR signing for `pymesh up`: a CA inside the `up` process, and the sidecars' client.

`pymesh up` creates an in-memory CA for the mesh's trust domain and serves one endpoint on
loopback, `POST /v1/sign`, with a JSON body `{"csr": PEM}` and the header
`Authorization: Bearer TOKEN`. Each sidecar gets its own random token (in the environment
variable `PYMESH_CA_TOKEN`, never on a command line) bound to its service's SPIFFE ID, so a
sidecar can only obtain its own identity; the CA ignores whatever identity a CSR asks for and
writes the one its token names. The answer is `{"chain": PEM, "bundle": PEM}`.

The sidecar side is `http_signer(url, token)`, a `pymesh.tls.credentials.Signer`: the sidecar
generates its key, sends only the CSR, and renews the same way at half the lifetime.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Final, final
from urllib.parse import urlsplit

import structlog

from pymesh.observe.admin import AdminRequest, AdminResponse, AdminServer, json_response
from pymesh.observe.admin import start_admin_server as _start_server
from pymesh.tls.ca import CertificateAuthority
from pymesh.tls.credentials import Signer

__all__ = ["TOKEN_ENV", "URL_ENV", "SigningServer", "http_signer"]

URL_ENV: Final = "PYMESH_CA_URL"
TOKEN_ENV: Final = "PYMESH_CA_TOKEN"
_SIGN_PATH: Final = "/v1/sign"
_log = structlog.get_logger("pymesh.ca")


@final
class SigningServer:
    """The CA of a `pymesh up` mesh and its loopback signing endpoint."""

    def __init__(self, ca: CertificateAuthority, ttl_s: float) -> None:
        self.ca = ca
        self.ttl_s = ttl_s
        self._tokens: dict[str, str] = {}  # token -> SPIFFE ID
        self._server: AdminServer | None = None
        self.url = ""

    def token_for(self, spiffe_id: str) -> str:
        """A new bearer token that may obtain certificates for `spiffe_id` only."""
        token = secrets.token_urlsafe(32)
        self._tokens[token] = spiffe_id
        return token

    def _identity_of(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for known, spiffe_id in self._tokens.items():
            if hmac.compare_digest(known, token.strip()):
                return spiffe_id
        return None

    async def _sign(self, req: AdminRequest) -> AdminResponse:
        spiffe_id = self._identity_of(req.headers.get("authorization", ""))
        if spiffe_id is None:
            _log.warning("csr_refused", reason="unknown or missing token")
            return json_response({"error": "unknown or missing bearer token"}, 401)
        try:
            csr = json.loads(req.body)["csr"].encode()
            chain = self.ca.sign_csr(csr, spiffe_id, self.ttl_s)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _log.warning("csr_refused", identity=spiffe_id, reason=str(exc))
            return json_response({"error": f"bad CSR: {exc}"}, 400)
        _log.info("csr_signed", identity=spiffe_id, ttl_s=self.ttl_s)
        return json_response({"chain": chain.decode(), "bundle": self.ca.bundle_pem().decode()})

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on `host` (any free port); returns the base URL."""
        self._server = await _start_server(host, 0, {("POST", _SIGN_PATH): self._sign})
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.port}"
        return self.url

    async def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            await self._server.close()
            self._server = None


def _parse_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"CA URL {url!r} (expected http://HOST:PORT on loopback)")
    return parts.hostname, parts.port


def http_signer(url: str, token: str, timeout: float = 5.0) -> Signer:
    """A `Signer` that posts CSRs to a `SigningServer` at `url` with `token`."""
    host, port = _parse_url(url)

    async def sign(csr_pem: bytes) -> tuple[bytes, bytes]:
        from pymesh.control.up import HTTP_ERRORS

        try:
            return await _post(csr_pem)
        except HTTP_ERRORS as exc:
            raise RuntimeError(f"CA at {url}: {exc!r}") from exc
        except (KeyError, TypeError) as exc:
            raise RuntimeError(f"CA at {url}: malformed answer ({exc!r})") from exc

    async def _post(csr_pem: bytes) -> tuple[bytes, bytes]:
        from pymesh.control.up import read_response

        body = json.dumps({"csr": csr_pem.decode()}).encode()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    (
                        f"POST {_SIGN_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    ).encode()
                    + body
                )
                status, _, data = await read_response(reader, max_body=1 << 20)
            finally:
                writer.close()
        answer: Mapping[str, str] = json.loads(data or b"{}")
        if status != 200:
            raise RuntimeError(f"CA at {url} refused the CSR ({status}): {answer.get('error')}")
        return answer["chain"].encode(), answer["bundle"].encode()

    return sign
