"""The one exception tree of pymesh.

```
PymeshError                                 base; never raised directly
├── ConfigError(PymeshError, ValueError)    .errors: tuple[FieldError, ...]; config rejected
├── PolicyError
│   ├── PolicyConflict                      registry.apply() rejected a snapshot
│   └── Unauthorized            403         authz_denied
├── ProxyError                              a proxy-generated reply: .code, .http_status
│   ├── ProtocolError           400         the bytes on the wire are illegal
│   │   ├── LocalProtocolError              we (or a filter) produced something illegal
│   │   └── RemoteProtocolError             the peer did: bad_request, uri_too_long,
│   │                                       headers_too_large, not_implemented
│   ├── RequestTimeout          408         request_timeout: the client was too slow
│   ├── NoRoute                 404         no_route: name or port not in the mesh
│   ├── RateLimited             429         rate_limited
│   └── UpstreamError           502         the upstream side failed
│       ├── NoHealthyUpstream   503         no_healthy_upstream
│       ├── Overflow            503         overflow (pool / queue full)
│       ├── CircuitOpen         503         circuit_open
│       ├── UpstreamTimeout     504         upstream_timeout
│       ├── UpstreamConnectError 502        upstream_connect_failed
│       └── UpstreamReset       502         upstream_reset
└── TLSError
    ├── HandshakeError
    └── PeerVerificationError
```

Every `ProxyError` carries the stable `code` that the connection manager puts in the
`x-pymesh-error` header, the access log and the `response_flags` metric label (DESIGN.md §2).
Rendering errors into replies happens in exactly one place: `pymesh.proxy.hcm`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CircuitOpen",
    "ConfigError",
    "FieldError",
    "HandshakeError",
    "LocalProtocolError",
    "NoHealthyUpstream",
    "NoRoute",
    "Overflow",
    "PeerVerificationError",
    "PolicyConflict",
    "PolicyError",
    "ProtocolError",
    "ProxyError",
    "PymeshError",
    "RateLimited",
    "RemoteProtocolError",
    "RequestTimeout",
    "TLSError",
    "Unauthorized",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamReset",
    "UpstreamTimeout",
]


class PymeshError(Exception):
    """Base of every error pymesh raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a config document, in the DESIGN.md §3 one-line format."""

    file: str
    line: int
    resource: str  # KIND/NAMESPACE/NAME, or "-" when the document has no identity yet
    path: str  # e.g. spec.ports[0].port
    message: str  # what is wrong, ending with "(expected ...)" where that helps

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.resource}: {self.path}: {self.message}"


class ConfigError(PymeshError, ValueError):
    """The config was rejected; `.errors` lists every problem found (all at once)."""

    def __init__(self, errors: tuple[FieldError, ...] | list[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class PolicyError(PymeshError):
    """A policy-level failure."""


class PolicyConflict(PolicyError):
    """The registry rejected a new snapshot (the previous one stays in force)."""


class ProxyError(PymeshError):
    """An error that the proxy renders as a local reply (or a close, at L4).

    Subclasses set `code` (the stable name in `x-pymesh-error` and `response_flags`) and
    `http_status`. Blame is in the class name: Remote* means the peer, Upstream* the upstream.
    """

    code: str = "internal_error"
    http_status: int = 500

    def __init__(
        self, detail: str = "", *, code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(detail or self.code)
        self.detail = detail
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status


class Unauthorized(ProxyError, PolicyError):
    """Authorization denied the request: 403 `authz_denied`."""

    code = "authz_denied"
    http_status = 403


class ProtocolError(ProxyError):
    """Illegal bytes on the wire: 400 `bad_request` unless a subclass says otherwise."""

    code = "bad_request"
    http_status = 400


class LocalProtocolError(ProtocolError):
    """We (or a filter) tried to produce something illegal. A pymesh bug or a filter's."""

    code = "internal_error"
    http_status = 500


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal. The connection is answered (when we can) and closed.

    Codes: `bad_request` 400, `uri_too_long` 414, `headers_too_large` 431,
    `not_implemented` 501 (a Transfer-Encoding other than `chunked`).
    """


class RequestTimeout(ProxyError):
    """The client did not send its request (headers or body) in time: 408."""

    code = "request_timeout"
    http_status = 408


class NoRoute(ProxyError):
    """The authority names no service or port in the mesh: 404."""

    code = "no_route"
    http_status = 404


class RateLimited(ProxyError):
    """A rate limit refused the request: 429."""

    code = "rate_limited"
    http_status = 429


class UpstreamError(ProxyError):
    """The upstream side failed: 502 unless a subclass says otherwise."""

    code = "upstream_reset"
    http_status = 502


class NoHealthyUpstream(UpstreamError):
    """The service has no endpoint to send to: 503."""

    code = "no_healthy_upstream"
    http_status = 503


class Overflow(UpstreamError):
    """A pool or queue limit was reached: 503."""

    code = "overflow"
    http_status = 503


class CircuitOpen(UpstreamError):
    """The circuit breaker is open: 503."""

    code = "circuit_open"
    http_status = 503


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time: 504."""

    code = "upstream_timeout"
    http_status = 504


class UpstreamConnectError(UpstreamError):
    """Connecting to the upstream failed (refused, unreachable, connect timeout): 502."""

    code = "upstream_connect_failed"
    http_status = 502


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before a complete response: 502."""

    code = "upstream_reset"
    http_status = 502


class TLSError(PymeshError):
    """A TLS failure."""


class HandshakeError(TLSError):
    """The TLS handshake failed."""


class PeerVerificationError(TLSError):
    """The peer's certificate does not satisfy the SVID rules or the expected identity."""
