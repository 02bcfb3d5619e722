"""pymesh.tls: the mesh CA, SPIFFE identities, X509-SVID validation and mTLS contexts.

    ca = CertificateAuthority.create("shop.local")           # or init_dir / load
    key = new_key()                                           # the sidecar's own key
    chain = ca.sign_csr(make_csr(key, sid), sid, ttl_s=86400)
    identity = Identity.from_pem(chain, key_pem(key), ca.bundle_pem())
    server = server_context(identity)                         # TLS 1.3, mTLS, ALPN h2
    peer = validate_svid(sslobj.getpeercert(binary_form=True))  # after every handshake

See docs/identity.md.
"""

from __future__ import annotations

from pymesh.tls.ca import DEFAULT_SVID_TTL_S, CertificateAuthority, svid_extensions
from pymesh.tls.context import DEFAULT_ALPN, client_context, server_context, trust_context
from pymesh.tls.identity import Identity, key_pem, make_csr, new_key
from pymesh.tls.spiffe import SpiffeId, check_trust_domain
from pymesh.tls.svid import SvidError, svid_problems, validate_svid

__all__ = [
    "DEFAULT_ALPN",
    "DEFAULT_SVID_TTL_S",
    "CertificateAuthority",
    "Identity",
    "SpiffeId",
    "SvidError",
    "check_trust_domain",
    "client_context",
    "key_pem",
    "make_csr",
    "new_key",
    "server_context",
    "svid_extensions",
    "svid_problems",
    "trust_context",
    "validate_svid",
]
