"""mTLS between sidecars: what the outbound side originates and the inbound side accepts.

Outbound: for a meshed destination whose mode is STRICT or PERMISSIVE, the sidecar opens TLS
1.3 to the destination's inbound listener with its own certificate, the SNI
`outbound_.PORT_._.SERVICE.NAMESPACE.svc.cluster.local` (Istio's form: it names the service
port the connection is for), and an ALPN offer that fits the pool (`http/1.1` for HTTP/1.1
pools, `h2` and `http/1.1` for HTTP/2 pools, none for L4 tunnels). After the handshake the
peer's leaf must be a valid X.509-SVID carrying exactly the SPIFFE ID expected for the
destination service (`TlsOrigin.verify`); OpenSSL has verified the chain to the trust bundle.

Inbound: the client's certificate is required and verified by OpenSSL against the bundle (a
refusal sends the TLS alert, see `pymesh.proxy.tls`); then `accept_peer` validates the SVID
rules and returns the client's identity, which goes on the connection for authorization,
logs and metrics (`source_principal`, `connection_security_policy="mutual_tls"`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Final, Protocol, final

from pymesh.errors import PeerVerificationError
from pymesh.policy.model import MtlsMode, Resource
from pymesh.policy.snapshot import Mesh
from pymesh.proxy.tls import TlsLayer
from pymesh.tls.credentials import Alpn, Credentials
from pymesh.tls.svid import validate_svid

__all__ = [
    "ClientCredentials",
    "TlsOrigin",
    "accept_peer",
    "inbound_mode",
    "make_sni",
    "parse_sni",
]

_SNI_PREFIX: Final = "outbound_."
_SNI_SUFFIX: Final = ".svc.cluster.local"


def make_sni(service: str, namespace: str, port: int) -> str:
    """The SNI an outbound sidecar sends for `service.namespace:port`."""
    return f"outbound_.{port}_._.{service}.{namespace}{_SNI_SUFFIX}"


def parse_sni(sni: str | None) -> tuple[str, str, int] | None:
    """(service, namespace, port) from a pymesh SNI, or None for any other name."""
    if not sni or not sni.startswith(_SNI_PREFIX) or not sni.endswith(_SNI_SUFFIX):
        return None
    middle = sni[len(_SNI_PREFIX) : -len(_SNI_SUFFIX)]
    port_s, sep, rest = middle.partition("_._.")
    if not sep or not port_s.isdigit():
        return None
    service, dot, namespace = rest.rpartition(".")
    if not dot or not service or not namespace:
        return None
    port = int(port_s)
    return (service, namespace, port) if 0 < port < 65536 else None


def inbound_mode(mesh: Mesh, service: Resource) -> MtlsMode:
    """The mTLS mode of a service's inbound listener (Service overrides Mesh)."""
    mode: MtlsMode = service.spec.mtls or mesh.spec.mtls
    return mode


def originates_tls(mesh: Mesh, destination: Resource) -> bool:
    """Whether calls to `destination` are sent over mTLS."""
    return destination.spec.meshed and inbound_mode(mesh, destination) != "DISABLE"


def _peer_id(layer: TlsLayer, trust_domain: str | None) -> str:
    der = layer.peer_cert_der()
    if der is None:
        raise PeerVerificationError("the peer sent no certificate")
    domains = (trust_domain,) if trust_domain else None
    return str(validate_svid(der, trust_domains=domains))


class ClientCredentials(Protocol):
    """What originating TLS needs: client contexts and the trust domain peers must be in
    (`Credentials`, or a bootstrap trust without a client certificate)."""

    @property
    def trust_domain(self) -> str | None: ...

    def client(self, alpn: Alpn) -> ssl.SSLContext: ...


@final
@dataclass(frozen=True, slots=True)
class TlsOrigin:
    """How to originate mTLS to one destination service port."""

    credentials: ClientCredentials
    sni: str
    expected: str  # the destination's SPIFFE ID

    def context(self, alpn: Alpn) -> ssl.SSLContext:
        """The current client context offering `alpn` (changes when the identity rotates)."""
        return self.credentials.client(alpn)

    def verify(self, layer: TlsLayer) -> str:
        """The server's SPIFFE ID if it is the expected one; `PeerVerificationError` if not."""
        got = _peer_id(layer, self.credentials.trust_domain)
        if got != self.expected:
            raise PeerVerificationError(
                f"server identity {got} is not the expected {self.expected}"
            )
        return got


def accept_peer(layer: TlsLayer, credentials: Credentials) -> str:
    """The client's SPIFFE ID after the handshake; `PeerVerificationError` (a
    `SvidError`) when its certificate breaks the X.509-SVID rules."""
    return _peer_id(layer, credentials.trust_domain)
